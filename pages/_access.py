"""Who may see the app: the disclaimer, the password / OIDC gate, and the routing that keeps both in front.

* ``[auth] password`` in ``.streamlit/secrets.toml``: a shared password, compared in constant time.
* OIDC configured in ``[auth]`` (see :func:`oidc_provider`): sign in with ``st.login`` first.
* Neither: no gate (the default config binds to localhost only).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Any

import streamlit as st

from pages._state import Key, session
from xai.export import DISCLAIMER

WRONG_PASSWORD_DELAY_S = 1.0


def disclaimer() -> None:
    """The banner every page shows before anything else."""
    st.warning(f"**{DISCLAIMER}.** Saliency maps show where a model looked, not what is there.", icon=":material/warning:")


def pages_directory_flag() -> Any:
    """Streamlit's private switch for a legacy ``pages/`` multipage app: the class that holds it.

    The one place the app touches Streamlit's private API (``PagesManager.uses_pages_directory``, set by
    ``PagesManager.__init__`` when the entry script's folder has ``pages/``, cleared by ``st.navigation``).
    ``tests/test_app.py`` asserts the attribute still exists and still behaves so: a Streamlit upgrade that
    changes it fails that test instead of silently opening deep links past the gate.

    No public way found (Streamlit 1.67): ``st.navigation`` is the public switch, but it runs only in the entry
    script, which a first deep link skips; streamlit/streamlit#9624 (deep links before the entry point ran) and
    the review of streamlit/streamlit#10276 (the flag is set per session, "it completely switched back to MPAv1")
    describe the same behaviour, with no option to turn the legacy mode off. Renaming ``pages/`` would, but the
    project's layout names the folder.
    """
    from streamlit.runtime.pages_manager import PagesManager

    return PagesManager


def ensure_routed() -> None:
    """Make sure the disclaimer and the password gate ran in this run, even when ``app.py`` did not.

    Streamlit treats an app with a ``pages/`` folder as a legacy multipage app until the entry script has
    called ``st.navigation`` once in the process: the FIRST request of a fresh server to a deep link such
    as ``/model`` runs ``pages/model.py`` alone, skipping ``app.py`` and its password gate (and showing
    Streamlit's own page list, helper modules included). Every page calls this first (``active_model``
    does too). In that legacy run it switches the legacy mode off as ``st.navigation`` does; then a new
    session (nothing in its state yet, so no click to lose) simply reruns, now through ``app.py``; a run
    that may carry a widget event instead shows the disclaimer and applies the gate itself (stopping the
    run when locked), and the next run goes through ``app.py``.
    """
    manager = pages_directory_flag()
    if manager.uses_pages_directory:
        manager.uses_pages_directory = False
        if not st.session_state:
            st.rerun()
        disclaimer()
        if not access_gate():
            st.stop()


def access_granted() -> bool:
    return bool(session().get(Key.ACCESS_GRANTED, False))


def grant_access() -> None:
    session()[Key.ACCESS_GRANTED] = True


def _auth_secrets() -> dict[str, Any]:
    """The ``[auth]`` table of ``.streamlit/secrets.toml``; empty when there is no secrets file."""
    try:
        auth = st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - no secrets file (or an unreadable one) means no gate configured
        return {}
    return dict(auth) if auth else {}


def configured_password() -> str | None:
    """The shared password from ``st.secrets["auth"]["password"]``, or None when none is set."""
    password = _auth_secrets().get("password")
    return str(password) if password else None


def password_ok(entered: str, expected: str) -> bool:
    """Constant-time comparison (no timing hint about how many leading characters matched)."""
    return hmac.compare_digest(entered.encode("utf-8"), expected.encode("utf-8"))


def oidc_provider() -> str | None:
    """The ``st.login`` provider configured in ``[auth]`` ("" for the default provider), else None.

    OIDC is on when ``[auth]`` holds ``client_id`` (one provider) or a sub-table with one
    (``[auth.<provider>]``), next to ``redirect_uri`` and ``cookie_secret`` as ``st.login`` requires.
    """
    auth = _auth_secrets()
    if auth.get("client_id"):
        return ""
    for name, value in auth.items():
        if isinstance(value, Mapping) and value.get("client_id"):
            return str(name)
    return None


def access_gate() -> bool:
    """True when this session may see the app; otherwise draws the sign-in and returns False."""
    provider = oidc_provider()
    if provider is not None and not st.user.get("is_logged_in", False):
        st.subheader("Sign in to use this app")
        st.button("Log in", key="_oidc_login", type="primary", on_click=st.login,
                  args=(provider,) if provider else ())
        return False
    expected = configured_password()
    if expected is None or access_granted():
        return True
    st.subheader("This app is password protected")
    with st.form("access_form"):
        entered = st.text_input("Password", type="password", key="_access_password")
        submitted = st.form_submit_button("Enter")
    if submitted:
        if password_ok(entered or "", expected):
            grant_access()
            st.rerun()
        time.sleep(WRONG_PASSWORD_DELAY_S)  # slows scripted guessing; only this session's thread waits
        st.error("Wrong password.")
    return False
