"""xai.render: colormaps, overlays, contours, scaling and PNG encoding against hand-computed values."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from xai import render


def _png_chunk_types(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        types.append(data[pos + 4 : pos + 8].decode("ascii"))
        pos += 12 + length
    return types


def test_colormap_choices_default_and_order():
    assert render.COLORMAPS[0] == render.DEFAULT_CMAP == "inferno"
    assert set(render.COLORMAPS) == {"inferno", "viridis", "magma", "cividis", "jet"}
    assert "jet" not in render.PERCEPTUALLY_UNIFORM


@pytest.mark.parametrize("cmap", ["inferno", "viridis", "magma", "cividis", "jet"])
def test_colorize_matches_matplotlib_at_table_points(cmap):
    heat = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 2.0]], dtype=np.float32)  # 2.0 clipped to 1
    rgb = render.colorize(heat, cmap)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    # Same 256-level quantisation as the colormap: index round(255 * v).
    ref = colormaps[cmap](np.array([0, 64, 128, 191, 255, 255]) / 255.0)[:, :3]
    np.testing.assert_allclose(rgb.reshape(-1, 3), np.round(ref * 255), atol=0)


def test_shipped_colour_tables_are_matplotlibs_own_and_drawing_needs_no_matplotlib():
    """xai.colormap_tables ships every offered colormap's 256 entries (so the app never imports matplotlib to
    draw): each must equal matplotlib's table, and the file must be what its generator writes."""
    import subprocess
    import sys

    from xai import colormap_tables

    assert set(colormap_tables.TABLES) == set(render.COLORMAPS)
    for cmap in render.COLORMAPS:
        expected = np.round(colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.uint8)
        np.testing.assert_array_equal(render.lut(cmap), expected)
    source = Path(colormap_tables.__file__).read_text(encoding="utf-8")
    assert colormap_tables._generate(render.COLORMAPS) in source
    drawn = subprocess.run(
        [sys.executable, "-c", "import sys, numpy as np; from xai import render; "
         "render.overlay(np.zeros((8, 8)), np.ones((8, 8)), cmap='jet'); print('matplotlib' in sys.modules)"],
        capture_output=True, text=True, check=True, cwd=Path(render.__file__).resolve().parents[1])
    assert drawn.stdout.strip() == "False"


def test_colorize_nan_counts_as_zero_and_bad_cmap_rejected():
    rgb = render.colorize(np.array([[np.nan, 0.0]]))
    assert (rgb[0, 0] == rgb[0, 1]).all()
    with pytest.raises(ValueError, match="unknown colormap"):
        render.colorize(np.zeros((2, 2)), "rainbow")
    with pytest.raises(ValueError, match="2-D"):
        render.colorize(np.zeros((2, 2, 3)))


def _lightness(rgb: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb.reshape(1, -1, 3).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    return lab[0, :, 0]


@pytest.mark.parametrize("cmap", sorted(render.PERCEPTUALLY_UNIFORM))
def test_offered_uniform_maps_have_monotonic_lightness(cmap):
    _, rgb = render.colorbar_values(cmap, 64)
    assert (np.diff(_lightness(rgb)) > -0.5).all()


def test_jet_lightness_is_not_monotonic():
    # The reason jet is only an option: lightness goes up and down again.
    _, rgb = render.colorbar_values("jet", 64)
    light = _lightness(rgb)
    assert light.argmax() not in (0, len(light) - 1)


def test_overlay_blend_hand_computed():
    gray = np.array([[0.0, 1.0], [0.5, 0.2]], dtype=np.float32)
    heat = np.array([[1.0, 0.0], [0.5, 1.0]], dtype=np.float32)
    color = render.colorize(heat, "viridis").astype(np.float64)
    out = render.overlay(gray, heat, cmap="viridis", alpha=0.4)
    expected = np.round(0.6 * (gray[:, :, None] * 255.0) + 0.4 * color)
    np.testing.assert_allclose(out, expected, atol=1)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)


def test_overlay_alpha_extremes_and_heat_off():
    rng = np.random.default_rng(0)
    gray, heat = rng.random((8, 9)), rng.random((8, 9))
    gray_rgb = render.gray_to_rgb(gray)
    np.testing.assert_array_equal(render.overlay(gray, heat, alpha=0.0), gray_rgb)
    np.testing.assert_array_equal(render.overlay(gray, heat, show_heat=False), gray_rgb)
    np.testing.assert_array_equal(render.overlay(gray, heat, alpha=1.0), render.colorize(heat))


def test_overlay_contour_outlines_the_region_at_the_level():
    size = 101
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - 50, xx - 50)
    heat = np.clip(1.0 - radius / 50.0, 0, 1).astype(np.float32)  # cone: heat >= 0.5 inside r <= 25
    gray = np.full((size, size), 0.5, np.float32)
    out = render.overlay(gray, heat, contour_level=0.5, show_heat=False, contour_thickness=1)
    changed = (out != render.gray_to_rgb(gray)).any(axis=2)
    ring_r = radius[changed]
    assert changed.sum() > 100  # a ring of about 2*pi*25 pixels
    assert ring_r.min() > 22 and ring_r.max() < 28
    # The contour is cyan (anti-aliased): green and blue raised above gray, red lowered, on every ring pixel.
    ring = out[changed].astype(int)
    assert (ring[:, 1] > 128).all() and (ring[:, 2] > 128).all() and (ring[:, 0] < 128).all()
    assert ring[:, 1].max() >= 240
    # A level above every value draws nothing.
    np.testing.assert_array_equal(
        render.overlay(gray, heat * 0.4, contour_level=0.5, show_heat=False), render.gray_to_rgb(gray)
    )


def test_contours_skip_speckle_but_outline_regions():
    heat = np.zeros((512, 512), np.float32)
    heat[100:160, 100:160] = 1.0  # a 60 px square: outlined
    rng = np.random.default_rng(3)
    speckle = rng.integers(300, 500, size=(200, 2))
    heat[speckle[:, 0], speckle[:, 1]] = 1.0  # single hot pixels: not outlined (min area (512/256)^2 = 4)
    gray = np.zeros_like(heat)
    out = render.overlay(gray, heat, contour_level=0.5, show_heat=False, contour_thickness=1)
    drawn = out.any(axis=2)
    assert drawn[95:165, 95:165].sum() > 200
    assert not drawn[290:510, 290:510].any()


def test_overlay_rejects_mismatched_shapes_and_bad_arguments():
    with pytest.raises(ValueError, match="same"):
        render.overlay(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="alpha"):
        render.overlay(np.zeros((4, 4)), np.zeros((4, 4)), alpha=1.5)
    with pytest.raises(ValueError, match="contour_level"):
        render.overlay(np.zeros((4, 4)), np.zeros((4, 4)), contour_level=0.0)


def test_scale_map_per_image_fixed_and_flat():
    m = np.array([[1.0, 3.0], [5.0, 5.0]])
    np.testing.assert_allclose(render.scale_map(m), [[0.0, 0.5], [1.0, 1.0]])
    np.testing.assert_allclose(render.scale_map(m, "fixed", vmax=10.0), [[0.1, 0.3], [0.5, 0.5]])
    np.testing.assert_allclose(render.scale_map(m, "fixed", vmax=4.0), [[0.25, 0.75], [1.0, 1.0]])
    flat = render.scale_map(np.full((3, 3), 7.0))
    assert flat.dtype == np.float32 and not flat.any()
    np.testing.assert_allclose(render.scale_map(np.array([[np.nan, 2.0], [0.0, 1.0]])), [[0, 1], [0, 0.5]])
    with pytest.raises(ValueError, match="vmax"):
        render.scale_map(m, "fixed", vmax=0.0)
    with pytest.raises(ValueError, match="mode"):
        render.scale_map(m, "global")  # type: ignore[arg-type]


def test_fixed_scale_keeps_colours_comparable_across_images():
    weak, strong = np.full((2, 2), 0.2), np.full((2, 2), 0.8)
    vmax = render.robust_max([weak, strong], percentile=100)
    assert vmax == pytest.approx(0.8)
    assert render.scale_map(weak, "fixed", vmax)[0, 0] == pytest.approx(0.25)
    assert render.robust_max(np.zeros((3, 3))) == 1.0


def test_colorbar_image_high_values_on_top():
    bar = render.colorbar("inferno", height=50, width=7)
    assert bar.shape == (50, 7, 3) and bar.dtype == np.uint8
    np.testing.assert_array_equal(bar[0, 0], render.colorize(np.ones((1, 1)))[0, 0])
    np.testing.assert_array_equal(bar[-1, 3], render.colorize(np.zeros((1, 1)))[0, 0])
    scale = render.plotly_colorscale("viridis", 3)
    assert scale[0][0] == 0.0 and scale[-1][0] == 1.0 and scale[1][1].startswith("rgb(")


def test_downsample_for_display():
    big = np.zeros((2048, 1000, 3), np.uint8)
    small = render.downsample_for_display(big, max_side=1024)
    assert small.shape == (1024, 500, 3) and small.dtype == np.uint8
    heat = np.ones((3000, 1500), np.float32)
    out = render.downsample_for_display(heat, 1000)
    assert out.shape == (1000, 500) and out.dtype == np.float32 and np.allclose(out, 1.0)
    tiny = np.zeros((10, 10), np.float32)
    assert render.downsample_for_display(tiny) is tiny
    one = render.downsample_for_display(np.zeros((3000, 20, 1), np.uint8), 300)
    assert one.shape == (300, 2, 1)


def test_to_png_bytes_roundtrip_without_metadata():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    data = render.to_png_bytes(rgb)
    assert _png_chunk_types(data) == ["IHDR", "IDAT", "IEND"]
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(back, rgb)
    gray = render.to_png_bytes(np.array([[0.0, 1.0]]))
    assert np.asarray(Image.open(io.BytesIO(gray))).tolist() == [[0, 255]]
    with pytest.raises(ValueError):
        render.to_png_bytes(np.zeros((2, 2), np.int64))


def test_blend_of_prepared_pixels_hand_computed():
    rng = np.random.default_rng(5)
    gray, heat = rng.random((33, 47)), rng.random((33, 47))
    gray_rgb, index = render.gray_to_rgb(gray), render.heat_index(heat)
    np.testing.assert_array_equal(index, np.round(heat * 255).astype(np.uint8))
    np.testing.assert_array_equal(gray_rgb, np.repeat(np.round(gray * 255)[:, :, None], 3, axis=2))
    for cmap, alpha in (("inferno", 0.4), ("jet", 1.0), ("viridis", 0.0), ("magma", 0.7)):
        table = np.round(colormaps[cmap](np.arange(256) / 255.0)[:, :3] * 255)
        expected = np.round((1 - alpha) * gray_rgb + alpha * table[index])
        np.testing.assert_allclose(render.blend(gray_rgb, index, cmap=cmap, alpha=alpha), expected, atol=1)
    np.testing.assert_array_equal(render.blend(gray_rgb, index, show_heat=False), gray_rgb)
    before = gray_rgb.copy()
    render.blend(gray_rgb, index, contour_level=0.5)
    np.testing.assert_array_equal(gray_rgb, before)  # inputs are never drawn on


def test_blend_contour_at_the_quantised_level():
    yy, xx = np.mgrid[:101, :101]
    radius = np.hypot(yy - 50, xx - 50)
    index = np.round(np.clip(1.0 - radius / 50.0, 0, 1) * 255).astype(np.uint8)  # >= 128 inside r <= ~24.9
    gray_rgb = np.full((101, 101, 3), 77, np.uint8)
    out = render.blend(gray_rgb, index, contour_level=0.5, show_heat=False, contour_thickness=1)
    ring = radius[(out != gray_rgb).any(axis=2)]
    assert ring.size > 100 and ring.min() > 22 and ring.max() < 28
    np.testing.assert_array_equal(render.blend(gray_rgb, index // 3, contour_level=0.5, show_heat=False), gray_rgb)


def test_heat_index_repairs_non_finite_values_and_blend_checks_its_inputs():
    heat = np.array([[np.nan, np.inf], [-np.inf, 0.5]])
    np.testing.assert_array_equal(render.heat_index(heat), [[0, 0], [0, 128]])
    rgb, index = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="gray_rgb"):
        render.blend(rgb[:, :, 0], index)
    with pytest.raises(ValueError, match="index"):
        render.blend(rgb, index.astype(np.float32))
    with pytest.raises(ValueError, match="index"):
        render.blend(rgb, index[:3])
    with pytest.raises(ValueError, match="alpha"):
        render.blend(rgb, index, alpha=-0.1)
    with pytest.raises(ValueError, match="contour_level"):
        render.blend(rgb, index, contour_level=1.5)


# ------------------------------------------------------------------------------------------- the view
def _toy_view_inputs(h: int = 60, w: int = 90):
    """A radiograph-like object, and a result whose maps are known, on a (h, w) film."""
    from types import SimpleNamespace

    rng = np.random.default_rng(11)
    pixels = rng.random((h, w)).astype(np.float32)
    radiograph = SimpleNamespace(pixels=pixels, modality_values=pixels * 1000.0, inverted=False,
                                 voi_function="LINEAR")
    cam = rng.random((1, 4, 6)).astype(np.float32) * 3.0  # raw CAM at feature resolution, units of 3
    guided = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)  # signed guided gradient, 3 channels

    def to_original(m):  # the mapping back: a plain resize stands in for the film's geometry
        return cv2.resize(np.asarray(m, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)

    maps = {"gradcam": rng.random((h, w)).astype(np.float32), "guided_backprop": rng.random((h, w)).astype(np.float32)}
    result = SimpleNamespace(maps=maps, explanation=SimpleNamespace(raw={"gradcam": cam, "guided_backprop": guided}),
                             geometry=SimpleNamespace(to_original=to_original))
    return radiograph, result, to_original


def test_display_settings_are_frozen_hashable_and_keyed_by_stage():
    import dataclasses

    s = render.DisplaySettings(alpha=0.3, cmap="viridis", side=512, per_row=2, zoom=(2.0, 0.25, 0.5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.alpha = 0.5  # type: ignore[misc]
    assert hash(s) == hash(render.DisplaySettings(alpha=0.3, cmap="viridis", side=512, per_row=2,
                                                  zoom=(2.0, 0.25, 0.5)))
    layers_key = s.only("layers")
    assert layers_key == render.DisplaySettings(side=512)  # colour and layout changes share the layers
    assert s.only("layers", "blend") == render.DisplaySettings(side=512, alpha=0.3, cmap="viridis")
    assert {s, render.DisplaySettings(alpha=0.3, cmap="viridis", side=512)} != {s}
    for bad in ({"cmap": "rainbow"}, {"alpha": 1.5}, {"contour_level": 0.0}, {"scale": "log"}, {"side": 0}):
        with pytest.raises(ValueError):
            render.DisplaySettings(**bad)


def test_view_at_film_resolution_is_the_overlay_of_each_scaled_map():
    radiograph, result, to_original = _toy_view_inputs()
    s = render.DisplaySettings(side=None, alpha=0.6, cmap="magma", contour_level=0.5)
    shown = render.view(radiograph, result, s)
    np.testing.assert_array_equal(shown.original, render.gray_to_rgb(radiograph.pixels))
    for m, heat in result.maps.items():
        expected = render.overlay(radiograph.pixels, render.scale_map(heat), cmap="magma", alpha=0.6,
                                  contour_level=0.5)
        np.testing.assert_array_equal(shown.overlays[m], expected)
        assert not shown.overlays[m].flags.writeable
    # The fixed scale: each method's raw magnitude (|guided| maxed over channels) over its own maximum.
    fixed = render.view(radiograph, result, render.DisplaySettings(side=None, scale="fixed", alpha=1.0,
                                                                    vmax=(("gradcam", 2.0), ("guided_backprop", 1.5))))
    cam = np.clip(to_original(result.explanation.raw["gradcam"][0]) / 2.0, 0, 1)
    guided = np.clip(to_original(np.abs(result.explanation.raw["guided_backprop"][0]).max(axis=0)) / 1.5, 0, 1)
    np.testing.assert_array_equal(fixed.overlays["gradcam"], render.colorize(cam, "inferno"))
    np.testing.assert_array_equal(fixed.overlays["guided_backprop"], render.colorize(guided, "inferno"))
    with pytest.raises(ValueError, match="no maximum"):
        render.view(radiograph, result, render.DisplaySettings(scale="fixed", vmax=(("gradcam", 1.0),)))


def test_view_on_screen_shrinks_then_scales_and_windows_the_modality_values():
    from xai.radiograph import apply_window

    radiograph, result, _ = _toy_view_inputs(120, 180)
    s = render.DisplaySettings(side=45, window=(400.0, 300.0))
    shown = render.view(radiograph, result, s)
    small = render.downsample_for_display(radiograph.modality_values, 45)
    assert shown.original.shape == (30, 45, 3)
    np.testing.assert_array_equal(shown.original, render.gray_to_rgb(apply_window(small, 400.0, 300.0)))
    heat = render.scale_map(render.downsample_for_display(result.maps["gradcam"], 45))
    np.testing.assert_array_equal(shown.overlays["gradcam"], render.blend(shown.original, render.heat_index(heat)))
    # Composing prepared layers again gives the same pixels as a fresh view (the app caches the layers).
    prepared = render.layers(radiograph, result, s.only("layers"))
    again = render.compose(prepared, s)
    for m in result.maps:
        np.testing.assert_array_equal(again.overlays[m], shown.overlays[m])


@pytest.mark.parametrize("side", [45, None])
@pytest.mark.parametrize("scale", ["per_image", "fixed"])
def test_layers_cached_apart_give_the_views_pixels(side, scale):
    """The app caches the radiograph (side, window), the maps before scaling (side, scale mode), their heat
    indices (+ vmax), the lungs and the zones apart, from a film shrunk once: composed, that must be view()."""
    from dataclasses import replace

    radiograph, result, _ = _toy_view_inputs(120, 180)
    yy, xx = np.mgrid[:120, :180]
    lungs = ((yy - 60) ** 2 / 40**2 + (xx - 55) ** 2 / 30**2) < 1  # one elliptic "lung"
    zones = np.zeros((120, 180), bool)
    zones[40, 20:90] = zones[80, 20:90] = True
    s = render.DisplaySettings(side=side, window=(450.0, 500.0), scale=scale,
                               vmax=(("gradcam", 2.0), ("guided_backprop", 1.5)), lungs=True, zones=True,
                               alpha=0.7, cmap="viridis", contour_level=0.4)
    film = render.screen_film(radiograph, s.side)  # shrunk once; a window change reuses it
    gray = render.gray_layer(film, s.layer_key("gray"))
    maps = render.display_maps(result, render.DisplaySettings(side=s.side, scale=s.scale))  # vmax not needed
    heat = render.heat_layers(maps, s.layer_key("heat"))
    prepared = render.Layers(gray, heat, render.lung_layer(lungs, s.side), render.zone_layer(zones, gray.shape))
    reference = render.view(radiograph, result, s, lungs, zones)
    composed = render.compose(prepared, s)
    np.testing.assert_array_equal(composed.original, reference.original)
    for m in result.maps:
        np.testing.assert_array_equal(composed.overlays[m], reference.overlays[m])
    whole = render.layers(radiograph, result, s, lungs, zones)
    for panel, rgba in render.outlines(prepared, s).items():
        np.testing.assert_array_equal(rgba, render.outlines(whole, s)[panel])
    # Each key holds only what changes its layer: a window move keeps the maps, an outline toggle the rest.
    moved = replace(s, window=(300.0, 200.0), lungs=False, contour_level=None, alpha=0.2)
    assert moved.layer_key("heat") == s.layer_key("heat") and moved.layer_key("gray") != s.layer_key("gray")
    assert moved.layer_key("outlines") != s.layer_key("outlines")
    rescaled = replace(s, vmax=(("gradcam", 1.0), ("guided_backprop", 1.0)))
    assert rescaled.layer_key("gray") == s.layer_key("gray") and rescaled.layer_key("heat") != s.layer_key("heat")
    again = render.heat_layers(maps, rescaled)  # the same unscaled maps serve a new vmax
    direct = render.layers(radiograph, result, rescaled).heat
    assert set(again) == set(direct)
    for m in direct:
        np.testing.assert_array_equal(again[m], direct[m])


def test_window_presets_span_the_films_own_brightness_percentiles():
    from types import SimpleNamespace

    values = np.arange(10_000, dtype=np.float32).reshape(100, 100)  # uniform 0..9999
    plain = SimpleNamespace(modality_values=values, inverted=False)
    inverted = SimpleNamespace(modality_values=values, inverted=True)
    for name, (lo_p, hi_p) in render.WINDOW_PRESETS.items():
        centre, width = render.window_preset(plain, name)
        lo, hi = np.percentile(values, [lo_p, hi_p])
        assert centre == pytest.approx((lo + hi) / 2) and width == pytest.approx(hi - lo)
        # MONOCHROME1: low values are bright, so the same brightness range sits at the mirrored values.
        centre_i, width_i = render.window_preset(inverted, name)
        assert centre_i == pytest.approx(9999 - centre, abs=1) and width_i == pytest.approx(width, abs=1)
    lung, bone = render.window_preset(plain, "lung"), render.window_preset(plain, "bone")
    assert lung[0] < render.window_preset(plain, "mediastinum")[0] < bone[0]
    with pytest.raises(ValueError, match="unknown window preset"):
        render.window_preset(plain, "brain")


@pytest.mark.parametrize(("span", "step"), [(4095, 20.0), (255, 1.0), (1.0, 0.005), (65535, 500.0), (0, 1.0)])
def test_slider_steps_are_round_and_about_a_200th_of_the_range(span, step):
    assert render.nice_step(span) == pytest.approx(step)


@pytest.mark.parametrize("contour_level", [None, 0.5])
@pytest.mark.parametrize(("alpha", "cmap", "show_heat"), [(0.45, "inferno", True), (1.0, "jet", True),
                                                          (0.0, "viridis", True), (0.6, "magma", False)])
def test_blending_in_the_viewer_from_outlines_gives_composes_pixels(contour_level, alpha, cmap, show_heat):
    """The app's panels blend in the browser: radiograph, then lut(cmap)[index] at opacity alpha, then the
    outlines layer (straight alpha) on top. That must be compose()'s picture within rounding, anti-aliased
    outline edges included (where compose rounds to 8 bits between the two outlines)."""
    from types import MappingProxyType

    yy, xx = np.mgrid[0:300, 0:400]
    gray = render.gray_to_rgb(((xx + yy) / 700.0).astype(np.float32))
    rng = np.random.default_rng(0)
    heat = {"smooth": render.heat_index(np.exp(-((xx - 200.0) ** 2 + (yy - 150.0) ** 2) / 5000.0)),
            "speckled": render.heat_index(rng.random((300, 400)))}
    lungs = np.zeros((300, 400), np.uint8)
    lungs[50:250, 60:180] = lungs[50:250, 220:340] = 255
    prepared = render.Layers(gray, MappingProxyType(heat), lungs)
    settings = render.DisplaySettings(alpha=alpha, cmap=cmap, contour_level=contour_level, show_heat=show_heat)
    reference, outlines = render.compose(prepared, settings), render.outlines(prepared, settings)

    def in_viewer(index, layer):
        out = gray.astype(np.float64)
        if index is not None and show_heat:
            out = (1 - alpha) * out + alpha * render.lut(cmap)[index]
        a = layer[..., 3:] / 255.0
        return (1 - a) * out + a * layer[..., :3]

    assert set(outlines) == {"", "smooth", "speckled"}
    for panel, index, expected in [("", None, reference.original),
                                   *((m, heat[m], reference.overlays[m]) for m in heat)]:
        layer = outlines[panel]
        assert layer is not None and layer.shape == (300, 400, 4) and not layer.flags.writeable
        error = np.abs(in_viewer(index, layer) - expected)
        assert error.max() <= 6 and error.mean() <= 0.6, (panel, error.max(), error.mean())
        assert (layer[..., 3] > 0).sum() > 500  # the lung outline (and contours) are really there
    plain = render.outlines(render.Layers(gray, MappingProxyType(heat)), render.DisplaySettings())
    assert dict(plain) == {"": None, "smooth": None, "speckled": None}  # nothing to outline: no layer
