"""xai.preprocessing: the spec, prepare(), and the exact way back to the original pixel grid."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from xai.anatomy import LUNG_CROP_MARGIN, lung_crop_box
from xai.preprocessing import (
    Geometry,
    Preprocessing,
    body_crop_box,
    crop_box,
    prepare,
    prepare_array,
)
from xai.radiograph import load_radiograph


def _noise_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 0.4, size=(h, w)).astype(np.float32)


# ------------------------------------------------------------------------------------------- the spec
def test_spec_json_round_trip():
    spec = Preprocessing(input_size=320, channels=1, mean=(0.5,), std=(0.25,), resize="stretch",
                         equalize="clahe", crop="body")
    text = json.dumps(spec.to_dict())
    again = Preprocessing.from_dict(json.loads(text))
    assert again == spec
    assert json.loads(text)["mean"] == [0.5]
    assert Preprocessing.from_dict(Preprocessing().to_dict()) == Preprocessing()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input_size": 0}, "input_size"),
        ({"input_size": True}, "input_size"),
        ({"input_size": "224"}, "input_size"),
        ({"channels": 2}, "channels"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": [0.2, 0.0, 0.2]}, "std"),
        ({"std": ["a", "b", "c"]}, "std"),
        ({"mean": [float("nan")] * 3}, "finite"),
        ({"resize": "crop"}, "resize"),
        ({"equalize": "yes"}, "equalize"),
        ({"crop": "chest"}, "crop"),
        ({"colour": "gray"}, "unknown preprocessing field"),
    ],
)
def test_spec_rejects_bad_fields(fields, message):
    d = Preprocessing().to_dict() | fields
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_dict(d)


def test_from_dict_rejects_non_dict():
    with pytest.raises(ValueError, match="JSON object"):
        Preprocessing.from_dict([224])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- prepare
def test_prepare_shapes_padding_and_normalisation():
    img = _noise_image(100, 50)
    spec = Preprocessing(input_size=64)
    x, geo = prepare(img, spec)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape) == (1, 3, 64, 64)
    # tall image letterboxed: 100 -> 64 rows, 50 -> 32 columns, centred
    assert geo.content_box == (16, 0, 48, 64)
    assert geo.padding == (16, 0, 16, 0)
    for c in range(3):
        pad_value = (0.0 - spec.mean[c]) / spec.std[c]  # the pad is black (0) in pixel space
        np.testing.assert_allclose(x[0, c, :, :16].numpy(), pad_value, rtol=1e-6)
        np.testing.assert_allclose(x[0, c, :, 48:].numpy(), pad_value, rtol=1e-6)
    # content = INTER_AREA resize of the original, then (v - mean) / std
    expected = cv2.resize(img, (32, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(x[0, 1, :, 16:48].numpy(), (expected - spec.mean[1]) / spec.std[1], atol=1e-5)


def test_prepare_one_channel_and_stretch():
    img = _noise_image(40, 90)
    x, geo = prepare_array(img, Preprocessing(input_size=32, channels=1, mean=(0.0,), std=(1.0,), resize="stretch"))
    assert x.shape == (1, 32, 32)
    assert geo.content_box == (0, 0, 32, 32)
    np.testing.assert_allclose(x[0], cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA), atol=1e-6)


def test_prepare_accepts_radiograph_uint8_and_refuses_bad_arrays(tmp_path):
    img8 = (np.linspace(0, 255, 64 * 48).reshape(64, 48)).astype(np.uint8)
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), img8)
    radiograph = load_radiograph(path)
    spec = Preprocessing(input_size=32)
    a, _ = prepare_array(radiograph, spec)
    b, _ = prepare_array(img8, spec)
    c, _ = prepare_array(img8.astype(np.float32) / 255, spec)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        prepare_array(np.zeros((8, 8, 3), np.float32), spec)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare_array(np.full((8, 8), 2.0, np.float32), spec)
    with pytest.raises(ValueError, match="dtype"):
        prepare_array(np.zeros((8, 8), np.int64), spec)
    with pytest.raises(ValueError, match="Preprocessing"):
        prepare_array(img8, {"input_size": 32})  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["hist", "clahe"])
def test_equalize_is_deterministic_and_leaves_padding_black(mode):
    img = _noise_image(120, 60) * 0.5  # low contrast
    spec = Preprocessing(input_size=64, channels=1, mean=(0.0,), std=(1.0,), equalize=mode)
    a, geo = prepare_array(img, spec)
    b, _ = prepare_array(img, spec)
    np.testing.assert_array_equal(a, b)
    x0, y0, x1, y1 = geo.content_box
    content = a[0, y0:y1, x0:x1]
    assert np.all(a[0, :, :x0] == 0) and np.all(a[0, :, x1:] == 0)
    plain, _ = prepare_array(img, Preprocessing(input_size=64, channels=1, mean=(0.0,), std=(1.0,)))
    plain_content = plain[0, y0:y1, x0:x1]
    assert np.ptp(content) > 3 * np.ptp(plain_content)  # equalisation spread the narrow range
    # reference: OpenCV's equaliser on the same 8-bit content (padding excluded)
    u8 = np.clip(plain_content * 255 + 0.5, 0, 255).astype(np.uint8)
    ref = cv2.equalizeHist(u8) if mode == "hist" else cv2.createCLAHE(2.0, (8, 8)).apply(u8)
    np.testing.assert_allclose(content, ref / 255.0, atol=1e-6)


# ------------------------------------------------------------------------------------------ to_original
@pytest.mark.parametrize("map_size", [(7, 7), (28, 28), (224, 224), (5, 9)])
def test_to_original_matches_cv2_resize_for_stretch(map_size):
    img = _noise_image(300, 180)
    _, geo = prepare_array(img, Preprocessing(resize="stretch"))
    m = np.random.default_rng(1).random(map_size).astype(np.float32)
    out = geo.to_original(m)
    assert out.shape == (300, 180) and out.dtype == np.float32
    np.testing.assert_allclose(out, cv2.resize(m, (180, 300), interpolation=cv2.INTER_LINEAR), atol=2e-6)


def _coordinate_maps(h: int, w: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps whose value is the model-grid coordinate (u, v) of each map pixel's centre."""
    u = (np.arange(w) + 0.5) * size / w
    v = (np.arange(h) + 0.5) * size / h
    return (np.tile(u, (h, 1)).astype(np.float32), np.tile(v[:, None], (1, w)).astype(np.float32))


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (200, 200)])
@pytest.mark.parametrize("map_hw", [(7, 7), (224, 224)])
def test_to_original_is_exact_on_linear_maps(resize, shape, map_hw):
    """Bilinear interpolation reproduces a linear function exactly: compare with Geometry.to_model."""
    img = _noise_image(*shape)
    _, geo = prepare_array(img, Preprocessing(resize=resize))
    mu, mv = _coordinate_maps(*map_hw, geo.input_size)
    ou, ov = geo.to_original(mu), geo.to_original(mv)
    H, W = shape
    ys, xs = np.mgrid[0:H, 0:W]
    expected = geo.to_model(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1))
    eu, ev = expected[:, 0].reshape(H, W), expected[:, 1].reshape(H, W)
    # away from the clamped outer half map-pixel, the values are exact
    h, w = map_hw
    half_u, half_v = 0.5 * geo.input_size / w, 0.5 * geo.input_size / h
    inside = (eu >= half_u) & (eu <= geo.input_size - half_u) & (ev >= half_v) & (ev <= geo.input_size - half_v)
    assert inside.mean() > 0.7
    np.testing.assert_allclose(ou[inside], eu[inside], atol=1e-3)
    np.testing.assert_allclose(ov[inside], ev[inside], atol=1e-3)


def test_to_original_zero_outside_crop_and_points_round_trip():
    geo = Geometry(original_size=(100, 80), crop_box=(10, 20, 70, 90), input_size=32, content_box=(4, 0, 28, 32))
    out = geo.to_original(np.ones((4, 4), np.float32))
    assert out.shape == (100, 80)
    assert np.all(out[20:90, 10:70] == 1.0)
    assert out.sum() == 60 * 70
    pts = np.array([[10.0, 20.0], [70.0, 90.0], [33.3, 47.1]])
    np.testing.assert_allclose(geo.points_to_original(geo.to_model(pts)), pts, atol=1e-9)
    assert geo.box_to_model((10, 20, 70, 90)) == pytest.approx((4.0, 0.0, 28.0, 32.0))
    assert Geometry.from_dict(json.loads(json.dumps(geo.to_dict()))) == geo
    with pytest.raises(ValueError, match="2-D"):
        geo.to_original(np.ones((1, 4, 4)))


@pytest.mark.parametrize(("geo", "size"), [
    (Geometry(original_size=(1000, 800), crop_box=(100, 200, 700, 900), input_size=224,
              content_box=(16, 0, 208, 224)), (384, 307)),  # cropped and letterboxed, non-integer shrink
    (Geometry(original_size=(1000, 800), crop_box=(0, 0, 800, 1000), input_size=224,
              content_box=(22, 0, 202, 224)), (250, 200)),  # whole film, 4x shrink (OpenCV's block-mean path)
    (Geometry(original_size=(333, 517), crop_box=(0, 0, 517, 333), input_size=64,
              content_box=(0, 11, 64, 52)), (331, 514)),  # a shrink by a few pixels only
])
@pytest.mark.parametrize("map_hw", [(7, 7), (224, 224)])  # a CAM's feature grid, a gradient at input size
def test_to_display_is_to_original_then_area_shrink(geo, size, map_hw):
    """The screen's map without the film-sized one: the same pixels as OpenCV's area shrink of to_original."""
    m = np.random.default_rng(3).random(map_hw).astype(np.float32) * 5.0
    expected = cv2.resize(geo.to_original(m), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    got = geo.to_display(m, size)
    assert got.shape == size and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * 5.0)  # float rounding only
    with pytest.raises(ValueError, match="at most the film"):
        geo.to_display(m, (geo.original_size[0] + 1, 10))


# ------------------------------------------------------------------------------------------- crop rule
def _body_phantom(h: int, w: int) -> np.ndarray:
    """Black background, a bright torso with two dark lungs, a bright text blob in a corner."""
    img = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    torso = ((yy - h * 0.55) / (h * 0.35)) ** 2 + ((xx - w * 0.5) / (w * 0.3)) ** 2 <= 1
    img[torso] = 0.75
    for cx in (0.38, 0.62):
        lung = ((yy - h * 0.5) / (h * 0.2)) ** 2 + ((xx - w * cx) / (w * 0.08)) ** 2 <= 1
        img[lung] = 0.25
    img[int(h * 0.05):int(h * 0.08), int(w * 0.85):int(w * 0.95)] = 1.0  # burned-in text
    return img


def test_body_crop_box_finds_the_torso_and_ignores_text():
    img = _body_phantom(400, 300)
    x0, y0, x1, y1 = body_crop_box(img)
    # torso spans x 60..240, y 80..360; margin 5% of the box
    assert 40 <= x0 <= 62 and 238 <= x1 <= 262
    assert 60 <= y0 <= 82 and 358 <= y1 <= 385
    assert y0 > int(400 * 0.08)  # the text blob at the top is outside the box


def test_body_crop_falls_back_to_full_image():
    tiny_spot = np.zeros((200, 160), np.float32)
    tiny_spot[90:100, 70:80] = 1.0  # a bright spot is not a body: implausibly small box
    assert body_crop_box(tiny_spot) == (0, 0, 160, 200)
    assert body_crop_box(np.zeros((200, 160), np.float32)) == (0, 0, 160, 200)


def test_prepare_with_body_crop_records_the_box():
    img = _body_phantom(400, 300)
    _, geo = prepare_array(img, Preprocessing(crop="body"))
    assert geo.crop_box == body_crop_box(img)
    out = geo.to_original(np.ones((7, 7), np.float32))
    x0, y0, x1, y1 = geo.crop_box
    assert out[:y0].sum() == 0 and out[y1:].sum() == 0 and np.all(out[y0:y1, x0:x1] == 1)


def _manual_lung_films(shared_data, n_per_source: int = 2):
    """(pixels, manual lung mask on the film's grid) for NLM films (Montgomery, Shenzhen) with a manual mask."""
    from models.data import read_lung_masks, read_manifest

    masks = read_lung_masks(shared_data / "lungs")
    out, taken = [], {}
    for r in read_manifest(shared_data / "chestcovnet"):
        if r.file in masks and r.file.startswith("nlm_") and taken.get(r.source, 0) < n_per_source:
            taken[r.source] = taken.get(r.source, 0) + 1
            pixels = load_radiograph(shared_data / "chestcovnet" / "images" / r.file).pixels
            mask = cv2.imread(str(masks[r.file]), cv2.IMREAD_GRAYSCALE)
            mask = cv2.resize(mask, pixels.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            out.append((pixels, mask))
    assert len(taken) == 2 and len(out) == 2 * n_per_source
    return out


def test_lung_crop_keeps_the_manual_lungs_and_drops_the_rest(shared_data):
    # Reference: the radiologists' manual lung masks (never seen by this rule). The crop must keep every lung
    # pixel, hug the lungs (the manual box plus little more) and leave out much of the film.
    pre = Preprocessing(input_size=96, channels=1, mean=(0.0,), std=(1.0,), resize="stretch", crop="lungs")
    for pixels, mask in _manual_lung_films(shared_data):
        out, geo = prepare_array(pixels, pre)
        x0, y0, x1, y1 = geo.crop_box
        assert geo.crop_box == lung_crop_box(pixels) == crop_box(pixels, "lungs")
        assert mask[y0:y1, x0:x1].sum() >= 0.99 * mask.sum()
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        mx0, my0, mx1, my1 = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
        grow = 2 * LUNG_CROP_MARGIN + 0.10  # the margin on both sides, plus 10 % for the U-Net vs the manual mask
        assert (x1 - x0) <= (1 + grow) * (mx1 - mx0) and (y1 - y0) <= (1 + grow) * (my1 - my0)
        assert (x1 - x0) * (y1 - y0) <= 0.75 * pixels.size
        # the model input is exactly the crop stretched to the grid (INTER_AREA when shrinking)
        expected = cv2.resize(np.ascontiguousarray(pixels[y0:y1, x0:x1]), (96, 96), interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(out[0], expected, atol=1e-6)
        # and a map on the grid goes back inside the box only
        back = geo.to_original(np.ones((7, 7), np.float32))
        assert back[y0:y1, x0:x1].min() == 1.0 and back.sum() == (x1 - x0) * (y1 - y0)


def test_lung_crop_falls_back_to_the_body_box_without_a_lung_field():
    from xai.anatomy import find_lungs

    noise = _noise_image(300, 240, seed=7)
    assert not find_lungs(noise).found  # the premise: no lung field on noise
    assert lung_crop_box(noise) == body_crop_box(noise)
    _, geo = prepare_array(noise, Preprocessing(crop="lungs"))
    assert geo.crop_box == body_crop_box(noise)


def test_crop_box_modes_and_an_unknown_mode():
    img = _body_phantom(400, 300)
    assert crop_box(img, "none") == (0, 0, 300, 400)
    assert crop_box(img, "body") == body_crop_box(img)
    with pytest.raises(ValueError, match="crop must be one of none, body, lungs"):
        crop_box(img, "chest")


# -------------------------------------------------------------- the bright-square test (issue 3)
class SquareNet(nn.Module):
    """Score = mean of ReLU(channel 0 - 1.5) pooled over 8x8 cells: only bright pixels count."""

    def __init__(self) -> None:
        super().__init__()
        self.detect = nn.Conv2d(3, 1, kernel_size=1)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(8)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.detect.weight.zero_()
            self.detect.weight[0, 0] = 1.0
            self.detect.bias.fill_(-1.5)  # ImageNet-normalised 1.0 is 2.25, background (<= 0.45) is <= -0.15
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pool(self.relu(self.detect(x)))
        return self.head(a.mean(dim=(2, 3)))


def _square_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    img = np.zeros((h, w), np.float32)
    my, mx = h // 10, w // 10
    img[my:h - my, mx:w - mx] = _noise_image(h - 2 * my, w - 2 * mx, seed=h + w)  # body; black margin
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 1.0
    return img


@pytest.mark.parametrize("crop", ["none", "body"])
@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize(
    ("shape", "square"),
    [((480, 240), (150, 320, 200, 370)), ((240, 480), (60, 60, 110, 110)), ((360, 360), (230, 80, 280, 130))],
    ids=["tall", "wide", "square"],
)
def test_gradcam_peak_lands_on_the_bright_square(shape, square, resize, crop):
    from xai import Explainer

    img = _square_image(*shape, square)
    x, geo = prepare(img, Preprocessing(resize=resize, crop=crop))
    model = SquareNet().eval()
    explanation = Explainer(model, target_layer="pool").explain(x, target=1, methods=("gradcam",))
    x0, y0, x1, y1 = square
    for heat in (explanation.maps["gradcam"][0], explanation.raw["gradcam"][0]):  # 224 px and 28 px grids
        back = geo.to_original(np.asarray(heat))
        assert back.shape == shape
        py, px = np.unravel_index(int(np.argmax(back)), back.shape)
        assert x0 <= px < x1 and y0 <= py < y1, (px, py)
        # the map's mass sits on the square: its centroid is within a quarter side of the square's centre
        ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
        total = back.sum()
        cy, cx = (back * ys).sum() / total, (back * xs).sum() / total
        assert abs(cx - (x0 + x1) / 2) < 12 and abs(cy - (y0 + y1) / 2) < 12


def test_the_lungs_crop_is_registered_by_the_lung_module_and_named_when_missing() -> None:
    """xai.preprocessing cannot import the lung U-Net (xai.anatomy prepares its input with it): the rule is
    registered by xai.anatomy, which the pipeline imports; without it the error says what to import."""
    import subprocess
    import sys

    code = ("import numpy as np\nfrom xai.preprocessing import crop_box\n"
            "try:\n    crop_box(np.zeros((8, 8), np.float32), 'lungs')\nexcept ValueError as e:\n    print(e)\n"
            "import xai.pipeline\nfrom xai.anatomy import lung_crop_box\nimport xai.preprocessing as p\n"
            "print(p._CROP_RULES['lungs'] is lung_crop_box)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1]).stdout.splitlines()
    assert "needs xai.anatomy" in out[0] and out[-1] == "True", out
