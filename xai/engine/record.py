"""The explanation record: :class:`Explanation`, every array read-only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np


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
