"""The method table: the shared passes (:class:`Passes`), one :class:`Method` per saliency method, and
:func:`register_method`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

import numpy as np
import torch

from xai.arrays import read_only
from xai.engine.formulas import (
    cam_display,
    channel_abs_max,
    gradcam_plus_plus_alphas,
    gradcam_plus_plus_weights,
    gradcam_weights,
    guided_display,
    upsample_cam,
    weighted_cam,
)
from xai.method_names import MethodIdentity, add_identity


class Passes:
    """What one call's forward and backward passes give every method, plus the quantities several
    methods (and ``details``) share, each computed once and only when first asked for.

    Attributes:
        activations: the target layer's map A ``(N, K, h, w)`` (float32 or float64), or ``None`` when no
            requested method needs it.
        gradients: g = dS/dA ``(N, K, h, w)`` with S the target logit (plain rule), or ``None``.
        input_gradient: the guided input gradient ``(N, C, H, W)``, or ``None``.
        size: the input's ``(H, W)``, the resolution of the display maps.
    """

    def __init__(
        self,
        activations: torch.Tensor | None,
        gradients: torch.Tensor | None,
        input_gradient: torch.Tensor | None,
        size: tuple[int, int],
    ) -> None:
        self.activations = activations
        self.gradients = gradients
        self.input_gradient = input_gradient
        self.size = size
        self._raw: dict[str, torch.Tensor] = {}
        self._upsampled: dict[str, torch.Tensor] = {}

    def _cam_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.activations is None or self.gradients is None:
            raise RuntimeError("this method needs the target-layer passes (Method.needs_target_gradient)")
        return self.activations, self.gradients

    @property
    def target_activations(self) -> torch.Tensor:
        """A ``(N, K, h, w)``; a clear error for a method that did not ask for the target-layer passes."""
        return self._cam_inputs()[0]

    @cached_property
    def gradcam_weights(self) -> torch.Tensor:
        """:func:`gradcam_weights` ``(N, K)``."""
        return gradcam_weights(self._cam_inputs()[1])

    @cached_property
    def gradcam_plus_plus_alphas(self) -> torch.Tensor:
        """:func:`gradcam_plus_plus_alphas` ``(N, K, h, w)``."""
        return gradcam_plus_plus_alphas(self._cam_inputs()[1], self._cam_inputs()[0])

    @cached_property
    def gradcam_plus_plus_weights(self) -> torch.Tensor:
        """:func:`gradcam_plus_plus_weights` ``(N, K)`` from the shared alphas."""
        a, g = self._cam_inputs()
        return gradcam_plus_plus_weights(g, a, self.gradcam_plus_plus_alphas)

    @cached_property
    def input_magnitude(self) -> torch.Tensor:
        """:func:`channel_abs_max` of the guided input gradient ``(N, H, W)``."""
        if self.input_gradient is None:
            raise RuntimeError("this method needs the guided input gradient (Method.needs_input_gradient)")
        return channel_abs_max(self.input_gradient)

    def raw(self, method: str) -> torch.Tensor:
        """The raw map of ``method`` (from the method table), computed once."""
        if method not in self._raw:
            self._raw[method] = _TABLE[method].raw(self)
        return self._raw[method]

    def upsampled(self, method: str) -> torch.Tensor:
        """:func:`upsample_cam` of a CAM method's raw map to the input size, computed once."""
        if method not in self._upsampled:
            self._upsampled[method] = upsample_cam(self.raw(method), self.size)
        return self._upsampled[method]

    def details(self) -> Mapping[str, np.ndarray]:
        """The read-only intermediate quantities listed in :data:`DETAILS`."""
        a, g = self._cam_inputs()
        values = {
            "activations": a,
            "gradients": g,
            "gradcam_weights": self.gradcam_weights,
            "gradcam++_weights": self.gradcam_plus_plus_weights,
            "gradcam++_alphas": self.gradcam_plus_plus_alphas,
        }
        return MappingProxyType({k: read_only(v) for k, v in values.items()})


#: The keys of ``Explanation.details`` (see :meth:`Passes.details`).
DETAILS: tuple[str, ...] = ("activations", "gradients", "gradcam_weights", "gradcam++_weights", "gradcam++_alphas")


@dataclass(frozen=True)
class Method:
    """One entry of the method table: how a method turns the shared passes into its maps.

    Attributes:
        raw: ``Passes -> raw map`` (a CAM ``(N, h, w)`` or an input-resolution map ``(N, C, H, W)``).
        display: ``(Passes, method name) -> (display (N, H, W) in [0, 1], flat (N,))``; usually
            :func:`cam_view` or :func:`guided_view`.
        needs_target_gradient: the method reads ``Passes.activations`` / ``gradients``.
        needs_input_gradient: the method reads ``Passes.input_gradient`` (the guided pass).
    """

    raw: Callable[[Passes], torch.Tensor]
    display: Callable[[Passes, str], tuple[torch.Tensor, torch.Tensor]]
    needs_target_gradient: bool = False
    needs_input_gradient: bool = False

    @property
    def stage(self) -> str:
        """The timing stage the method's work is counted in: ``guided`` or ``cams``."""
        return "guided" if self.needs_input_gradient else "cams"


def cam_view(passes: Passes, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Display of a CAM: upsampled, divided by the per-image maximum (:func:`cam_display`)."""
    display, flat, _ = cam_display(passes.raw(method), passes.size, passes.upsampled(method))
    return display, flat


def guided_view(passes: Passes, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Display of an input-resolution map: ``|raw|``, max over channels, 99.5th-percentile clip."""
    return guided_display(passes.raw(method))


def _guided_backprop_view(passes: Passes, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    return guided_display(passes.raw(method), passes.input_magnitude)


def _guided_gradcam_raw(passes: Passes) -> torch.Tensor:
    gx = passes.input_gradient
    assert gx is not None
    return gx * passes.upsampled("gradcam").to(gx.dtype)[:, None]


def _guided_gradcam_view(passes: Passes, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    # max_c |g_c * u| = u * max_c |g_c| exactly, for u >= 0 (rounding is monotonic).
    up = passes.upsampled("gradcam")
    return guided_display(passes.raw(method), passes.input_magnitude * up.to(passes.input_magnitude.dtype))


def _guided_backprop_raw(passes: Passes) -> torch.Tensor:
    assert passes.input_gradient is not None
    return passes.input_gradient


_TABLE: dict[str, Method] = {
    # Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k w_k A_k), w_k = mean_ab g_kab.
    "gradcam": Method(lambda p: weighted_cam(p.gradcam_weights, p.target_activations), cam_view, True),
    # Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19): ReLU(sum_k w_k A_k), w_k = sum_ab alpha ReLU(g).
    "gradcam++": Method(lambda p: weighted_cam(p.gradcam_plus_plus_weights, p.target_activations), cam_view, True),
    # Guided Backprop (Springenberg et al. 2015): the guided input gradient, signed.
    "guided_backprop": Method(_guided_backprop_raw, _guided_backprop_view, False, True),
    # Guided Grad-CAM (Selvaraju et al. 2017): guided backprop x upsampled Grad-CAM.
    "guided_gradcam": Method(_guided_gradcam_raw, _guided_gradcam_view, True, True),
}
#: The method table, read-only: method name -> :class:`Method`. :func:`register_method` adds one.
METHOD_TABLE: Mapping[str, Method] = MappingProxyType(_TABLE)


def register_method(name: str, method: Method, identity: MethodIdentity | None = None) -> None:
    """Add ``method`` to the table under ``name``: ``explain(methods=[name])`` then computes it from the
    same shared passes, with no change to :meth:`Explainer.explain`. Existing names cannot be replaced.

    ``identity`` (title, paper, formula, how-to text) goes to :mod:`xai.method_names`' table, from which the
    app, the exports and the command line list and name methods; by default the title is ``name``.

    Raises:
        ValueError: ``name`` is already in the table. TypeError: ``method`` is not a :class:`Method`.
    """
    if not isinstance(method, Method):
        raise TypeError(f"method must be an xai.engine.Method, not {type(method).__name__}")
    identity = identity or MethodIdentity(name=name, title=name)
    if identity.name != name:
        raise ValueError(f"identity names {identity.name!r}, not {name!r}")
    with _TABLE_LOCK:
        if name in _TABLE:
            raise ValueError(f"method {name!r} is already registered")
        add_identity(identity)
        _TABLE[name] = method


_TABLE_LOCK = threading.Lock()
