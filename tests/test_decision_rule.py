"""One decision rule everywhere: the trust checks' default class is the card's decision, not the arg-max."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from test_trust_methods import PRE, ToyCNN

from xai.scores import DecisionRule, probabilities
from xai.trust.integrated_gradients import integrated_gradients


def test_integrated_gradients_explains_the_class_the_card_decides() -> None:
    module = ToyCNN().eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = probabilities(module(x))[0].double()
    loser = int(p.argmin())
    # A threshold just below the less probable class's probability: the card decides that class.
    names = ("b", "a") if loser == 0 else ("a", "b")  # "b" names the less probable class
    card = SimpleNamespace(threshold=float(p[loser]) - 1e-3, positive_class="b", class_names=names,
                           preprocessing=PRE, target_layer="act2")
    assert DecisionRule.of(card).decide(p.numpy()) == loser != int(p.argmax())
    assert integrated_gradients(module, x, steps=4).target == int(p.argmax())  # a bare module: arg-max
    assert integrated_gradients(SimpleNamespace(module=module, card=card), x, steps=4).target == loser
