"""Agreement of a map with the radiologist's box or mask (CheXlocalize conventions, Saporta et al.,
"Benchmarking saliency methods for chest X-ray interpretation", Nature Machine Intelligence 2022).

Everything is scored on the *original* pixel grid: the model-grid map is brought back with
:meth:`Geometry.to_original` (bilinear, as CheXlocalize upsamples its maps to the image size). Per map:

- **pointing-game hit**: the map's first arg-max (row-major) lies inside the mask; no tolerance, as in
  CheXlocalize (Zhang et al.'s original pointing game allowed 15 px — ``tolerance_px`` restores that);
- **energy inside**: sum(map inside) / sum(map) for the [0, 1] display map;
- **IoU (Otsu)**: the map min-max scaled to uint8, thresholded by Otsu's method (pixels above the threshold),
  IoU with the mask. CheXlocalize reports the mean over images (mIoU) and the hit rate; Saporta et al.
  found Grad-CAM the best of seven methods and every method below the radiologists.

A box is (x, y, w, h) in original pixels; a pixel belongs to it when its centre does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xai.trust import metrics

__all__ = ["AgreementResult", "agreement", "agreement_for_maps", "boxes_to_mask", "mask_from_upload"]


@dataclass(frozen=True)
class AgreementResult:
    """Agreement of one map with one ground-truth mask (original grid)."""

    method: str
    hit: bool | None
    energy_inside: float
    iou_otsu: float
    tolerance_px: int = 0


def boxes_to_mask(boxes: Sequence[tuple[float, float, float, float]], shape: tuple[int, int]) -> np.ndarray:
    """Union of (x, y, w, h) boxes as a boolean mask of ``shape`` (H, W)."""
    if not boxes:
        raise ValueError("no box given")
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask |= metrics.box_to_mask(box, shape)
    return mask


def mask_from_upload(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask from an uploaded image (any non-zero pixel is inside), checked against ``shape``.

    Colour masks count a pixel as inside when any channel is non-zero. The mask must have the radiograph's
    size (H, W) — a mask drawn on a resized copy would not line up."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"mask must be a 2-D image, got shape {arr.shape}")
    if arr.shape != tuple(shape):
        raise ValueError(f"mask size {arr.shape[1]}x{arr.shape[0]} differs from the radiograph's "
                         f"{shape[1]}x{shape[0]} (width x height)")
    mask = arr > 0
    if not mask.any():
        raise ValueError("the mask is empty (all zero)")
    return mask


def agreement(method: str, heat: np.ndarray, mask: np.ndarray, *, tolerance_px: int = 0) -> AgreementResult:
    """Pointing-game hit, energy inside and Otsu IoU of ``heat`` (H, W) with ``mask`` (H, W), same grid."""
    heat = np.asarray(heat, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if heat.shape != mask.shape:
        raise ValueError(f"map {heat.shape} and mask {mask.shape} are not on the same grid")
    return AgreementResult(
        method=method,
        hit=metrics.pointing_game(heat, mask, tolerance_px=tolerance_px),
        energy_inside=metrics.energy_inside(np.clip(heat, 0.0, None), mask),
        iou_otsu=metrics.otsu_iou(heat, mask),
        tolerance_px=int(tolerance_px),
    )


def agreement_for_maps(maps: Mapping[str, np.ndarray], mask: np.ndarray, *, geometry: Any = None,
                       tolerance_px: int = 0) -> dict[str, AgreementResult]:
    """Agreement for every map. Maps already on the original grid are used as they are; with ``geometry``
    (from ``prepare``) model-grid maps are first brought back with ``geometry.to_original``."""
    out = {}
    for method, heat in maps.items():
        h = np.asarray(heat)
        if h.ndim == 3 and h.shape[0] == 1:
            h = h[0]
        if geometry is not None and h.shape != np.asarray(mask).shape:
            h = geometry.to_original(h)
        out[method] = agreement(method, h, mask, tolerance_px=tolerance_px)
    return out
