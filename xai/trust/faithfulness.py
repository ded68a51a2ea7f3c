"""Deletion and insertion curves (Petsiuk, Das & Saenko, "RISE", BMVC 2018).

Pixels of the model input are ranked by the map (most important first; ties in row-major order).
*Deletion* starts from the input and replaces the top k % of pixels (all channels) by the baseline;
*insertion* starts from the baseline and puts the top k % of the input's pixels back; k runs over
``steps + 1`` equal fractions from 0 to 1. The curve is the model's probability of the explained class
(:func:`xai.scores.probabilities`: softmax over the logits; sigmoid for a single-logit model, whose only
class index is 0). A faithful map makes the deletion curve fall
fast (low AUC is good) and the insertion curve rise fast (high AUC is good). AUC by the trapezoid rule over
the fraction axis [0, 1].

Baseline (stated with every result): ``"blur"`` (default) — the input blurred by a Gaussian with
sigma = ``blur_sigma`` x side of the input (5 %: about 11 px at 224), in model-input space, so removed
pixels lose detail but keep the image's overall intensity; ``"mean"`` — each channel's mean value;
``"black"`` — the prepared value of a black image (needs the preprocessing's mean/std, i.e. a LoadedModel).
All ``2 (steps + 1)`` perturbed inputs per map are evaluated in batched forward passes without gradients,
on the model's device and dtype.

The result also carries the model's probability on the film (``score``) and on the baseline alone
(``baseline_score``): the two ends of every curve. When the baseline already scores about as high as the
film (a blurred film still called COVID-19), no pixel order can move the curves, the AUCs only restate
that score and say nothing about the map — the verdict reads it first (:mod:`xai.trust.verdict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from xai.scores import probabilities
from xai.trust import metrics
from xai.trust.model_access import Progress, on_model, report, to_numpy, unpack_model

if TYPE_CHECKING:  # the seams' types: a bundle's model or a bare module, a radiograph or its pixels
    from torch import nn

    from xai.protocols import LoadedModel

__all__ = ["BASELINES", "FaithfulnessCurves", "FaithfulnessResult", "make_baseline", "faithfulness", "curves"]

BASELINES = ("blur", "mean", "black")


@dataclass(frozen=True)
class FaithfulnessCurves:
    """Deletion and insertion curves of one map: probabilities at ``fractions`` and their AUCs."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: float
    insertion_auc: float


@dataclass(frozen=True)
class FaithfulnessResult:
    """Curves per method for one input; ``baseline`` says what removed pixels were replaced with;
    ``score`` and ``baseline_score``: the model's probability of the target on the film and on the
    baseline alone (None when not measured)."""

    target: int
    baseline: str
    curves: Mapping[str, FaithfulnessCurves]
    notes: tuple[str, ...] = field(default=())
    score: float | None = None
    baseline_score: float | None = None

    def table(self) -> list[dict[str, Any]]:
        """One row per method: its AUCs, beside the probability on the film and on the baseline."""
        ends = {"P on the film": None if self.score is None else round(self.score, 3),
                "P on the baseline": None if self.baseline_score is None else round(self.baseline_score, 3)}
        return [
            {"method": m, "deletion_auc (lower is better)": round(c.deletion_auc, 3),
             "insertion_auc (higher is better)": round(c.insertion_auc, 3), **ends}
            for m, c in self.curves.items()
        ]


def make_baseline(x: torch.Tensor, kind: str = "blur", *, blur_sigma: float = 0.05,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> tuple[torch.Tensor, str]:
    """The baseline tensor for ``x`` (1, C, H, W) and a sentence describing it."""
    if kind == "blur":
        sigma = max(0.5, blur_sigma * max(x.shape[-2:]))
        arr = x[0].detach().cpu().float().numpy().transpose(1, 2, 0)
        blurred = cv2.GaussianBlur(np.ascontiguousarray(arr), (0, 0), sigmaX=sigma, sigmaY=sigma,
                                   borderType=cv2.BORDER_REFLECT)
        if blurred.ndim == 2:
            blurred = blurred[:, :, None]
        out = torch.from_numpy(blurred.transpose(2, 0, 1).copy()).unsqueeze(0).to(device=x.device, dtype=x.dtype)
        return out, f"Gaussian blur of the input (sigma {sigma:.1f} px)"
    if kind == "mean":
        return x.detach().mean(dim=(2, 3), keepdim=True).expand_as(x).clone(), "per-channel mean of the input"
    if kind == "black":
        if mean is None or std is None:
            raise ValueError("the black baseline needs the preprocessing mean and std")
        from xai.trust.integrated_gradients import black_baseline

        return black_baseline(x.detach(), mean, std), "black image"
    raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")


def curves(
    module: torch.nn.Module,
    x: torch.Tensor,
    heat: np.ndarray,
    target: int,
    baseline: torch.Tensor,
    *,
    steps: int = 20,
    batch_size: int = 21,
) -> FaithfulnessCurves:
    """Deletion and insertion curves for one map ``heat`` (H, W) on input ``x`` (1, C, H, W)."""
    x = on_model(module, x)
    baseline = baseline.detach().to(device=x.device, dtype=x.dtype)
    h, w = x.shape[-2:]
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != (h, w):
        raise ValueError(f"map shape {heat.shape} must equal the input's spatial shape {(h, w)}")
    if steps < 1:
        raise ValueError("steps must be >= 1")
    order = np.argsort(-heat.ravel(), kind="stable")
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * h * w).astype(np.int64)
    # rank[p] = position of pixel p in the importance order; pixel p is "taken" at step s if rank < count_s
    rank = np.empty(h * w, dtype=np.int64)
    rank[order] = np.arange(h * w)
    rank_t = torch.from_numpy(rank.reshape(h, w)).to(x.device)
    counts_t = torch.from_numpy(counts).to(x.device)
    results: dict[str, list[torch.Tensor]] = {"deletion": [], "insertion": []}
    with torch.no_grad():
        for start in range(0, steps + 1, batch_size):
            taken = (rank_t[None] < counts_t[start : start + batch_size, None, None]).unsqueeze(1).to(x.dtype)
            deleted = x * (1 - taken) + baseline * taken
            inserted = baseline * (1 - taken) + x * taken
            logits = module(torch.cat([deleted, inserted]))
            if not 0 <= target < logits.shape[1]:
                raise ValueError(f"target class {target} out of range: the model has {logits.shape[1]} output(s)")
            probs = probabilities(logits)[:, target]
            n = taken.shape[0]
            results["deletion"].append(probs[:n])
            results["insertion"].append(probs[n:])
    deletion = to_numpy(torch.cat(results["deletion"]))
    insertion = to_numpy(torch.cat(results["insertion"]))
    return FaithfulnessCurves(
        fractions=fractions,
        deletion=deletion,
        insertion=insertion,
        deletion_auc=metrics.auc_trapezoid(deletion, fractions),
        insertion_auc=metrics.auc_trapezoid(insertion, fractions),
    )


def faithfulness(
    model: LoadedModel | nn.Module,
    x: torch.Tensor,
    maps: Mapping[str, np.ndarray],
    target: int,
    *,
    baseline: str = "blur",
    steps: int = 20,
    batch_size: int = 21,
    progress: Progress | None = None,
) -> FaithfulnessResult:
    """Deletion/insertion curves and AUCs for every map in ``maps`` (method -> (H, W) on the model grid).

    ``model``: LoadedModel or nn.Module (the model is only run forward, without gradients).
    """
    module, _layer, card = unpack_model(model)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be a prepared tensor of shape (1, C, H, W), got {getattr(x, 'shape', x)}")
    x = on_model(module, x)
    pre = getattr(card, "preprocessing", None)
    base, description = make_baseline(
        x, baseline, mean=getattr(pre, "mean", None), std=getattr(pre, "std", None)
    )
    with torch.no_grad():
        ends = probabilities(module(torch.cat([x, base.to(device=x.device, dtype=x.dtype)])))
    if not 0 <= int(target) < ends.shape[1]:
        raise ValueError(f"target class {target} out of range: the model has {ends.shape[1]} output(s)")
    score, baseline_score = (float(v) for v in to_numpy(ends[:, int(target)]))
    out: dict[str, FaithfulnessCurves] = {}
    notes = []
    for k, (method, heat) in enumerate(maps.items()):
        heat = np.asarray(heat)
        if heat.ndim == 3 and heat.shape[0] == 1:
            heat = heat[0]
        if np.ptp(heat) == 0:
            notes.append(f"{method}: flat map, pixels taken in row-major order (the curve says nothing)")
        out[method] = curves(module, x, heat, int(target), base, steps=steps, batch_size=batch_size)
        report(progress, (k + 1) / len(maps), f"deletion/insertion: {method}")
    return FaithfulnessResult(target=int(target), baseline=description, curves=MappingProxyType(out),
                              notes=tuple(notes), score=score, baseline_score=baseline_score)
