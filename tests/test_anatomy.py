"""Lung fields (xai.anatomy): the shipped model on the shared test split, evidence_in_lungs by hand, and inputs
that must give no lung field.

The Dice test runs the library's full path (load_radiograph -> prepare -> U-Net -> post-processing ->
resample to the original grid) on every test film of ``../shared/data/lungs`` against its manual mask, with
Dice computed here from its definition.
"""

from __future__ import annotations

import csv
import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

from xai import Explainer
from xai.anatomy import (
    BUNDLE_DIR,
    DEFAULT_DILATION,
    LungModelError,
    dilate_mask,
    evidence_in_lungs,
    evidence_outside,
    find_lungs,
    load_lung_model,
    lung_box,
    lung_evidence,
    lung_mask,
)
from xai.preprocessing import Preprocessing, prepare
from xai.radiograph import load_radiograph


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------ the model on real films
@pytest.fixture(scope="module")
def test_scores(shared_data: Path) -> dict[str, list[float]]:
    lungs = shared_data / "lungs"
    with open(lungs / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    assert len(rows) == 193
    scores: dict[str, list[float]] = {"nlm": [], "v7": []}
    for r in rows:
        convention = "nlm" if "exclude the heart" in r["convention"] else "v7"
        radiograph = load_radiograph(lungs / r["image"])
        truth = np.asarray(Image.open(lungs / r["mask"]).convert("L")) > 127
        mask = lung_mask(radiograph, convention=convention)
        assert mask.dtype == bool and mask.shape == radiograph.pixels.shape == truth.shape
        scores[convention].append(_dice(mask, truth))
    return scores


def test_dice_on_the_shared_test_split_meets_the_targets(test_scores: dict[str, list[float]]) -> None:
    nlm, v7 = np.array(test_scores["nlm"]), np.array(test_scores["v7"])
    assert len(nlm) == 186 and len(v7) == 7
    assert np.median(nlm) >= 0.95, f"NLM median Dice {np.median(nlm):.4f}"
    assert np.median(v7) >= 0.92, f"V7 median Dice {np.median(v7):.4f}"
    every = np.concatenate([nlm, v7])
    assert (every < 0.8).mean() < 0.05, f"{(every < 0.8).sum()} of {len(every)} films below Dice 0.8"


def test_monochrome1_dicoms_give_a_plausible_lung_field(dicom_dir: Path) -> None:
    for name in ("philips_cr_pa_mono1_j2k_lossy.dcm", "canon_dx_pa_mono1_inverse_j2k_lossless.dcm"):
        radiograph = load_radiograph(dicom_dir / name)
        assert radiograph.photometric == "MONOCHROME1"
        field = find_lungs(radiograph)
        assert field.found, f"{name}: {field.reason}"
        assert field.mask.shape == radiograph.pixels.shape  # its own (non-square) grid
        assert 0.12 <= field.area_fraction <= 0.5, (name, field.area_fraction)
        assert field.components == 2
        H, W = field.mask.shape
        left, right = field.mask[:, : W // 2].sum(), field.mask[:, W // 2:].sum()
        assert min(left, right) > 0.15 * (left + right), "one lung on each side of the film"
        # lungs are air: darker than the film's average inside the mask, on the display pixels
        assert radiograph.pixels[field.mask].mean() < radiograph.pixels.mean()
        # the same film read without honouring MONOCHROME1 (air white) is not segmented as well
        inverted = find_lungs(1.0 - radiograph.pixels)
        assert not inverted.found or _dice(inverted.mask, field.mask) < 0.8


def _non_chest_images() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    doc = Image.new("RGB", (640, 420), "white")  # a text screenshot
    draw = ImageDraw.Draw(doc)
    for i in range(18):
        draw.text((20, 12 + 22 * i), f"Line {i}: the quick brown fox jumps over the lazy dog " * 2, fill="black")
    draw.rectangle((400, 300, 600, 400), outline="navy", width=3)
    y, x = np.mgrid[0:360, 0:480]
    photo = np.stack([120 + 100 * y / 360, 160 + 60 * x / 480, 230 - 80 * y / 360], axis=-1)  # sky gradient
    photo[(x - 350) ** 2 + (y - 90) ** 2 < 40 ** 2] = (255, 230, 120)  # sun
    photo[y > 250 + 20 * np.sin(x / 40)] = (60, 120, 50)  # hills
    photo = np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8)
    waves = (127 + 60 * np.sin(x / 17.0) * np.cos(y / 23.0) + 40 * np.sin((x + y) / 51.0)).astype(np.uint8)
    return {
        "text screenshot": _png(doc),
        "photo-like landscape": _png(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(1.5))),
        "synthetic texture": _png(Image.fromarray(waves)),
    }


@pytest.mark.parametrize("name", list(_non_chest_images()))
def test_a_non_chest_image_has_no_lung_field(name: str) -> None:
    radiograph = load_radiograph(_non_chest_images()[name])
    field = find_lungs(radiograph)
    assert not field.found and field.reason
    mask = lung_mask(radiograph)
    assert mask.shape == radiograph.pixels.shape and not mask.any()


def test_model_is_loaded_once_and_concurrent_calls_agree(dicom_dir: Path) -> None:
    assert load_lung_model() is load_lung_model(BUNDLE_DIR)
    radiograph = load_radiograph(dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm")
    expected = lung_mask(radiograph)
    assert expected.any()
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(lung_mask(radiograph))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(np.array_equal(r, expected) for r in results)
    assert all(not p.requires_grad for p in load_lung_model().module.parameters())


def test_a_damaged_bundle_is_refused(tmp_path: Path) -> None:
    shutil.copytree(BUNDLE_DIR, tmp_path / "lungs")
    weights = tmp_path / "lungs" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(LungModelError, match="sha256"):
        load_lung_model(tmp_path / "lungs")
    with pytest.raises(LungModelError, match="cannot read"):
        load_lung_model(tmp_path / "missing")


def test_unknown_convention_is_a_clear_error(dicom_dir: Path) -> None:
    with pytest.raises(ValueError, match="convention must be one of nlm, v7"):
        lung_mask(load_radiograph(dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm"), convention="heart")


# ----------------------------------------------------------------------------- evidence_in_lungs by hand
def test_evidence_in_lungs_hand_made_map_and_mask() -> None:
    s = np.array([[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 5, 0], [0, 0, 0, 6]], dtype=np.float32)
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True
    assert evidence_in_lungs(s, m, dilation=0) == pytest.approx(10 / 21, abs=1e-12)
    # both signs count as evidence: |s|
    signed = s * np.array([[1, -1, 1, 1]] * 4, dtype=np.float32)
    assert evidence_in_lungs(signed, m, dilation=0) == pytest.approx(10 / 21, abs=1e-12)
    assert evidence_in_lungs(s, ~m, dilation=0) == pytest.approx(11 / 21, abs=1e-12)


def test_dilation_is_a_disc_of_three_percent_of_the_width() -> None:
    assert DEFAULT_DILATION == 0.03
    m = np.zeros((100, 100), bool)
    m[40:50, 40:50] = True  # last column 49; r = round(0.03 * 100) = 3 -> columns up to 52
    s = np.zeros((100, 100))
    s[45, 52], s[45, 53] = 1.0, 3.0
    assert evidence_in_lungs(s, m) == pytest.approx(1 / 4, abs=1e-12)
    assert evidence_in_lungs(s, m, dilation=0) == 0.0
    grown = dilate_mask(m)
    assert grown[45, 52] and not grown[45, 53] and grown[37, 45] and not grown[36, 45]
    assert not grown[37, 37]  # a disc, not a square: the corner (3, 3) away is sqrt(18) > 3 from the block
    assert lung_box(m) == (40, 40, 50, 50) and lung_box(np.zeros((3, 3))) is None


def test_lung_evidence_of_several_maps_matches_a_brute_force_reference() -> None:
    """One dilation and one region map for all maps give, per map, what the definition gives computed
    naively: the disc from SciPy's exact Euclidean distance transform, then one boolean mask per region
    taken in OUTSIDE_REGIONS order."""
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(7)
    H, W = 90, 120
    mask = np.zeros((H, W), bool)
    mask[20:70, 15:50] = True
    mask[25:75, 66:100] = True
    mask[40:45, 30:34] = False  # a hole: it stays inside once dilated
    maps = {"smooth": rng.random((H, W)), "signed": rng.standard_normal((H, W)),
            "f32": rng.random((H, W)).astype(np.float32), "flat": np.full((H, W), 0.5)}
    got = lung_evidence(maps, mask)

    r = round(DEFAULT_DILATION * W)
    grown = distance_transform_edt(~mask) <= r
    np.testing.assert_array_equal(dilate_mask(mask), grown)
    rows, cols = np.mgrid[0:H, 0:W]
    x0, y0, x1, y1 = 15, 20, 100, 75
    bw, bh = round(0.05 * W), round(0.05 * H)
    regions = {
        "film border": (rows < bh) | (rows >= H - bh) | (cols < bw) | (cols >= W - bw),
        "above the lungs": rows < y0, "below the lungs": rows >= y1,
        "beside the lungs": (cols < x0) | (cols >= x1), "between the lungs": np.ones((H, W), bool),
    }
    for name in ("smooth", "signed", "f32"):
        w = np.abs(maps[name].astype(np.float64))
        assert got[name].inside == pytest.approx(w[grown].sum() / w.sum(), abs=1e-9)
        taken = grown.copy()
        for region, where in regions.items():
            share = w[where & ~taken].sum() / w.sum()
            taken |= where
            assert got[name].outside[region] == pytest.approx(share, abs=1e-9), (name, region)
        assert got[name].inside + sum(got[name].outside.values()) == pytest.approx(1.0, abs=1e-9)
        assert evidence_in_lungs(maps[name], mask) == got[name].inside
        assert evidence_outside(maps[name], mask) == got[name].outside
    assert np.isnan(got["flat"].inside) and got["flat"].outside == {}
    with pytest.raises(ValueError, match="same pixel grid"):
        lung_evidence({"ok": maps["smooth"], "bad": np.ones((H, W + 1))}, mask)


def test_flat_maps_and_empty_masks_give_nan() -> None:
    m = np.zeros((8, 8), bool)
    m[2:5, 2:5] = True
    for flat in (np.zeros((8, 8)), np.full((8, 8), 0.7)):
        assert np.isnan(evidence_in_lungs(flat, m))
    s = np.arange(64.0).reshape(8, 8)
    assert np.isnan(evidence_in_lungs(s, np.zeros((8, 8), bool)))


def test_bad_inputs_are_clear_errors() -> None:
    m = np.ones((8, 8), bool)
    with pytest.raises(ValueError, match=r"not on the same pixel grid"):
        evidence_in_lungs(np.ones((8, 9)), m)
    with pytest.raises(ValueError, match="2-D"):
        evidence_in_lungs(np.ones((1, 8, 8)), m)
    bad = np.arange(64.0).reshape(8, 8)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        evidence_in_lungs(bad, m)
    with pytest.raises(ValueError, match="dilation"):
        evidence_in_lungs(np.arange(64.0).reshape(8, 8), m, dilation=-0.1)


class SquareNet(nn.Module):
    """conv 1x1 (weight 1) -> ReLU -> GAP -> linear (weight 1): Grad-CAM is exactly ReLU(input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.fc.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def test_square_map_fully_inside_or_outside_a_known_mask() -> None:
    # A 300 x 400 "film", black except a bright square; the engine's Grad-CAM of SquareNet is the square,
    # which Geometry.to_original puts back on the film's grid (letterboxed to 64 and back).
    film = np.zeros((300, 400), np.float32)
    film[100:160, 240:300] = 1.0
    pre = Preprocessing(input_size=64, channels=1, mean=(0.0,), std=(1.0,), resize="letterbox")
    x, geometry = prepare(film, pre)
    cam = Explainer(SquareNet().eval(), "act").explain(x, target=0, methods=("gradcam",)).raw["gradcam"][0]
    saliency = geometry.to_original(cam)
    assert saliency.shape == film.shape and saliency[130, 270] > 0
    inside = np.zeros(film.shape, bool)
    inside[60:200, 200:340] = True  # contains the square with a margin wider than the resampling blur
    outside = np.zeros(film.shape, bool)
    outside[:, :120] = True  # the far left third, beyond the square's blur and the 3 % dilation
    assert evidence_in_lungs(saliency, inside) == 1.0
    assert evidence_in_lungs(saliency, outside) == 0.0
