"""The guided-ReLU rule of Guided Backpropagation, applied without touching the model.

Guided Backpropagation (Springenberg et al. 2015, "Striving for Simplicity: The All Convolutional Net")
changes the backward rule of every ReLU: with ``y = ReLU(x)`` and incoming gradient ``g``,

    plain:   dx = g * [x > 0]
    guided:  dx = g * [x > 0] * [g > 0]

(ReLU6 / ``hardtanh(x, 0, m)``: also ``[x < m]``, exactly as its plain backward.)

Libraries that swap ``nn.ReLU`` modules miss the functional calls (``F.relu`` in torchvision's DenseNet
``forward``) and leave a shared model altered when an exception interrupts them. Here a
:class:`torch.overrides.TorchFunctionMode` -- active only inside the ``with`` block and only in the calling
thread (modes are thread-local) -- intercepts every ReLU *call* (``nn.ReLU``/``nn.ReLU6`` modules call the
functionals; re-used modules are simply called again) and routes it to :class:`GuidedReLU`, an autograd
function whose forward is bit-identical to the original call (in-place calls stay in place) and whose
backward applies the guided rule when :attr:`GuidedState.guided` is true, the plain rule otherwise. The
switch lives in a per-call :class:`GuidedState`, so one forward graph can serve a plain and a guided
backward pass, and concurrent calls never see each other's state.

The mode also counts the ReLUs met after a marked point of the forward pass (the engine marks the moment
the target layer's output is captured) and the non-ReLU activations (SiLU, GELU, Hardswish, sigmoid, ...)
through which guided backprop degenerates to the plain gradient.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["GuidedReLU", "GuidedReLUMode", "GuidedState"]


@dataclass
class GuidedState:
    """Per-call state shared by the mode (forward) and :class:`GuidedReLU` (backward).

    ``guided`` selects the backward rule and may be flipped between two backward passes over one graph.
    ``relu_calls`` counts every ReLU routed through the guided rule; ``relu_calls_after_mark`` those after
    :meth:`mark` (minus the in-place ReLU applied to the marked tensor itself, which makes that tensor
    post-ReLU rather than putting a ReLU above it).
    """

    guided: bool = True
    relu_calls: int = 0
    relu_calls_after_mark: int = 0
    marked: torch.Tensor | None = None
    other_activations: Counter[str] = field(default_factory=Counter)
    thread_id: int = field(default_factory=threading.get_ident)

    def mark(self, tensor: torch.Tensor) -> None:
        """Restart the after-mark ReLU count: ``tensor`` was just captured (e.g. the target layer's output)."""
        self.marked = tensor
        self.relu_calls_after_mark = 0


class GuidedReLU(torch.autograd.Function):
    """ReLU / ReLU6 with a switchable guided backward rule.

    Forward: ``torch.relu`` (``upper is None``) or ``hardtanh(x, 0, upper)``, in place when the caller asked
    for it (the model sees exactly the tensors it would see without the mode). Backward: the plain rule
    ``g * [0 < y (< upper)]`` -- the same mask as PyTorch's own backward, computed from the saved output --
    times ``[g > 0]`` when ``state.guided``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, upper: float | None, inplace: bool, state: GuidedState
    ) -> torch.Tensor:
        if upper is None:
            out = torch.relu_(x) if inplace else torch.relu(x)
        else:
            out = F.hardtanh(x, 0.0, upper, inplace=inplace)
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(out)
        ctx.upper = upper
        ctx.state = state
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (out,) = ctx.saved_tensors
        # PyTorch's own backward kernels from the saved output (0 < y < upper  <=>  0 < x < upper), one
        # memory pass; the guided rule then zeroes negative gradients in place on that fresh tensor.
        if ctx.upper is None:
            grad_in = torch.ops.aten.threshold_backward(grad, out, 0.0)
        else:
            grad_in = torch.ops.aten.hardtanh_backward(grad, out, 0.0, ctx.upper)
        if ctx.state.guided:
            grad_in.clamp_(min=0.0)
        return grad_in, None, None, None


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _relu_spec(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.Tensor, float | None, bool] | None:
    """``(input, upper, inplace)`` when ``func(*args, **kwargs)`` is a ReLU or ReLU6, else ``None``."""
    if func in _RELU_OUT_OF_PLACE:
        return args[0], None, bool(_arg(args, kwargs, 1, "inplace", False)) if func is F.relu else False
    if func in _RELU_IN_PLACE:
        return args[0], None, True
    if func is F.relu6:
        return args[0], 6.0, bool(_arg(args, kwargs, 1, "inplace", False))
    if func in (F.hardtanh, F.hardtanh_):
        min_val = float(_arg(args, kwargs, 1, "min_val", -1.0))
        max_val = float(_arg(args, kwargs, 2, "max_val", 1.0))
        inplace = func is F.hardtanh_ or bool(_arg(args, kwargs, 3, "inplace", False))
        if min_val == 0.0 and max_val > 0.0:
            return args[0], max_val, inplace
        return None
    if func in _THRESHOLD:
        threshold = float(_arg(args, kwargs, 1, "threshold", float("nan")))
        value = float(_arg(args, kwargs, 2, "value", float("nan")))
        inplace = func in (torch.threshold_, F.threshold_) or bool(_arg(args, kwargs, 3, "inplace", False))
        if threshold == 0.0 and value == 0.0:
            return args[0], None, inplace
        return None
    return None


_RELU_OUT_OF_PLACE = (F.relu, torch.relu, torch.Tensor.relu)
_RELU_IN_PLACE = (torch.relu_, torch.Tensor.relu_)
_THRESHOLD = (F.threshold, torch.threshold, torch.threshold_, F.threshold_)

# Activations whose backward the guided rule does not change (guided backprop = plain gradient there).
_OTHER_ACTIVATIONS: dict[Any, str] = {
    F.silu: "SiLU",
    F.gelu: "GELU",
    F.hardswish: "Hardswish",
    F.hardsigmoid: "Hardsigmoid",
    F.mish: "Mish",
    F.elu: "ELU",
    F.selu: "SELU",
    F.celu: "CELU",
    F.leaky_relu: "LeakyReLU",
    F.prelu: "PReLU",
    F.softplus: "Softplus",
    torch.sigmoid: "sigmoid",
    torch.Tensor.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    torch.Tensor.tanh: "tanh",
}


class GuidedReLUMode(TorchFunctionMode):
    """Route every ReLU call made in this thread through :class:`GuidedReLU` while the mode is active.

    Use as ``with GuidedReLUMode(state): logits = model(x)``. Nothing on the model changes; the mode is
    thread-local, so other threads running the same model are unaffected.
    """

    def __init__(self, state: GuidedState) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        spec = _relu_spec(func, args, kwargs)
        if spec is not None and isinstance(spec[0], torch.Tensor):
            x, upper, inplace = spec
            state = self.state
            state.relu_calls += 1
            if not (inplace and state.marked is not None and x is state.marked):
                state.relu_calls_after_mark += 1
            return GuidedReLU.apply(x, upper, inplace, state)
        name = _OTHER_ACTIVATIONS.get(func)
        if name is not None:
            self.state.other_activations[name] += 1
        return func(*args, **kwargs)
