"""Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017).

    IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x')) / dx_i da

with F the target class *logit* (as for the CAM methods) and x' the baseline. The integral is computed by
the trapezoid rule on ``steps`` equal intervals (``steps + 1`` points, endpoints weighted 1/2), in batched
forward/backward passes of ``batch_size`` interpolated images. Completeness (the axiom the paper proves):
sum_i IG_i(x) = F(x) - F(x'); :attr:`IGResult.delta` reports the numerical error of that identity so a
user can see whether ``steps`` was enough (the paper suggests 20–300 steps; the error shrinks as 1/steps^2
for smooth F).

Baseline: by default the *black image*, i.e. the prepared tensor of an all-zero radiograph (the same value
the letterbox padding has: (0 - mean) / std per channel). ``baseline="zero"`` uses the all-zero tensor in
model-input space (a mid-grey image after normalisation); a tensor may also be passed.

Display map: |IG| summed over channels, clipped at the 99.5th percentile and scaled to [0, 1] (the same
clipping the engine uses for the guided maps). Only input gradients are computed (``torch.autograd.grad``),
so the model's parameters, ``.grad`` fields, hooks and train/eval mode are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from xai.scores import DecisionRule, probabilities
from xai.trust.model_access import Progress, on_model, report, to_numpy, unpack_model

if TYPE_CHECKING:  # the seam's type: a bundle's model (or a bare module)
    from xai.protocols import LoadedModel

__all__ = ["IGResult", "black_baseline", "ig_display", "integrated_gradients", "trapezoid_weights"]

CLIP_QUANTILE = 0.995


@dataclass(frozen=True)
class IGResult:
    """Integrated Gradients for one input.

    ``attributions``: float32 (C, H, W), signed. ``map``: display map float32 (H, W) in [0, 1].
    ``score`` / ``baseline_score``: the target logit at x and at the baseline; ``delta``:
    sum(attributions) - (score - baseline_score) (completeness error)."""

    attributions: np.ndarray
    map: np.ndarray
    target: int
    score: float
    baseline_score: float
    delta: float
    steps: int
    baseline: str

    @property
    def relative_delta(self) -> float:
        """|delta| / |F(x) - F(x')| (inf when the two scores are equal)."""
        gap = abs(self.score - self.baseline_score)
        return abs(self.delta) / gap if gap > 0 else float("inf")


def trapezoid_weights(steps: int) -> np.ndarray:
    """Weights of the trapezoid rule on [0, 1] with ``steps`` intervals: (1/2, 1, ..., 1, 1/2) / steps."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    w = np.full(steps + 1, 1.0 / steps)
    w[0] = w[-1] = 0.5 / steps
    return w


def black_baseline(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The prepared tensor of a black image: (0 - mean_c) / std_c per channel, shaped like ``x``."""
    c = x.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for a {c}-channel input")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    return ((0.0 - m) / s).expand_as(x).clone()


def ig_display(attributions: np.ndarray) -> np.ndarray:
    """|IG| summed over channels, divided by its 99.5th percentile, clipped to [0, 1] (zeros when flat)."""
    v = np.abs(np.asarray(attributions, dtype=np.float64)).sum(axis=0)
    top = float(np.quantile(v, CLIP_QUANTILE))
    if top <= 0:
        top = float(v.max())
    if top <= 0:
        return np.zeros(v.shape, dtype=np.float32)
    return np.clip(v / top, 0.0, 1.0).astype(np.float32)


def _select(logits: torch.Tensor, target: int) -> torch.Tensor:
    return logits[:, target]


def integrated_gradients(
    model: LoadedModel | nn.Module,
    x: torch.Tensor,
    *,
    target: int | None = None,
    baseline: torch.Tensor | str = "black",
    steps: int = 32,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> IGResult:
    """Integrated Gradients of the target logit for one prepared input ``x`` (1, C, H, W).

    ``model``: nn.Module or models.LoadedModel (whose card's preprocessing defines the black baseline).
    ``target``: class index (default: the class the model predicts at ``x``, by its card's decision rule).
    """
    module, _layer, card = unpack_model(model)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be a prepared tensor of shape (1, C, H, W), got {getattr(x, 'shape', x)}")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    x = on_model(module, x)  # the model's device and dtype
    if isinstance(baseline, str):
        if baseline == "zero":
            base, base_name = torch.zeros_like(x), "zero tensor (model-input space)"
        elif baseline == "black":
            pre = getattr(card, "preprocessing", None)
            if pre is None:
                base, base_name = torch.zeros_like(x), "zero tensor (no preprocessing known for a black image)"
            else:
                base, base_name = black_baseline(x, pre.mean, pre.std), "black image"
        else:
            raise ValueError(f"baseline must be 'black', 'zero' or a tensor, got {baseline!r}")
    else:
        if baseline.shape != x.shape:
            raise ValueError(f"baseline shape {tuple(baseline.shape)} differs from input {tuple(x.shape)}")
        base, base_name = baseline.detach().to(device=x.device, dtype=x.dtype), "given tensor"

    with torch.no_grad():
        logits = module(torch.cat([x, base]))
    if target is None:
        target = DecisionRule.of(card).decide(to_numpy(probabilities(logits[:1].float()))[0])  # the card's rule
    if not 0 <= int(target) < logits.shape[1]:
        raise ValueError(f"target {target} out of range for {logits.shape[1]} classes")
    target = int(target)
    score, base_score = float(logits[0, target]), float(logits[1, target])

    alphas = torch.linspace(0.0, 1.0, steps + 1, dtype=x.dtype, device=x.device)
    weights = torch.as_tensor(trapezoid_weights(steps), dtype=x.dtype, device=x.device)
    diff = x - base
    total = torch.zeros_like(x)
    for start in range(0, steps + 1, batch_size):
        a = alphas[start : start + batch_size].view(-1, 1, 1, 1)
        points = (base + a * diff).requires_grad_(True)
        with torch.enable_grad():
            out = _select(module(points), target)
            (grad,) = torch.autograd.grad(out.sum(), points)
        w = weights[start : start + batch_size].view(-1, 1, 1, 1)
        total += (grad.detach() * w).sum(dim=0, keepdim=True)
        report(progress, min(1.0, (start + batch_size) / (steps + 1)), "integrated gradients")
    attributions = to_numpy((diff * total)[0], np.float32)
    delta = float(attributions.astype(np.float64).sum() - (score - base_score))
    return IGResult(
        attributions=attributions,
        map=ig_display(attributions),
        target=target,
        score=score,
        baseline_score=base_score,
        delta=delta,
        steps=steps,
        baseline=base_name,
    )
