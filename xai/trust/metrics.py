"""Pure metrics for judging saliency maps (numpy only, no torch).

Every function takes plain arrays, checks its input and returns a Python float/bool/array.
Conventions follow the papers the trust tools reproduce:

- Spearman rank correlation and SSIM between maps: Adebayo et al. 2018, "Sanity Checks for Saliency Maps".
- Top-k% IoU between maps: overlap of the k% most important pixels of each map.
- Otsu threshold, pointing game, IoU of the Otsu mask with a ground truth: CheXlocalize (Saporta et al.,
  Nature Machine Intelligence 2022) — the map is min-max scaled to uint8 [0, 255], Otsu picks the threshold
  on that 256-bin histogram and pixels strictly above it form the segmentation (OpenCV ``THRESH_OTSU``);
  the pointing game looks at the *first* arg-max in row-major order (``np.argmax``) with no tolerance.
- Energy inside a mask: share of the (non-negative) map's sum that falls inside the mask.
- AUC by the trapezoid rule (deletion/insertion curves, Petsiuk et al. 2018).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage, stats

__all__ = [
    "auc_trapezoid",
    "box_to_mask",
    "energy_inside",
    "iou",
    "otsu_iou",
    "otsu_mask",
    "otsu_threshold",
    "pointing_game",
    "spearman",
    "ssim",
    "top_k_iou",
    "top_k_mask",
]


def _as_map(a: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {a.shape} and {b.shape}")


def _as_mask(m: ArrayLike, shape: tuple[int, ...], name: str = "mask") -> NDArray[np.bool_]:
    mask = np.asarray(m)
    if mask.shape != shape:
        raise ValueError(f"{name} shape {mask.shape} does not match map shape {shape}")
    return mask.astype(bool)


def spearman(a: ArrayLike, b: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Spearman rank correlation between two maps (optionally only over ``mask`` pixels).

    rho = Pearson correlation of the ranks, ties receiving their average rank (the standard definition,
    equal to ``scipy.stats.spearmanr``). A constant map has no ranking: when exactly one map is constant
    the maps share no rank information and 0.0 is returned; two constant maps are identical rankings (1.0).
    """
    x, y = _as_map(a, "a"), _as_map(b, "b")
    _same_shape(x, y)
    if mask is not None:
        keep = _as_mask(mask, x.shape)
        x, y = x[keep], y[keep]
    else:
        x, y = x.ravel(), y.ravel()
    if x.size < 2:
        raise ValueError("need at least two pixels for a rank correlation")
    x_const, y_const = np.ptp(x) == 0, np.ptp(y) == 0
    if x_const and y_const:
        return 1.0
    if x_const or y_const:
        return 0.0
    rx = stats.rankdata(x) - (x.size + 1) / 2.0
    ry = stats.rankdata(y) - (y.size + 1) / 2.0
    return float(np.dot(rx, ry) / math.sqrt(np.dot(rx, rx) * np.dot(ry, ry)))


def ssim(
    a: ArrayLike,
    b: ArrayLike,
    *,
    data_range: float = 1.0,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
    mask: ArrayLike | None = None,
) -> float:
    """Mean structural similarity (Wang et al. 2004), the variant Adebayo et al. used (scikit-image defaults).

    Local statistics over a ``win_size`` x ``win_size`` uniform window, sample covariance (N/(N-1)):
    SSIM = ((2 mu_a mu_b + C1)(2 s_ab + C2)) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)),
    C1 = (k1 L)^2, C2 = (k2 L)^2 with L = ``data_range``. The mean is taken over window centres at least
    (win_size-1)/2 pixels from the border (as scikit-image does), and only over ``mask`` pixels when given.
    """
    x, y = _as_map(a, "a"), _as_map(b, "b")
    _same_shape(x, y)
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError("win_size must be an odd integer >= 3")
    if min(x.shape) < win_size:
        raise ValueError(f"maps of shape {x.shape} are smaller than the {win_size}x{win_size} SSIM window")
    if data_range <= 0:
        raise ValueError("data_range must be positive")
    n = win_size * win_size
    cov_norm = n / (n - 1.0)
    filt = lambda z: ndimage.uniform_filter(z, size=win_size, mode="reflect")  # noqa: E731
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    valid = np.zeros(x.shape, dtype=bool)
    valid[pad : x.shape[0] - pad, pad : x.shape[1] - pad] = True
    if mask is not None:
        valid &= _as_mask(mask, x.shape)
    if not valid.any():
        raise ValueError("no pixel left to average SSIM over (mask empty or too close to the border)")
    return float(s[valid].mean())


def top_k_mask(a: ArrayLike, fraction: float = 0.1, mask: ArrayLike | None = None) -> NDArray[np.bool_]:
    """Boolean mask of the ``ceil(fraction * n)`` highest pixels (ties broken by row-major order)."""
    x = _as_map(a, "map")
    if not 0.0 < fraction <= 1.0:
        raise ValueError("fraction must be in (0, 1]")
    valid = np.ones(x.shape, bool) if mask is None else _as_mask(mask, x.shape)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        raise ValueError("mask is empty")
    k = max(1, math.ceil(fraction * idx.size - 1e-9))
    order = np.argsort(-x.ravel()[idx], kind="stable")[:k]
    out = np.zeros(x.size, dtype=bool)
    out[idx[order]] = True
    return out.reshape(x.shape)


def iou(a: ArrayLike, b: ArrayLike) -> float:
    """Intersection over union of two boolean masks; NaN when both are empty (undefined)."""
    ma, mb = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    _same_shape(ma, mb)
    union = np.logical_or(ma, mb).sum()
    if union == 0:
        return float("nan")
    return float(np.logical_and(ma, mb).sum() / union)


def top_k_iou(a: ArrayLike, b: ArrayLike, fraction: float = 0.1, mask: ArrayLike | None = None) -> float:
    """IoU of the top-``fraction`` pixels of two maps (e.g. top-10% IoU for stability)."""
    return iou(top_k_mask(a, fraction, mask), top_k_mask(b, fraction, mask))


def _to_uint8_minmax(a: NDArray[np.float64]) -> NDArray[np.uint8]:
    """CheXlocalize scaling: (m - min) / (max - min) * 255, truncated to uint8 (all zero when flat)."""
    lo, hi = a.min(), a.max()
    if hi == lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def otsu_threshold(values: ArrayLike) -> int:
    """Otsu's threshold (Otsu 1979) of uint8-valued data: the t in 0..255 maximising the between-class
    variance w0 w1 (mu0 - mu1)^2 of the classes {v <= t} and {v > t}; the first maximum wins
    (OpenCV's convention). Values must be integers in [0, 255]."""
    v = np.asarray(values)
    if v.size == 0:
        raise ValueError("cannot threshold an empty array")
    if np.any(v < 0) or np.any(v > 255) or np.any(np.asarray(v, np.float64) % 1 != 0):
        raise ValueError("otsu_threshold expects integer values in [0, 255] (use otsu_mask for maps)")
    hist = np.bincount(np.asarray(v, np.int64).ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * levels)
    mu_t = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0.0
    # round off float noise so exact ties resolve to the first (lowest) threshold
    between = np.round(between, 9)
    return int(np.argmax(between))


def otsu_mask(a: ArrayLike) -> NDArray[np.bool_]:
    """CheXlocalize segmentation of a saliency map: min-max to uint8, Otsu threshold, keep pixels > t.

    A flat map gives an empty mask (no evidence to segment)."""
    x = _as_map(a, "map")
    u8 = _to_uint8_minmax(x)
    if u8.max() == 0:
        return np.zeros(x.shape, dtype=bool)
    return u8 > otsu_threshold(u8)


def otsu_iou(a: ArrayLike, mask: ArrayLike) -> float:
    """IoU of the Otsu-thresholded map with a ground-truth mask (CheXlocalize mIoU term).

    NaN when the ground-truth mask is empty (CheXlocalize leaves such images out of the mean)."""
    x = _as_map(a, "map")
    gt = _as_mask(mask, x.shape)
    if not gt.any():
        return float("nan")
    return iou(otsu_mask(x), gt)


def pointing_game(a: ArrayLike, mask: ArrayLike, tolerance_px: int = 0) -> bool | None:
    """Pointing-game hit (Zhang et al. 2016) as CheXlocalize scores it: is the map's first arg-max
    (row-major) inside the ground-truth mask? CheXlocalize uses no tolerance (``tolerance_px=0``);
    Zhang et al. used 15 px — pass it to dilate the mask by that many pixels (Euclidean disc).

    Returns None when the mask is empty (undefined, CheXlocalize's NaN); a flat map (no maximum to point
    at) is a miss."""
    x = _as_map(a, "map")
    gt = _as_mask(mask, x.shape)
    if not gt.any():
        return None
    if np.ptp(x) == 0:
        return False
    if tolerance_px < 0:
        raise ValueError("tolerance_px must be >= 0")
    if tolerance_px > 0:
        r = int(tolerance_px)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        gt = ndimage.binary_dilation(gt, structure=(yy * yy + xx * xx) <= r * r)
    row, col = np.unravel_index(int(np.argmax(x)), x.shape)
    return bool(gt[row, col])


def energy_inside(a: ArrayLike, mask: ArrayLike) -> float:
    """Share of the map's energy inside the mask: sum(map * mask) / sum(map), for a non-negative map.

    0.0 for an all-zero map (it puts no energy anywhere); NaN when the mask is empty."""
    x = _as_map(a, "map")
    if np.any(x < 0):
        raise ValueError("energy_inside expects a non-negative map (use the display map in [0, 1])")
    gt = _as_mask(mask, x.shape)
    if not gt.any():
        return float("nan")
    total = x.sum()
    if total == 0:
        return 0.0
    return float(x[gt].sum() / total)


def auc_trapezoid(y: ArrayLike, x: ArrayLike | None = None) -> float:
    """Area under a curve by the trapezoid rule: sum_i (x_{i+1} - x_i)(y_i + y_{i+1}) / 2.

    ``x`` defaults to evenly spaced fractions 0..1 (deletion/insertion curves)."""
    yy = np.asarray(y, dtype=np.float64).ravel()
    if yy.size < 2:
        raise ValueError("need at least two points for an area")
    xx = np.linspace(0.0, 1.0, yy.size) if x is None else np.asarray(x, dtype=np.float64).ravel()
    if xx.shape != yy.shape:
        raise ValueError(f"x and y differ in length ({xx.size} vs {yy.size})")
    if np.any(np.diff(xx) < 0):
        raise ValueError("x must be non-decreasing")
    return float(np.sum(np.diff(xx) * (yy[1:] + yy[:-1]) / 2.0))


def box_to_mask(box: tuple[float, float, float, float], shape: tuple[int, int]) -> NDArray[np.bool_]:
    """Boolean mask of an (x, y, w, h) box in pixel coordinates of an image of ``shape`` (H, W).

    Pixel (r, c) is inside when its centre (c + 0.5, r + 0.5) lies in [x, x + w) x [y, y + h); the box is
    clipped to the image. Raises when the box is empty or entirely outside."""
    x0, y0, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"box must have positive finite width and height, got {box}")
    hgt, wid = int(shape[0]), int(shape[1])
    cols = np.arange(wid) + 0.5
    rows = np.arange(hgt) + 0.5
    in_c = (cols >= x0) & (cols < x0 + w)
    in_r = (rows >= y0) & (rows < y0 + h)
    mask = np.outer(in_r, in_c)
    if not mask.any():
        raise ValueError(f"box {box} does not cover any pixel of a {hgt}x{wid} image")
    return mask
