"""The "How the maps are made" page driven headless (AppTest) on a real sample and the bundled model.

What the page plots is checked against numbers computed here independently: the Grad-CAM weights of a
global-average-pooled linear head are the classifier's row divided by h*w, and the share of pixels where
Grad-CAM and Grad-CAM++ differ comes from the engine's own maps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import models
from pages._howto import WEAK_EVIDENCE
from xai.engine import Explainer
from xai.glassbox import DIFFER_LEVEL
from xai.preprocessing import prepare
from xai.radiograph import load_radiograph
from xai.trust.sanity import PASS_THRESHOLD

REPO = Path(__file__).resolve().parents[1]
SAMPLE = "covid19_mhh_pa.jpg"
SAMPLE_TITLE = "COVID-19, PA (MHH, CC BY 3.0)"
TIMEOUT = 300
SECTIONS = ("1 · The target layer", "2 · Grad-CAM", "3 · Grad-CAM++", "4 · Guided backpropagation",
            "5 · Guided Grad-CAM", "6 · This model on this film")
CHARTS = ("how_weights", "how_channels", "how_gradcam_steps", "how_alphas", "how_pixel_weights", "how_pp_scatter",
          "how_pp_difference", "how_guided", "how_guided_gradcam")


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart(at: AppTest, key: str) -> dict:
    found = [c for c in at.get("plotly_chart") if getattr(c, "key", None) == key]
    assert len(found) == 1, f"expected one chart {key}"
    return json.loads(found[0].proto.spec)


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


@pytest.fixture(scope="module")
def bundle() -> models.LoadedModel:
    return models.load("chestcovnet")


@pytest.fixture(scope="module")
def film(bundle: models.LoadedModel) -> torch.Tensor:
    x, _ = prepare(load_radiograph(REPO / "samples" / SAMPLE), bundle.card.preprocessing)
    return x


@pytest.fixture(scope="module")
def probabilities(bundle: models.LoadedModel, film: torch.Tensor) -> dict[str, float]:
    """The model's own softmax on the sample, computed here (not by the engine or the page)."""
    with torch.no_grad():
        p = torch.softmax(bundle.module(film), dim=1)[0].tolist()
    return dict(zip(bundle.card.class_names, p, strict=True))


def shown(name: str, p: float) -> str:
    """The page's sentence for the explained class, formatted as the page formats it."""
    return f"explaining **{name}** (P = {p:.3f}"


@pytest.fixture()
def page() -> AppTest:
    at = run(AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT))
    run(at.switch_page("pages/how.py"))
    assert at.title[0].value == "How the maps are made"
    assert at.info, "without a film the page asks for one"
    at.selectbox(key="how_sample").set_value(SAMPLE_TITLE)
    return run(at)


def test_every_step_is_drawn_from_the_film(page: AppTest, bundle: models.LoadedModel, probabilities) -> None:
    at = page
    headers = [h.value for h in at.header]
    for section in SECTIONS:
        assert any(h.startswith(section) for h in headers), section
    for key in CHARTS:
        chart(at, key)
    assert len(at.get("latex")) >= 4  # a formula per method
    text = "\n".join(m.value for m in at.markdown)
    assert "`head_act` (ReLU6): the model card names it" in text
    assert "1280 channels" in text and "7 × 7" in text
    relu6_calls = sum(isinstance(m, torch.nn.ReLU6) for m in bundle.module.modules())  # each runs once
    assert f"acts at **{relu6_calls} ReLU nodes**" in text

    # The bars are the top Grad-CAM weights of the predicted class. Independent: behind GAP + linear,
    # w_k = W[predicted, k] / 49.
    predicted = max(probabilities, key=probabilities.get)
    row = bundle.module.classifier.weight.detach().numpy()[bundle.card.class_names.index(predicted)] / 49.0
    top = np.sort(row)[::-1][:8]
    bars = chart(at, "how_weights")["data"][0]
    np.testing.assert_allclose(bars["y"], top, rtol=1e-4)
    assert bars["x"] == [f"ch {i}" for i in np.argsort(-row, kind="stable")[:8]]
    assert shown(predicted, probabilities[predicted]) in text

    # Rebuilt maps equal the engine's (the page prints the largest difference).
    errors = [float(v) for v in re.findall(r"by at most ([0-9.e+-]+)\.", captions(at))]
    assert len(errors) == 2 and max(errors) < 1e-5


def test_the_page_says_what_the_explain_pages_default_scale_divides_by(page: AppTest, bundle, film,
                                                                        probabilities) -> None:
    """One truth about the display scale: Explain's default divides the raw map by the card's typical peak
    (tests/test_app.py checks that on the Explain page); this page says so, with the card's own number and
    this film's raw Grad-CAM maximum against it, and draws that view beside its own ÷ max view."""
    from xai.display_scale import from_card

    at = page
    cal = from_card(bundle.card)
    assert cal is not None
    assert any("The Explain page's default display does not: it divides each method's raw map by the model's "
               "typical peak" in i.value and f"{cal.n} {cal.split} films" in i.value for i in at.info)
    predicted = max(probabilities, key=probabilities.get)
    e = Explainer(bundle.module, target_layer=bundle.card.target_layer).explain(
        film, target=bundle.card.class_names.index(predicted), methods=("gradcam",))
    raw_max = float(np.asarray(e.raw["gradcam"][0]).max())
    peak = cal.vmax["gradcam"]
    assert (f"Raw maximum {raw_max:.3g}: the figures on this page divide by it. The Explain page's default divides "
            f"by the model's typical Grad-CAM peak instead ({peak:.3g}): this map reaches {raw_max / peak:.2f}×"
            ) in captions(at)
    titles = [a["text"] for a in chart(at, "how_gradcam_steps")["layout"]["annotations"]]
    assert titles[-2:] == ["÷ its own maximum (this page)", "÷ the typical peak (Explain's default)"]
    assert not any("the display divides by it" in c.value for c in at.caption)


def test_the_other_class_shows_weak_evidence_and_where_the_cams_part(page: AppTest, bundle, film,
                                                                      probabilities) -> None:
    at = page
    names = list(bundle.card.class_names)
    predicted = max(probabilities, key=probabilities.get)
    other = next(n for n in names if n != predicted)
    target_box = next(s for s in at.selectbox if s.key and s.key.startswith("how_target"))
    target_box.set_value(other)
    run(at)
    assert shown(other, probabilities[other]) in "\n".join(m.value for m in at.markdown)
    assert any("Weak evidence" in w.value for w in at.warning) == (probabilities[other] < WEAK_EVIDENCE)
    explainer = Explainer(bundle.module, target_layer="head_act")

    def differ_share(name: str) -> float:
        e = explainer.explain(film, target=names.index(name))
        return float(np.mean(np.abs(e.maps["gradcam"][0] - e.maps["gradcam++"][0]) >= DIFFER_LEVEL))

    share = differ_share(other)
    assert share > differ_share(predicted)  # explaining the rejected class, the two CAMs part on more pixels
    shown_share = re.search(r"differ by at least [0-9.]+ on \*\*([0-9.]+) %\*\*", captions(at))
    assert shown_share is not None and float(shown_share.group(1)) == pytest.approx(100 * share, abs=0.06)


@pytest.mark.slow  # randomises the model layer by layer and explains 10 changed films: minutes on a busy CPU
def test_the_sanity_and_stability_checks_run_on_request(page: AppTest) -> None:
    at = page
    assert not at.dataframe
    at.button(key="how_run_sanity").click()
    run(at)
    table = at.dataframe[0].value
    assert list(table["method"]) == ["Grad-CAM", "Grad-CAM++", "Guided Backprop", "Guided Grad-CAM"]
    assert table["spearman_all_random"].between(-1, 1).all()
    for _, row in table.iterrows():  # the verdict follows the final rank correlation
        if not row["verdict"].startswith("n/a"):
            assert row["verdict"].startswith("fails") == (row["spearman_all_random"] >= PASS_THRESHOLD), row

    at.button(key="how_run_stability").click()
    run(at)
    assert len(at.dataframe) == 2
    stable = at.dataframe[1].value
    assert list(stable["method"]) == list(table["method"])
    for column in ("spearman_mean", "spearman_worst", "spearman_checkpoint"):  # the second seed is shipped
        assert stable[column].between(-1, 1).all(), column
    assert (stable["spearman_worst"] <= stable["spearman_mean"] + 1e-9).all()


def test_each_explain_panel_has_a_popover_linking_here(probabilities) -> None:
    at = run(AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT))
    at.selectbox(key="sample").set_value(SAMPLE_TITLE)
    run(at)
    target_box = next(s for s in at.selectbox if s.key and s.key.startswith("target:"))
    target_box.set_value("non_covid")
    run(at)
    labels = [p.proto.popover.label for p in at.get("popover")]
    assert labels == ["How Grad-CAM works", "How Grad-CAM++ works", "How Guided Backprop works",
                      "How Guided Grad-CAM works"]
    links = at.get("page_link")
    assert len(links) == 4 and {link.proto.page for link in links} == {"how"}
    assert len(at.get("latex")) >= 4  # each popover carries its method's formula
    # The link's page opens on the film and the class the Explain page shows.
    run(at.switch_page("pages/how.py"))
    assert any(shown("non_covid", probabilities["non_covid"]) in m.value for m in at.markdown)
