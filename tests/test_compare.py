"""xai.compare and the Compare page on the two real bundles (chestcovnet and its second seed).

The rank correlation is recomputed independently with ``scipy.stats.spearmanr`` on maps brought to the
comparison grid with OpenCV; the page (AppTest) must show the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import stats
from streamlit.testing.v1 import AppTest

import models
from models.bundle import export_zip
from xai.compare import COMPARISON_SIDE, compare_maps, difference_map, to_grid
from xai.pipeline import explain_source

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "covid19_mhh_pa.jpg"
SAMPLE_TITLE = "COVID-19, PA (MHH, CC BY 3.0)"
TIMEOUT = 300


def grid(a: np.ndarray) -> np.ndarray:
    """Independent reference for the comparison grid: area interpolation to a longest side of 256 px."""
    h, w = a.shape
    s = COMPARISON_SIDE / max(h, w)
    if s >= 1:
        return a.astype(np.float64)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(a.astype(np.float32), size, interpolation=cv2.INTER_AREA).astype(np.float64)


@pytest.fixture(scope="module")
def two_seeds():
    first, second = models.load("chestcovnet"), models.load("chestcovnet-seed2")
    return explain_source(SAMPLE, first, target=1), explain_source(SAMPLE, second, target=1)


def test_two_real_bundles_compared_per_method(two_seeds) -> None:
    a, b = two_seeds
    comparisons = compare_maps(a.maps, b.maps)
    assert tuple(comparisons) == tuple(a.maps)
    for m, c in comparisons.items():
        ga, gb = grid(a.maps[m]), grid(b.maps[m])
        assert c.a.shape == ga.shape and max(ga.shape) == COMPARISON_SIDE
        np.testing.assert_allclose(c.a, ga, atol=1e-6)
        np.testing.assert_allclose(c.difference, ga - gb, atol=1e-6)
        assert c.spearman == pytest.approx(stats.spearmanr(ga.ravel(), gb.ravel()).statistic, abs=1e-6)
        assert -1.0 <= c.ssim <= 1.0 and 0.0 <= c.iou_top10 <= 1.0
        assert c.mean_abs_difference == pytest.approx(np.mean(np.abs(ga - gb)), abs=1e-6)
        assert not c.difference.flags.writeable
    # different seeds learned different things: no method's map is identical across them
    assert all(c.spearman < 0.999 for c in comparisons.values())


def test_a_map_against_itself_and_its_reverse() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((40, 30))
    same = compare_maps({"gradcam": a}, {"gradcam": a})["gradcam"]
    assert same.spearman == pytest.approx(1.0) and same.ssim == pytest.approx(1.0) and same.iou_top10 == 1.0
    assert not same.difference.any()
    reverse = compare_maps({"gradcam": a}, {"gradcam": 1.0 - a})["gradcam"]
    assert reverse.spearman == pytest.approx(-1.0)
    assert reverse.iou_top10 == 0.0


def test_flat_maps_and_mismatches_are_named() -> None:
    a = np.random.default_rng(1).random((20, 20))
    flat = compare_maps({"gradcam": a}, {"gradcam": np.zeros_like(a)})["gradcam"]
    assert flat.flat and np.isnan(flat.spearman) and np.isnan(flat.iou_top10)
    with pytest.raises(ValueError, match="cannot be compared"):
        compare_maps({"gradcam": a}, {"gradcam": a[:10]})
    with pytest.raises(ValueError, match="share no method"):
        compare_maps({"gradcam": a}, {"gradcam++": a})
    with pytest.raises(ValueError, match="same shape"):
        difference_map(a, a.T[:5])
    assert to_grid(np.ones((600, 300))).shape == (256, 128)


# ------------------------------------------------------------------------------------------- the page
def page() -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_compare_page_shows_the_two_seeds_numbers(two_seeds) -> None:
    at = page()
    assert at.title[0].value == "Compare"
    at.selectbox(key="compare_sample").set_value(SAMPLE_TITLE).run()
    assert at.selectbox(key="compare_model_B").value == "bundled: chestcovnet-seed2"
    at.selectbox(key="compare_class").set_value("covid19").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    a, b = two_seeds
    for _, row in table.iterrows():
        method = {"Grad-CAM": "gradcam", "Grad-CAM++": "gradcam++", "Guided Backprop": "guided_backprop",
                  "Guided Grad-CAM": "guided_gradcam"}[row["method"]]
        expected = stats.spearmanr(grid(a.maps[method]).ravel(), grid(b.maps[method]).ravel()).statistic
        assert row["Spearman"] == pytest.approx(expected, abs=1e-3)
    keys = [c.proto.id for c in at.get("plotly_chart")]
    assert sum("compare_maps_" in k for k in keys) == 4 and any("compare_metrics" in k for k in keys)
    # Each A − B panel: a diverging scale fixed at ±1 (maps on [0, 1]), its colour bar shown, and the range
    # this difference really spans in its title, so a small disagreement looks small.
    comparisons = compare_maps(a.maps, b.maps)
    for chart in (c for c in at.get("plotly_chart") if "compare_maps_" in c.proto.id):
        spec = json.loads(chart.proto.spec)
        method = next(m for m in comparisons if chart.proto.id.endswith(f"compare_maps_{m}"))
        (heat,) = [t for t in spec["data"] if t["type"] == "heatmap"]
        assert (heat["zmin"], heat["zmid"], heat["zmax"]) == (-1.0, 0.0, 1.0) and heat["showscale"] is True
        assert heat["colorbar"]["title"]["text"] == "A − B"
        diff = grid(a.maps[method]) - grid(b.maps[method])
        title = spec["layout"]["annotations"][2]["text"]
        assert title.endswith(f"here {diff.min():+.2f} … {diff.max():+.2f}") and "fixed scale −1 … +1" in title


def test_compare_page_two_classes_of_one_model() -> None:
    at = page()
    at.selectbox(key="compare_sample").set_value(SAMPLE_TITLE).run()
    at.radio(key="compare_mode").set_value("Two classes").run()
    assert not at.exception, [e.value for e in at.exception]
    bundle = models.load("chestcovnet")
    a = explain_source(SAMPLE, bundle, target=0)
    b = explain_source(SAMPLE, bundle, target=1)
    table = at.dataframe[0].value
    row = table[table["method"] == "Grad-CAM"].iloc[0]
    expected = stats.spearmanr(grid(a.maps["gradcam"]).ravel(), grid(b.maps["gradcam"]).ravel()).statistic
    assert row["Spearman"] == pytest.approx(expected, abs=1e-3)
    # the same class on both sides is flagged
    at.selectbox(key="compare_class_B").set_value("non_covid").run()
    assert any("identical" in w.value for w in at.warning)


def test_compare_page_with_an_uploaded_bundle_zip(two_seeds) -> None:
    """The second seed uploaded as a bundle zip gives the same numbers as the bundled second seed; a zip
    that is not a bundle gets a message naming the problem. Only classifier bundles are offered."""
    at = page()
    at.selectbox(key="compare_sample").set_value(SAMPLE_TITLE).run()
    options = at.selectbox(key="compare_model_B").options
    assert "Upload a bundle zip…" in options and "bundled: chestcovnet-seed2" in options
    assert not any("lungs" in o for o in options)  # the lung segmenter is not a classifier to compare
    at.selectbox(key="compare_model_B").set_value("Upload a bundle zip…").run()
    assert any("Choose both models" in i.value for i in at.info)
    at.file_uploader(key="compare_zip_B").set_value(("not-a-bundle.zip", b"PK not really a zip", "application/zip"))
    at.run()
    assert not at.exception and any("Could not load the bundle" in e.value for e in at.error)
    zipped = export_zip(REPO / "models" / "bundles" / "chestcovnet-seed2")
    at.file_uploader(key="compare_zip_B").set_value(("seed2.zip", zipped, "application/zip"))
    at.run()
    at.selectbox(key="compare_class").set_value("covid19").run()
    assert not at.exception, [e.value for e in at.exception]
    a, b = two_seeds
    row = at.dataframe[0].value.iloc[0]  # Grad-CAM
    expected = stats.spearmanr(grid(a.maps["gradcam"]).ravel(), grid(b.maps["gradcam"]).ravel()).statistic
    assert row["method"] == "Grad-CAM" and row["Spearman"] == pytest.approx(expected, abs=1e-3)
