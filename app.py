"""ChestCOVNet XAI — the Streamlit app: ``streamlit run app.py`` (or ``make run``).

Routes the pages (Explain first, then Model, Trust and Batch when their scripts exist), shows the
disclaimer on every page and applies the optional shared password before any page renders.
Access: bound to localhost by ``.streamlit/config.toml``; a password from ``st.secrets["auth"]["password"]``
when one is configured (see the README for network deployments with OIDC / ``st.login``).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

import xai
from pages._access import access_gate, disclaimer
from pages._models import bundled_model_loading
from pages._preload import chart_code_preload

xai.boot()  # the library's process-wide settings, once per process (what and why: xai/startup.py)

APP_DIR = Path(__file__).resolve().parent

# The tab's icon is a picture, not an emoji: it shows where no emoji font is installed (hospital workstations), and
# on a fresh server's first run it costs ~25 ms where checking an emoji against Streamlit's catalogue cost 60-80 ms.
st.set_page_config(page_title="ChestCOVNet XAI", page_icon=str(APP_DIR / "pages" / "favicon.png"), layout="wide",
                   initial_sidebar_state="expanded")

disclaimer()
if not access_gate():
    st.stop()

_PAGES = (  # (script, title, icon); Explain is the default page
    ("pages/explain.py", "Explain", ":material/visibility:"),
    ("pages/model.py", "Model", ":material/model_training:"),
    ("pages/trust.py", "Trust", ":material/verified:"),
    ("pages/how.py", "How the maps are made", ":material/schema:"),
    ("pages/compare.py", "Compare", ":material/compare:"),
    ("pages/batch.py", "Batch", ":material/dataset:"),
    ("pages/review.py", "Review", ":material/rate_review:"),
)
pages = [
    st.Page(script, title=title, icon=icon, default=(i == 0))
    for i, (script, title, icon) in enumerate(_PAGES)
    if (APP_DIR / script).is_file()
]
try:
    st.navigation(pages).run()
finally:  # once the page has run: the browser loads plotly's code (pages._preload), the server the bundled model
    chart_code_preload()
    bundled_model_loading()  # started once per server, in the background (pages._models); at once when loaded
