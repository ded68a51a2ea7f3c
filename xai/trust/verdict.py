"""Plain verdicts for a radiologist: one traffic light and one sentence per check and map.

Every verdict is computed from a result of :mod:`xai.trust` (or :mod:`xai.anatomy`) by a fixed rule stated
here; the numbers themselves stay available to modelers. Lights: ``"green"`` (no concern found),
``"amber"`` (caution), ``"red"`` (a problem), ``"gray"`` (not run, or nothing to judge).

- **Randomisation** (:func:`sanity_verdict`, Adebayo et al. 2018): green when the map changes once every
  layer is random (Spearman below the sanity check's threshold, 0.5) and did not pass only by vanishing
  (amber then); red when it survives randomisation; gray for a flat map.
- **Stability** (:func:`stability_verdict`): the LOWEST Spearman rank correlation over the small changes
  (noise, +-5 % intensity, +-2 % shift/scale, +-3 degree rotation): green >= :data:`STABLE_RHO` (0.8), amber
  >= :data:`SHAKY_RHO` (0.5), red below.
- **Inside the lungs** (:func:`lung_verdict`): share of the map's mass inside the dilated lung mask
  (:func:`xai.anatomy.evidence_in_lungs`): green >= :data:`LUNG_GREEN` (0.75), amber >= :data:`LUNG_AMBER`
  (0.5), red below, naming where the rest lies; gray when no lung field was found.
- **Where the evidence lies** (:func:`anatomy_verdict`): from the map's anatomical readout
  (:func:`xai.anatomy.evidence_by_region`). Red when the largest region is one of :data:`SUSPECT_REGIONS`
  (heart and mediastinum, outside the body, film border, text and markers) and holds at least
  :data:`ANATOMY_RED` (0.5) of the map, amber when it is the largest with less; when the lung zones hold less
  than half (the non-lung regions together hold most), amber naming the largest non-lung region, red if that
  region is suspect. Green otherwise (most evidence in the visible lung fields), gray without a lung field or
  for a flat map. The suspect regions are where a model reads shortcuts rather than lung disease: devices and
  cardiac size in the mediastinum, hospital labels, markers and collimation (DeGrave et al., Nat Mach Intell
  2021; Zech et al., PLOS Med 2018).
- **Faithful** (:func:`faithfulness_verdict`, Petsiuk et al. 2018): the map's deletion and insertion AUCs
  against those of a random pixel order on the same film (:data:`RANDOM_REFERENCE` in the same result):
  green when deletion is lower AND insertion higher than random by at least :data:`FAITH_MARGIN` (0.05),
  red when neither is, amber otherwise. Before that, the curves' own premise: red whenever the model's
  probability on the *baseline* (the fully blurred film) is at least the film's minus :data:`BLUR_MARGIN`
  (0.1) — the model gives nearly the same score, or a higher one, to a film without its detail, so no
  pixel order can move the curves and both AUCs only restate that score (a degenerate curve, not a
  faithful map).
- **Out-of-distribution warning** (:func:`ood_verdict`): red with the warnings of :func:`xai.trust.ood.score`
  or when no lung field is found. Without a warning the light is amber, never green: the check can only
  warn, and it misses films from hospitals it never saw — the sentence quotes how often it stayed silent
  on the card's held-out hospitals (:mod:`xai.trust.held_out`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANATOMY_RED",
    "SUSPECT_REGIONS",
    "anatomy_verdict",
    "BLUR_MARGIN",
    "CHECKS",
    "FAITH_MARGIN",
    "LIGHTS",
    "LUNG_AMBER",
    "LUNG_GREEN",
    "RANDOM_REFERENCE",
    "SHAKY_RHO",
    "STABLE_RHO",
    "Verdict",
    "faithfulness_verdict",
    "lung_verdict",
    "not_run",
    "ood_verdict",
    "sanity_verdict",
    "stability_verdict",
]

LIGHTS = ("green", "amber", "red", "gray")
CHECKS = {
    "sanity": "Changes when the model is randomised",
    "stability": "Stable under small changes",
    "lungs": "Evidence inside the lungs",
    "anatomy": "Where the evidence lies",
    "faithfulness": "Faithful (deletion / insertion)",
    "ood": "Out-of-distribution warning",
}
STABLE_RHO = 0.8
SHAKY_RHO = 0.5
LUNG_GREEN = 0.75
LUNG_AMBER = 0.5
FAITH_MARGIN = 0.05
BLUR_MARGIN = 0.1
RANDOM_REFERENCE = "random order (reference)"
#: Regions of :data:`xai.anatomy.REGIONS` where most of a map's evidence is a warning sign.
SUSPECT_REGIONS = ("heart and mediastinum", "outside the body", "film border", "text and markers")
ANATOMY_RED = 0.5
#: The visible lung fields' six zones (:data:`xai.anatomy.LUNG_ZONES`; spelled here: this module imports no model).
_LUNG_ZONES = ("right upper zone", "right middle zone", "right lower zone",
               "left upper zone", "left middle zone", "left lower zone")


def _where(region: str) -> str:
    """A region with its preposition: "on the film border", "outside the body", "in the left lower zone"."""
    if region.startswith(("outside", "above", "below")):
        return region
    return f"{'in' if region in _LUNG_ZONES else 'on'} the {region}"


@dataclass(frozen=True)
class Verdict:
    """``check``: a key of :data:`CHECKS`; ``light``: one of :data:`LIGHTS`; ``sentence``: plain words."""

    check: str
    light: str
    sentence: str

    def __post_init__(self) -> None:
        if self.check not in CHECKS or self.light not in LIGHTS:
            raise ValueError(f"unknown check {self.check!r} or light {self.light!r}")


def not_run(check: str) -> Verdict:
    """Gray: the check has not been run for this film yet."""
    return Verdict(check, "gray", "Not run yet.")


def sanity_verdict(result: Any, method: str) -> Verdict:
    """From a :class:`xai.trust.sanity.SanityResult`."""
    passes = result.passes[method]
    rho = result.final_spearman[method]
    if passes is None:
        return Verdict("sanity", "gray", "The map is flat: there is nothing to compare.")
    if not passes:
        return Verdict("sanity", "red", "Barely changes when the model's weights are replaced by random ones "
                       f"(rank correlation {rho:.2f}): it shows the image's edges more than what the model learned.")
    if result.vanished.get(method) is not None:
        return Verdict("sanity", "amber", "Changes when the model is randomised only by fading to nothing; "
                       "its shape never changed. Read it with care.")
    return Verdict("sanity", "green", "Changes when the model's weights are replaced by random ones "
                   f"(rank correlation {rho:.2f}): it depends on what the model learned.")


def stability_verdict(result: Any, method: str) -> Verdict:
    """From a :class:`xai.trust.stability.StabilityResult` (worst Spearman over the changes)."""
    worst = result.summary()[method]["spearman_worst"]
    if not math.isfinite(worst):
        return Verdict("stability", "gray", "The map is flat under the changes: nothing to compare.")
    if worst >= STABLE_RHO:
        return Verdict("stability", "green", "Stable: small changes to the film (noise, brightness, a slight shift "
                       f"or rotation) leave the map nearly the same (lowest rank correlation {worst:.2f}).")
    if worst >= SHAKY_RHO:
        return Verdict("stability", "amber", "Partly stable: a small change to the film moves parts of the map "
                       f"(lowest rank correlation {worst:.2f}).")
    return Verdict("stability", "red", "Unstable: a small change to the film, invisible to a reader, changes the "
                   f"map (lowest rank correlation {worst:.2f}).")


def lung_verdict(share: float, outside: Mapping[str, float], found: bool) -> Verdict:
    """From one map's share in the visible lung fields (:attr:`xai.anatomy.AnatomyReadout.in_visible_lungs`: the
    lung behind the heart is not counted) and its shares outside them by region."""
    if not found:
        return Verdict("lungs", "gray", "No lung field found on this image: it may not be a frontal chest "
                       "radiograph, so the share inside the lungs cannot be measured.")
    if math.isnan(share):
        return Verdict("lungs", "gray", "The map is flat: it points nowhere.")
    where = sorted(((v, k) for k, v in outside.items() if v >= 0.05), reverse=True)
    rest = ", ".join(f"{k} ({v:.0%})" for v, k in where[:2])
    if share >= LUNG_GREEN:
        return Verdict("lungs", "green", f"{share:.0%} of the evidence lies in the visible lung fields.")
    if share >= LUNG_AMBER:
        return Verdict("lungs", "amber", f"Only {share:.0%} of the evidence lies in the visible lung fields"
                       + (f"; the rest mostly {rest}." if rest else "."))
    return Verdict("lungs", "red", f"Most of the evidence lies outside the lungs ({1 - share:.0%})"
                   + (f", mainly {rest}" if rest else "") + ": the model may be using something other than the "
                   "lungs (devices, labels, the film's border, the abdomen).")


def anatomy_verdict(shares: Mapping[str, float], found: bool) -> Verdict:
    """From :func:`xai.anatomy.evidence_by_region` of one map (``{region: share}``; nan for a flat map) and
    whether the film has a lung field. The rule is in the module docstring."""
    if not found:
        return Verdict("anatomy", "gray", "No lung field found on this image, so its regions are unknown.")
    known = {k: float(v) for k, v in shares.items() if not math.isnan(float(v))}
    if not known:
        return Verdict("anatomy", "gray", "The map is flat: it points nowhere.")
    in_lungs = sum(known.get(z, 0.0) for z in _LUNG_ZONES)
    top = max(known, key=known.__getitem__)
    if top in SUSPECT_REGIONS:
        light = "red" if known[top] >= ANATOMY_RED else "amber"
        most = "Most of the evidence" if light == "red" else "The largest share of the evidence"
        return Verdict("anatomy", light, f"{most} lies {_where(top)} ({known[top]:.0%}; "
                       f"{in_lungs:.0%} in the visible lung fields): the model may be reading something other "
                       "than the lungs there.")
    if in_lungs < 0.5:
        outside = max((k for k in known if k not in _LUNG_ZONES), key=known.__getitem__)
        light = "red" if outside in SUSPECT_REGIONS else "amber"
        return Verdict("anatomy", light, f"Most of the evidence lies outside the visible lung fields "
                       f"({1 - in_lungs:.0%}), mainly {_where(outside)} ({known[outside]:.0%}).")
    return Verdict("anatomy", "green", f"{in_lungs:.0%} of the evidence lies in the visible lung fields, most "
                   f"{_where(top)} ({known[top]:.0%}).")


def faithfulness_verdict(result: Any, method: str) -> Verdict:
    """From a :class:`xai.trust.faithfulness.FaithfulnessResult` that includes :data:`RANDOM_REFERENCE`."""
    if RANDOM_REFERENCE not in result.curves:
        raise ValueError(f"the faithfulness result needs the {RANDOM_REFERENCE!r} map to judge against")
    c, r = result.curves[method], result.curves[RANDOM_REFERENCE]
    film, blurred = getattr(result, "score", None), getattr(result, "baseline_score", None)
    if film is not None and blurred is not None and blurred >= film - BLUR_MARGIN:
        return Verdict("faithfulness", "red", "The model gives this score to a blurred film: it is not using the "
                       f"film's detail (probability {blurred:.3f} on the blurred film, {film:.3f} on the film), "
                       "so hiding or showing pixels cannot test the map (deletion "
                       f"{c.deletion_auc:.2f}, insertion {c.insertion_auc:.2f}).")
    deletion_ok = c.deletion_auc <= r.deletion_auc - FAITH_MARGIN
    insertion_ok = c.insertion_auc >= r.insertion_auc + FAITH_MARGIN
    numbers = (f"(deletion {c.deletion_auc:.2f} vs {r.deletion_auc:.2f} for random pixels; insertion "
               f"{c.insertion_auc:.2f} vs {r.insertion_auc:.2f})")
    if deletion_ok and insertion_ok:
        return Verdict("faithfulness", "green", "Faithful: hiding the pixels it marks lowers the model's score "
                       f"faster than hiding random pixels, and showing them raises it faster {numbers}.")
    if deletion_ok or insertion_ok:
        return Verdict("faithfulness", "amber", "Partly faithful: the pixels it marks matter to the model in one "
                       f"test but not clearly in the other {numbers}.")
    return Verdict("faithfulness", "red", "Not faithful: the pixels it marks matter to the model no more than "
                   f"random pixels {numbers}.")


def ood_verdict(result: Any, lung_found: bool | None = None, silence: str | None = None) -> Verdict:
    """From a :class:`xai.trust.ood.OODResult` (or None: no check for this model) and whether lungs were found.

    ``silence``: how often the check stayed silent on held-out hospitals' films, as a clause
    (:meth:`xai.trust.held_out.HeldOutRecord.silence`); quoted when there is no warning.
    """
    warnings = list(getattr(result, "warnings", ()) or ())
    if lung_found is False:
        warnings.append("No lung field was found: the image may not be a frontal chest radiograph.")
    if warnings:
        return Verdict("ood", "red", "Warning: " + " ".join(warnings))
    if result is None or getattr(result, "score", None) is None:
        return Verdict("ood", "gray", "No out-of-distribution check is available for this model.")
    measured = f": {silence}" if silence else " (how often was not measured for this model)"
    return Verdict("ood", "amber", "No warning — the check misses films from hospitals it never saw"
                   + measured + ". No warning does not mean the film is like the training data.")
