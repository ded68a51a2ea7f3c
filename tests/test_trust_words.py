"""The Trust page's words never claim more than its checks know (AppTest, bundled model, real films).

- a film with no out-of-distribution warning gets an amber line that quotes how often the check stayed
  silent on the card's held-out hospitals, never "like the training data";
- a model that ignores its input (a bundle built here whose logits are constant) gets a red faithfulness
  verdict in words, with the blurred film's score beside the AUCs;
- each map is drawn beside its verdicts; the weak-evidence notice for a rejected class names every map and
  says why Grad-CAM++ can still draw one;
- with patient details off, an uploaded file's name is printed nowhere.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

import models
from xai.display_scale import PLUS_PLUS_NOTE
from xai.pipeline import explain_source
from xai.trust import ood
from xai.trust.held_out import held_out_record
from xai.trust.verdict import CHECKS

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
TIMEOUT = 600
METHOD_TITLES = ("Grad-CAM", "Grad-CAM++", "Guided Backprop", "Guided Grad-CAM")
AMBER, RED = ":orange[:material/warning:]", ":red[:material/error:]"
BLIND_P = 0.96  # the constant P(covid19) of the input-ignoring model


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def trust_page() -> AppTest:
    at = run(AppTest.from_file(str(APP), default_timeout=TIMEOUT))
    return run(at.switch_page("pages/trust.py"))


def sample(at: AppTest, fragment: str) -> AppTest:
    box = at.selectbox(key="trust_sample")
    box.set_value(next(o for o in box.options if fragment in o))
    return run(at)


def lines(at: AppTest, check: str) -> list[str]:
    return [line for md in at.markdown for line in md.value.splitlines() if f"**{CHECKS[check]}**" in line]


def all_text(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "text", "info", "warning", "error", "success", "title")
             for e in getattr(at, kind)]
    parts += [c for e in at.get("image") for c in e.captions]
    return "\n".join(str(p) for p in parts)


def test_a_film_with_no_warning_is_amber_with_the_measured_silence() -> None:
    bundle = models.load("chestcovnet")
    film = REPO / "samples" / "covid19_mhh_pa.jpg"
    result = explain_source(film, bundle, methods=("gradcam",))
    scored = ood.score(bundle, result.input_tensor, models.ood_stats(bundle), radiograph=result.radiograph,
                       features=result.explanation.features)
    assert not scored.warnings, "this sample must be one the check is silent on"
    at = sample(trust_page(), "MHH")
    (line,) = lines(at, "ood")
    record = held_out_record(bundle.card.cross_source)
    assert record is not None and record.silent_share is not None and record.silent_share > 0.5
    assert line.startswith(AMBER)
    assert (f"No warning — the check misses films from hospitals it never saw: it stayed silent on "
            f"{record.silent_share:.0%} of the films of hospitals left out of training ({record.silent} of "
            f"{record.checked}).") in line
    assert "like the training data (no concern)" not in all_text(at) and "Film like the training data" not in line


def test_every_map_is_drawn_beside_its_verdicts_on_the_explain_pages_scale() -> None:
    at = sample(trust_page(), "MHH")
    images = at.get("image")
    captions = [c for i in images for c in i.captions]
    assert all(any(c == t for c in captions) for t in METHOD_TITLES), captions
    assert any("Maps on the same scale as the Explain page" in c.value and "typical peak" in c.value
               for c in at.caption)
    headers = [md.value for md in at.markdown if md.value.startswith("**") and md.value.split("**")[1] in METHOD_TITLES]
    assert [h.split("**")[1] for h in headers] == list(METHOD_TITLES)
    assert all(":material/" in h for h in headers)  # the lights beside each map's name


def test_a_rejected_class_gets_a_notice_covering_every_map() -> None:
    bundle = models.load("chestcovnet")
    result = explain_source(REPO / "samples" / "covid19_mhh_pa.jpg", bundle, methods=("gradcam",))
    assert result.predicted == "covid19", "the notice is for the class the model rejects"
    at = sample(trust_page(), "MHH")
    at.selectbox(key="trust_target").set_value("non_covid")
    run(at)
    (notice,) = [w.value for w in at.warning if w.value.startswith("Weak evidence")]
    assert f"the model does not call non_covid (probability {result.probabilities['non_covid']:.3g})" in notice
    assert "(" + ", ".join(METHOD_TITLES) + ")" in notice and PLUS_PLUS_NOTE in notice
    at.selectbox(key="trust_target").set_value("covid19")
    run(at)
    assert not [w.value for w in at.warning if w.value.startswith("Weak evidence")]


def test_with_patient_details_off_the_upload_is_never_named() -> None:
    name = "Doe^Jane_MRN4411.png"
    buffer = io.BytesIO()
    with Image.open(REPO / "samples" / "covid19_mhh_pa.jpg") as film:
        film.convert("L").save(buffer, format="PNG")
    at = trust_page()
    at.file_uploader(key="trust_upload").set_value((name, buffer.getvalue(), "image/png"))
    run(at)
    text = all_text(at)
    assert "the uploaded film" in text
    for fragment in ("Doe", "Jane", "MRN4411"):
        assert fragment not in text, fragment
    at.session_state["show_patient"] = True  # the Explain page's switch, on
    run(at)
    assert name in all_text(at)


# --------------------------------------------------------------------------------------- a blind model
def build_blind_bundle(folder: Path) -> Path:
    """The shipped architecture and card, with a classifier whose weights are zero: every input, blurred or
    not, gets the same logits (P(covid19) = :data:`BLIND_P`)."""
    shipped = models.load("chestcovnet")
    module = models.build_model(shipped.card.architecture, len(shipped.card.class_names))
    module.load_state_dict(shipped.module.state_dict())
    index = shipped.card.class_names.index("covid19")
    with torch.no_grad():
        module.classifier.weight.zero_()
        module.classifier.bias.zero_()
        module.classifier.bias[index] = math.log(BLIND_P / (1 - BLIND_P))
    card = {**shipped.card.to_dict(), "name": "blind-test", "cross_source": {}, "saliency_scale": {}}
    models.save_bundle(folder, module.eval(), card)
    return folder


@pytest.fixture(scope="module")
def blind_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_blind_bundle(tmp_path_factory.mktemp("blind") / "bundle")


def test_a_model_that_ignores_its_input_gets_a_red_faithfulness_verdict(blind_bundle: Path) -> None:
    from pages._models import wrap_model
    from pages._state import Key

    blind = models.load(str(blind_bundle))
    with torch.no_grad():  # independent: the model really ignores its input
        p = torch.softmax(blind.module(torch.rand(2, 3, 224, 224)), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(p, BLIND_P, atol=1e-5)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    run(at)
    at.session_state[Key.USER_MODEL] = wrap_model(blind, origin="uploaded")
    run(at.switch_page("pages/trust.py"))
    sample(at, "MHH")
    next(b for b in at.button if b.label == "Run deletion / insertion").click()
    run(at)
    faith = lines(at, "faithfulness")
    assert len(faith) == 4
    for line in faith:
        assert line.startswith("- " + RED) or line.startswith(RED), line
        assert ("The model gives this score to a blurred film: it is not using the film's detail (probability "
                f"{BLIND_P:.3f} on the blurred film, {BLIND_P:.3f} on the film)") in line
    (table,) = [d.value for d in at.dataframe if "P on the baseline" in d.value.columns]
    assert table["P on the baseline"].tolist() == pytest.approx([BLIND_P] * len(table), abs=1e-3)
    assert table["P on the film"].tolist() == pytest.approx([BLIND_P] * len(table), abs=1e-3)


def test_the_explain_pages_no_warning_caption_quotes_the_same_silence() -> None:
    """One wording for the silent check: the Explain page's caption (and the exports' OOD line) too."""
    bundle = models.load("chestcovnet")
    record = held_out_record(bundle.card.cross_source)
    assert record is not None
    at = run(AppTest.from_file(str(APP), default_timeout=TIMEOUT))
    box = at.selectbox(key="sample")
    box.set_value(next(o for o in box.options if "MHH" in o))
    run(at)
    (caption,) = [c.value for c in at.caption if c.value.startswith("No out-of-distribution warning")]
    assert caption.startswith("No out-of-distribution warning — the check misses films from hospitals it never saw: "
                              f"{record.silence()}. No warning does not mean the film is like the training data")
