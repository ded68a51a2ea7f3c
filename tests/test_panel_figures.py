"""The Explain page's figure builders skip plotly's validation at run time (pages/_panel.unvalidated_figure);
here every figure they make is rebuilt WITH validation, which raises on any misspelt or mistyped property,
and must serialise to the same JSON. The page's HTML figures (the prediction's bars, the readout's stacked
bars) are read back from their markup."""

from __future__ import annotations

import json
import re

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from pages._panel import Panel, panel_figure, prediction_bars_html
from xai import render


def _validated_json(fig: go.Figure) -> dict:
    return json.loads(pio.to_json(go.Figure(fig.to_dict()), validate=True))


def _without_template(spec: dict) -> dict:
    return {**spec, "layout": {k: v for k, v in spec["layout"].items() if k != "template"}}


def _same_as_validated(fig: go.Figure) -> None:
    """Equal JSON but for the template, which validation only normalises (``{}`` gains an empty scatter)."""
    assert _without_template(json.loads(pio.to_json(fig, validate=False))) == _without_template(_validated_json(fig))


def prediction_rows(html: str) -> list[dict[str, str]]:
    """The prediction bars' rows as drawn: class, probability attribute, printed value, bar width and colour."""
    pattern = (r'<div class="xai-prob-row" data-class="([^"]+)" data-probability="([^"]+)"( data-decided="1")?.*?'
               r'<span class="xai-prob-value">([^<]+)</span><span class="xai-prob-track">'
               r'<span class="xai-prob-bar" style="width:([\d.]+)%;background:(#[0-9a-f]{6})"></span>(.*?)</span></div>')
    return [{"class": c, "p": p, "decided": bool(d), "printed": v, "width": w, "colour": col, "line": line}
            for c, p, d, v, w, col, line in re.findall(pattern, html)]


@pytest.mark.parametrize("threshold", [None, 0.273])
def test_prediction_bars_show_each_probability_the_decision_and_the_threshold(threshold: float | None) -> None:
    probabilities = {"covid19": 0.31, "non_covid": 0.69}
    html = prediction_bars_html(probabilities, threshold=threshold, positive_class="covid19", decision="covid19")
    rows = prediction_rows(html)
    assert [r["class"] for r in rows] == ["covid19", "non_covid"]  # the model's order
    assert [float(r["p"]) for r in rows] == [0.31, 0.69]  # the value in full, for tests and assistive tools
    assert [r["printed"] for r in rows] == ["0.310", "0.690"]
    assert [float(r["width"]) for r in rows] == pytest.approx([31.0, 69.0])  # the bar's length is the probability
    assert [r["decided"] for r in rows] == [True, False]
    assert [r["colour"] for r in rows] == ["#e4572e", "#7f8c9a"]  # the decided class highlighted
    lines = re.findall(r'data-threshold="([\d.]+)" style="left:([\d.]+)%"', html)
    if threshold is None:
        assert not lines and "threshold" not in html.split("</style>")[1]
    else:  # one dashed line, across the positive class's track only, at the threshold, and said in words
        assert lines == [("0.273000", "27.300")]
        assert "xai-threshold" in rows[0]["line"] and "xai-threshold" not in rows[1]["line"]
        assert "threshold 0.273 on P(covid19)" in html


def test_prediction_bars_escape_class_names_and_clip_bars() -> None:
    html = prediction_bars_html({"<b>a</b>": 1.0, "b&c": 0.0}, threshold=None, positive_class=None, decision="b&c")
    assert "<b>a</b>" not in html and "&lt;b&gt;a&lt;/b&gt;" in html and "b&amp;c" in html
    rows = prediction_rows(html)
    assert [float(r["width"]) for r in rows] == [100.0, 0.0] and rows[1]["decided"]


def test_held_out_record_figure_is_valid_plotly() -> None:
    import models
    from pages._panel import source_metrics_figure

    card = models.read_card("chestcovnet")
    fig = source_metrics_figure(card.metrics["test"], cross_source=card.cross_source)
    assert fig is not None
    _same_as_validated(fig)
    assert fig.to_dict()["layout"]["template"] == go.Figure().to_dict()["layout"]["template"]  # the default


@pytest.mark.parametrize(("per_row", "colorbar", "view"), [(3, True, None), (2, False, (2.0, 0.3, 0.6)), (5, True, None)])
def test_panel_figure_is_valid_plotly(per_row: int, colorbar: bool, view: tuple[float, float, float] | None) -> None:
    rng = np.random.default_rng(1)
    panels = [Panel(f"panel {i}<br>line two", (rng.random((60, 80, 3)) * 255).astype(np.uint8)) for i in range(5)]
    fig = panel_figure(panels, per_row=per_row, row_height=240, uirevision="film:model",
                       colorscale=render.plotly_colorscale("inferno") if colorbar else None,
                       colorbar_title="× the model's typical peak", view=view, light=per_row == 2)
    _same_as_validated(fig)
    images = [t for t in fig.to_dict()["data"] if t["type"] == "image"]
    assert len(images) == 5 and all(t["source"].startswith("data:image/jpeg;base64,") for t in images)
    assert fig.to_dict()["layout"]["template"] == {}  # no template: the panel draws its own dark surround


def test_a_misspelt_property_is_caught_by_the_validation_these_tests_apply() -> None:
    bad = go.Figure(data=[{"type": "bar", "x": [1], "colour": "red"}], layout={}, _validate=False)
    with pytest.raises(ValueError, match="colour"):
        _validated_json(bad)


def test_layered_panels_draw_radiograph_heat_then_outlines_and_the_style_targets_each_heat_layer() -> None:
    from pages._panel import GRAY_COLORSCALE, heat_style, screen_png_uri, subplot_id

    rgb = np.zeros((40, 50, 3), np.uint8)
    heat = screen_png_uri(np.full((40, 50), 7, np.uint8))
    lines = screen_png_uri(np.zeros((40, 50, 4), np.uint8))
    panels = [Panel("original", rgb, lines=lines), Panel("a", rgb, heat=heat), Panel("b", rgb, heat=heat, lines=lines)]
    fig = panel_figure(panels, per_row=3, row_height=200, uirevision="u", colorscale=GRAY_COLORSCALE)
    _same_as_validated(fig)
    images = [(t["name"], t["xaxis"]) for t in fig.to_dict()["data"] if t["type"] == "image"]
    assert images == [("0", "x"), ("0 lines", "x"), ("1", "x2"), ("1 heat", "x2"), ("2", "x3"), ("2 heat", "x3"),
                      ("2 lines", "x3")]
    style = heat_style([1, 2], cmap="cividis", alpha=0.25, show_heat=True)
    assert [subplot_id(i) for i in range(3)] == ["xy", "x2y2", "x3y3"]
    assert ".st-key-panel_chart g.subplot.x2y2 .imagelayer > g:nth-child(2) > image" in style
    assert "g.subplot.x3y3" in style and "g.subplot.xy " not in style  # the original's 2nd layer is outlines
    assert "--xai-heat-opacity: 0.250;" in style and "--xai-heat-filter: url(#xai-cmap-cividis);" in style
    assert "opacity: var(--xai-heat-opacity) !important; filter: var(--xai-heat-filter)" in style
    assert ".colorbar .cbfill { filter: var(--xai-heat-filter); }" in style
    assert "--xai-heat-opacity: 0.000;" in heat_style([1], cmap="cividis", alpha=0.25, show_heat=False)


def test_the_pages_colour_filters_hold_each_colormaps_own_table() -> None:
    """The browser paints heat index i with entry i of the filter's table: it must be render.lut's."""
    from pages._panel import colormap_filters_js, filter_id

    script = colormap_filters_js()
    tables = json.loads(script.split("for (const [id, rgb] of Object.entries(")[1].split("))")[0])
    assert set(tables) == {filter_id(c) for c in render.COLORMAPS}
    for cmap in render.COLORMAPS:
        rgb = np.array([[float(v) for v in channel.split()] for channel in tables[filter_id(cmap)]]).T
        assert rgb.shape == (256, 3)
        np.testing.assert_array_equal(np.round(rgb * 255), render.lut(cmap))
    assert "color-interpolation-filters', 'sRGB'" in script  # no conversion to linear light first


def test_heat_layers_are_lossless_when_smooth_and_a_close_jpeg_when_speckled() -> None:
    import base64
    import io

    from PIL import Image

    from pages._panel import screen_heat_uri, screen_png_uri

    yy, xx = np.mgrid[0:768, 0:768]
    smooth = render.heat_index(np.exp(-((xx - 300.0) ** 2 + (yy - 400.0) ** 2) / 20000.0))
    rng = np.random.default_rng(3)  # a guided map's speckle: independent pixels, a smooth envelope
    speckled = render.heat_index(np.clip(rng.gamma(0.6, 0.15, (768, 768)) * (smooth / 255.0 + 0.2), 0, 1))

    def decoded(uri: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("L")).astype(int)

    smooth_uri, speckled_uri = screen_heat_uri(smooth), screen_heat_uri(speckled)
    assert smooth_uri.startswith("data:image/png;") and np.array_equal(decoded(smooth_uri), smooth)
    assert speckled_uri.startswith("data:image/jpeg;")
    assert len(speckled_uri) < 0.8 * len(screen_png_uri(speckled))  # the point of the switch: fewer bytes
    error = np.abs(decoded(speckled_uri) - speckled.astype(int))
    assert error.mean() <= 1.5 and np.percentile(error, 99) <= 6, (error.mean(), np.percentile(error, 99))


def _contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two ``#rgb`` / ``#rrggbb`` colours (written out here, independently of the page)."""
    def luminance(colour: str) -> float:
        h = colour.lstrip("#")
        h = "".join(c * 2 for c in h) if len(h) == 3 else h
        lin = [(v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4) for v in (int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_readout_bars_draw_every_region_with_its_share_and_readable_labels() -> None:
    from pages._figures import READOUT_LABEL_MIN, readout_bars_html
    from xai.anatomy import REGION_COLOURS, REGIONS

    shares = {
        "Grad-CAM": {r: 0.0 for r in REGIONS} | {"right lower zone": 0.5, "heart and mediastinum": 0.3,
                                                 "text and markers": 0.2},
        "Guided <Backprop>": {r: 1 / len(REGIONS) for r in REGIONS},
        "Flat": {r: float("nan") for r in REGIONS},
    }
    html = readout_bars_html(shares)
    rows = re.findall(r'<span class="xai-method">([^<]+)</span><span class="xai-bar">(.*?)</span></div>', html)
    assert [m for m, _ in rows] == ["Grad-CAM", "Guided &lt;Backprop&gt;", "Flat"]  # escaped, in order
    segments = [re.findall(r'data-region="([^"]+)" data-share="([\d.]+)".*?style="width:([\d.]+)%;'
                           r'background:(#[0-9a-f]{6});color:(#[0-9a-f]{3})">([^<]*)<', bar) for _, bar in rows]
    assert [s[0] for s in segments[0]] == ["right lower zone", "heart and mediastinum", "text and markers"]
    assert [float(s[2]) for s in segments[0]] == pytest.approx([50, 30, 20])
    assert [s[0] for s in segments[1]] == list(REGIONS)  # all thirteen, in REGIONS' order
    assert segments[2] == [] and "flat map" in rows[2][1]
    for region, share, _, colour, ink, label in segments[0] + segments[1]:
        assert colour == REGION_COLOURS[region]
        assert _contrast(colour, ink) >= 4.5, (region, colour, ink)  # the label reads on its segment
        assert label == (f"{float(share):.0%}" if float(share) >= READOUT_LABEL_MIN else "")
    legend = re.findall(r"</i>([^<]+)</span>", html)
    assert legend == list(REGIONS)  # every region with evidence somewhere, once
