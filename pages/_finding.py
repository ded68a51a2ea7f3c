"""The finding's box drawn with the mouse: the film as a Plotly figure in original pixel coordinates, and the
box read back from Streamlit's selection event (``st.plotly_chart(on_select="rerun", selection_mode=("box",))``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xai import render

BOX_SIDE = 560  # longest side of the film on which the finding's box is drawn


def box_figure(pixels: np.ndarray, box: tuple[int, int, int, int] | None) -> Any:
    """The film as a Plotly image whose axes are ORIGINAL pixel coordinates, ready for box selection."""
    import plotly.graph_objects as go

    from pages._panel import screen_image_uri

    H, W = pixels.shape
    small = render.downsample_for_display(pixels, BOX_SIDE)
    rgb = np.repeat((np.clip(small, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    fig = go.Figure(go.Image(source=screen_image_uri(rgb), x0=0, y0=0, dx=W / small.shape[1], dy=H / small.shape[0],
                             hoverinfo="skip"))
    if box is not None:
        x, y, w, h = box
        fig.add_shape(type="rect", x0=x, y0=y, x1=x + w, y1=y + h, line={"color": "#ffb000", "width": 3})
    fig.update_layout(dragmode="select", height=BOX_SIDE, margin={"l": 0, "r": 0, "t": 0, "b": 0},
                      uirevision="finding_box", xaxis={"visible": False, "range": [0, W]},
                      yaxis={"visible": False, "range": [H, 0], "scaleanchor": "x"})
    return fig


def box_from_selection(event: Any, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The last box of a Plotly selection event (original pixel coordinates) as (x, y, w, h), clipped to the
    film; None when there is no box or it covers no pixel."""
    try:
        boxes = event["selection"]["box"]
    except (KeyError, TypeError):
        return None
    if not boxes:
        return None
    H, W = shape
    xs, ys = sorted(float(v) for v in boxes[-1]["x"]), sorted(float(v) for v in boxes[-1]["y"])
    x0, x1 = int(np.clip(round(xs[0]), 0, W)), int(np.clip(round(xs[1]), 0, W))
    y0, y1 = int(np.clip(round(ys[0]), 0, H)), int(np.clip(round(ys[1]), 0, H))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)
