"""Once per session, when its first page has run: make the browser load plotly's code before a chart needs it."""

from __future__ import annotations

import streamlit as st

from pages._state import Key, session

#: Out of sight and out of the layout, but mounted: the browser loads the chart's code for it.
_CHART_CODE_STYLE = ("<style>.st-key-chart_code_preload { position: absolute; width: 1px; height: 1px; "
                     "overflow: hidden; opacity: 0; pointer-events: none; }</style>")


def chart_code_preload() -> None:
    """Once per session, after its first page has run (``app.py``): an invisible one-point chart, so the browser
    fetches and runs plotly's code (a 4.7 MB script: ~1.2 s of one core here to evaluate) before the session's
    first chart needs it (e.g. a result's panel once a film is chosen). The chart goes with the next run.

    Not earlier: on a fresh server, sent before the page's run it had the browser do that work beside torch's
    import (the model's load then took ~0.25 s longer), and the browser drew the model's widgets only after it
    (benchmarks/RESULTS.md, 2026-12-07, sixth pass)."""
    if session().get(Key.CHART_CODE_SENT):
        return
    st.html(_CHART_CODE_STYLE)
    with st.container(key="chart_code_preload"):
        st.plotly_chart({"data": [{"type": "scatter", "x": [0], "y": [0]}], "layout": {"height": 10}},
                        key="chart_code_preload_chart",
                        config={"staticPlot": True})
    # Only once it is sent: a run stopped before (a film chosen meanwhile reruns the page) sends it next time.
    session()[Key.CHART_CODE_SENT] = True
