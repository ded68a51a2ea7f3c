"""The lung zones' boundaries in the display pipeline (xai.render.zone_layer, layers, compose, outlines) on a real
film, its real regions and a real explanation: thin lines at the zone colour, drawn only when asked, and the
same pixels whether composed on the server or blended from the outline layer (as the Explain page does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import models
from xai import render
from xai.anatomy import anatomy_regions, zone_outlines
from xai.pipeline import explain_radiograph
from xai.radiograph import load_radiograph

FILM = Path(__file__).resolve().parent.parent / "samples" / "covid19_mhh_pa.jpg"


@pytest.fixture(scope="module")
def explained():
    radiograph = load_radiograph(FILM)
    result = explain_radiograph(radiograph, models.load("chestcovnet"), name="film", methods=("gradcam",))
    return radiograph, result, zone_outlines(anatomy_regions(radiograph, ocr=False))


def test_zone_layer_is_a_thin_line_at_the_zone_opacity(explained) -> None:
    _, _, lines = explained
    same = render.zone_layer(lines, lines.shape)
    assert same is not None and set(np.unique(same)) == {0, round(255 * render.ZONE_OPACITY)}
    assert np.array_equal(same > 0, lines)  # on its own grid: exactly the boundary pixels
    h, w = lines.shape
    bigger = render.zone_layer(lines, (2 * h, 2 * w))
    # twice the size: twice as long and twice as wide (4x the pixels), not a band
    assert bigger is not None and (bigger > 0).sum() <= 4.5 * lines.sum()
    smaller = render.zone_layer(lines, (h // 2, w // 2))
    assert smaller is not None and 0.4 * lines.sum() / 4 <= (smaller > 0).sum() <= 1.2 * lines.sum() / 2
    assert render.zone_layer(np.zeros_like(lines), lines.shape) is None and render.zone_layer(None, (h, w)) is None


def test_compose_and_the_outline_layer_draw_the_same_zones(explained) -> None:
    radiograph, result, lines = explained
    off = render.DisplaySettings(side=512, contour_level=0.5)
    on = render.DisplaySettings(side=512, contour_level=0.5, zones=True)
    assert render.layers(radiograph, result, off, zones=lines).zones is None  # only when asked
    prepared = render.layers(radiograph, result, on, zones=lines)
    assert prepared.zones is not None and prepared.zones.shape == prepared.original.shape[:2]
    composed = render.compose(prepared, on)
    over = render.outlines(prepared, on)
    for panel, image in (("", composed.original), ("gradcam", composed.overlays["gradcam"])):
        base = prepared.original if panel == "" else render.blend(prepared.original, prepared.heat["gradcam"],
                                                                  cmap=on.cmap, alpha=on.alpha)
        rgba = over[panel].astype(np.float64)
        a = rgba[..., 3:] / 255.0
        blended = (1 - a) * base + a * rgba[..., :3]
        assert np.abs(blended - image).max() <= 3, panel  # rounding of two stacked layers (contour, zones)
    plain = render.compose(render.layers(radiograph, result, off, zones=lines), off)
    changed = np.abs(composed.original.astype(int) - plain.original.astype(int)).max(axis=2) > 0
    assert 0 < changed.mean() < 0.05
