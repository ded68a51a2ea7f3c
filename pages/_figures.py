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


def _ink_on(colour: str) -> str:
    """Black or white, whichever reads better on ``colour`` (``#rrggbb``): WCAG relative luminance against the
    crossover of the two contrast ratios (0.179)."""
    channels = [int(colour[i:i + 2], 16) / 255.0 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "#fff"


#: Segments narrower than this share carry no printed percentage (their tooltip still has it).
READOUT_LABEL_MIN = 0.08
#: Regions below this share in every method stay out of the legend (their segments are still drawn).
READOUT_LEGEND_MIN = 0.005


def readout_bars_html(shares: dict[str, dict[str, float]]) -> str:
    """:func:`readout_figure` as plain HTML: one horizontal stacked bar per method (``{method label: {region:
    share}}``), one segment per region in :data:`xai.anatomy.REGION_COLOURS` and the order of
    :data:`xai.anatomy.REGIONS` (lung zones first), its share printed when wide enough and in its tooltip,
    then a legend of the regions that hold evidence. Segments carry ``data-region`` / ``data-share``.

    The Explain page draws this instead of a plotly chart: a second plotly chart on the result's path cost the
    browser ~0.1 s of the first result on this machine, these few ``div``s nothing measurable. Text takes the
    theme's colour; a segment's label is black or white by its colour's luminance."""
    from html import escape

    from xai.anatomy import REGION_COLOURS, REGIONS

    rows = []
    for method, by_region in shares.items():
        segments = []
        for region in REGIONS:
            share = float(by_region.get(region, float("nan")))
            if not np.isfinite(share) or share <= 0:
                continue
            colour = REGION_COLOURS[region]
            label = f"{share:.0%}" if share >= READOUT_LABEL_MIN else ""
            segments.append(
                f'<span class="xai-seg" data-region="{escape(region)}" data-share="{share:.6f}" '
                f'title="{escape(method)} · {escape(region)}: {share:.0%}" '
                f'style="width:{100 * share:.3f}%;background:{colour};color:{_ink_on(colour)}">{label}</span>')
        bar = "".join(segments) or '<span class="xai-flat">flat map: no evidence to place</span>'
        rows.append(f'<div class="xai-row"><span class="xai-method">{escape(method)}</span>'
                    f'<span class="xai-bar">{bar}</span></div>')
    shown = [r for r in REGIONS if any(float(v.get(r, 0.0)) >= READOUT_LEGEND_MIN for v in shares.values())]
    legend = "".join(f'<span class="xai-key"><i style="background:{REGION_COLOURS[r]}"></i>{escape(r)}</span>'
                     for r in shown)
    return (
        "<style>"
        ".xai-readout{font-size:0.85rem;margin:0.25rem 0 0.5rem}"
        ".xai-row{display:flex;align-items:center;gap:0.5rem;margin:0.2rem 0}"
        ".xai-method{flex:0 0 9rem;text-align:right}"
        ".xai-bar{flex:1;display:flex;height:1.5rem;border-radius:3px;overflow:hidden;"
        "outline:1px solid rgba(128,128,128,0.35)}"
        ".xai-seg{display:flex;align-items:center;justify-content:center;overflow:hidden;white-space:nowrap;"
        "font-size:0.75rem}"
        ".xai-flat{padding-left:0.5rem;opacity:0.7}"
        ".xai-legend{display:flex;flex-wrap:wrap;gap:0.2rem 0.9rem;margin:0.35rem 0 0 9.5rem}"
        ".xai-key i{display:inline-block;width:0.8rem;height:0.8rem;border-radius:2px;margin-right:0.3rem;"
        "vertical-align:-0.1rem}"
        "</style>"
        '<div class="xai-readout" role="figure" aria-label="Where each map\'s evidence lies, by anatomical region">'
        + "".join(rows) + f'<div class="xai-legend">{legend}</div></div>'
    )


def sidebar_film(prefix: str) -> LoadedImage | None:
    """The session's radiograph, with the uploader and sample picker in the sidebar; a hint when none."""
    with st.sidebar:
        st.header("Radiograph")
        image = load_input(prefix=prefix)
    if image is None:
        st.info("Upload a radiograph or pick a bundled sample in the sidebar (or on the Explain page).",
                icon=":material/upload_file:")
    return image
