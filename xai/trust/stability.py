"""Stability of the maps under small, label-preserving changes of the radiograph, and across checkpoints.

Each change is applied to the *original* radiograph pixels (display values in [0, 1]), the result goes
through the same :func:`xai.preprocessing.prepare` as every other input, the engine explains the same
class as on the unchanged image, every map is mapped back to the original grid with
:meth:`Geometry.to_original`, and a geometric change is then inverted so that the two maps are compared
pixel for pixel on the same anatomy. Pixels the transformed image does not cover are left out.

Metrics per method (on a comparison grid: the original grid downsampled so its longest side is at most
``comparison_side`` px, area interpolation): Spearman rank correlation, SSIM (data range 1) and the IoU of
the top-10 % pixels; mean and worst (lowest) over the changes. The same three figures compare the image's
maps under a second checkpoint of the same architecture (``chestcovnet`` vs ``chestcovnet-seed2``): maps
that change with the training seed show what that seed learned, not what the disease looks like.

Default changes (``DEFAULT_PERTURBATIONS``): Gaussian noise (sigma 0.02 of the display range, seeded),
intensity x0.95 and x1.05 (clipped to [0, 1]), shift by +-2 % of width and height, scale 0.98 and 1.02
about the centre, rotation -3 and +3 degrees about the centre; areas uncovered by a geometric change are
black (like the letterbox padding).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from xai.scores import DecisionRule
from xai.trust import metrics
from xai.trust.model_access import (
    MapFn,
    Progress,
    class_probabilities,
    compute_maps,
    compute_maps_batch,
    preprocessing_of,
    report,
    unpack_model,
)

if TYPE_CHECKING:  # the seams' types: a bundle's model or a bare module, a radiograph or its pixels
    from torch import nn

    from xai.protocols import LoadedModel
    from xai.radiograph_core import Radiograph

__all__ = [
    "DEFAULT_PERTURBATIONS",
    "Comparison",
    "Perturbation",
    "StabilityResult",
    "stability",
    "stability_summary",
]

TOP_FRACTION = 0.10


@dataclass(frozen=True)
class Perturbation:
    """A small change of the radiograph: intensity gain, Gaussian noise and/or an affine about the centre.

    ``shift`` is (dx, dy) as fractions of width and height; ``angle`` in degrees (counter-clockwise, as
    OpenCV); ``scale`` about the image centre."""

    name: str
    gain: float = 1.0
    noise_sigma: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    angle: float = 0.0

    @property
    def geometric(self) -> bool:
        return self.shift != (0.0, 0.0) or self.scale != 1.0 or self.angle != 0.0

    def matrix(self, height: int, width: int) -> np.ndarray:
        """2x3 affine (OpenCV convention, pixel centres at integer coordinates) on a height x width grid."""
        centre = ((width - 1) / 2.0, (height - 1) / 2.0)
        a = cv2.getRotationMatrix2D(centre, self.angle, self.scale)
        a[0, 2] += self.shift[0] * width
        a[1, 2] += self.shift[1] * height
        return a

    def apply(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The changed image, float32 in [0, 1], same shape."""
        out = np.asarray(pixels, dtype=np.float32)
        if self.gain != 1.0:
            out = out * np.float32(self.gain)
        if self.noise_sigma > 0:
            out = out + rng.normal(0.0, self.noise_sigma, size=out.shape).astype(np.float32)
        if self.geometric:
            h, w = out.shape
            out = cv2.warpAffine(  # type: ignore[assignment]  # cv2's stubs: any dtype; float32 in, float32 out
                np.ascontiguousarray(out), self.matrix(h, w), (w, h), flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
            )
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)

    def align(self, heat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bring a map computed on the changed image back onto the unchanged image's grid.

        Returns (aligned map, valid mask); m(p) = m'(A p) (the inverse warp); valid where A p lies inside
        the image."""
        h, w = heat.shape
        if not self.geometric:
            return heat, np.ones((h, w), dtype=bool)
        a = self.matrix(h, w)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        aligned = cv2.warpAffine(np.ascontiguousarray(heat, dtype=np.float32), a, (w, h), flags=flags,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        cover = cv2.warpAffine(np.ones((h, w), np.float32), a, (w, h), flags=flags,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        return aligned, cover > 0.999


DEFAULT_PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("noise σ=0.02", noise_sigma=0.02),
    Perturbation("intensity ×0.95", gain=0.95),
    Perturbation("intensity ×1.05", gain=1.05),
    Perturbation("shift −2%", shift=(-0.02, -0.02)),
    Perturbation("shift +2%", shift=(0.02, 0.02)),
    Perturbation("scale 0.98", scale=0.98),
    Perturbation("scale 1.02", scale=1.02),
    Perturbation("rotate −3°", angle=-3.0),
    Perturbation("rotate +3°", angle=3.0),
)


@dataclass(frozen=True)
class Comparison:
    """The maps of one changed input (or second checkpoint) against the reference, per method."""

    name: str
    spearman: Mapping[str, float]
    ssim: Mapping[str, float]
    iou_top10: Mapping[str, float]
    probability: float
    """Probability of the explained class on the changed input (label preservation check)."""
    predicted: int
    """Arg-max class on the changed input."""


@dataclass(frozen=True)
class StabilityResult:
    """Stability of every method's map for one image; see the module docstring for the protocol."""

    methods: tuple[str, ...]
    target: int
    reference_probability: float
    reference_predicted: int
    comparisons: tuple[Comparison, ...]
    checkpoint: Comparison | None = None
    notes: tuple[str, ...] = ()
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method: mean and worst (min) Spearman / SSIM / top-10 % IoU over the changes, and the
        second-checkpoint figures when computed."""
        out: dict[str, dict[str, float]] = {}
        for m in self.methods:
            row: dict[str, float] = {}
            for key in ("spearman", "ssim", "iou_top10"):
                values = np.array([getattr(c, key)[m] for c in self.comparisons], dtype=np.float64)
                values = values[np.isfinite(values)]
                row[f"{key}_mean"] = float(values.mean()) if values.size else float("nan")
                row[f"{key}_worst"] = float(values.min()) if values.size else float("nan")
            if self.checkpoint is not None:
                for key in ("spearman", "ssim", "iou_top10"):
                    row[f"{key}_checkpoint"] = float(getattr(self.checkpoint, key)[m])
            out[m] = row
        return out

    def table(self) -> list[dict[str, Any]]:
        """Rows for display: one per (change, method)."""
        rows = []
        for c in (*self.comparisons, *((self.checkpoint,) if self.checkpoint else ())):
            for m in self.methods:
                rows.append({
                    "change": c.name, "method": m, "spearman": round(c.spearman[m], 3),
                    "ssim": round(c.ssim[m], 3), "iou_top10": round(c.iou_top10[m], 3),
                    "p_target": round(c.probability, 3),
                })
        return rows


def _comparison_shape(height: int, width: int, side: int) -> tuple[int, int]:
    s = min(1.0, side / max(height, width))
    return max(8, round(height * s)), max(8, round(width * s))


def _to_grid(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    if heat.shape == shape:
        return heat.astype(np.float32, copy=False)
    return cv2.resize(np.ascontiguousarray(heat, dtype=np.float32), (w, h), interpolation=cv2.INTER_AREA)


def _compare(ref: np.ndarray, other: np.ndarray, valid: np.ndarray) -> tuple[float, float, float]:
    if float(np.ptp(ref)) == 0.0:  # a flat reference map has no ranking or structure to keep: undefined
        nan = float("nan")
        return nan, nan, nan
    return (
        metrics.spearman(ref, other, mask=valid),
        metrics.ssim(ref, other, data_range=1.0, mask=valid),
        metrics.top_k_iou(ref, other, TOP_FRACTION, mask=valid),
    )


def stability(
    model: LoadedModel | nn.Module,
    image: Radiograph | np.ndarray,
    *,
    preprocessing: Any = None,
    target: int | None = None,
    methods: Sequence[str] | None = None,
    perturbations: Sequence[Perturbation] = DEFAULT_PERTURBATIONS,
    second_model: Any = None,
    seed: int = 0,
    comparison_side: int = 256,
    reference_maps: Mapping[str, np.ndarray] | None = None,
    target_layer: str | None = None,
    extra: dict[str, MapFn] | None = None,
    batch_size: int = 3,
    progress: Progress | None = None,
) -> StabilityResult:
    """Maps of ``image`` (a Radiograph or a 2-D float array in [0, 1]) under small changes.

    ``model``: LoadedModel (card gives preprocessing and target layer) or nn.Module with ``preprocessing``.
    ``second_model``: another checkpoint of the same architecture (e.g. ``models.second_checkpoint(card)``,
    the second training seed) or None. ``reference_maps`` (maps on the original grid for ``target``, e.g. from the pipeline) saves one
    explanation; they must come from the same model and preprocessing. ``extra``: more maps,
    ``fn(module, x, target) -> (H, W)`` on the model grid (see :func:`xai.trust.sanity.sanity_check`).
    ``batch_size`` changed inputs are explained per engine call (fewer, larger passes; progress per batch).
    """
    import torch

    import xai.anatomy  # noqa: F401 - registers the "lungs" crop a card may name (xai.preprocessing.crop_box)
    from xai.engine import METHODS, Explainer
    from xai.preprocessing import prepare

    started = time.perf_counter()
    if methods is None:
        methods = tuple(reference_maps) if reference_maps is not None else tuple(METHODS)
    methods = tuple(m for m in methods if m not in (extra or {}))
    pre = preprocessing_of(model, preprocessing)
    module, layer, card = unpack_model(model, target_layer)
    rule = DecisionRule.of(card)  # the card's decision, as on every page
    pixels = np.asarray(getattr(image, "pixels", image), dtype=np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"image must be a Radiograph or a 2-D gray array, got shape {pixels.shape}")
    grid = _comparison_shape(pixels.shape[0], pixels.shape[1], comparison_side)
    explainer = Explainer(module, target_layer=layer)
    n_total = len(perturbations) + 1 + (second_model is not None)

    def explain(pix: np.ndarray, expl: Any, mod: Any, prep: Any, tgt: int | None) -> tuple[
            dict[str, np.ndarray], int, np.ndarray]:
        x, geometry = prepare(pix, prep)
        maps, _flat, tgt, probs = compute_maps(expl, mod, x, tgt, methods, extra)
        return {m: _to_grid(geometry.to_original(h), grid) for m, h in maps.items()}, tgt, probs

    report(progress, 0.0, "reference maps")
    given_maps = reference_maps if target is not None else None  # maps given without a class: recomputed
    if target is None:  # the class the model predicts by its card's rule
        target = rule.decide(class_probabilities(module, prepare(pixels, pre)[0])[0])
    if given_maps is None:
        ref, target, ref_probs = explain(pixels, explainer, module, pre, target)
    else:
        ref = {m: _to_grid(np.asarray(given_maps[m], dtype=np.float32), grid) for m in given_maps}
        if extra:
            x0, g0 = prepare(pixels, pre)
            more, _f, _t, _p = compute_maps(explainer, module, x0, target, (), extra)
            ref.update({m: _to_grid(g0.to_original(h), grid) for m, h in more.items()})
        ref_probs = class_probabilities(module, prepare(pixels, pre)[0])[0]
    names = tuple(ref)
    flat_ref = {m for m in names if float(np.ptp(ref[m])) == 0.0}
    report(progress, 1 / n_total, "reference maps")

    rng = np.random.default_rng(seed)
    comparisons: list[Comparison] = []
    notes: list[str] = []
    perturbations = tuple(perturbations)
    for start in range(0, len(perturbations), batch_size):
        chunk = perturbations[start : start + batch_size]
        prepared = [prepare(p.apply(pixels, rng), pre) for p in chunk]  # same preparation as any input
        batch = torch.cat([t for t, _ in prepared])
        maps_list, _t, probs = compute_maps_batch(explainer, module, batch, target, methods, extra)
        for i, pert in enumerate(chunk):
            row_r, row_s, row_i = {}, {}, {}
            for m in names:
                on_original = _to_grid(prepared[i][1].to_original(maps_list[i][m]), grid)
                aligned, valid = pert.align(on_original)
                row_r[m], row_s[m], row_i[m] = _compare(ref[m], aligned, valid)
            comparisons.append(Comparison(pert.name, MappingProxyType(row_r), MappingProxyType(row_s),
                                          MappingProxyType(row_i), float(probs[i, target]),
                                          rule.decide(probs[i])))
        report(progress, (start + len(chunk) + 1) / n_total, ", ".join(p.name for p in chunk))

    checkpoint = None
    if second_model is not None:
        module2, layer2, _ = unpack_model(second_model, None)
        pre2 = preprocessing_of(second_model, pre)
        maps, _t, probs = explain(pixels, Explainer(module2, target_layer=layer2 or layer), module2, pre2, target)
        valid = np.ones(grid, dtype=bool)
        cr, cs, ci = {}, {}, {}
        for m in names:
            cr[m], cs[m], ci[m] = _compare(ref[m], maps[m], valid)
        name = str(getattr(getattr(second_model, "card", None), "name", "second checkpoint"))
        checkpoint = Comparison(f"checkpoint {name}", MappingProxyType(cr), MappingProxyType(cs),
                                MappingProxyType(ci), float(probs[target]),
                                DecisionRule.of(getattr(second_model, "card", None)).decide(probs))
        report(progress, 1.0, "second checkpoint")

    if flat_ref:
        notes.append("flat map on the unchanged image (no evidence for this class at the target layer): "
                     + ", ".join(sorted(flat_ref)) + " — stability not defined (NaN)")
    ref_pred = rule.decide(ref_probs)
    flipped = [c.name for c in comparisons if c.predicted != ref_pred]
    if flipped:
        notes.append("the predicted class changed under: " + ", ".join(flipped)
                     + " (the change was not label-preserving for this model)")
    report(progress, 1.0, "done")
    return StabilityResult(
        methods=names,
        target=int(target),
        reference_probability=float(ref_probs[target]),
        reference_predicted=ref_pred,
        comparisons=tuple(comparisons),
        checkpoint=checkpoint,
        notes=tuple(notes),
        timings_ms=MappingProxyType({"total": round((time.perf_counter() - started) * 1e3, 1)}),
    )


def stability_summary(model: Any, result: Any, *, second_model: Any = None,
                      progress: Progress | None = None) -> dict[str, dict[str, float]]:
    """Stability figures for a :class:`xai.pipeline.PipelineResult` (batch report helper).

    Uses the result's maps as the reference (no extra explanation) and the default changes; ``second_model``
    (another checkpoint of the same architecture, e.g. ``models.second_checkpoint(model.card)``) adds the
    checkpoint comparison. Returns :meth:`StabilityResult.summary`."""
    res = stability(
        model,
        result.radiograph,
        target=int(result.target_index),
        methods=tuple(result.maps),
        reference_maps=result.maps,
        second_model=second_model,
        progress=progress,
    )
    return res.summary()
