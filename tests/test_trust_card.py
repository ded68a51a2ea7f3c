"""The landing page and the Model page say, in plain words and before any figure, what a hospital the model
never saw should expect and who the model is for; the modeler's details (threshold rule, distances,
command lines) sit under an expander (AppTest, bundled model)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

import models
from xai.trust.held_out import held_out_record

APP = Path(__file__).resolve().parents[1] / "app.py"
TIMEOUT = 300
JARGON = ("Youden", "Mahalanobis", "percentile", "python -m", "--")


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _expected() -> tuple[models.ModelCard, str]:
    card = models.load("chestcovnet").card
    record = held_out_record(card.cross_source)
    assert record is not None
    return card, record.expectation()


def test_the_landing_page_says_what_an_unseen_hospital_should_expect_and_that_it_is_for_adults() -> None:
    card, sentence = _expected()
    at = run(AppTest.from_file(str(APP), default_timeout=TIMEOUT))
    (line,) = [m.value for m in at.markdown if sentence in m.value]
    assert "adults" in line and "children" in line
    # above the chart of the held-out record
    order = [e for e in at.main if getattr(e, "type", "") in ("markdown", "plotly_chart")]
    first_chart = next(i for i, e in enumerate(order) if e.type == "plotly_chart" and "landing_performance" in e.proto.id)
    assert any(sentence in e.value for e in order[:first_chart] if e.type == "markdown")
    wrong = sum(m["all_splits"]["confusion_matrix"][0][1] + m["all_splits"]["confusion_matrix"][1][0]
                for m in card.cross_source.values())
    assert f"({wrong} of " in sentence


def test_the_model_page_puts_plain_words_first_and_the_modelers_details_in_expanders() -> None:
    card, sentence = _expected()
    at = run(AppTest.from_file(str(APP), default_timeout=TIMEOUT))
    run(at.switch_page("pages/model.py"))
    main = list(at.main)
    markdown_at = next(i for i, e in enumerate(main) if getattr(e, "type", "") == "markdown" and sentence in e.value)
    first_chart = next(i for i, e in enumerate(main) if getattr(e, "type", "") == "plotly_chart")
    assert markdown_at < first_chart, "the sentence comes before the figures"
    assert "adults" in card.intended_use and any("adults" in w.value for w in at.warning)
    modelers = [e for e in at.expander if e.label == "For modelers"]
    assert len(modelers) >= 3

    def outside(node: object) -> list:
        """Every element under ``node`` except those inside an expander."""
        kept = []
        for child in getattr(node, "children", {}).values():
            if getattr(child, "type", "") == "expander":
                continue
            kept.append(child)
            kept += outside(child)
        return kept

    visible = "\n".join(e.value for e in outside(at.main) if getattr(e, "type", "") in ("markdown", "caption", "text"))
    assert sentence in visible
    for word in JARGON:
        assert word not in visible, word
    folded = "\n".join(c.value for e in modelers for c in e.caption) + "\n".join(
        m.value for e in modelers for m in e.markdown)
    assert "Youden" in folded and "Mahalanobis" in folded and "python -m" in folded


def test_the_explain_page_gives_the_decision_and_the_ood_check_in_plain_words() -> None:
    """A result's captions say the decision rule and what no warning means without the modeler's terms; the
    terms and figures behind them are in the captions' tooltips."""
    card = models.load("chestcovnet").card
    at = run(AppTest.from_file(str(APP), default_timeout=TIMEOUT))
    box = at.selectbox(key="sample")
    box.set_value(next(o for o in box.options if o != "—"))
    run(at)
    captions = list(at.caption)
    (decision,) = [c for c in captions if c.value.startswith("Decision:")]
    assert (f"calls a film {card.positive_class} when P({card.positive_class}) is at least {card.threshold:.3f}"
            in decision.value)
    assert card.threshold_rule in decision.proto.help  # the rule, for whoever asks
    (check,) = [c for c in captions if c.value.startswith("No out-of-distribution warning")]
    assert "Mahalanobis distance" in check.proto.help
    for word in JARGON:
        assert not [c.value for c in captions if word in c.value], word
