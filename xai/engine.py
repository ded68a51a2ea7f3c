"""The explanation engine: Grad-CAM, Grad-CAM++, Guided Backprop and Guided Grad-CAM from one forward pass.

    >>> from xai import Explainer, METHODS
    >>> explanation = Explainer(model).explain(x)          # x: (N, 3, H, W) preprocessed float tensor
    >>> explanation.maps["gradcam"]                          # float32 (N, H, W) in [0, 1], read-only

Methods (S = the target class *logit*, A = the target layer's feature map (N, K, h, w), g = dS/dA):

* Grad-CAM (Selvaraju et al. 2017): ``w_k = mean_ab g_kab``; ``raw = ReLU(sum_k w_k A_k)``.
* Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19, exponential score ``exp(S)``):
  ``alpha = g^2 / (2 g^2 + sum_ab A_kab * g^3)`` (alpha = 0 exactly where the denominator is 0, no
  epsilon), ``w_k = sum_ab alpha * ReLU(g)``, ``raw = ReLU(sum_k w_k A_k)``; not multiplied by ``exp(S)``
  (a positive factor that only rescales the map).
* Guided Backprop (Springenberg et al. 2015): the input gradient with the guided rule on every ReLU
  (see :mod:`xai.guided`); ``raw`` is signed ``(N, C, H, W)``.
* Guided Grad-CAM: guided backprop times the Grad-CAM raw map bilinearly upsampled
  (``align_corners=False``) to the input size.

One forward pass serves all four. The CAMs need ``g`` at the target layer, guided backprop the guided
input gradient. The guided rule changes only ReLU backward passes; when no ReLU lies between the score
and the target layer's output (found in this call's autograd graph: true for resnet, densenet,
efficientnet, mobilenet_v3, convnext, ChestCOVNet), ``g`` is the same under both rules and ONE guided
backward pass
``torch.autograd.grad(S, [x, A])`` yields both. Otherwise (e.g. VGG's ReLU head) a short plain pass to
``A`` precedes the guided pass to ``x`` over the same graph. ``autograd.grad`` never touches ``.grad``
and never computes parameter gradients.

Methods are entries of one table (:data:`METHOD_TABLE`, :class:`Method`): a function from the shared
passes (:class:`Passes`: ``A``, ``g``, the guided input gradient, and the quantities several methods share,
each computed once) to a raw map, plus its display rule. ``explain`` only runs the passes the requested
entries need and loops over them; :func:`register_method` adds a method without touching ``explain``.

Intermediate quantities (``explain(..., details=True)``, :data:`DETAILS`): ``A``, ``g``, the Grad-CAM
weights, the Grad-CAM++ alphas and weights, as read-only arrays from the same passes (no second forward);
``Explanation.details`` is ``None`` otherwise.

Display maps (``maps``): CAMs upsampled bilinearly to the input size and divided by their per-image
maximum (zero stays zero); guided maps: ``|raw|``, max over channels, clipped at the 99.5th percentile,
scaled to [0, 1]. A map that is constant or all zero is flagged in ``flat`` and shown as zeros, never
stretched noise.

Speed: in eval mode the passes run on a cached copy of the model with its conv + batch-norm pairs of
known wiring folded (:mod:`xai.folding`): the same maps to float rounding, one sweep fewer over the
activations per folded layer. The copy is cached per model, weakly (shared by every explainer of it, so
``Explainer(model).explain(x)`` in a loop costs what a reused explainer costs, and freed with the model),
and rebuilt when a weight, module, mode or plain attribute of the model changes; models with hooks, in
training mode or wrapped in unknown code run as they are. Probabilities follow the one rule of
:func:`xai.scores.probabilities` (softmax; sigmoid for a single logit).

Safety: the target-layer hook exists only during the forward pass (removed in ``finally``) and records
only the calling thread; hook registration and forward run under a per-model lock, so concurrent
``explain`` calls on one shared model cannot see each other's hooks; the guided rule lives on the call's
own autograd graph (:func:`xai.guided.guide_graph`). The model is never modified: no hooks or ``.grad`` left, ``requires_grad`` flags
and train/eval mode untouched. A model in training mode is explained as it is (dropout active,
batch-norm on batch statistics; a note says so) and its buffers (batch-norm running statistics) are
restored after the backward pass, the model lock being held for the whole call.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xai.arrays import read_only
from xai.folding import shared_fold_cache
from xai.guided import GraphReport, GuidedState, guide_graph
from xai.layers import TargetLayer, default_target_name, find_last_spatial_layer, last_linear, resolve_module
from xai.method_names import METHODS, MethodIdentity, add_identity
from xai.scores import probabilities

__all__ = [
    "DETAILS",
    "METHODS",
    "METHOD_TABLE",
    "Explainer",
    "Explanation",
    "Method",
    "Passes",
    "Target",
    "TargetRule",
    "cam_view",
    "gradcam_plus_plus_alphas",
    "gradcam_plus_plus_weights",
    "guided_view",
    "register_method",
    "upsample_cam",
    "gradcam_weights",
    "channel_abs_max",
    "check_input",
    "guided_display",
    "cam_display",
    "model_device_dtype",
    "model_lock",
    "resolve_targets",
    "weighted_cam",
]

GUIDED_CLIP_QUANTILE = 0.995
_FLAT_RTOL = 1e-6  # max - min <= 1e-6 * max counts as constant (a few float32 ulps)


@dataclass(frozen=True, eq=False)
class Explanation:
    """Immutable result of :meth:`Explainer.explain`, all the way down: its mappings are read-only
    (:class:`types.MappingProxyType`) and every array is a read-only numpy array (``flags.writeable`` is
    False; a writeable array passed in is copied first).

    Attributes:
        logits: ``(N, C)`` model outputs.
        probabilities: ``(N, C)``, :func:`xai.scores.probabilities` of ``logits`` (softmax; sigmoid when
            ``C == 1``).
        target: ``(N,)`` int64, the explained class per image.
        target_layer: dotted name of the layer whose feature map the CAMs use.
        maps: method -> float32 ``(N, H, W)`` in [0, 1] at the model-input resolution, for display.
        raw: method -> unnormalised map: CAMs ``(N, h, w)`` at feature resolution (after the ReLU);
            guided ``(N, C_in, H, W)`` signed.
        flat: method -> bool ``(N,)``: the map is constant or all zero (its display map is all zeros).
        timings: milliseconds per stage: ``forward``, ``backward``, ``cams``, ``guided``, ``total``.
        versions: library versions that produced the result (``torch``, ``xai``, ``numpy``).
        notes: human-readable remarks (e.g. guided backprop through SiLU equals the plain gradient).
        features: ``(N, D)`` float32, the input of the model's last ``nn.Linear`` in this same forward
            pass (the penultimate features the out-of-distribution check uses, so it needs no second
            pass); ``None`` when the model has no ``nn.Linear``.
        details: ``None`` unless ``explain(..., details=True)``; then the intermediate quantities of the
            CAMs from the same passes (see :data:`DETAILS`): ``activations`` A and ``gradients``
            g = dY/dA ``(N, K, h, w)``, ``gradcam_weights`` ``(N, K)``, ``gradcam++_weights`` ``(N, K)``,
            ``gradcam++_alphas`` ``(N, K, h, w)``; float32 (float64 for a float64 model, like ``raw``).
    """

    logits: np.ndarray
    probabilities: np.ndarray
    target: np.ndarray
    target_layer: str
    maps: Mapping[str, np.ndarray]
    raw: Mapping[str, np.ndarray]
    flat: Mapping[str, np.ndarray]
    timings: Mapping[str, float]
    versions: Mapping[str, str]
    notes: tuple[str, ...] = ()
    features: np.ndarray | None = None
    details: Mapping[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        for name, value in _frozen_fields(vars(self)).items():
            object.__setattr__(self, name, value)

    def __getstate__(self) -> dict[str, Any]:
        """Plain dicts for pickle and ``copy`` (a mapping proxy cannot be pickled); re-frozen on load."""
        return {k: dict(v) if isinstance(v, MappingProxyType) else v for k, v in vars(self).items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in _frozen_fields(state).items():
            object.__setattr__(self, name, value)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods this explanation holds, in the order they were computed (the table's order)."""
        return tuple(self.maps)


_MAPPING_FIELDS = ("maps", "raw", "flat", "timings", "versions", "details")
_ARRAY_FIELDS = ("logits", "probabilities", "target", "features")


def _frozen_array(value: Any) -> Any:
    """A read-only view of a numpy array (a read-only copy when it is writeable: the caller keeps theirs)."""
    if not isinstance(value, np.ndarray) or not value.flags.writeable:
        return value
    frozen = value.copy()
    frozen.setflags(write=False)
    return frozen


def _frozen_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with every mapping made a read-only proxy of a private copy and every array read-only."""
    out = dict(fields)
    for name in _ARRAY_FIELDS:
        if name in out:
            out[name] = _frozen_array(out[name])
    for name in _MAPPING_FIELDS:
        value = out.get(name)
        if value is not None:
            out[name] = MappingProxyType({k: _frozen_array(v) for k, v in value.items()})
    out["notes"] = tuple(out.get("notes", ()))
    return out


# --------------------------------------------------------------------------------------------- formulas


def gradcam_weights(grad: torch.Tensor) -> torch.Tensor:
    """Grad-CAM channel weights ``w_k = mean_ab dS/dA_kab``: ``(N, K, h, w) -> (N, K)``."""
    return grad.mean(dim=(2, 3))


def gradcam_plus_plus_alphas(grad: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ per-pixel coefficients (Chattopadhyay et al. 2018, eq. 19, exponential score ``exp(S)``):
    ``(N, K, h, w) x2 -> (N, K, h, w)``.

    ``alpha_kab = g_kab^2 / (2 g_kab^2 + sum_cd A_kcd * g_kab^3)`` with ``g = dS/dA``; ``alpha = 0`` exactly
    where the denominator is 0 (no epsilon, which would dominate ``g^2`` for small gradients).
    """
    g2 = grad * grad
    g3 = g2 * grad
    denominator = 2.0 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g3
    zero = denominator == 0
    return torch.where(zero, torch.zeros_like(g2), g2 / torch.where(zero, torch.ones_like(g2), denominator))


def gradcam_plus_plus_weights(
    grad: torch.Tensor, activations: torch.Tensor, alphas: torch.Tensor | None = None
) -> torch.Tensor:
    """Grad-CAM++ channel weights (eq. 19): ``w_k = sum_ab alpha_kab * ReLU(g_kab)``, ``(N, K, h, w) -> (N, K)``.

    ``alphas``: :func:`gradcam_plus_plus_alphas` of the same arguments when the caller already has them.
    """
    if alphas is None:
        alphas = gradcam_plus_plus_alphas(grad, activations)
    return (alphas * torch.relu(grad)).sum(dim=(2, 3))


def weighted_cam(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``ReLU(sum_k w_k A_k)``: ``(N, K)``, ``(N, K, h, w) -> (N, h, w)``."""
    return torch.relu(torch.einsum("nk,nkhw->nhw", weights, activations))


def _flat(vmax: torch.Tensor, vmin: torch.Tensor) -> torch.Tensor:
    """Per image: a non-finite value (max/min propagate NaN and inf), no positive maximum, or
    max - min within float noise of max (a constant map)."""
    finite = torch.isfinite(vmax) & torch.isfinite(vmin)
    return ~finite | ~(vmax > 0) | ((vmax - vmin) <= _FLAT_RTOL * vmax)


def _scaled(v: torch.Tensor, scale: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``clip(v / scale, 0, 1)`` per image (``v (N, H, W)``, ``scale (N,)``), flat images all zero."""
    display = (v / scale.clamp_min(torch.finfo(v.dtype).tiny)[:, None, None]).clamp_(0.0, 1.0)
    if bool(flat.any()):
        display[flat] = 0.0
    return display


def cam_display(
    raw: torch.Tensor, size: tuple[int, int], upsampled: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(display (N, H, W) in [0, 1], flat (N,), upsampled raw (N, H, W))`` for a CAM ``raw (N, h, w)``.

    Bilinear upsampling (``align_corners=False``; ``upsampled``: :func:`upsample_cam` of ``raw`` when the
    caller already has it), then division by the per-image maximum; flat maps become zeros.
    """
    vmin, vmax = torch.aminmax(raw.flatten(1), dim=1)
    flat = _flat(vmax, vmin)
    up = upsample_cam(raw, size) if upsampled is None else upsampled
    return _scaled(up, up.flatten(1).amax(dim=1), flat), flat, up


def upsample_cam(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) of a CAM ``(N, h, w)`` to ``size``: ``(N, H, W)``."""
    return F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def upper_quantile(v: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q`` quantile of ``v (N, M)`` with linear interpolation (numpy's default), for q near 1.

    Uses ``topk`` over the upper tail only, much cheaper than a full sort for 0.995 on large maps.
    """
    n = v.shape[1]
    pos = q * (n - 1)
    lo = int(np.floor(pos))
    frac = pos - lo
    k = n - lo  # ascending index lo is the k-th largest
    top = torch.topk(v, k, dim=1, largest=True, sorted=True).values
    v_lo = top[:, k - 1]
    v_hi = top[:, k - 2] if k >= 2 else v_lo
    return v_lo + (v_hi - v_lo) * frac


def channel_abs_max(raw: torch.Tensor) -> torch.Tensor:
    """``max_c |raw[:, c]|``: ``(N, C, H, W) -> (N, H, W)``.

    (``torch.linalg.vector_norm(raw, inf, dim=1)`` is the same number but measured 70x slower on CPU.)
    """
    return raw.abs().amax(dim=1)


def guided_display(
    raw: torch.Tensor, magnitude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(display (N, H, W) in [0, 1], flat (N,))`` for a signed guided map ``raw (N, C, H, W)``.

    ``|raw|``, max over channels, clipped at the 99.5th percentile (per image), scaled to [0, 1]; when
    the percentile is 0 (a very sparse map) the maximum is used instead. ``magnitude``: the channel
    maximum of ``|raw|`` when the caller already has it.
    """
    v = channel_abs_max(raw) if magnitude is None else magnitude
    flat_v = v.flatten(1)
    vmin, vmax = torch.aminmax(flat_v, dim=1)
    flat = _flat(vmax, vmin)
    hi = upper_quantile(flat_v, GUIDED_CLIP_QUANTILE)
    return _scaled(v, torch.where(hi > 0, hi, vmax), flat), flat


# ----------------------------------------------------------------------------------- passes and methods


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
    "gradcam": Method(lambda p: weighted_cam(p.gradcam_weights, p.activations), cam_view, True),
    # Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19): ReLU(sum_k w_k A_k), w_k = sum_ab alpha ReLU(g).
    "gradcam++": Method(lambda p: weighted_cam(p.gradcam_plus_plus_weights, p.activations), cam_view, True),
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


# ----------------------------------------------------------------------------------------------- safety

_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises hook registration + forward passes of the engine on ``model``."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _MODEL_LOCKS[model] = lock
        return lock


@contextlib.contextmanager
def _buffers_restored(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (batch-norm running statistics, counters) on exit; used in training mode."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _last_linear_of(model: nn.Module) -> nn.Module | None:
    """The model's last ``nn.Linear`` (its input: the penultimate features), or None when it has none."""
    try:
        return last_linear(model)[1]
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------- checks


def _check_methods(methods: str | Iterable[str]) -> tuple[str, ...]:
    """The requested methods in table order; unknown or no names raise a ValueError listing the valid ones."""
    requested = (methods,) if isinstance(methods, str) else tuple(methods)
    table = tuple(_TABLE)
    unknown = [m for m in requested if m not in _TABLE]
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


# --------------------------------------------------------------------------------------------- explainer


class Explainer:
    """Explain a classifier's logits with Grad-CAM, Grad-CAM++, Guided Backprop and Guided Grad-CAM.

    Args:
        model: any ``torch.nn.Module`` returning logits ``(N, C)``. It is shared, never modified.
        target_layer: the layer whose output feature map ``(N, K, h, w)`` the CAMs explain: a submodule,
            a dotted name (``"layer4"``), or ``None`` for the automatic choice (see :mod:`xai.layers`).
        fold_batchnorm: in eval mode, run the passes on a copy with conv + batch-norm pairs folded
            (:mod:`xai.folding`: same maps to float rounding, 3-8 % faster on resnet18; one extra copy of
            the weights per model, shared by all its explainers, rebuilt when they change). ``False`` runs
            the model itself.

    Raises:
        ValueError: unknown layer name (the message lists the valid names), or a module not in ``model``.
    """

    def __init__(self, model: nn.Module, target_layer: TargetLayer = None, *, fold_batchnorm: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self._fold = bool(fold_batchnorm)
        self._resolved: tuple[nn.Module, str] | None = None
        self._resolve_lock = threading.Lock()
        spec = target_layer if target_layer is not None else default_target_name(model)
        if spec is not None:
            self._resolved = resolve_module(model, spec)

    @property
    def target_layer_name(self) -> str:
        """Dotted name of the target layer (found by a dry run on a 224 px input for unknown models)."""
        return self._target(None)[1]

    @property
    def target_layer(self) -> nn.Module:
        """The target layer module."""
        return self._target(None)[0]

    def _target(self, example: torch.Tensor | None) -> tuple[nn.Module, str]:
        if self._resolved is None:
            with self._resolve_lock:
                if self._resolved is None:
                    self._resolved = resolve_module(self.model, self._find_fallback(example))
        return self._resolved

    def _find_fallback(self, example: torch.Tensor | None) -> str:
        device, dtype = model_device_dtype(self.model, example if example is not None else torch.zeros(()))
        if example is None:
            dry = torch.zeros(1, 3, 224, 224, device=device, dtype=dtype)
        else:
            dry = example[:1].detach().to(device=device, dtype=dtype)

        def run() -> None:
            self.model(dry)

        with (
            model_lock(self.model),
            _buffers_restored(self.model) if self.model.training else contextlib.nullcontext(),
            torch.no_grad(),
        ):
            try:
                return find_last_spatial_layer(self.model, run)
            except ValueError:
                raise
            except Exception as error:
                raise ValueError(
                    f"could not find a target layer for {type(self.model).__name__} automatically "
                    f"({type(error).__name__}: {error}); pass target_layer explicitly"
                ) from error

    def explain(
        self,
        x: torch.Tensor,
        target: Target = None,
        methods: str | Iterable[str] = METHODS,
        *,
        details: bool = False,
    ) -> Explanation:
        """Compute the requested maps for the ``target`` logit of every image in ``x``.

        Args:
            x: preprocessed float tensor ``(N, C, H, W)``; moved to the model's device (a copy; the
                caller's tensor is never modified).
            target: class index for all images, one index per image, ``None`` for each image's
                predicted class (argmax of the logits), or a :data:`TargetRule` that picks one class per
                image from the forward pass's probabilities (before the backward pass).
            methods: any subset of :data:`METHOD_TABLE` (the four of :data:`METHODS` unless more were
                registered).
            details: also return the CAMs' intermediate quantities (:data:`DETAILS`) in
                ``Explanation.details``, from the same passes (no second forward pass).

        Returns:
            An :class:`Explanation`.

        Raises:
            ValueError / TypeError: bad input, target, method names, or a model/layer that does not fit
                (non-4-D target map, output not ``(N, C)``); the model is left untouched.
        """
        methods = _check_methods(methods)
        x = check_input(x)
        module, layer_name = self._target(x)
        device, dtype = model_device_dtype(self.model, x)
        clock = _Clock(device)
        need_cam = bool(details) or any(_TABLE[m].needs_target_gradient for m in methods)
        need_guided = any(_TABLE[m].needs_input_gradient for m in methods)
        notes: list[str] = []
        if self.model.training:
            notes.append(
                "the model is in training mode: dropout is active and batch-norm uses batch statistics "
                "(call model.eval() for deterministic, per-image explanations); its buffers were restored"
            )
        logits, targets, features, passes = self._passes(
            x, target, module, layer_name, device, dtype, need_cam, need_guided, notes, clock
        )

        raw: dict[str, torch.Tensor] = {}
        maps: dict[str, torch.Tensor] = {}
        flat: dict[str, torch.Tensor] = {}
        for method in methods:
            raw[method] = passes.raw(method)
            maps[method], flat[method] = _TABLE[method].display(passes, method)
            clock.lap(_TABLE[method].stage)
        detail_arrays = passes.details() if details else None
        if passes.activations is not None and passes.activations.shape[2] * passes.activations.shape[3] == 1:
            notes.append("the target layer map is 1x1 at this input size: CAMs carry no spatial information")

        logits_d = logits.detach()
        if logits_d.shape[1] == 1:
            notes.append("single-logit model: probabilities are sigmoid(logit)")
        return Explanation(
            logits=read_only(logits_d),
            probabilities=read_only(probabilities(logits_d)),
            target=read_only(targets, np.dtype(np.int64)),
            target_layer=layer_name,
            maps={m: read_only(maps[m], np.dtype(np.float32)) for m in methods},
            raw={m: read_only(raw[m]) for m in methods},
            flat={m: read_only(flat[m], np.dtype(bool)) for m in methods},
            timings=clock.total(),
            versions=_versions(),
            notes=tuple(notes),
            features=None if features is None else read_only(features.flatten(1), np.dtype(np.float32)),
            details=detail_arrays,
        )

    # ------------------------------------------------------------------------------------------ stages

    def _passes(
        self,
        x: torch.Tensor,
        target: Target,
        module: nn.Module,
        layer_name: str,
        device: torch.device,
        dtype: torch.dtype,
        need_cam: bool,
        need_guided: bool,
        notes: list[str],
        clock: _Clock,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Passes]:
        """The shared forward pass and backward pass(es): ``(logits, targets, features, Passes)``."""
        with (
            # Training mode: batch-norm's backward needs its buffers as they were in the forward pass, so
            # they are restored only after the backward pass, holding the model lock throughout.
            model_lock(self.model) if self.model.training else contextlib.nullcontext(),
            _buffers_restored(self.model) if self.model.training else contextlib.nullcontext(),
            torch.inference_mode(False),
            torch.enable_grad(),
        ):
            # The gradient is taken w.r.t. a new tensor object (an alias of the caller's data, whose own
            # flags are untouched; a copy for inference tensors, which cannot require grad); the model gets
            # a copy (so that a model applying an in-place op to its input still runs, and the caller
            # cannot change the values under it).
            leaf = x.detach().to(device=device, dtype=dtype)
            if leaf.is_inference():
                leaf = leaf.clone()
            leaf.requires_grad_(True)
            runner, runner_layer = self._runner(module, layer_name)
            logits, captured, calls, features = self._forward(runner, leaf.clone(), runner_layer,
                                                              _last_linear_of(runner))
            clock.lap("forward")

            logits = self._check_logits(logits, x.shape[0])
            targets = resolve_targets(target, logits)
            activations = self._check_activations(captured, calls, layer_name, notes) if need_cam else None
            score = logits.gather(1, targets[:, None]).sum()
            state, report = None, None
            if need_guided:
                # The guided rule goes onto this call's graph (see xai.guided); the model is untouched.
                state = GuidedState(guided=True)
                target_node = activations.grad_fn if activations is not None else None
                report = guide_graph(score.grad_fn, state, target_node)
            grad_x, grad_a = self._backward(score, leaf, activations, state, report, notes)
            clock.lap("backward")
        if report is not None:
            self._guided_notes(report, notes)
        a = None if activations is None else _as_float(activations.detach())
        g = None if grad_a is None else _as_float(grad_a)
        gx = None if grad_x is None else _as_float(grad_x)
        return logits, targets, features, Passes(a, g, gx, (x.shape[2], x.shape[3]))

    def _runner(self, module: nn.Module, layer_name: str) -> tuple[nn.Module, nn.Module]:
        """The model to run and its target layer: the folded copy when there is one, else the model."""
        folded = shared_fold_cache(self.model).get((layer_name,)) if self._fold else None
        if folded is None:
            return self.model, module
        return folded, folded.get_submodule(layer_name)

    @staticmethod
    def _forward(
        model: nn.Module, model_input: torch.Tensor, module: nn.Module, linear: nn.Module | None
    ) -> tuple[Any, Any, int, torch.Tensor | None]:
        """One forward pass of ``model`` with the target layer's output and the input of ``linear`` (the
        last ``nn.Linear``: the penultimate features) captured, for the calling thread only."""
        thread_id = threading.get_ident()
        captured: list[Any] = []
        features: list[torch.Tensor] = []

        def capture(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if threading.get_ident() != thread_id:
                return  # another thread (e.g. plain inference) running the shared model
            captured.append(output)

        def capture_features(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
            if threading.get_ident() == thread_id and inputs and isinstance(inputs[0], torch.Tensor):
                features.append(inputs[0].detach())

        with model_lock(model):
            handles = [module.register_forward_hook(capture)]
            try:
                if linear is not None:
                    handles.append(linear.register_forward_pre_hook(capture_features))
                logits = model(model_input)
            finally:
                for handle in handles:
                    handle.remove()
        return logits, (captured[-1] if captured else None), len(captured), (features[-1] if features else None)

    @staticmethod
    def _check_logits(logits: Any, n: int) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"the model must return logits of shape (N, C) = ({n}, C); got {shape}")
        if not logits.requires_grad:
            raise ValueError("the model's output does not depend on its input through autograd")
        return logits

    @staticmethod
    def _check_activations(captured: Any, calls: int, layer_name: str, notes: list[str]) -> torch.Tensor:
        if calls == 0:
            raise ValueError(f"target layer {layer_name!r} did not run during the forward pass")
        if not isinstance(captured, torch.Tensor) or captured.dim() != 4:
            shape = tuple(captured.shape) if isinstance(captured, torch.Tensor) else type(captured).__name__
            raise ValueError(
                f"target layer {layer_name!r} must return a 4-D feature map (N, K, h, w); got {shape}"
            )
        if not captured.requires_grad:
            raise ValueError(f"target layer {layer_name!r} output does not depend on the input (no gradient)")
        if calls > 1:
            notes.append(
                f"target layer {layer_name!r} ran {calls} times in one forward pass; its last output was used"
            )
        return captured

    @staticmethod
    def _backward(
        score: torch.Tensor,
        leaf: torch.Tensor,
        activations: torch.Tensor | None,
        state: GuidedState | None,
        report: GraphReport | None,
        notes: list[str],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(guided input gradient or None, plain target-layer gradient or None)``.

        One guided pass serves both when no ReLU lies between the score and the target layer's output (the
        guided rule then changes nothing above the target layer); otherwise a plain pass to the target layer
        first (retaining the graph), then the guided pass to the input. ``state``/``report`` are ``None``
        when no guided map is requested.
        """
        grad_x: torch.Tensor | None = None
        grad_a: torch.Tensor | None = None
        need_guided = state is not None
        if activations is not None and state is not None and report is not None:
            if report.relus_above_target == 0:
                state.guided = True
                grad_x, grad_a = torch.autograd.grad(score, [leaf, activations], allow_unused=True)
            else:
                notes.append(
                    f"{report.relus_above_target} ReLU(s) above the target layer: two backward "
                    "passes (plain for the CAM gradient, guided for the input gradient)"
                )
                state.guided = False
                (grad_a,) = torch.autograd.grad(score, [activations], retain_graph=True, allow_unused=True)
                state.guided = True
                (grad_x,) = torch.autograd.grad(score, [leaf], allow_unused=True)
        elif activations is not None:
            (grad_a,) = torch.autograd.grad(score, [activations], allow_unused=True)
        else:
            (grad_x,) = torch.autograd.grad(score, [leaf], allow_unused=True)
        if activations is not None and grad_a is None:
            notes.append("the target layer does not influence the explained logit: CAMs are zero")
            grad_a = torch.zeros_like(activations)
        if need_guided and grad_x is None:
            notes.append("the input does not influence the explained logit: guided maps are zero")
            grad_x = torch.zeros_like(leaf)
        return grad_x, grad_a

    @staticmethod
    def _guided_notes(report: GraphReport, notes: list[str]) -> None:
        if report.relus == 0:
            notes.append(
                "no ReLU in the model's graph: guided backpropagation equals the plain input gradient"
            )
        if report.opaque:
            found = ", ".join(f"{name} x{count}" for name, count in sorted(report.opaque.items()))
            notes.append(
                f"opaque autograd nodes ({found}): ReLUs inside custom or compiled functions are not guided"
            )
        if report.other_activations:
            found = ", ".join(f"{name} x{count}" for name, count in sorted(report.other_activations.items()))
            notes.append(
                f"guided backpropagation passes the plain gradient through non-ReLU activations ({found}); "
                "the guided rule applies to ReLU and ReLU6 only"
            )
