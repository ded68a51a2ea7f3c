"""Review statistics against independent references: statsmodels' fleiss_kappa, the ``krippendorff``
package, textbook examples with published values, hand-computed cases, and the trust metrics."""

from __future__ import annotations

import math

import krippendorff
import numpy as np
import pytest
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from xai.review.stats import (
    bootstrap_mean_ci,
    box_agreement,
    category_table,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha_ordinal,
    plausibility_matrix,
    reader_accuracy,
    reader_model_agreement,
    session_summary,
    wilson_interval,
)
from xai.trust.metrics import box_to_mask, energy_inside, otsu_iou, pointing_game

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers x 12 units,
# missing values; published alpha_nominal = 0.743, alpha_ordinal = 0.815, alpha_interval = 0.849.
NAN = np.nan
KRIPPENDORFF_2011 = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
])

# The worked example of Fleiss' kappa (Wikipedia, "Fleiss' kappa"): 10 subjects, 14 raters, 5 categories;
# P_bar = 0.378, P_e = 0.213, published kappa = 0.210.
FLEISS_EXAMPLE = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])

def test_fleiss_kappa_matches_the_published_example_and_statsmodels():
    assert round(fleiss_kappa(FLEISS_EXAMPLE), 3) == 0.210
    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(sm_fleiss_kappa(FLEISS_EXAMPLE, method="fleiss"), abs=1e-12)
    rng = np.random.default_rng(7)
    for _ in range(20):
        n_readers = int(rng.integers(2, 9))
        table = np.array([rng.multinomial(n_readers, rng.dirichlet([1, 1, 1])) for _ in range(int(rng.integers(3, 40)))])
        ours, reference = fleiss_kappa(table), sm_fleiss_kappa(table, method="fleiss")
        assert ours == pytest.approx(reference, abs=1e-12) or (math.isnan(ours) and math.isnan(reference))


def test_fleiss_kappa_hand_computed_and_edge_cases():
    # 2 cases x 2 readers: perfect agreement on different categories -> kappa = 1
    assert fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)
    # 2 cases, 2 readers, each case split: P_i = 0, P_e = 0.5 -> kappa = -1
    assert fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)
    assert math.isnan(fleiss_kappa([[3, 0], [3, 0]]))  # one category only: undefined
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[2, 0], [1, 0]])
    with pytest.raises(ValueError, match="table"):
        fleiss_kappa([1, 2, 3])


def test_category_table_keeps_cases_every_reader_read():
    reads = {"c1": {"ann": "covid19", "ben": "covid19"}, "c2": {"ann": "non_covid"},
             "c3": {"ann": "uncertain", "ben": "non_covid"}}
    table, cases, readers = category_table(reads)
    assert cases == ["c1", "c3"] and readers == ["ann", "ben"]
    assert table.tolist() == [[2, 0, 0], [0, 1, 1]]
    with pytest.raises(ValueError, match="unknown category"):
        category_table({"c": {"a": "flu", "b": "flu"}})


def test_krippendorff_alpha_ordinal_matches_the_published_example_and_the_package():
    assert round(krippendorff_alpha_ordinal(KRIPPENDORFF_2011), 3) == 0.815
    reference = krippendorff.alpha(reliability_data=KRIPPENDORFF_2011, level_of_measurement="ordinal")
    assert krippendorff_alpha_ordinal(KRIPPENDORFF_2011) == pytest.approx(reference, abs=1e-12)
    rng = np.random.default_rng(3)
    for _ in range(20):
        data = rng.integers(1, 6, size=(int(rng.integers(2, 7)), int(rng.integers(5, 30)))).astype(float)
        data[rng.random(data.shape) < 0.25] = np.nan
        data[:, 0] = [1, 2] + [np.nan] * (data.shape[0] - 2)  # at least one pairable unit
        reference = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal")
        assert krippendorff_alpha_ordinal(data) == pytest.approx(reference, abs=1e-10)


def test_krippendorff_alpha_is_ordinal_not_nominal_or_interval():
    nominal = krippendorff.alpha(reliability_data=KRIPPENDORFF_2011, level_of_measurement="nominal")
    interval = krippendorff.alpha(reliability_data=KRIPPENDORFF_2011, level_of_measurement="interval")
    ours = krippendorff_alpha_ordinal(KRIPPENDORFF_2011)
    assert abs(ours - nominal) > 0.05 and abs(ours - interval) > 0.02
    assert krippendorff_alpha_ordinal([[3, 3, 3], [3, 3, 3]]) != krippendorff_alpha_ordinal([[3, 3, 3], [3, 3, 3]])  # NaN
    assert krippendorff_alpha_ordinal([[1, 2, 3], [1, 2, 3]]) == pytest.approx(1.0)


def test_bootstrap_ci_covers_the_mean_narrows_with_more_cases_and_is_seeded():
    rng = np.random.default_rng(0)
    small, large = rng.integers(1, 6, 10).astype(float), rng.integers(1, 6, 400).astype(float)
    mean, low, high = bootstrap_mean_ci(small, seed=1)
    assert mean == pytest.approx(small.mean()) and low < mean < high
    _, low_l, high_l = bootstrap_mean_ci(large, seed=1)
    assert (high_l - low_l) < (high - low) / 3  # ~ 1/sqrt(n): 40x the cases, ~6x narrower
    # the normal approximation: half-width ~ 1.96 * sd / sqrt(n) on many cases
    half = 1.96 * large.std(ddof=1) / math.sqrt(large.size)
    assert (high_l - low_l) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_mean_ci(small, seed=1) == (mean, low, high)
    assert bootstrap_mean_ci([4.0, 4.0, 4.0]) == (4.0, 4.0, 4.0)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))


def test_cohen_kappa_hand_computed():
    # 10 items: agree on 7; reader yes 5/10, model yes 6/10 -> p_e = .5*.6 + .5*.4 = .5, kappa = (.7-.5)/.5 = .4
    a = ["y"] * 5 + ["n"] * 5
    b = ["y", "y", "y", "y", "n", "y", "y", "n", "n", "n"]
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert math.isnan(cohen_kappa(["y", "y"], ["y", "y"]))


def test_reader_model_agreement_leaves_uncertain_reads_out():
    rows = [
        {"case": "c1", "reader": "ann", "diagnosis": "covid19"},
        {"case": "c2", "reader": "ann", "diagnosis": "non_covid"},
        {"case": "c3", "reader": "ann", "diagnosis": "uncertain"},
        {"case": "c4", "reader": "ann", "diagnosis": "covid19"},
        {"case": "c1", "reader": "ben", "diagnosis": "uncertain"},
    ]
    predictions = {"c1": "covid19", "c2": "covid19", "c3": "covid19", "c4": "covid19"}
    result = reader_model_agreement(rows, predictions)
    assert result["ann"]["n"] == 3 and result["ann"]["uncertain"] == 1
    assert result["ann"]["agreement"] == pytest.approx(2 / 3)
    assert math.isnan(result["ann"]["kappa"]) is False
    # hand: reader (c, n, c) vs model (c, c, c): p_o = 2/3, p_e = 2/3*1 + 1/3*0 = 2/3 -> kappa = 0
    assert result["ann"]["kappa"] == pytest.approx(0.0)
    assert result["ben"]["n"] == 0 and math.isnan(result["ben"]["agreement"])


def test_wilson_interval_matches_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    for successes, n in ((0, 5), (3, 4), (7, 7), (12, 40), (1, 1)):
        assert wilson_interval(successes, n) == pytest.approx(
            proportion_confint(successes, n, alpha=0.05, method="wilson"), abs=2e-4)  # z 1.96 vs 1.95996
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_reader_accuracy_counts_decided_reads_on_cases_with_a_reference():
    rows = [
        {"case": "c1", "reader": "ann", "diagnosis": "covid19", "reference": "covid19"},
        {"case": "c2", "reader": "ann", "diagnosis": "covid19", "reference": "non_covid"},
        {"case": "c3", "reader": "ann", "diagnosis": "uncertain", "reference": "non_covid"},
        {"case": "c4", "reader": "ann", "diagnosis": "non_covid", "reference": None},  # no reference: out
        {"case": "c1", "reader": "ben", "diagnosis": "uncertain", "reference": "covid19"},
        {"case": "c4", "reader": "cyd", "diagnosis": "covid19", "reference": None},
    ]
    result = reader_accuracy(rows)
    assert set(result) == {"ann", "ben"}
    assert (result["ann"]["n"], result["ann"]["correct"], result["ann"]["uncertain"]) == (2, 1, 1)
    assert result["ann"]["accuracy"] == 0.5
    assert (result["ann"]["ci_low"], result["ann"]["ci_high"]) == pytest.approx(wilson_interval(1, 2))
    assert result["ben"]["n"] == 0 and result["ben"]["uncertain"] == 1 and math.isnan(result["ben"]["accuracy"])
    assert session_summary(rows, ["gradcam"])["reader_accuracy"]["ann"]["accuracy"] == 0.5


def test_box_agreement_reuses_the_trust_metrics():
    heat = np.zeros((40, 60))
    heat[10:20, 30:45] = np.linspace(0.2, 1.0, 15)[None, :]
    far = np.zeros((40, 60))
    far[30:38, 2:8] = 1.0
    box = [28, 8, 20, 14]
    scores = box_agreement({"on": heat, "off": far}, box)
    mask = box_to_mask(tuple(box), heat.shape)
    assert scores["on"]["hit"] == 1.0 and scores["off"]["hit"] == 0.0
    assert scores["on"]["energy_inside"] == pytest.approx(energy_inside(heat, mask)) == pytest.approx(1.0)
    assert scores["off"]["energy_inside"] == 0.0
    assert scores["on"]["iou_otsu"] == pytest.approx(otsu_iou(heat, mask))
    assert pointing_game(heat, mask) is True
    assert scores["on"]["area_share"] == pytest.approx(20 * 14 / (40 * 60))


def test_session_summary_from_export_rows():
    rows = []
    plaus = {"c1": {"ann": (5, 1), "ben": (4, 2)}, "c2": {"ann": (3, 1), "ben": (3, 1)}, "c3": {"ann": (4, 2)}}
    diag = {"c1": {"ann": "covid19", "ben": "covid19"}, "c2": {"ann": "non_covid", "ben": "covid19"},
            "c3": {"ann": "covid19"}}
    for case, per in plaus.items():
        for reader, (g, gb) in per.items():
            rows.append({"case": case, "reader": reader, "diagnosis": diag[case][reader],
                         "plausibility": {"gradcam": g, "guided_backprop": gb}})
    box_scores = [{"case": "c1", "reader": "ann", "method": "gradcam", "hit": 1.0, "energy_inside": 0.6,
                   "iou_otsu": 0.3, "area_share": 0.1},
                  {"case": "c2", "reader": "ann", "method": "gradcam", "hit": 0.0, "energy_inside": 0.2,
                   "iou_otsu": 0.1, "area_share": 0.1}]
    summary = session_summary(rows, ["gradcam", "guided_backprop"], predictions={"c1": "covid19", "c2": "non_covid"},
                              box_scores=box_scores, n_boot=500)
    assert summary["readers"] == ["ann", "ben"] and summary["n_cases"] == 3
    # case means for gradcam: c1 4.5, c2 3, c3 4 -> mean 11.5/3
    assert summary["methods"]["gradcam"]["mean"] == pytest.approx(11.5 / 3)
    assert summary["methods"]["gradcam"]["n_ratings"] == 5 and summary["methods"]["gradcam"]["n_cases"] == 3
    assert summary["fleiss_cases"] == 2
    assert summary["fleiss_kappa"] == pytest.approx(fleiss_kappa([[2, 0, 0], [1, 1, 0]]))
    matrix, readers, _ = plausibility_matrix(rows, "gradcam")
    assert summary["methods"]["gradcam"]["alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal"))
    assert summary["boxes"]["gradcam"] == {"hit": 0.5, "energy_inside": pytest.approx(0.4),
                                           "iou_otsu": pytest.approx(0.2), "area_share": pytest.approx(0.1), "n": 2}
    assert summary["boxes"]["guided_backprop"]["n"] == 0
    assert summary["reader_vs_model"]["ben"]["agreement"] == 0.5
