"""The shipped default ChestCOVNet: loads offline, checksum matches, the card's test figures reproduce."""

from __future__ import annotations

from pathlib import Path

import pytest

import models
from models.evaluate import evaluate


@pytest.fixture(scope="module")
def default_model() -> models.LoadedModel:
    return models.load()  # by name, from models/bundles: no network


@pytest.fixture(scope="module")
def test_split_result(default_model, chestcovnet_dir: Path) -> dict:
    return evaluate(default_model, chestcovnet_dir, "test")


def test_default_is_the_trained_chestcovnet(default_model):
    card = default_model.card
    assert card.name == "chestcovnet" and card.architecture == "chestcovnet"
    assert not card.version.startswith("0.0"), "the ImageNet-init placeholder is still the default"
    assert card.class_names == ("non_covid", "covid19") and card.positive_class == "covid19"
    assert card.target_layer == "head_act"
    assert "Youden" in card.threshold_rule
    assert "not" in card.intended_use.lower() and "diagnos" in card.intended_use.lower()
    assert "confound" in card.limitations.lower()
    attribution = " ".join(card.data_attribution)
    for credit in ("Hannover Medical School", "ChestX-ray8", "10.6084/m9.figshare.12580328"):
        assert credit in attribution
    bundle = models.BUNDLES_DIR / "chestcovnet"
    assert (bundle / "model.safetensors").stat().st_size <= 30_000_000
    assert models.sha256_file(bundle / "model.safetensors") == card.sha256
    assert not default_model.module.training


def test_card_test_metrics_reproduce(default_model, test_split_result):
    card_test = default_model.card.metrics["test"]
    assert {"date", "command"} <= set(card_test)
    assert round(test_split_result["auroc"], 3) == round(card_test["auroc"], 3)
    assert test_split_result["threshold"] == pytest.approx(default_model.card.threshold)
    assert test_split_result["confusion_matrix"] == card_test["confusion_matrix"]
    assert test_split_result["n"] == card_test["n"] == 298  # the test split of manifest.csv
    for source, figures in card_test["per_source"].items():
        assert test_split_result["per_source"][source]["confusion_matrix"] == figures["confusion_matrix"]


def test_card_reports_cross_source_checks_and_border_energy(default_model):
    card = default_model.card
    assert {"MHH Hannover", "COVID-CXNet (multi-source)"} <= set(card.cross_source)
    for held in card.cross_source.values():
        assert 0.0 <= held["all_splits"]["sensitivity"] <= 1.0
    assert 0.0 <= card.grad_cam_border_energy["mean"] <= 1.0


def test_second_seed_is_another_checkpoint_of_the_same_architecture(default_model):
    second = models.load("chestcovnet-seed2")
    assert second.card.architecture == default_model.card.architecture
    assert second.card.preprocessing == default_model.card.preprocessing
    assert second.card.training["seed"] != default_model.card.training["seed"]
    assert second.card.sha256 != default_model.card.sha256
