"""What ``explain`` accepts: input checks, target resolution, device and dtype, versions and the clock."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xai.engine import methods as method_table
from xai.scores import probabilities


def _check_methods(methods: str | Iterable[str]) -> tuple[str, ...]:
    """The requested methods in table order; unknown or no names raise a ValueError listing the valid ones."""
    requested = (methods,) if isinstance(methods, str) else tuple(methods)
    table = tuple(method_table._TABLE)
    unknown = [m for m in requested if m not in method_table._TABLE]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid methods: {', '.join(table)}")
    if not requested:
        raise ValueError(f"no method requested; valid methods: {', '.join(table)}")
    return tuple(m for m in table if m in requested)


def check_input(x: Any) -> torch.Tensor:
    """``x`` if it is a finite, non-empty float tensor of shape (N, C, H, W); TypeError / ValueError naming
    what is wrong otherwise (every method here and in :mod:`xai.glassbox` checks its input with it)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, C, H, W), not {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W); got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"x is empty: shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor (preprocessed image); got dtype {x.dtype}")
    if not bool(torch.isfinite(x.sum())):  # NaN and inf propagate through the sum; cheaper than isfinite(x)
        raise ValueError("x contains NaN or infinite values")
    return x


#: A target chosen from the forward pass: the batch's class probabilities ``(N, C)`` (float64) in, one class
#: per image out — e.g. a model card's decision threshold. It runs between the forward and the backward pass,
#: so the class it picks is explained without a second pass.
TargetRule = Callable[[np.ndarray], Sequence[int] | np.ndarray]
#: What :meth:`Explainer.explain` accepts as ``target``.
Target = int | Sequence[int] | np.ndarray | torch.Tensor | TargetRule | None


def resolve_targets(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """One class index per image (long tensor on the logits' device): the predicted class for ``None``, else
    ``target`` (an int for every image, one per image, or a :data:`TargetRule` applied to the batch's
    probabilities) checked against the number of classes."""
    n, c = logits.shape
    if target is None:
        return logits.detach().argmax(dim=1)
    if callable(target):
        target = target(probabilities(logits.detach()).cpu().double().numpy())
    if isinstance(target, bool):
        raise TypeError("target must be an int, a list of ints (one per image) or None, not a bool")
    if isinstance(target, (int, np.integer)):
        values = [int(target)] * n
    else:
        if isinstance(target, torch.Tensor):
            target = target.detach().cpu().reshape(-1).tolist()
        elif isinstance(target, np.ndarray):
            target = target.reshape(-1).tolist()
        values = list(target)  # type: ignore[arg-type]
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
            raise TypeError(f"target must contain ints; got {values!r}")
        if len(values) != n:
            raise ValueError(f"target has {len(values)} entries but the batch has {n} images")
        values = [int(v) for v in values]
    bad = [v for v in values if not 0 <= v < c]
    if bad:
        raise ValueError(f"target class {bad[0]} out of range: the model has {c} classes (0..{c - 1})")
    return torch.tensor(values, dtype=torch.long, device=logits.device)


def model_device_dtype(model: nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and float dtype of the model's first floating parameter/buffer (x's when there is none)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return x.device, x.dtype


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 unless it is float32 or float64 already (half / bfloat16 models)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _versions() -> dict[str, str]:
    import xai

    return {"torch": torch.__version__, "xai": str(xai.__version__), "numpy": np.__version__}


class _Clock:
    """Stage timings in ms; synchronises CUDA so that device work is attributed to the right stage."""

    def __init__(self, device: torch.device) -> None:
        self.sync = device.type == "cuda"
        self.device = device
        self.start = self.last = time.perf_counter()
        # Every stage is always reported (0.0 when it did not run), so consumers can rely on the keys.
        self.timings: dict[str, float] = dict.fromkeys(("forward", "backward", "cams", "guided"), 0.0)

    def lap(self, stage: str) -> None:
        if self.sync:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + (now - self.last) * 1e3
        self.last = now

    def total(self) -> dict[str, float]:
        self.timings["total"] = (time.perf_counter() - self.start) * 1e3
        return self.timings
