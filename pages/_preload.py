"""Once per session: make the browser load plotly's code while the server is still busy starting up."""

from __future__ import annotations

from typing import Any

import streamlit as st

from pages._state import Key, session

#: Out of sight and out of the layout, but mounted: the browser loads the chart's code for it.
_CHART_CODE_STYLE = ("<style>.st-key-chart_code_preload { position: absolute; width: 1px; height: 1px; "
                     "overflow: hidden; opacity: 0; pointer-events: none; }</style>")


def chart_code_preload() -> Any:
    """Once per session, before a page imports torch and loads the model: an invisible one-point chart, so
    the browser fetches and compiles plotly's code (a 4.7 MB script: ~2 s of this machine's cores) while the
    server does that on a fresh start, instead of after it, when the first page with a chart (every page has
    one) would wait for it. Returns the slot to clear after the page (None after the session's first run)."""
    if session().get(Key.CHART_CODE_SENT):
        return None
    session()[Key.CHART_CODE_SENT] = True
    st.html(_CHART_CODE_STYLE)
    slot = st.empty()
    with slot.container(key="chart_code_preload"):
        st.plotly_chart({"data": [{"type": "scatter", "x": [0], "y": [0]}], "layout": {"height": 10}},
                        key="chart_code_preload_chart",
                        config={"staticPlot": True})
    return slot
