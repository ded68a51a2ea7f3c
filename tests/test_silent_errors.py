"""The silent error rate (misclassified at the threshold with no out-of-distribution warning) in words, from
the card's own per-source records added up by hand; the Explain page's verdict on a warned film; and the
out-of-distribution record that ``python -m xai explain`` and ``report`` write, against the check run directly."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_app import APP, TIMEOUT, held_out_chart, new_app, run
from test_ood import _document  # one home for the synthetic non-chest picture

from xai.trust.held_out import HeldOutRecord, held_out_record, in_words

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ("chestcovnet", "chestcovnet-seed2")
SILENT = "silent error rate (wrong, no warning)"


def _card(name: str) -> dict:
    return json.loads((ROOT / "models" / "bundles" / name / "card.json").read_text(encoding="utf-8"))


def _by_hand(cross: dict) -> tuple[int, int, dict[str, float]]:
    """(silent errors, films, {source: rate}) summed from each held-out source's record; each source's silent
    errors checked against its confusion matrix (they cannot exceed the films called wrongly)."""
    silent = films = 0
    rates = {}
    for source, entry in cross.items():
        record = entry["silent_errors"]["all_splits"]
        (tn, fp), (fn, tp) = entry["all_splits"]["confusion_matrix"]
        assert record["n"] == tn + fp + fn + tp and record["errors"] == fp + fn
        assert record["errors"] - record["errors_warned"] == record["silent_errors"]
        silent, films = silent + record["silent_errors"], films + record["n"]
        rates[source] = record["silent_errors"] / record["n"]
    return silent, films, rates


@pytest.mark.parametrize("bundle", BUNDLES)
def test_the_silent_sentence_is_the_pooled_rate_of_the_cards_held_out_sources(bundle: str) -> None:
    card = _card(bundle)
    silent, films, rates = _by_hand(card["cross_source"])
    record = held_out_record(card["cross_source"])
    assert record is not None and (record.silent_errors, record.silent_judged) == (silent, films)
    sentence = record.silent_expectation()
    assert sentence is not None
    assert sentence.startswith(f"At a hospital it has never seen, expect about one film in {round(films / silent)} "
                               "to be called wrongly with no warning ("), sentence
    assert f"({silent} of {films} films, pooled over the {len(rates)} sources" in sentence
    assert f"from {in_words(min(rates.values()))} to {in_words(max(rates.values()))}" in sentence
    # The card says it in the same words, next to where it points to cross_source.
    assert sentence in card["limitations"]


def test_silent_sentence_without_records_and_without_silent_errors() -> None:
    plain = {"all_splits": {"confusion_matrix": [[3, 1], [0, 0]]}}
    assert held_out_record({"x": plain}).silent_expectation() is None  # type: ignore[union-attr]
    clean = {**plain, "silent_errors": {"all_splits": {"n": 4, "silent_errors": 0}}}
    record = held_out_record({"x": clean})
    assert isinstance(record, HeldOutRecord)
    assert record.silent_expectation() == ("At a hospital it has never seen, no film was called wrongly with no "
                                           "warning (0 of 4 films, pooled over the 1 sources each left out of "
                                           "training in turn).")
    broken = {**plain, "silent_errors": {"all_splits": {"n": 4, "silent_errors": 9}}}  # more than the films
    assert held_out_record({"x": broken}).silent_judged == 0  # type: ignore[union-attr]


def _silent_bars(chart: dict) -> dict[str, float]:
    (trace,) = [t for t in chart["data"] if t["name"] == SILENT]
    return dict(zip(trace["y"], trace["x"], strict=True))


def test_landing_and_model_page_show_the_silent_error_rate_beside_the_rates() -> None:
    import models
    import pages._models as app_models

    card = models.read_card(app_models.DEFAULT_MODEL)
    sentence = held_out_record(card.cross_source).silent_expectation()  # type: ignore[union-attr]
    assert sentence
    at = new_app()
    assert any(sentence in m.value for m in at.markdown)
    bars = _silent_bars(held_out_chart(at, "landing_performance"))
    for source, entry in card.cross_source.items():
        record = entry["silent_errors"]["all_splits"]
        group = f"{source}, never seen in training (n={entry['all_splits']['n']})"
        assert bars[group] == pytest.approx(record["silent_errors"] / record["n"])
    run(at.switch_page("pages/model.py"))
    assert any(sentence in m.value for m in at.markdown)
    (table,) = [d.value for d in at.dataframe if SILENT in d.value.columns]
    expected = [f"{e['silent_errors']['all_splits']['silent_errors'] / e['silent_errors']['all_splits']['n']:.2f} "
                f"({e['silent_errors']['all_splits']['silent_errors']} of {e['silent_errors']['all_splits']['n']})"
                for e in card.cross_source.values()]
    assert table["held-out source"].tolist() == list(card.cross_source)
    assert table[SILENT].tolist() == expected
    assert "rate" in table.columns  # beside sensitivity and specificity


def _page_png() -> bytes:
    page = io.BytesIO()
    Image.fromarray((_document() * 255).astype(np.uint8)).save(page, format="PNG")
    return page.getvalue()


def test_explain_verdict_on_a_warned_film_says_not_to_use_the_prediction(chestcovnet_dir: Path) -> None:
    from pages._ood import DO_NOT_USE

    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    run(at)
    at.file_uploader(key="upload").set_value(("page.png", _page_png(), "image/png"))
    run(at)
    assert any("Unlike the training data" in w.value for w in at.warning)
    assert [e.value for e in at.error if e.value == DO_NOT_USE] == [DO_NOT_USE]
    film = (chestcovnet_dir / "images" / "nih_00008727_009.jpg").read_bytes()
    at.file_uploader(key="upload").set_value(("film.jpg", film, "image/jpeg"))
    run(at)
    assert not [e.value for e in at.error if e.value == DO_NOT_USE]  # no warning, no such verdict


def _direct(path: Path) -> tuple[float, bool, str]:
    """The check run directly on the film (the reference the CLI's record is held to)."""
    import models
    from xai.pipeline import explain_source
    from xai.trust import ood

    model = models.load("chestcovnet")
    result = explain_source(path, model, methods=("gradcam",))
    scored = ood.score(model, result.input_tensor, models.ood_stats(model), radiograph=result.radiograph,
                       features=result.explanation.features)
    assert scored.score is not None
    return scored.score, bool(scored.warnings), "; ".join(scored.warnings)


def test_cli_explain_and_report_write_the_out_of_distribution_record(chestcovnet_dir: Path, tmp_path: Path) -> None:
    from xai.cli import main

    films = tmp_path / "films"
    films.mkdir()
    (films / "page.png").write_bytes(_page_png())
    (films / "film.jpg").write_bytes((chestcovnet_dir / "images" / "nih_00008727_009.jpg").read_bytes())
    out, err = io.StringIO(), io.StringIO()
    code = main(["explain", str(films), "--out", str(tmp_path / "explain"), "--model", "chestcovnet",
                 "--methods", "gradcam", "--no-progress"], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    code = main(["report", str(films), "--out", str(tmp_path / "report"), "--model", "chestcovnet",
                 "--methods", "gradcam", "--no-progress"], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    rows = {r["file"]: r for r in csv.DictReader((tmp_path / "report" / "report.csv").open(encoding="utf-8"))}
    warned = set()
    for name in ("page.png", "film.jpg"):
        score, warning, reason = _direct(films / name)
        (result_json,) = (tmp_path / "explain").glob(f"{Path(name).stem}*/result.json")
        record = json.loads(result_json.read_text(encoding="utf-8"))["ood"]
        assert set(record) == {"score", "warning", "reason"}
        assert record["score"] == pytest.approx(score, rel=1e-4)
        assert record["warning"] is warning and record["reason"] == (reason or None)
        row = next(r for f, r in rows.items() if f.endswith(name))
        assert float(row["ood_score"]) == pytest.approx(score, rel=1e-4)
        assert row["ood_flag"] == str(int(warning)) and row["ood_warning"] == reason
        if warning:
            warned.add(name)
    assert warned == {"page.png"}  # a page of text warns, an adult chest film from a training source does not
