"""The "How this method works" popovers of the Explain page, drawn from the method table's how-to texts
(:func:`xai.method_names.method_identity`), which the "How the maps are made" page reads too.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from pages._methods import method_label
from xai.method_names import method_identity

HOW_PAGE = "pages/how.py"
#: Below this probability for the explained class the "How" page warns that the evidence is weak.
WEAK_EVIDENCE = 0.05


def method_popover(method: str) -> None:
    """A "How <method> works" popover: summary, formula, paper, pitfalls and a link to the how page."""
    note = method_identity(method)
    if note is None or not note.summary:
        return
    with st.popover(f"How {method_label(method)} works", icon=":material/help:"):
        st.markdown(note.summary)
        st.latex(note.formula)
        st.caption(note.paper)
        st.markdown("**Known to get wrong**\n" + "\n".join(f"- {p}" for p in note.pitfalls))
        try:
            st.page_link(HOW_PAGE, label="Step by step on this film", icon=":material/schema:")
        except Exception:  # noqa: BLE001 - the page is not routed (e.g. a page run on its own): no link
            st.caption("See “How the maps are made” in the page list.")


def how_popovers(methods: Sequence[str]) -> None:
    """One "How this method works" popover per method, side by side (under the Explain panel)."""
    known = [m for m in methods if (note := method_identity(m)) is not None and note.summary]
    if not known:
        return
    for column, method in zip(st.columns(len(known)), known, strict=True):
        with column:
            method_popover(method)
