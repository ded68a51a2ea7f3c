"""Compare two explanations of one radiograph: two models, or two target classes of one model.

Pure library (no UI). The maps of each side are the pipeline's display maps on the *original* pixel grid
(:attr:`xai.pipeline.PipelineResult.maps`, float in [0, 1]), so two models with different input sizes or
preprocessing are compared on the same anatomy. Both are brought to one comparison grid (longest side at
most ``side`` px, area interpolation) and compared per method with the metrics of :mod:`xai.trust.metrics`:

* Spearman rank correlation (Adebayo et al. 2018 use it to ask "did the map change?"): 1 = same ranking
  of pixels, 0 = unrelated, -1 = reversed;
* SSIM (Wang et al. 2004; data range 1);
* IoU of the top-10 % pixels of each map;
* the difference map ``a - b`` (positive where side A puts more weight).

A flat map (no evidence, all zero) has no ranking: its correlations are NaN, stated in ``notes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from xai.arrays import read_only
from xai.render import downsample_for_display
from xai.trust import metrics

__all__ = ["COMPARISON_SIDE", "TOP_FRACTION", "MapComparison", "compare_maps", "difference_map", "to_grid"]

COMPARISON_SIDE = 256
TOP_FRACTION = 0.10


def to_grid(heat: np.ndarray, side: int = COMPARISON_SIDE) -> np.ndarray:
    """A map on the comparison grid: longest side at most ``side`` px (area interpolation), float64."""
    return np.asarray(downsample_for_display(np.asarray(heat, dtype=np.float32), side), dtype=np.float64)


def difference_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` of two maps of the same shape (float64): positive where ``a`` is stronger."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"maps must be 2-D and of the same shape, got {x.shape} and {y.shape}")
    return x - y


@dataclass(frozen=True, eq=False)
class MapComparison:
    """One method's maps under side A and side B, on the comparison grid."""

    method: str
    a: np.ndarray
    b: np.ndarray
    difference: np.ndarray
    spearman: float
    ssim: float
    iou_top10: float
    flat: bool

    @property
    def mean_abs_difference(self) -> float:
        return float(np.mean(np.abs(self.difference)))


def compare_maps(
    maps_a: Mapping[str, np.ndarray], maps_b: Mapping[str, np.ndarray], side: int = COMPARISON_SIDE
) -> Mapping[str, MapComparison]:
    """Per method present on both sides (in ``maps_a``'s order): Spearman, SSIM, top-10 % IoU and the
    difference map of the two maps. Maps of one method must share their shape (the original grid)."""
    common = [m for m in maps_a if m in maps_b]
    if not common:
        raise ValueError("the two sides share no method to compare")
    out: dict[str, MapComparison] = {}
    for m in common:
        if np.shape(maps_a[m]) != np.shape(maps_b[m]):
            raise ValueError(f"{m}: maps of shape {np.shape(maps_a[m])} and {np.shape(maps_b[m])} cannot be "
                             "compared pixel by pixel (bring both to the radiograph's grid first)")
        a, b = to_grid(maps_a[m], side), to_grid(maps_b[m], side)
        flat = float(np.ptp(a)) == 0.0 or float(np.ptp(b)) == 0.0
        nan = float("nan")
        out[m] = MapComparison(
            method=m, a=read_only(a), b=read_only(b), difference=read_only(difference_map(a, b)),
            spearman=nan if flat else metrics.spearman(a, b),
            ssim=metrics.ssim(a, b, data_range=1.0) if min(a.shape) >= 7 else nan,
            iou_top10=nan if flat else metrics.top_k_iou(a, b, TOP_FRACTION),
            flat=flat,
        )
    return MappingProxyType(out)
