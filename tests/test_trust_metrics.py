"""Trust metrics against hand-computed values on small arrays (and independent references)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import stats

from xai.trust import metrics as M


def test_spearman_hand_computed_with_ties() -> None:
    a = np.array([[1.0, 2.0], [2.0, 3.0]])  # ranks 1, 2.5, 2.5, 4
    b = np.array([[4.0, 3.0], [2.0, 1.0]])  # ranks 4, 3, 2, 1
    # centred ranks: a -> -1.5, 0, 0, 1.5 ; b -> 1.5, 0.5, -0.5, -1.5
    # sum(ra*rb) = -2.25 - 2.25 = -4.5 ; |ra|^2 = 4.5 ; |rb|^2 = 5 -> rho = -4.5 / sqrt(22.5)
    expected = -4.5 / math.sqrt(22.5)
    assert M.spearman(a, b) == pytest.approx(expected, abs=1e-12)
    assert M.spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)


def test_spearman_identity_monotone_and_constant() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((9, 7))
    assert M.spearman(a, a) == pytest.approx(1.0)
    assert M.spearman(a, np.exp(3 * a)) == pytest.approx(1.0)  # rank-based: any increasing transform
    assert M.spearman(a, -a) == pytest.approx(-1.0)
    assert M.spearman(a, np.zeros_like(a)) == 0.0
    assert M.spearman(np.ones((3, 3)), np.ones((3, 3))) == 1.0


def test_spearman_mask_uses_only_masked_pixels() -> None:
    a = np.array([[1.0, 2.0, 3.0], [9.0, 0.0, 5.0]])
    b = np.array([[1.0, 2.0, 3.0], [0.0, 9.0, -5.0]])
    mask = np.array([[1, 1, 1], [0, 0, 0]], bool)
    assert M.spearman(a, b, mask=mask) == pytest.approx(1.0)
    assert M.spearman(a, b) < 0.5


def test_spearman_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        M.spearman(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        M.spearman(np.full((2, 2), np.nan), np.zeros((2, 2)))


def _ssim_one_window(x: np.ndarray, y: np.ndarray, L: float = 1.0) -> float:
    """SSIM of a single 7x7 window, written straight from Wang et al. 2004 (sample covariance)."""
    n = x.size
    mx, my = x.mean(), y.mean()
    vx = ((x - mx) ** 2).sum() / (n - 1)
    vy = ((y - my) ** 2).sum() / (n - 1)
    cxy = ((x - mx) * (y - my)).sum() / (n - 1)
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def test_ssim_identical_is_one_and_known_pair_matches_formula() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((7, 7))
    y = np.clip(x + 0.2 * rng.standard_normal((7, 7)), 0, 1)
    assert M.ssim(x, x) == pytest.approx(1.0)
    # a 7x7 image has exactly one window centre away from the border: SSIM = that window's value
    assert M.ssim(x, y) == pytest.approx(_ssim_one_window(x, y), rel=1e-10)
    # constant images: mean term only
    a, b = np.full((7, 7), 0.2), np.full((7, 7), 0.6)
    c1 = 0.01**2
    assert M.ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1))


def test_ssim_mean_over_interior_windows() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.random((9, 8)), rng.random((9, 8))
    vals = [
        _ssim_one_window(x[r - 3 : r + 4, c - 3 : c + 4], y[r - 3 : r + 4, c - 3 : c + 4])
        for r in range(3, 6)
        for c in range(3, 5)
    ]
    assert M.ssim(x, y) == pytest.approx(np.mean(vals), rel=1e-10)
    with pytest.raises(ValueError, match="smaller"):
        M.ssim(np.zeros((5, 5)), np.zeros((5, 5)))


def test_top_k_mask_and_iou() -> None:
    a = np.arange(20, dtype=float).reshape(4, 5)
    top = M.top_k_mask(a, 0.1)  # ceil(2) = 2 highest pixels: 19, 18
    assert top.sum() == 2 and top[3, 4] and top[3, 3]
    b = a.copy()
    b[3, 3] = -1  # now top-2 of b are 19 and 17
    assert M.top_k_iou(a, b, 0.1) == pytest.approx(1 / 3)
    assert M.iou(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool)) == pytest.approx(1 / 3)
    assert math.isnan(M.iou(np.zeros(3, bool), np.zeros(3, bool)))
    assert M.top_k_iou(a, a, 0.25) == 1.0


def test_otsu_bimodal_and_matches_opencv() -> None:
    values = np.array([10] * 50 + [12] * 30 + [200] * 40 + [210] * 60, dtype=np.uint8)
    t = M.otsu_threshold(values)
    assert 12 <= t < 200
    # the two modes are perfectly separated: every threshold in [12, 200) has the same between-class
    # variance, OpenCV (and we) take the first one
    assert t == 12
    rng = np.random.default_rng(3)
    for _ in range(5):
        img = np.concatenate([rng.normal(60, 15, 300), rng.normal(170, 25, 200)]).clip(0, 255).astype(np.uint8)
        ref, _ = cv2.threshold(img.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert M.otsu_threshold(img) == int(ref)


def test_otsu_mask_and_iou_chexlocalize_convention() -> None:
    heat = np.zeros((6, 6))
    heat[1:3, 1:4] = 1.0  # 6 hot pixels
    heat[5, 5] = 0.1  # faint pixel stays below Otsu
    mask = M.otsu_mask(heat)
    assert mask.sum() == 6 and mask[1:3, 1:4].all()
    gt = np.zeros((6, 6), bool)
    gt[1:4, 1:4] = True  # 9 pixels, 6 shared
    assert M.otsu_iou(heat, gt) == pytest.approx(6 / 9)
    assert math.isnan(M.otsu_iou(heat, np.zeros((6, 6), bool)))
    assert not M.otsu_mask(np.full((4, 4), 0.3)).any()


def test_pointing_game() -> None:
    heat = np.zeros((5, 5))
    heat[1, 3] = 1.0
    gt = np.zeros((5, 5), bool)
    gt[0:2, 2:5] = True
    assert M.pointing_game(heat, gt) is True
    assert M.pointing_game(heat, ~gt) is False
    assert M.pointing_game(heat, np.zeros((5, 5), bool)) is None
    assert M.pointing_game(np.ones((5, 5)), gt) is False  # flat map points nowhere
    far = np.zeros((5, 5), bool)
    far[4, 3] = True  # 3 px below the maximum
    assert M.pointing_game(heat, far, tolerance_px=2) is False
    assert M.pointing_game(heat, far, tolerance_px=3) is True
    ties = np.zeros((5, 5))
    ties[0, 0] = ties[4, 4] = 1.0  # first arg-max in row-major order is (0, 0)
    corner = np.zeros((5, 5), bool)
    corner[4, 4] = True
    assert M.pointing_game(ties, corner) is False


def test_energy_inside() -> None:
    heat = np.array([[1.0, 3.0], [0.0, 4.0]])
    gt = np.array([[0, 1], [0, 1]], bool)
    assert M.energy_inside(heat, gt) == pytest.approx(7 / 8)
    assert M.energy_inside(np.zeros((2, 2)), gt) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        M.energy_inside(-heat, gt)


def test_auc_trapezoid() -> None:
    assert M.auc_trapezoid([1.0, 0.0]) == pytest.approx(0.5)
    assert M.auc_trapezoid([0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert M.auc_trapezoid([2.0, 2.0], x=[0.0, 3.0]) == pytest.approx(6.0)
    y = np.random.default_rng(4).random(11)
    assert M.auc_trapezoid(y) == pytest.approx(np.trapezoid(y, np.linspace(0, 1, 11)))
    with pytest.raises(ValueError):
        M.auc_trapezoid([1.0])


def test_box_to_mask() -> None:
    m = M.box_to_mask((1, 2, 3, 1), (4, 6))
    assert m.sum() == 3 and m[2, 1:4].all()
    assert M.box_to_mask((-5, -5, 7, 7), (4, 4)).sum() == 4  # clipped: rows/cols 0..1
    with pytest.raises(ValueError):
        M.box_to_mask((10, 10, 2, 2), (4, 4))
    with pytest.raises(ValueError):
        M.box_to_mask((0, 0, 0, 2), (4, 4))
