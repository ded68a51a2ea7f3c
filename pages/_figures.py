"""What the "How the maps are made" and "Compare" pages share: plotly figure builders and the film picker."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from pages._ingest import LoadedImage, load_input
from pages._panel import screen_image_uri
from xai import render

CELL_SIDE = 112  # longest side of a large map drawn as a heatmap (px); images go as JPEG instead


def _small(a: np.ndarray) -> np.ndarray:
    """A large map shrunk for a heatmap trace (plotly sends every value as JSON)."""
    return render.downsample_for_display(np.asarray(a, dtype=np.float32), CELL_SIDE)


#: The fixed range of a ``difference`` cell: the difference of two maps on [0, 1] lies in [-1, 1].
DIFFERENCE_RANGE = 1.0


def maps_figure(cells: list[tuple[str, np.ndarray, str]], height: int = 260) -> go.Figure:
    """Maps side by side: ``(title, array, style)`` with style ``signed`` (blue-red around 0, stretched to
    the map's largest magnitude), ``difference`` (blue-red on the fixed, symmetric range
    ±:data:`DIFFERENCE_RANGE`, with its colour bar: a small difference looks small), ``unit`` (inferno on
    [0, 1]), ``auto`` (inferno on the map's range) or ``rgb`` (a uint8 image)."""
    fig = make_subplots(rows=1, cols=len(cells), subplot_titles=[c[0] for c in cells], horizontal_spacing=0.02)
    for i, (_title, a, style) in enumerate(cells, start=1):
        if style == "rgb":
            fig.add_trace(go.Image(source=screen_image_uri(a), hoverinfo="skip"), row=1, col=i)
        else:
            z = a if max(a.shape) <= CELL_SIDE else _small(a)
            kwargs: dict[str, Any] = {"colorscale": render.plotly_colorscale(), "showscale": False}
            if style == "signed":
                top = float(np.abs(z).max()) or 1.0
                kwargs = {"colorscale": "RdBu_r", "zmid": 0.0, "zmin": -top, "zmax": top, "showscale": False}
            elif style == "difference":
                kwargs = {"colorscale": "RdBu_r", "zmid": 0.0, "zmin": -DIFFERENCE_RANGE, "zmax": DIFFERENCE_RANGE,
                          "showscale": True, "colorbar": {"title": {"text": "A − B"}, "thickness": 12, "len": 0.9,
                                                          "tickvals": [-1.0, -0.5, 0.0, 0.5, 1.0],
                                                          "ticktext": ["−1 (B)", "−0.5", "0", "0.5", "+1 (A)"]}}
            elif style == "unit":
                kwargs.update(zmin=0.0, zmax=1.0)
            fig.add_trace(go.Heatmap(z=z, hovertemplate="%{z:.3g}<extra></extra>", **kwargs), row=1, col=i)
        fig.update_xaxes(visible=False, row=1, col=i)
        fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=f"x{'' if i == 1 else i}", row=1, col=i)
    fig.update_annotations(font_size=12)
    fig.update_layout(height=height, margin={"l": 4, "r": 4, "t": 40, "b": 4})
    return fig


def readout_figure(shares: dict[str, dict[str, float]]) -> go.Figure:
    """Where each map's evidence lies: one stacked bar per method (``{method label: {region: share}}``, shares of
    :func:`xai.anatomy.evidence_by_region`), methods side by side, one segment per region of
    :data:`xai.anatomy.REGIONS` in :data:`xai.anatomy.REGION_COLOURS` (lung zones first, from the bottom)."""
    from xai.anatomy import REGION_COLOURS, REGIONS

    methods = list(shares)
    data = [go.Bar(
        name=region, x=methods, y=[100.0 * float(shares[m].get(region, float("nan"))) for m in methods],
        marker_color=REGION_COLOURS[region], hovertemplate=f"%{{x}}<br>{region}: %{{y:.0f}}%<extra></extra>",
    ) for region in REGIONS]
    return go.Figure(data, layout={
        "barmode": "stack", "height": 340, "margin": {"l": 8, "r": 8, "t": 8, "b": 8},
        "yaxis": {"title": {"text": "share of the map's mass (%)"}, "range": [0, 100]},
        "legend": {"traceorder": "reversed", "font": {"size": 11}},  # listed as stacked: the lung zones last
    })


def sidebar_film(prefix: str) -> LoadedImage | None:
    """The session's radiograph, with the uploader and sample picker in the sidebar; a hint when none."""
    with st.sidebar:
        st.header("Radiograph")
        image = load_input(prefix=prefix)
    if image is None:
        st.info("Upload a radiograph or pick a bundled sample in the sidebar (or on the Explain page).",
                icon=":material/upload_file:")
    return image
