"""Which layer's feature map the CAM methods explain.

``resolve_target_layer(model, spec)`` accepts a module, a dotted name, or ``None``. ``None`` picks, in order:

1. ``model.default_target_layer`` (a dotted name) when the model declares one (our ChestCOVNet does);
2. a table for torchvision families (below);
3. a fallback found by a dry run: the last module, in forward completion order, whose output is a 4-D
   spatial map ``(N, K, h, w)`` -- pooling layers (and containers that merely return a pooling layer's
   output) excluded.

Target map semantics: the tensor the layer returns, *as the model leaves it after the forward pass*.
torchvision's DenseNet applies ``F.relu(features, inplace=True)`` to the output of ``features``; that
in-place ReLU turns the very tensor captured from ``features`` into the post-ReLU map that feeds the
pooling, and the engine takes activations *and* gradients from that same tensor (the "DenseNet-121 trap":
captum, torchcam and pytorch-grad-cam disagree on this layer because they mix pre- and post-ReLU values).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["TargetLayer", "default_target_name", "find_last_spatial_layer", "resolve_module"]

TargetLayer = nn.Module | str | None

_POOLING = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.LPPool2d,
    nn.Flatten,
)


def _torchvision_table() -> list[tuple[type, str]]:
    """(class, target name) for torchvision families; empty when torchvision is not importable."""
    try:
        from torchvision import models as tvm
    except ImportError:  # pragma: no cover - torchvision is a runtime requirement
        return []
    table: list[tuple[type, str]] = [
        (tvm.ResNet, "layer4"),
        # The tensor returned by `features` (norm5) is made post-ReLU in place by DenseNet.forward.
        (tvm.DenseNet, "features"),
        (tvm.EfficientNet, "features"),
        (tvm.MobileNetV3, "features"),
        (tvm.ConvNeXt, "features"),
        (tvm.RegNet, "trunk_output"),
    ]
    return table


def default_target_name(model: nn.Module) -> str | None:
    """The declared or tabulated target layer name for ``model``, or ``None`` (fallback needed)."""
    declared = getattr(model, "default_target_layer", None)
    if isinstance(declared, str) and declared:
        return declared
    for cls, name in _torchvision_table():
        if isinstance(model, cls):
            return name
    return None


def _valid_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def last_linear(model: nn.Module) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` of the model's last ``nn.Linear`` in module order: the classifier whose
    input is the penultimate feature vector (used by the out-of-distribution check). ``ValueError`` when
    the model has none."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer whose input could serve as features")
    return found[-1]


def resolve_module(model: nn.Module, spec: nn.Module | str) -> tuple[nn.Module, str]:
    """``(module, dotted name)`` for a module object or a dotted name; ``ValueError`` when not in ``model``."""
    if isinstance(spec, nn.Module):
        for name, module in model.named_modules():
            if module is spec:
                return module, name or "<model>"
        raise ValueError(
            f"target_layer {type(spec).__name__} is not a submodule of the model "
            f"({type(model).__name__}); pass one of its submodules or a dotted name"
        )
    if not isinstance(spec, str):
        raise TypeError(
            f"target_layer must be an nn.Module, a dotted name or None, not {type(spec).__name__}"
        )
    modules = dict(model.named_modules())
    if spec in modules and spec:
        return modules[spec], spec
    names = _valid_names(model)
    raise ValueError(
        f"unknown target layer {spec!r} for {type(model).__name__}; valid names: {', '.join(names)}"
    )


def find_last_spatial_layer(model: nn.Module, run_forward: Callable[[], Any]) -> str:
    """Name of the last module (forward completion order) returning a 4-D spatial map, by a dry run.

    ``run_forward`` runs the model once; forward hooks are registered on every submodule only for its
    duration (removed in ``finally``) and only record calls from the calling thread. Pooling layers, and
    containers returning a pooling layer's output, are skipped; a ``1 x 1`` map is used only when no larger
    one exists.
    """
    thread_id = threading.get_ident()
    pooled_outputs: list[torch.Tensor] = []  # tensors, not ids: an id can be reused once freed
    seen: list[tuple[str, bool]] = []  # (name, spatial larger than 1x1), in completion order

    def make_hook(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if threading.get_ident() != thread_id or not isinstance(output, torch.Tensor):
                return
            if isinstance(module, _POOLING):
                pooled_outputs.append(output)
                return
            if output.dim() == 4 and not any(output is pooled for pooled in pooled_outputs):
                seen.append((name, output.shape[-2] * output.shape[-1] > 1))

        return hook

    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name, module)))
        run_forward()
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError(
            f"no layer of {type(model).__name__} returns a 4-D feature map (N, K, h, w); "
            "pass target_layer explicitly"
        )
    larger = [name for name, spatial in seen if spatial]
    return (larger or [name for name, _ in seen])[-1]
