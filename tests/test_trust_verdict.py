"""The plain verdicts (xai.trust.verdict) on real result records, at the edges of every rule, and the
"where the rest lies" split of xai.anatomy.evidence_outside by hand."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from xai.anatomy import evidence_in_lungs, evidence_outside
from xai.trust.faithfulness import FaithfulnessCurves, FaithfulnessResult
from xai.trust.ood import OODResult
from xai.trust.sanity import SanityResult
from xai.trust.stability import Comparison, StabilityResult
from xai.trust.verdict import (
    BLUR_MARGIN,
    CHECKS,
    RANDOM_REFERENCE,
    Verdict,
    faithfulness_verdict,
    lung_verdict,
    ood_verdict,
    sanity_verdict,
    stability_verdict,
)


def test_evidence_outside_by_region_by_hand() -> None:
    mask = np.zeros((20, 20), bool)
    mask[8:12, 6:9] = mask[8:12, 11:14] = True  # two "lungs"; their box is x 6..13, y 8..11
    s = np.zeros((20, 20))
    s[0, 10] = 1  # film border (outer 5 % = 1 px)
    s[3, 10] = 2  # above the lungs
    s[15, 10] = 3  # below
    s[10, 2] = 4  # beside
    s[9, 7] = 5  # inside
    s[10, 10] = 6  # between the two lungs, inside their box
    out = evidence_outside(s, mask, dilation=0)
    assert out == pytest.approx({"film border": 1 / 21, "above the lungs": 2 / 21, "below the lungs": 3 / 21,
                                 "beside the lungs": 4 / 21, "between the lungs": 6 / 21}, abs=1e-12)
    assert evidence_in_lungs(s, mask, dilation=0) + sum(out.values()) == pytest.approx(1.0, abs=1e-12)
    assert evidence_outside(np.ones((20, 20)), mask) == {}


def _sanity(final: float, passes: bool | None, vanished: str | None = None) -> SanityResult:
    return SanityResult(methods=("gradcam",), steps=("head", "all"), spearman={"gradcam": (0.9, final)},
                        ssim={"gradcam": (0.9, 0.1)}, passes={"gradcam": passes}, target=1, seed=0,
                        vanished={"gradcam": vanished})


def test_sanity_lights() -> None:
    assert sanity_verdict(_sanity(0.1, True), "gradcam").light == "green"
    red = sanity_verdict(_sanity(0.9, False), "gradcam")
    assert red.light == "red" and "0.90" in red.sentence
    assert sanity_verdict(_sanity(0.0, True, vanished="head"), "gradcam").light == "amber"
    assert sanity_verdict(_sanity(float("nan"), None), "gradcam").light == "gray"


def _stability(worst: float) -> StabilityResult:
    comps = tuple(Comparison(name=f"c{i}", spearman={"m": v}, ssim={"m": 0.9}, iou_top10={"m": 0.9},
                             probability=0.8, predicted=1) for i, v in enumerate((0.95, worst)))
    return StabilityResult(methods=("m",), target=1, reference_probability=0.8, reference_predicted=1,
                           comparisons=comps)


@pytest.mark.parametrize(("worst", "light"), [(0.8, "green"), (0.79, "amber"), (0.5, "amber"), (0.49, "red")])
def test_stability_lights_use_the_worst_change(worst: float, light: str) -> None:
    v = stability_verdict(_stability(worst), "m")
    assert v.light == light and f"{worst:.2f}" in v.sentence


def test_lung_lights_name_where_the_rest_lies() -> None:
    assert lung_verdict(0.75, {}, True).light == "green"
    amber = lung_verdict(0.7, {"below the lungs": 0.2, "film border": 0.06, "beside the lungs": 0.04}, True)
    assert amber.light == "amber" and "below the lungs (20%)" in amber.sentence and "film border (6%)" in amber.sentence
    assert "beside" not in amber.sentence  # under 5 %: not named
    red = lung_verdict(0.3, {"film border": 0.5, "below the lungs": 0.2}, True)
    assert red.light == "red" and "(70%)" in red.sentence and red.sentence.index("film border") < red.sentence.index("below")
    assert lung_verdict(float("nan"), {}, False).light == "gray"
    assert lung_verdict(float("nan"), {}, True).light == "gray"


def _faith(deletion: float, insertion: float) -> FaithfulnessResult:
    f = np.linspace(0, 1, 3)

    def curve(d: float, i: float) -> FaithfulnessCurves:
        return FaithfulnessCurves(fractions=f, deletion=f, insertion=f, deletion_auc=d, insertion_auc=i)

    return FaithfulnessResult(target=1, baseline="blur",
                              curves={"m": curve(deletion, insertion), RANDOM_REFERENCE: curve(0.5, 0.5)})


def test_faithfulness_lights_against_the_random_reference() -> None:
    assert faithfulness_verdict(_faith(0.45, 0.55), "m").light == "green"  # exactly the 0.05 margin
    assert faithfulness_verdict(_faith(0.46, 0.7), "m").light == "amber"
    assert faithfulness_verdict(_faith(0.5, 0.5), "m").light == "red"
    no_reference = FaithfulnessResult(target=1, baseline="blur", curves={"m": _faith(0.1, 0.9).curves["m"]})
    with pytest.raises(ValueError, match="random order"):
        faithfulness_verdict(no_reference, "m")


def test_a_blurred_film_scoring_like_the_film_is_a_red_flag_whatever_the_aucs() -> None:
    """The curves' premise: the baseline must score lower than the film. Near (within BLUR_MARGIN) or above:
    red, in words, with both scores; clearly lower: the usual comparison with the random order."""
    good = _faith(0.2, 0.9)  # AUCs that would read "faithful"
    for film, blurred in ((0.999, 0.96), (0.999, 0.999 - BLUR_MARGIN), (0.5, 0.8), (0.003, 0.002)):
        v = faithfulness_verdict(replace(good, score=film, baseline_score=blurred), "m")
        assert v.light == "red", (film, blurred)
        assert v.sentence.startswith("The model gives this score to a blurred film: it is not using the film's "
                                     "detail")
        assert f"{blurred:.3f} on the blurred film" in v.sentence and f"{film:.3f} on the film" in v.sentence
    apart = faithfulness_verdict(replace(good, score=0.99, baseline_score=0.99 - BLUR_MARGIN - 0.01), "m")
    assert apart.light == "green" and "blurred" not in apart.sentence
    assert faithfulness_verdict(good, "m").light == "green"  # scores not measured: the AUC rule alone


def test_ood_words_never_claim_the_film_looks_like_the_training_data() -> None:
    quiet = OODResult(score=3.0, percentile=40.0, threshold=9.0, is_ood=False, warnings=())
    v = ood_verdict(quiet, lung_found=True, silence="it stayed silent on 93% of the films (9 of 10)")
    assert v.light == "amber"
    assert v.sentence.startswith("No warning — the check misses films from hospitals it never saw: it stayed "
                                 "silent on 93% of the films (9 of 10).")
    assert "looks like" not in v.sentence and "like the training data" not in CHECKS["ood"]
    unmeasured = ood_verdict(quiet, lung_found=True)
    assert unmeasured.light == "amber" and "not measured" in unmeasured.sentence
    loud = OODResult(score=12.0, percentile=99.9, threshold=9.0, is_ood=True, warnings=("Unlike the training data.",))
    assert ood_verdict(loud, lung_found=True) == Verdict("ood", "red", "Warning: Unlike the training data.")
    no_lungs = ood_verdict(quiet, lung_found=False)
    assert no_lungs.light == "red" and "No lung field" in no_lungs.sentence
    assert ood_verdict(None).light == "gray"


def test_the_weak_evidence_notice_covers_every_map_of_a_rejected_class() -> None:
    """A rejected class gets the notice even when every map is bright on the calibrated scale (Grad-CAM++'s
    positive-gradient weights draw one), and the notice names every map shown, not only the faint ones."""
    from xai.display_scale import PLUS_PLUS_NOTE, ScaleCalibration, weak_evidence

    cal = ScaleCalibration(vmax={"gradcam": 1.0, "gradcam++": 1.0})
    titles = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
    bright = {"gradcam": 0.9, "gradcam++": 1.2}
    assert weak_evidence("non_covid", 0.4, bright, cal, titles) is None  # not rejected, probable, bright
    notice = weak_evidence("non_covid", 0.4, bright, cal, titles, rejected=True)
    assert notice is not None and "the model does not call non_covid (probability 0.4)" in notice
    assert "(Grad-CAM, Grad-CAM++)" in notice and PLUS_PLUS_NOTE in notice and "peak" not in notice
    faint = weak_evidence("covid19", 0.003, {"gradcam": 0.1, "gradcam++": 1.2}, cal, titles, rejected=True)
    assert faint is not None and "Grad-CAM 0.10×" in faint and "(Grad-CAM, Grad-CAM++)" in faint
