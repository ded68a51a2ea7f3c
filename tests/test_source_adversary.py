"""The class-conditional source adversary (models.source_adversary) against hand-computed values, and its
effect on a toy encoder: it must remove a within-class source signal and keep the class signal."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models
from models import train as train_mod
from models.source_adversary import SourceAdversary, reverse_gradient

SOURCES = ["nih", "shenzhen", "nih", "mhh", "cxnet", "montgomery"]
LABELS = [0, 0, 0, 1, 1, 0]


def test_gradient_reversal_is_identity_forward_and_minus_weight_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = reverse_gradient(x, 0.7)
    assert torch.equal(y, x)
    (y * torch.arange(12.0).view(3, 4)).sum().backward()
    torch.testing.assert_close(x.grad, -0.7 * torch.arange(12.0).view(3, 4))


def test_loss_is_cross_entropy_over_the_films_own_class_sources_only():
    adversary = SourceAdversary(4, SOURCES, LABELS)
    assert adversary.source_names == ("cxnet", "mhh", "montgomery", "nih", "shenzhen")
    # negatives may be confused among nih / montgomery / shenzhen, positives among mhh / cxnet
    assert adversary.allowed.tolist() == [[False, False, True, True, True], [True, True, False, False, False]]
    features = torch.randn(4, 4)
    labels = torch.tensor([0, 1, 0, 1])
    sources = adversary.source_index(["shenzhen", "cxnet", "nih", "mhh"])
    logits = adversary.head(features).detach()
    expected = []
    for row, y, s in zip(logits.tolist(), labels.tolist(), sources.tolist(), strict=True):
        allowed = [2, 3, 4] if y == 0 else [0, 1]
        expected.append(-(row[s] - math.log(sum(math.exp(row[j]) for j in allowed))))
    assert float(adversary.loss(features, labels, sources).detach()) == pytest.approx(sum(expected) / 4, rel=1e-5)


def test_a_class_from_one_source_adds_no_loss_and_no_gradient():
    adversary = SourceAdversary(4, ["nih", "nih", "mhh"], [0, 0, 1])
    features = torch.randn(2, 4, requires_grad=True)
    loss = adversary.loss(features, torch.tensor([0, 1]), adversary.source_index(["nih", "mhh"]))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(features.grad) == 0
    assert adversary.accuracy(features.detach(), torch.tensor([0, 1]), adversary.source_index(["nih", "mhh"])) is None


# A toy of the confound: feature 0 carries the disease (noisy), feature 1 the hospital's "style", and the
# only COVID-19 source shares its style with no negative source. An unseen hospital's negatives in that style
# are what the real model calls COVID-19.
STYLE = {"nih": -1.0, "shenzhen": 0.0, "cxnet": 1.0, "unseen": 1.0}


def _toy_films(n: int, g: torch.Generator, negatives: tuple[str, ...] = ("nih", "shenzhen"),
               ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    labels = torch.randint(0, 2, (n,), generator=g)
    pick = torch.randint(0, 2, (n,), generator=g)
    sources = ["cxnet" if y else negatives[p % len(negatives)] for y, p in zip(labels.tolist(), pick.tolist(),
                                                                                strict=True)]
    x = torch.randn(n, 2, generator=g)
    x[:, 0] += labels * 2.0 - 1.0
    x[:, 1] = x[:, 1] * 0.2 + torch.tensor([STYLE[s] for s in sources])
    return x, labels, sources


def _toy_run(adversary_weight: float, seed: int = 0) -> dict[str, float]:
    """Train a one-feature encoder + classifier (+ the adversary); return the training accuracy, what a
    fresh probe trained on the frozen feature reads of the negatives' hospital, and the specificity on an
    unseen hospital's negatives."""
    g = torch.Generator().manual_seed(seed)
    x, labels, sources = _toy_films(1024, g)
    torch.manual_seed(seed)
    encoder, classifier = torch.nn.Linear(2, 1), torch.nn.Linear(1, 2)
    adversary = SourceAdversary(1, sources, labels.tolist(), hidden=16, weight=adversary_weight)
    index = adversary.source_index(sources)
    optimizer = torch.optim.Adam([*encoder.parameters(), *classifier.parameters(), *adversary.parameters()], lr=0.01)
    for _ in range(600):
        batch = torch.randint(0, len(x), (64,), generator=g)
        f = encoder(x[batch])
        loss = F.cross_entropy(classifier(f), labels[batch]) + adversary.loss(f, labels[batch], index[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        f = encoder(x)
        train_accuracy = float((classifier(f).argmax(1) == labels).float().mean())
        x_new, y_new, _ = _toy_films(2000, g, negatives=("unseen",))
        unseen_specificity = float((classifier(encoder(x_new[y_new == 0])).argmax(1) == 0).float().mean())
    probe = SourceAdversary(1, sources, labels.tolist(), hidden=16, weight=0.0)
    probe_optimizer = torch.optim.Adam(probe.parameters(), lr=0.02)
    for _ in range(400):
        probe_loss = probe.loss(f, labels, index)
        probe_optimizer.zero_grad()
        probe_loss.backward()
        probe_optimizer.step()
    return {"train": train_accuracy, "hospital": probe.accuracy(f, labels, index), "unseen": unseen_specificity}


@pytest.mark.parametrize("seed", [0, 1])
def test_the_adversary_hides_the_hospital_and_helps_an_unseen_one(seed: int):
    plain = _toy_run(0.0, seed)  # weight 0: the adversary learns but the encoder gets no reversed gradient
    adversarial = _toy_run(3.0, seed)
    # Untouched, the feature tells NIH from Shenzhen and the unseen hospital's negatives look like COVID-19.
    assert plain["hospital"] > 0.95 and plain["unseen"] < 0.1
    # With the adversary a fresh probe is much nearer chance (0.5), and the unseen hospital is mostly cleared,
    # at a small cost on the training films (the disease signal alone is ~84 % accurate).
    assert adversarial["hospital"] < 0.7
    assert adversarial["unseen"] > 0.6
    assert adversarial["train"] > 0.85


def test_training_run_records_the_adversary_on_the_card(tmp_path: Path, chestcovnet_dir: Path):
    out = tmp_path / "bundle"
    rc = train_mod.main(["--data", str(chestcovnet_dir), "--out", str(out), "--epochs", "1", "--max-images", "8",
                         "--batch-size", "4", "--views", "0", "--cache-dir", "", "--seed", "1",
                         "--source-adversary-weight", "0.5"])
    assert rc == 0
    card = models.load(out).card
    recorded = card.training["source_adversary"]
    train_sources = set(card.training["train_images_per_source"])
    assert recorded["weight"] == 0.5 and set(recorded["sources"]) == train_sources
    accuracy = recorded["val_within_class_source_accuracy"]
    assert accuracy is None or 0.0 <= accuracy <= 1.0
    assert "--source-adversary-weight 0.5" in card.training["command"]
