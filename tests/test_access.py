"""The password gate stays in front of every page, including a deep link on a fresh server.

``pages._access.ensure_routed`` relies on Streamlit's private ``PagesManager.uses_pages_directory``: these tests
pin the private behaviour it relies on, so a Streamlit upgrade that changes it fails here, not in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

from pages._access import pages_directory_flag

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
TIMEOUT = 180
PASSWORD = "correct horse"


@pytest.fixture
def fresh_flag() -> Iterator[None]:
    """Streamlit's process-wide flag as a fresh server has it (unset), restored afterwards."""
    saved = PagesManager.uses_pages_directory
    PagesManager.uses_pages_directory = None
    try:
        yield
    finally:
        PagesManager.uses_pages_directory = saved


def test_streamlit_still_treats_an_app_with_a_pages_folder_as_legacy_until_navigation(fresh_flag: None) -> None:
    # The class ensure_routed switches is Streamlit's PagesManager, and its flag is still the legacy switch:
    # unset on a fresh server, set by the first PagesManager for an entry script beside a pages/ folder...
    assert pages_directory_flag() is PagesManager
    assert PagesManager.uses_pages_directory is None
    PagesManager(str(APP), None, setup_watcher=False)
    assert PagesManager.uses_pages_directory is True
    # ...and cleared by st.navigation, which app.py calls.
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert PagesManager.uses_pages_directory is False


def test_a_deep_link_in_legacy_mode_meets_the_password_gate(fresh_flag: None) -> None:
    """A run of ``pages/model.py`` alone while Streamlit is in legacy mode (what a fresh server's first request to
    ``/model`` does) shows the disclaimer and the password form, not the page, and leaves legacy mode."""
    script = f"""
from streamlit.runtime.pages_manager import PagesManager
import runpy
PagesManager.uses_pages_directory = True  # a fresh server, first request to a deep link
runpy.run_path({str(ROOT / "pages" / "model.py")!r}, run_name="__main__")
"""
    at = AppTest.from_string(script, default_timeout=TIMEOUT)
    at.secrets["auth"] = {"password": PASSWORD}
    at.session_state["returning"] = True  # a run that may carry a widget event: gated in place, not rerun
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("not for diagnosis" in w.value.lower() for w in at.warning), "no disclaimer"
    assert at.text_input(key="_access_password").label == "Password"
    assert not at.header, "the Model page was drawn behind the gate"
    assert PagesManager.uses_pages_directory is False
    # The right password opens it.
    at.text_input(key="_access_password").set_value(PASSWORD)
    at.button[0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "_access_password" not in {t.key for t in at.text_input} and at.header, "the password did not open it"
