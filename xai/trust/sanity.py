"""Model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

Cascading randomisation: starting from the top layer (the logits) and moving down to the stem, the
weights of one more group of layers are replaced by random values at each step, cumulatively, and every
method's map is recomputed. A map that explains *what the model learned* must change as the learned
weights disappear; a map that stays similar is showing the input (edges), not the model.

Measured per method and step: Spearman rank correlation and SSIM between the original map and the
randomised one, both on the engine's display maps (float in [0, 1] at model-input resolution). Those are
non-negative: the CAMs by their ReLU, the guided maps because the engine displays max over channels of
|gradient| (clipped at the 99.5th percentile) — i.e. the *absolute-value* variant of Adebayo et al., which
they report for gradient-based maps; the sign of the guided gradient is not compared. Badge: a method *passes* when the Spearman correlation after
randomising every group is below 0.5.

Implementation choices (stated because they change numbers):

- The work happens on a private deep copy of the model (hooks cleared, eval mode); the caller's model is
  never touched. Randomisation is seeded (``seed``) and reproducible.
- Layers are grouped (about 8–12 steps, e.g. classifier, head, pairs of blocks, stem) instead of one step
  per convolution, to keep the check within seconds on a CPU.
- "Random weights": each parameter tensor (conv/linear weights and biases, batch-norm affine parameters)
  is redrawn from a Gaussian with the *same mean and standard deviation* as the trained tensor. This keeps
  activation scales (and so batch-norm running statistics and ReLU6 ranges) plausible, so randomised maps
  are not merely flat by saturation; buffers (running mean/variance) are left as trained. Adebayo et al.
  re-initialised from a truncated normal; both destroy what was learned.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from xai.scores import DecisionRule
from xai.trust import metrics
from xai.trust.model_access import (
    MapFn,
    Progress,
    class_probabilities,
    compute_maps,
    private_copy,
    report,
    unpack_model,
)

if TYPE_CHECKING:  # the seams' types: a bundle's model or a bare module, a radiograph or its pixels
    from xai.protocols import LoadedModel

__all__ = [
    "GUIDED_NOTE",
    "PASS_THRESHOLD",
    "SanityResult",
    "cascade_groups",
    "randomise_",
    "sanity_check",
]

#: A method passes when Spearman(original, fully randomised) is below this value.
PASS_THRESHOLD = 0.5

GUIDED_NOTE = (
    "Guided Backprop and Guided Grad-CAM are expected to fail on most models: Adebayo et al. (2018) showed "
    "they stay almost unchanged when the model's weights are randomised, because they mostly show image "
    "edges rather than what the model learned. Grad-CAM is expected to pass."
)


@dataclass(frozen=True)
class SanityResult:
    """Outcome of a cascading randomisation test on one image.

    ``steps[k]`` names the layer group randomised at step k (cumulative, top first: after step k, groups
    0..k are random). ``spearman[m][k]`` / ``ssim[m][k]`` compare method m's original map with its map
    after step k. ``maps[m]`` is float32 (1 + len(steps), H, W): the original map then one per step.
    ``passes[m]`` is None when the original map was flat (nothing to compare). ``vanished[m]``: the step
    from which the map stays flat (constant) to the end, else None — such a map "changes" (Spearman 0 against a
    constant map) by vanishing, and :meth:`reason` says so instead of a bare "passes".
    """

    methods: tuple[str, ...]
    steps: tuple[str, ...]
    spearman: Mapping[str, tuple[float, ...]]
    ssim: Mapping[str, tuple[float, ...]]
    passes: Mapping[str, bool | None]
    target: int
    seed: int
    threshold: float = PASS_THRESHOLD
    maps: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    notes: tuple[str, ...] = ()
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    vanished: Mapping[str, str | None] = field(default_factory=dict)

    def reason(self, method: str) -> str:
        """One sentence that explains the verdict (and never contradicts the notes)."""
        rho = self.spearman[method][-1]
        if self.passes[method] is None:
            return "The original map is flat: the test says nothing about it."
        if not self.passes[method]:
            return (f"Still ranks pixels like the original (Spearman {rho:.2f} ≥ {self.threshold}) with every "
                    "layer random: it shows the image more than what the model learned.")
        if (step := self.vanished.get(method)) is not None:
            return (f"Passes only because the map vanished: it is flat (all zero) once {step} is random, and "
                    "a flat map shares no ranking with the original (Spearman 0). It did not change shape; "
                    "see the steps before it and SSIM.")
        return f"Changes once the model is random (Spearman {rho:.2f} < {self.threshold}): it depends on the weights."

    @property
    def final_spearman(self) -> dict[str, float]:
        """Spearman correlation after randomising every group (the number on the badge)."""
        return {m: self.spearman[m][-1] for m in self.methods}

    def first_change(self, method: str) -> str | None:
        """Label of the first cascade step after which Spearman drops below the threshold (None: never).

        A map that explains the model changes as soon as the top layers are random; one that only shows
        edges survives until the randomisation reaches the first layers."""
        for label, rho in zip(self.steps, self.spearman[method], strict=True):
            if rho < self.threshold:
                return label
        return None

    def table(self) -> list[dict[str, Any]]:
        """One row per method: final Spearman, final SSIM, first step that changes the map, verdict."""
        rows = []
        for m in self.methods:
            verdict = {True: "passes", False: "fails", None: "n/a (flat map)"}[self.passes[m]]
            if self.passes[m] and self.vanished.get(m):
                verdict = "passes (the map vanished)"
            first = self.first_change(m)
            rows.append(
                {
                    "method": m,
                    "spearman_all_random": round(self.spearman[m][-1], 3),
                    "ssim_all_random": round(self.ssim[m][-1], 3),
                    "changes_at": (f"step {self.steps.index(first) + 1}/{len(self.steps)} ({first})"
                                   if first else "never"),
                    "verdict": verdict,
                }
            )
        return rows


def _flat_from(labels: list[str], maps: list[np.ndarray]) -> str | None:
    """The step from which every later map is flat (constant), or None when the last map is not flat."""
    first = None
    for label, m in zip(labels, maps, strict=True):
        first = (first or label) if np.ptp(m) == 0 else None
    return first


def _parameter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters directly, in registration order (forward order for usual CNNs)."""
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if name and any(True for _ in mod.parameters(recurse=False))
    ]


def cascade_groups(model: nn.Module, max_steps: int = 12, min_steps: int = 8) -> list[tuple[str, list[nn.Module]]]:
    """Group the parameter-owning modules into at most ``max_steps`` cascade steps, top (logits) first.

    Modules are grouped by their dotted-name prefix at the shallowest depth that yields at least
    ``min_steps`` groups (e.g. ``stem_conv``, ``blocks.0`` .. ``blocks.15``, ``head_conv``, ``classifier``);
    the top group (the classifier) always stays alone as the first step, and the others are merged into
    contiguous runs of similar size. Returns ``[(label, modules), ...]`` in randomisation order.
    """
    if max_steps < 2:
        raise ValueError("max_steps must be >= 2")
    owned = _parameter_modules(model)
    if not owned:
        raise ValueError(f"{type(model).__name__} has no parameters to randomise")
    max_depth = max(name.count(".") + 1 for name, _ in owned)
    groups: list[tuple[str, list[nn.Module]]] = []
    for depth in range(1, max_depth + 1):
        groups = []
        for name, mod in owned:
            key = ".".join(name.split(".")[:depth])
            if groups and groups[-1][0] == key:
                groups[-1][1].append(mod)
            else:
                groups.append((key, [mod]))
        if len(groups) >= min_steps:
            break
    groups.reverse()  # top first
    head, rest = groups[0], groups[1:]
    budget = max_steps - 1
    if len(rest) > budget:
        merged: list[tuple[str, list[nn.Module]]] = []
        bounds = np.linspace(0, len(rest), budget + 1).round().astype(int)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            chunk = rest[lo:hi]
            if not chunk:
                continue
            label = chunk[0][0] if len(chunk) == 1 else f"{chunk[-1][0]}…{chunk[0][0]}"
            merged.append((label, [m for _, mods in chunk for m in mods]))
        rest = merged
    return [head, *rest]


@torch.no_grad()
def randomise_(modules: Sequence[nn.Module], generator: torch.Generator) -> None:
    """Redraw every direct parameter of ``modules`` in place from N(mean, std) of its current values.

    A tensor with a single element or zero spread keeps its scale: it is drawn from N(mean, |mean|/2 or 1e-2)."""
    for mod in modules:
        for param in mod.parameters(recurse=False):
            values = param.detach().float()
            mean = float(values.mean())
            std = float(values.std()) if values.numel() > 1 else 0.0
            if not math.isfinite(std) or std == 0.0:
                std = max(abs(mean) / 2.0, 1e-2)
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_((noise * std + mean).to(param.dtype))


def sanity_check(
    model: LoadedModel | nn.Module,
    x: torch.Tensor,
    *,
    target: int | None = None,
    methods: Sequence[str] | None = None,
    target_layer: str | None = None,
    max_steps: int = 10,
    seed: int = 0,
    extra: dict[str, MapFn] | None = None,
    progress: Progress | None = None,
) -> SanityResult:
    """Cascading randomisation test for one prepared input ``x`` (1, C, H, W).

    ``model``: a ``models.LoadedModel`` (its card's target layer is used) or an ``nn.Module``. ``target``:
    the class to explain (default: the one the engine picks on the original model, kept fixed for every
    randomised copy). ``extra``: more maps to test, ``fn(module, x, target) -> (H, W)`` (e.g. Integrated
    Gradients, or a map that ignores the weights, which must fail). ``progress(fraction, message)`` is called
    after every step.
    """
    from xai.engine import METHODS, Explainer
    from xai.export import method_title  # the methods' display names have one home

    methods = tuple(METHODS) if methods is None else tuple(methods)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be a prepared tensor of shape (1, C, H, W), got {getattr(x, 'shape', x)}")
    module, layer, card = unpack_model(model, target_layer)
    started = time.perf_counter()
    report(progress, 0.0, "copying the model")
    clone = private_copy(module)
    explainer = Explainer(clone, target_layer=layer)
    if target is None:  # the class the model predicts by its card's rule, as on every page
        target = DecisionRule.of(card).decide(class_probabilities(clone, x)[0])
    originals, flat, target_index, _ = compute_maps(explainer, clone, x, target, methods, extra)
    names = tuple(originals)
    groups = cascade_groups(clone, max_steps=max_steps)
    total = len(groups) + 1
    report(progress, 1 / total, "original maps")

    maps: dict[str, list[np.ndarray]] = {m: [originals[m].astype(np.float32)] for m in names}
    rho: dict[str, list[float]] = {m: [] for m in names}
    sim: dict[str, list[float]] = {m: [] for m in names}
    generator = torch.Generator().manual_seed(int(seed))
    for k, (label, modules) in enumerate(groups):
        randomise_(modules, generator)
        randomised, _, _, _ = compute_maps(explainer, clone, x, target_index, methods, extra)
        for m in names:
            now = randomised[m]
            maps[m].append(now.astype(np.float32))
            rho[m].append(metrics.spearman(originals[m], now))
            sim[m].append(metrics.ssim(originals[m], now, data_range=1.0))
        report(progress, (k + 2) / total, f"randomised {label} ({k + 1}/{len(groups)})")

    passes = {m: (None if flat[m] else bool(rho[m][-1] < PASS_THRESHOLD)) for m in names}
    labels = [label for label, _ in groups]
    vanished = {m: _flat_from(labels, maps[m][1:]) for m in names}
    notes = [GUIDED_NOTE] if any(m.startswith("guided") for m in names) else []
    notes += [f"{method_title(m)}: the original map is flat, the test says nothing about it." for m in names
              if flat[m]]
    return SanityResult(
        methods=names,
        steps=tuple(label for label, _ in groups),
        spearman=MappingProxyType({m: tuple(v) for m, v in rho.items()}),
        ssim=MappingProxyType({m: tuple(v) for m, v in sim.items()}),
        passes=MappingProxyType(passes),
        target=target_index,
        seed=int(seed),
        maps=MappingProxyType({m: np.stack(v) for m, v in maps.items()}),
        notes=tuple(notes),
        timings_ms=MappingProxyType({"total": round((time.perf_counter() - started) * 1e3, 1)}),
        vanished=MappingProxyType(vanished),
    )
