"""The model's record, shown before a radiograph is chosen: held-out rates overall and per data source."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import streamlit as st

if TYPE_CHECKING:
    from models import ModelCard


def held_out_performance(card: ModelCard, key: str) -> bool:
    """The model's test-split sensitivity and specificity, overall and per data source, and on each source
    left out of training in the card's cross-source checks, as a chart.

    Shown before a radiograph is chosen so a reader meets the model's record (and the sources it fails on)
    first. False when the card records no test rates (e.g. a user's model without metrics).
    """
    from pages._panel import source_metrics_figure

    metrics = getattr(card, "metrics", None) or {}
    test = metrics.get("test") if isinstance(metrics, Mapping) else None
    cross = getattr(card, "cross_source", None)
    fig = source_metrics_figure(test, cross_source=cross if isinstance(cross, Mapping) else None) \
        if isinstance(test, Mapping) else None
    if fig is None:
        return False
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})
    return True
