"""Glass box: the intermediate quantities behind each map, for one image, from the engine's own numbers.

Pure library (no UI). Everything here starts from an :class:`xai.engine.Explanation` computed with
``details=True``; its ``details`` hold, per image (``N`` first), the target layer's activations ``A``
``(N, K, h, w)``, the gradients ``g = dS/dA`` of the target logit ``S``, the Grad-CAM weights
``mean_ab g`` ``(N, K)``, the Grad-CAM++ weights and per-pixel alphas. Nothing is recomputed by a
second method: the steps below reuse the engine's own formula functions, so what a page plots is what
the engine did.

* :func:`cam_steps` -- ``sum_k w_k A_k`` -> ReLU -> bilinear upsampling -> division by the maximum:
  the Grad-CAM / Grad-CAM++ map, step by step (Selvaraju et al. 2017, eq. 1-2).
* :func:`top_channels` -- the channels with the largest Grad-CAM weights and what each adds.
* :func:`plus_plus_contrast` -- Grad-CAM++'s per-pixel ``alpha * ReLU(g)`` (Chattopadhyay et al. 2018,
  eq. 19) against Grad-CAM's uniform ``g / (h w)``, and where the two maps differ.
* :func:`plain_input_gradient` -- the plain gradient ``dS/dx`` (one extra forward + backward pass of the
  model as given), to set beside guided backpropagation (Springenberg et al. 2015).
* :func:`guided_relus` -- the ReLU nodes of the real network where the guided rule acts.
* :func:`guided_contrast`, :func:`guided_gradcam` -- guided vs plain gradient, and Guided Grad-CAM as
  guided backprop x upsampled Grad-CAM.
* :func:`target_layer_reason` -- which rule chose the target layer and why that layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from xai.arrays import read_only
from xai.engine import (
    DETAILS,
    cam_display,
    check_input,
    guided_display,
    model_device_dtype,
    resolve_targets,
    weighted_cam,
)
from xai.guided import GraphReport, GuidedState, guide_graph
from xai.trust import metrics

__all__ = [
    "DETAIL_KEYS",
    "DIFFER_LEVEL",
    "CamSteps",
    "Channel",
    "Details",
    "GuidedContrast",
    "PlusPlusContrast",
    "cam_steps",
    "guided_contrast",
    "guided_gradcam",
    "guided_relus",
    "image_details",
    "plain_input_gradient",
    "plus_plus_contrast",
    "target_layer_reason",
    "top_channels",
]

#: The engine's ``details`` keys this module reads (one list, the engine's own).
DETAIL_KEYS: tuple[str, ...] = DETAILS
#: Two display maps (each in [0, 1], divided by its own maximum) "differ" where they are this far apart.
DIFFER_LEVEL = 0.25


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A torch copy of a (possibly read-only) numpy array."""
    return torch.from_numpy(np.array(a, copy=True))


def _unit_display(raw: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, bool, np.ndarray]:
    """The engine's CAM display of one raw map ``(h, w)``: ``(display (H, W), flat, upsampled raw)``."""
    display, flat, up = cam_display(_tensor(raw)[None], size)
    return display[0].numpy(), bool(flat[0]), up[0].numpy()


# ------------------------------------------------------------------------------------------ details
@dataclass(frozen=True, eq=False)
class Details:
    """One image's intermediate quantities (read-only numpy arrays, float32 or float64 as the engine gave).

    ``activations`` / ``gradients`` / ``alphas``: ``(K, h, w)``; ``gradcam_weights`` /
    ``gradcam_pp_weights``: ``(K,)``.
    """

    activations: np.ndarray
    gradients: np.ndarray
    gradcam_weights: np.ndarray
    gradcam_pp_weights: np.ndarray
    alphas: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.activations.shape[0])

    @property
    def feature_shape(self) -> tuple[int, int]:
        return int(self.activations.shape[1]), int(self.activations.shape[2])

    @property
    def uniform_gradient(self) -> bool:
        """True when each channel's gradient is the same at every cell (to 1e-6 of the largest), as behind
        global average pooling and a linear layer: then Grad-CAM equals CAM and alpha is flat per channel."""
        g = np.asarray(self.gradients, dtype=np.float64).reshape(self.channels, -1)
        top = float(np.abs(g).max()) if g.size else 0.0
        return bool(np.all(g.max(axis=1) - g.min(axis=1) <= 1e-6 * top))


def image_details(explanation: Any, index: int = 0) -> Details:
    """Image ``index``'s details from an explanation made with ``details=True``.

    Raises ValueError naming the problem: no details (the explanation was made without ``details=True``),
    a missing key, an image index out of range or arrays whose shapes do not fit together.
    """
    details = getattr(explanation, "details", None)
    if details is None:
        raise ValueError("this explanation has no details: explain with Explainer(...).explain(x, details=True)")
    missing = [k for k in DETAIL_KEYS if k not in details]
    if missing:
        raise ValueError(f"the explanation's details lack {', '.join(missing)}")
    n = int(np.asarray(details["activations"]).shape[0])
    if not 0 <= index < n:
        raise ValueError(f"image index {index} out of range: the explanation holds {n} image(s)")
    arrays = {k: np.asarray(details[k])[index] for k in DETAIL_KEYS}
    a = arrays["activations"]
    if a.ndim != 3:
        raise ValueError(f"activations must be (N, K, h, w); got {np.asarray(details['activations']).shape}")
    for key in ("gradients", "gradcam++_alphas"):
        if arrays[key].shape != a.shape:
            raise ValueError(f"{key} has shape {arrays[key].shape}, activations {a.shape}: they must match")
    for key in ("gradcam_weights", "gradcam++_weights"):
        if arrays[key].shape != (a.shape[0],):
            raise ValueError(f"{key} has shape {arrays[key].shape}; expected ({a.shape[0]},)")
    return Details(
        activations=read_only(arrays["activations"]),
        gradients=read_only(arrays["gradients"]),
        gradcam_weights=read_only(arrays["gradcam_weights"]),
        gradcam_pp_weights=read_only(arrays["gradcam++_weights"]),
        alphas=read_only(arrays["gradcam++_alphas"]),
    )


# ---------------------------------------------------------------------------------------- CAM steps
@dataclass(frozen=True, eq=False)
class CamSteps:
    """How a CAM map comes about: ``weighted_sum = sum_k w_k A_k`` (signed, ``(h, w)``), ``relu`` (the
    engine's raw map), ``upsampled`` (bilinear, ``align_corners=False``, ``(H, W)``) and ``display``
    (``upsampled / max``, all zero when ``flat``)."""

    weights: np.ndarray
    weighted_sum: np.ndarray
    relu: np.ndarray
    upsampled: np.ndarray
    display: np.ndarray
    flat: bool

    @property
    def negative_share(self) -> float:
        """Share of feature-map cells the ReLU sets to zero (evidence *against* the class there)."""
        return float(np.mean(self.weighted_sum < 0))


def cam_steps(activations: np.ndarray, weights: np.ndarray, size: tuple[int, int]) -> CamSteps:
    """The weighted sum, ReLU and upsampling that turn ``activations (K, h, w)`` and channel ``weights
    (K,)`` into a CAM display map of ``size = (H, W)`` (the engine's own functions, so the same numbers)."""
    a = _tensor(activations)
    w = _tensor(weights).to(a.dtype)
    if a.dim() != 3 or w.shape != (a.shape[0],):
        raise ValueError(f"activations must be (K, h, w) and weights (K,); got {tuple(a.shape)}, {tuple(w.shape)}")
    weighted = torch.einsum("nk,nkhw->nhw", w[None], a[None])[0]
    relu = weighted_cam(w[None], a[None])[0]
    display, flat, up = _unit_display(relu.numpy(), size)
    return CamSteps(
        weights=read_only(np.asarray(weights)), weighted_sum=read_only(weighted.numpy()), relu=read_only(relu.numpy()),
        upsampled=read_only(up), display=read_only(display), flat=flat,
    )


@dataclass(frozen=True, eq=False)
class Channel:
    """One channel of the target layer: its index, Grad-CAM weight ``w_k``, activation map ``A_k``
    ``(h, w)`` and contribution ``w_k * mean(A_k)`` (the channel's share of the weighted sum's mean)."""

    index: int
    weight: float
    contribution: float
    activation: np.ndarray


def top_channels(
    activations: np.ndarray, weights: np.ndarray, k: int = 8, by: Literal["weight", "contribution"] = "weight",
) -> tuple[Channel, ...]:
    """The ``k`` channels with the largest weight (``by="weight"``) or the largest contribution
    ``w_k * mean(A_k)`` (``by="contribution"``), largest first; ties keep channel order."""
    a = np.asarray(activations)
    w = np.asarray(weights, dtype=np.float64)
    if a.ndim != 3 or w.shape != (a.shape[0],):
        raise ValueError(f"activations must be (K, h, w) and weights (K,); got {a.shape}, {w.shape}")
    if k < 1:
        raise ValueError("k must be at least 1")
    contribution = w * a.reshape(a.shape[0], -1).mean(axis=1, dtype=np.float64)
    if by not in ("weight", "contribution"):
        raise ValueError(f"by must be 'weight' or 'contribution', got {by!r}")
    key = w if by == "weight" else contribution
    order = np.argsort(-key, kind="stable")[: min(k, a.shape[0])]
    return tuple(
        Channel(index=int(i), weight=float(w[i]), contribution=float(contribution[i]), activation=read_only(a[i]))
        for i in order
    )


# -------------------------------------------------------------------------------------- Grad-CAM++
@dataclass(frozen=True, eq=False)
class PlusPlusContrast:
    """Grad-CAM++ against Grad-CAM for one image.

    Per shown channel (``channels``): ``alphas (k, h, w)``; ``pp_pixel_weights = alpha * ReLU(g)`` (they
    sum to the Grad-CAM++ weight); ``cam_pixel_weights = g / (h w)`` (they sum to the Grad-CAM weight).
    ``alpha_spread[i]``: max - min of channel i's alphas (0 when the gradient is the same at every pixel,
    as behind global average pooling and a linear layer). ``weight_spearman``: rank correlation of the
    two methods' K channel weights. ``difference = gradcam display - gradcam++ display`` (each divided by
    its own maximum) at input resolution; ``differ`` where ``|difference| >= DIFFER_LEVEL``.
    """

    channels: tuple[int, ...]
    alphas: np.ndarray
    pp_pixel_weights: np.ndarray
    cam_pixel_weights: np.ndarray
    alpha_spread: np.ndarray
    gradcam_weights: np.ndarray
    gradcam_pp_weights: np.ndarray
    dropped_channels: int
    weight_spearman: float
    gradcam: CamSteps
    gradcam_pp: CamSteps
    difference: np.ndarray
    differ: np.ndarray
    map_spearman: float

    @property
    def differ_share(self) -> float:
        """Share of input pixels where the two display maps differ by at least :data:`DIFFER_LEVEL`."""
        return float(np.mean(self.differ))


def plus_plus_contrast(details: Details, size: tuple[int, int], channels: Sequence[int] | None = None,
                       k: int = 4) -> PlusPlusContrast:
    """Compare Grad-CAM++ with Grad-CAM on one image's details; ``channels`` to show (default: the ``k``
    channels with the largest Grad-CAM weights)."""
    shown = tuple(int(c) for c in channels) if channels is not None else tuple(
        c.index for c in top_channels(details.activations, details.gradcam_weights, k))
    bad = [c for c in shown if not 0 <= c < details.channels]
    if bad:
        raise ValueError(f"channel {bad[0]} out of range: the target layer has {details.channels} channels")
    g = np.asarray(details.gradients)[list(shown)]
    alphas = np.asarray(details.alphas)[list(shown)]
    h, w = details.feature_shape
    cam = cam_steps(details.activations, details.gradcam_weights, size)
    pp = cam_steps(details.activations, details.gradcam_pp_weights, size)
    difference = cam.display.astype(np.float32) - pp.display.astype(np.float32)
    flat_alphas = alphas.reshape(len(shown), -1)
    return PlusPlusContrast(
        channels=shown,
        alphas=read_only(alphas),
        pp_pixel_weights=read_only(alphas * np.maximum(g, 0)),
        cam_pixel_weights=read_only(g / (h * w)),
        alpha_spread=read_only(flat_alphas.max(axis=1) - flat_alphas.min(axis=1)),
        gradcam_weights=details.gradcam_weights,
        gradcam_pp_weights=details.gradcam_pp_weights,
        dropped_channels=int(np.sum((details.gradcam_pp_weights == 0) & (details.gradcam_weights != 0))),
        weight_spearman=metrics.spearman(np.asarray(details.gradcam_weights)[None],
                                         np.asarray(details.gradcam_pp_weights)[None]),
        gradcam=cam,
        gradcam_pp=pp,
        difference=read_only(difference),
        differ=read_only(np.abs(difference) >= DIFFER_LEVEL),
        map_spearman=metrics.spearman(cam.display, pp.display),
    )


# ------------------------------------------------------------------------------------------ guided
def plain_input_gradient(
    model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | np.ndarray | torch.Tensor
) -> np.ndarray:
    """The plain input gradient ``dS/dx`` of the ``target`` logit, ``(N, C, H, W)`` read-only float32.

    Costs one extra forward and backward pass of ``model`` as given (no batch-norm folding): the engine's
    single pass applies the guided rule, so the plain gradient is not a by-product. ``torch.autograd.grad``
    on a fresh forward pass: no hook, no ``.grad``, no flag or mode change is left on the (shared) model;
    the caller's ``x`` is not modified. The model must be in eval mode (in training mode a forward pass
    would update batch-norm running statistics).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if model.training:
        raise ValueError("the model is in training mode: call model.eval() first (a forward pass would "
                         "change its batch-norm statistics)")
    x = check_input(x)
    device, dtype = model_device_dtype(model, x)
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
        logits = model(leaf.clone())
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"the model must return logits of shape (N, C); got {getattr(logits, 'shape', logits)}")
        targets = resolve_targets(target, logits)
        score = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(score, [leaf], allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(leaf)
    return read_only(grad, np.dtype(np.float32))


def guided_relus(model: nn.Module, x: torch.Tensor) -> GraphReport:
    """Where the guided rule acts on ``model``: the ReLU / ReLU6 nodes (modules, functional calls, reused
    modules alike) in the autograd graph of one forward pass of ``x``, as :func:`xai.guided.guide_graph`
    finds them for the engine, plus the non-ReLU activations the gradient passes unguided.

    One forward pass, no backward pass; the graph's hooks are inert (plain rule) and die with the graph.
    The model must be in eval mode (see :func:`plain_input_gradient`).
    """
    if model.training:
        raise ValueError("the model is in training mode: call model.eval() first")
    x = check_input(x)
    device, dtype = model_device_dtype(model, x)
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
        logits = model(leaf.clone())
        if not isinstance(logits, torch.Tensor) or logits.grad_fn is None:
            raise ValueError("the model's output does not depend on its input through autograd")
        return guide_graph(logits.grad_fn, GuidedState(guided=False))


@dataclass(frozen=True, eq=False)
class GuidedContrast:
    """Guided backpropagation beside the plain input gradient for one image.

    ``*_display``: the engine's guided display (``|.|``, max over channels, clipped at the 99.5th
    percentile) of each, ``(H, W)``. ``*_negative``: share of input-gradient entries below zero;
    ``*_zero``: share exactly zero. ``spearman``: rank correlation of the two display maps.
    """

    plain_display: np.ndarray
    guided_display: np.ndarray
    plain_negative: float
    guided_negative: float
    plain_zero: float
    guided_zero: float
    spearman: float


def _display_of_gradient(raw: np.ndarray) -> np.ndarray:
    display, _flat = guided_display(_tensor(raw)[None])
    return display[0].numpy()


def guided_contrast(plain: np.ndarray, guided: np.ndarray) -> GuidedContrast:
    """Compare one image's plain input gradient with its guided one (both ``(C, H, W)``)."""
    p, g = np.asarray(plain), np.asarray(guided)
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(f"plain and guided gradients must both be (C, H, W); got {p.shape} and {g.shape}")
    pd, gd = _display_of_gradient(p), _display_of_gradient(g)
    return GuidedContrast(
        plain_display=read_only(pd), guided_display=read_only(gd),
        plain_negative=float(np.mean(p < 0)), guided_negative=float(np.mean(g < 0)),
        plain_zero=float(np.mean(p == 0)), guided_zero=float(np.mean(g == 0)),
        spearman=metrics.spearman(pd, gd),
    )


def guided_gradcam(guided: np.ndarray, gradcam_upsampled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Guided Grad-CAM of one image: ``(product (C, H, W), display (H, W))`` with
    ``product = guided (C, H, W) * gradcam_upsampled (H, W)`` (the upsampled raw Grad-CAM, not its
    display) and the engine's guided display of the product."""
    g, up = np.asarray(guided), np.asarray(gradcam_upsampled)
    if g.ndim != 3 or up.shape != g.shape[1:]:
        raise ValueError(f"guided must be (C, H, W) and the upsampled Grad-CAM (H, W); got {g.shape}, {up.shape}")
    product = g * up.astype(g.dtype)[None]
    return read_only(product), read_only(_display_of_gradient(product))


# ---------------------------------------------------------------------------------------- the layer
def target_layer_reason(model: nn.Module, layer_name: str, card_layer: str | None = None) -> str:
    """Which rule picked ``layer_name`` as the CAM target layer of ``model``, in one sentence."""
    from xai.layers import _torchvision_table

    modules: Mapping[str, nn.Module] = dict(model.named_modules())
    kind = type(modules[layer_name]).__name__ if layer_name in modules else "layer"
    if card_layer and card_layer == layer_name:
        rule = "the model card names it"
    elif getattr(model, "default_target_layer", None) == layer_name:
        rule = f"{type(model).__name__} declares it as its default target layer"
    elif any(isinstance(model, cls) and name == layer_name for cls, name in _torchvision_table()):
        rule = f"the engine's table for {type(model).__name__} names it"
    else:
        rule = "it is the last layer returning a spatial feature map (found by a dry run)"
    return (f"`{layer_name}` ({kind}): {rule}. It is the last feature map before global pooling -- the most "
            "class-specific features the network computes that still keep where in the image they are.")
