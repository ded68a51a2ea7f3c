"""What a model's saliency maps typically reach: the default display scale of the app.

Per-image stretching (min–max) turns weak evidence into a bright blob: the map of a class the model gives
P = 0.001 fills the colour range just as a confident one does. The honest default divides each method's
*raw* magnitude (the units of :func:`xai.render.raw_magnitude`: the ReLU'd CAM at feature resolution,
``max_c |guided gradient|`` for the guided maps) by what that method's maps typically reach on films the
model was validated on, so a weak map looks weak and a strong one fills the scale.

Calibration, per method ``m`` over films ``i`` (each explained for its predicted class):

    peak_i(m) = percentile_q(raw_magnitude_i(m))        (q = 99.5: robust to a few hot pixels)
    vmax(m)   = median_i peak_i(m)

so a typical confident map reaches about 1 on the scale, half the films exceed it (clipped) and half stay
below. Stored on the model card under :data:`CARD_KEY` (see :func:`card_entry`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from xai.render import raw_magnitude, robust_max

if TYPE_CHECKING:
    import torch

    from xai.engine import Explainer

__all__ = [
    "CARD_KEY",
    "DEFAULT_PERCENTILE",
    "PLUS_PLUS_NOTE",
    "WEAK_PEAK",
    "WEAK_PROBABILITY",
    "ScaleCalibration",
    "calibrate_scale",
    "from_card",
    "map_peaks",
    "weak_evidence",
]

#: The model card's key for the calibration (``card.json``: ``"saliency_scale": {...}``).
CARD_KEY = "saliency_scale"
DEFAULT_PERCENTILE = 99.5


@dataclass(frozen=True)
class ScaleCalibration:
    """Per-method ``vmax`` of the model's typical map, with how it was measured.

    ``vmax[m]``: median over the films of each map's ``percentile``-th percentile (raw units);
    ``spread[m]``: the 10th and 90th percentiles of those per-film peaks; ``n``: films used.
    """

    vmax: Mapping[str, float]
    spread: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    percentile: float = DEFAULT_PERCENTILE
    n: int = 0
    split: str = ""

    def card_entry(self, **extra: Any) -> dict[str, Any]:
        """The JSON-ready record for the model card (``extra``: e.g. the command and date)."""
        return {
            "vmax": {m: float(v) for m, v in self.vmax.items()},
            "p10_p90": {m: [float(a), float(b)] for m, (a, b) in self.spread.items()},
            "statistic": f"median over films of each map's {self.percentile:g}th percentile of the raw "
                         "magnitude (CAM after ReLU; max over channels of |guided gradient|), arg-max class",
            "percentile": float(self.percentile),
            "n": int(self.n),
            "split": self.split,
            **extra,
        }


def calibrate_scale(
    explainer: Explainer,
    inputs: Iterable[torch.Tensor],
    *,
    methods: Sequence[str] | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    split: str = "",
) -> ScaleCalibration:
    """Explain every prepared batch in ``inputs`` ((N, C, H, W) tensors) for its predicted class and
    return each method's typical peak (see the module docstring). Raises ``ValueError`` with no film."""
    from xai.engine import METHODS

    peaks: dict[str, list[float]] = {}
    for batch in inputs:
        e = explainer.explain(batch, methods=tuple(methods or METHODS))
        for m in e.methods:
            for i in range(int(batch.shape[0])):
                peaks.setdefault(m, []).append(_peak(raw_magnitude(e, m, i), percentile))
    if not peaks:
        raise ValueError("no film to calibrate the display scale on")
    return ScaleCalibration(
        vmax=MappingProxyType({m: _positive(float(np.median(v))) for m, v in peaks.items()}),
        spread=MappingProxyType({m: (float(np.percentile(v, 10)), float(np.percentile(v, 90)))
                                 for m, v in peaks.items()}),
        percentile=percentile, n=len(next(iter(peaks.values()))), split=split,
    )


def _peak(magnitude: np.ndarray, percentile: float) -> float:
    """A map's robust peak; 0 for a map with nothing positive (``robust_max`` says 1.0 there)."""
    return robust_max(magnitude, percentile) if np.any(magnitude > 0) else 0.0


def _positive(value: float) -> float:
    return value if np.isfinite(value) and value > 0 else 1.0


def from_card(card: Any) -> ScaleCalibration | None:
    """The calibration stored on a model card (an object with a ``saliency_scale`` attribute or a mapping
    with that key), or None when the card has none or it is malformed (the app then falls back to the
    per-image stretch and says so)."""
    entry = card.get(CARD_KEY) if isinstance(card, Mapping) else getattr(card, CARD_KEY, None)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("vmax"), Mapping):
        return None
    try:
        vmax = {str(m): float(v) for m, v in entry["vmax"].items()}
    except (TypeError, ValueError):
        return None
    if not vmax or not all(np.isfinite(v) and v > 0 for v in vmax.values()):
        return None
    return ScaleCalibration(vmax=MappingProxyType(vmax), percentile=float(entry.get("percentile", DEFAULT_PERCENTILE)),
                            n=int(entry.get("n", 0) or 0), split=str(entry.get("split", "")))


#: Below this probability of the explained class, its maps are evidence the model barely has.
WEAK_PROBABILITY = 0.1
#: Below this fraction of the method's typical peak (:class:`ScaleCalibration`), a map is weak.
WEAK_PEAK = 0.25


def map_peaks(explanation: Any, index: int = 0, percentile: float = DEFAULT_PERCENTILE) -> dict[str, float]:
    """Each method's robust peak (raw units, see :func:`calibrate_scale`) for one image of an explanation."""
    return {m: _peak(raw_magnitude(explanation, m, index), percentile) for m in explanation.methods}


#: Why a map can look clear for a class the model rejects (Chattopadhyay et al. 2018, eq. 19).
PLUS_PLUS_NOTE = ("Grad-CAM++ can still draw a clear map for it: its weights use only positive gradients and "
                  "normalise per location, so a map appears even when the class score is low.")


def weak_evidence(
    target: str, probability: float, peaks: Mapping[str, float], calibration: ScaleCalibration | None,
    titles: Mapping[str, str] | None = None, *, rejected: bool = False,
) -> str | None:
    """A sentence saying why the evidence shown is weak, or None when it is not.

    Weak: the model rejects the explained class (``rejected``: its decision is another class, e.g. the
    probability is below the card's threshold), the class's probability is below :data:`WEAK_PROBABILITY`,
    or (with a calibration) a map peaks below :data:`WEAK_PEAK` of what the method's maps typically reach.
    For a rejected or improbable class the notice covers every map shown, whatever its brightness: a
    method whose weights keep only positive gradients (Grad-CAM++) draws a clear map even then, because
    evidence against the class never subtracts. ``titles``: display names.
    """
    name = dict(titles or {})
    low = {m: p / calibration.vmax[m] for m, p in peaks.items()
           if calibration is not None and m in calibration.vmax and p / calibration.vmax[m] < WEAK_PEAK}
    reasons = []
    if rejected:
        reasons.append(f"the model does not call {target} (probability {probability:.3g})")
    elif probability < WEAK_PROBABILITY:
        reasons.append(f"the model gives {target} a probability of {probability:.3g}")
    if low:
        reasons.append("the maps peak far below what they typically reach (" + ", ".join(
            f"{name.get(m, m)} {r:.2f}×" for m, r in low.items()) + ")")
    if not reasons:
        return None
    text = "Weak evidence: " + " and ".join(reasons) + "."
    if rejected or probability < WEAK_PROBABILITY:
        shown = ", ".join(name.get(m, m) for m in peaks)
        text += (f" Every map shown ({shown}) is evidence for a class the model " + ("rejects" if rejected else
                 "barely considers") + ": none of them marks a finding. " + PLUS_PLUS_NOTE)
    return text + (" What the maps show is faint on purpose; a per-image stretch would make it look as bright "
                   "as a confident map." if low else "")
