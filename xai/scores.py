"""One probability rule for every model: softmax over the logits, sigmoid for a single logit.

A leaf module (numpy; torch when probabilities are computed): the engine (:mod:`xai.engine`) and the trust checks (:mod:`xai.trust`) turn
logits into probabilities here, so that a two-class softmax model and a one-logit sigmoid model are read
the same way everywhere.

* ``C > 1`` classes: ``p_c = exp(z_c) / sum_j exp(z_j)`` (softmax, the multinomial logistic model).
* ``C == 1``: ``p = 1 / (1 + exp(-z))`` (sigmoid, the binary logistic model): the probability of the
  positive class.

And one decision rule (:class:`DecisionRule`): a two-class model whose card names a positive class and a
threshold predicts that class when ``P(positive) >= threshold`` (the operating point chosen on validation
data, e.g. ChestCOVNet's P(covid19) >= 0.27); any other model predicts its most probable class. Every page,
export and trust check asks this rule, so a film is never "covid19" on one page and "non_covid" on another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch loads when probabilities are computed: the decision rule needs none
    import torch

__all__ = ["DecisionRule", "predicted_index", "probabilities"]


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities for logits ``(N, C)``: softmax over ``C``, or sigmoid when ``C == 1``.

    Runs on the logits' device and keeps their dtype (no ``.numpy()``); gradients flow through when the
    logits require them.

    Raises:
        TypeError: ``logits`` is not a floating-point tensor.
        ValueError: ``logits`` is not 2-D ``(N, C)`` with ``C >= 1``.
    """
    import torch

    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        kind = f"dtype {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point torch.Tensor of shape (N, C); got {kind}")
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, C) with C >= 1; got {tuple(logits.shape)}")
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class DecisionRule:
    """A model's predicted class from its probabilities: the card's threshold on P(``positive_index``) for a
    two-class model that names one, else the arg-max."""

    threshold: float | None = None
    positive_index: int | None = None

    @classmethod
    def of(cls, card: Any) -> DecisionRule:
        """The rule a model card states (``threshold``, ``positive_class``, ``class_names``); arg-max for None
        or a card without them."""
        threshold = getattr(card, "threshold", None)
        positive = getattr(card, "positive_class", None)
        names = tuple(getattr(card, "class_names", None) or ())
        return cls(None if threshold is None else float(threshold),
                   names.index(positive) if positive in names else None)

    def decide(self, probabilities: Any) -> int:
        """The predicted class index for one image's probabilities ``(C,)``."""
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if self.threshold is not None and self.positive_index is not None and p.size == 2:
            return self.positive_index if p[self.positive_index] >= self.threshold else 1 - self.positive_index
        return int(np.argmax(p))


def predicted_index(probabilities: Any, *, threshold: float | None = None, positive_index: int | None = None) -> int:
    """:meth:`DecisionRule.decide` for one image, the rule given by its two numbers."""
    return DecisionRule(threshold, positive_index).decide(probabilities)
