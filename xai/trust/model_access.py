"""Small helpers shared by the trust tools (model unpacking, progress, private model copies)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from xai.preprocessing import Preprocessing

#: ``progress(fraction in [0, 1], message)``; the page wires it to ``st.progress``, the CLI to tqdm.
Progress = Callable[[float, str], None]


def report(progress: Progress | None, fraction: float, message: str) -> None:
    """Call ``progress`` if given, clamping the fraction to [0, 1]."""
    if progress is not None:
        progress(float(min(1.0, max(0.0, fraction))), message)


def unpack_model(model: Any, target_layer: str | None = None) -> tuple[nn.Module, str | None, Any]:
    """``(module, target layer name, card or None)`` for a ``models.LoadedModel`` or a bare ``nn.Module``.

    A LoadedModel's card names the target layer; an explicit ``target_layer`` wins."""
    from torch import nn

    if isinstance(model, nn.Module):
        return model, target_layer, None
    module = getattr(model, "module", None)
    card = getattr(model, "card", None)
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a models.LoadedModel or torch.nn.Module, got {type(model).__name__}")
    layer = target_layer if target_layer is not None else getattr(card, "target_layer", None)
    return module, layer, card


def on_model(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` moved to the model's device and floating dtype (the engine's rule: its first floating parameter
    or buffer), detached; the trust checks run where the model lives."""
    from xai.engine import model_device_dtype

    device, dtype = model_device_dtype(module, x)
    return x.detach().to(device=device, dtype=dtype)


def to_numpy(t: torch.Tensor, dtype: Any = np.float64) -> np.ndarray:
    """A tensor on any device as a NumPy array: detached and copied to the CPU first (a CUDA tensor has no
    ``.numpy()``)."""
    return t.detach().cpu().numpy().astype(dtype, copy=False)


def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``x`` without gradients, computed on the model's device (they stay there)."""
    import torch

    with torch.no_grad():
        return module(on_model(module, x))


def class_probabilities(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    """(N, C) float64 probabilities of ``x`` by the one rule, :func:`xai.scores.probabilities` (softmax;
    sigmoid for a single logit), computed on the model's device."""
    from xai.scores import probabilities

    return to_numpy(probabilities(forward(module, x).float()))


def preprocessing_of(model: Any, preprocessing: Preprocessing | None) -> Preprocessing:
    """The explicit preprocessing, else the model card's; a clear error when neither exists."""
    if preprocessing is not None:
        return preprocessing
    card = getattr(model, "card", None)
    found = getattr(card, "preprocessing", None)
    if found is None:
        raise ValueError("no preprocessing: pass preprocessing=... or a models.LoadedModel with a card")
    return found


def private_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode with every module hook cleared.

    The copy is ours to modify (randomise weights); hooks another session may have registered on the
    shared model at the moment of copying must not travel with it."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
            "_forward_hooks_always_called",
        ):
            hooks = getattr(sub, attr, None)
            if hooks is not None:
                hooks.clear()
    return clone.eval()


def first_map(maps: Any, method: str) -> np.ndarray:
    """The (H, W) float64 display map of the first image for ``method`` from an Explanation."""
    return np.asarray(maps[method], dtype=np.float64)[0]


#: An extra map to judge beside the engine's: ``fn(module, x (1, C, H, W), target) -> (H, W)`` non-negative map on
#: the model-input grid (e.g. Integrated Gradients, or a weight-free baseline such as an edge detector).
MapFn = Callable[[Any, Any, int], np.ndarray]


def unit_map(heat: np.ndarray) -> np.ndarray:
    """A non-negative map scaled to [0, 1] by its maximum (zeros stay zeros)."""
    h = np.clip(np.asarray(heat, dtype=np.float64), 0.0, None)
    top = h.max() if h.size else 0.0
    return h / top if top > 0 else h


def compute_maps_batch(
    explainer: Any,
    module: Any,
    x: Any,
    target: int | None,
    methods: tuple[str, ...],
    extra: dict[str, MapFn] | None,
) -> tuple[list[dict[str, np.ndarray]], int, np.ndarray]:
    """Maps (H, W) in [0, 1] for every image of a batch ``x`` (N, C, H, W), all explaining one class.

    ``target`` None: the first image's predicted class, used for all. Returns (per-image maps, target,
    probabilities (N, C))."""
    n = int(x.shape[0])
    per_image: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    if methods:
        if target is None:
            e = explainer.explain(x[:1], target=None, methods=methods)
            target = int(np.asarray(e.target).reshape(-1)[0])
            if n > 1:
                e = explainer.explain(x, target=[target] * n, methods=methods)
        else:
            e = explainer.explain(x, target=[int(target)] * n, methods=methods)
        probs = np.asarray(e.probabilities, dtype=np.float64)
        for m in methods:
            batch = np.asarray(e.maps[m], dtype=np.float64)
            for i in range(n):
                per_image[i][m] = batch[i]
    else:
        probs = class_probabilities(module, x)
        if target is None:
            target = int(np.argmax(probs[0]))
    for name, fn in (extra or {}).items():
        for i in range(n):
            per_image[i][name] = unit_map(fn(module, x[i : i + 1], int(target)))
    return per_image, int(target), probs


def compute_maps(
    explainer: Any,
    module: Any,
    x: Any,
    target: int | None,
    methods: tuple[str, ...],
    extra: dict[str, MapFn] | None,
) -> tuple[dict[str, np.ndarray], dict[str, bool], int, np.ndarray]:
    """Maps (H, W) in [0, 1] of the engine's ``methods`` and of the ``extra`` functions for one input.

    Returns (maps, flat flags, target index, class probabilities). A map is flat when it is constant
    (the engine shows flat maps as zeros)."""
    maps_list, target, probs = compute_maps_batch(explainer, module, x, target, methods, extra)
    maps = maps_list[0]
    flat = {m: bool(np.ptp(h) == 0) for m, h in maps.items()}
    return maps, flat, target, probs[0]
