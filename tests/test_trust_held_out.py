"""What the app says to expect at an unseen hospital (xai.trust.held_out), against the bundled card's own
leave-one-source-out entries added up by hand, and the card's paediatric sentence against a measurement."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from xai.trust.held_out import held_out_record, in_words

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/chestcovnet")


def _card(name: str) -> dict:
    return json.loads((ROOT / "models" / "bundles" / name / "card.json").read_text(encoding="utf-8"))


def test_totals_are_the_sum_of_every_held_out_source() -> None:
    cross = _card("chestcovnet")["cross_source"]
    films = wrong = checked = warned = 0
    shares = []
    for entry in cross.values():
        (tn, fp), (fn, tp) = entry["all_splits"]["confusion_matrix"]
        films += tn + fp + fn + tp
        wrong += fp + fn
        shares.append((fp + fn) / (tn + fp + fn + tp))
        checked += entry["ood_warnings"]["n"]
        warned += entry["ood_warnings"]["warned"]
    record = held_out_record(cross)
    assert record is not None
    assert (record.films, record.wrong, record.checked, record.warned) == (films, wrong, checked, warned)
    assert record.silent == checked - warned
    sentence = record.expectation()
    assert sentence.startswith(f"At a hospital it has never seen, expect {in_words(wrong / films)} films to be "
                               "called wrongly")
    assert f"({wrong} of {films} films when each of {len(cross)} sources was left out" in sentence
    assert f"from {in_words(min(shares))} to {in_words(max(shares))}" in sentence
    assert f"{(checked - warned) / checked:.0%} of the films" in record.silence()


@pytest.mark.parametrize(("share", "words"), [(0.005, "almost no"), (0.1, "about one in 10"),
                                              (0.136, "about one in 7"), (0.566, "about 6 in 10"),
                                              (0.95, "about 10 in 10")])
def test_in_words(share: float, words: str) -> None:
    assert in_words(share) == words


def test_no_usable_entry_gives_no_record() -> None:
    assert held_out_record(None) is None
    assert held_out_record({}) is None
    assert held_out_record({"x": {"all_splits": {"confusion_matrix": "bad"}}}) is None
    one = held_out_record({"x": {"all_splits": {"confusion_matrix": [[3, 1], [0, 0]]}}})
    assert one is not None and one.silence() is None and (one.films, one.wrong) == (4, 1)


@pytest.mark.parametrize("bundle", ["chestcovnet", "chestcovnet-seed2"])
def test_the_cards_paediatric_sentence_is_what_the_model_does_on_childrens_films(bundle: str) -> None:
    """The data set marks paediatric films with ``p`` before ``.jpg`` (``p-``: PCR-proven, normal-looking):
    run the bundle and its out-of-distribution check on each, and compare with the card's words."""
    import models
    from xai.pipeline import explain_source
    from xai.trust import ood

    rows = {r["file"]: r for r in csv.DictReader((DATA / "manifest.csv").open(encoding="utf-8"))}
    files = sorted(f for f in rows if re.search(r"\dp-?\.jpg$", f))
    assert files
    model = models.load(bundle)
    stats = models.ood_stats(model)
    called = warned = 0
    for name in files:
        result = explain_source(DATA / "images" / name, model, methods=("gradcam",))
        scored = ood.score(model, result.input_tensor, stats, radiograph=result.radiograph,
                           features=result.explanation.features)
        called += result.predicted == "covid19"
        warned += bool(scored.warnings)
    labels = {rows[f]["label"] for f in files}
    in_train = sum(rows[f]["split"] == "train" for f in files)
    limitations = model.card.limitations
    assert "adults" in model.card.intended_use and "adults" in limitations
    assert "Adult and paediatric" not in limitations
    assert labels == {"covid19"}  # so the card may not claim how it treats a child without COVID-19
    assert (f"the {len(files)} paediatric films in its data are all COVID-19 ({in_train} of them in its "
            "training split)") in limitations
    assert f"it called {called} of them COVID-19" in limitations
    assert ("the out-of-distribution check warned on none" if warned == 0
            else f"the out-of-distribution check warned on {warned}") in limitations
