"""A class-conditional source adversary for training: features that cannot tell the hospitals apart.

Domain-adversarial training (Ganin et al. 2016, "Domain-Adversarial Training of Neural Networks", JMLR
17(59)): a small head ``a`` learns to name each film's source from the classifier's input ``f``, while a
gradient-reversal layer hands the feature extractor ``-λ ∂L_adv/∂f``, so the same step that improves the
adversary makes the features worse for it. The network minimises

    L = CE(y, classifier(f)) + CE(s, a(R_λ(f))),    R_λ(f) = f,  ∂R_λ/∂f = -λ I.

Here the source is predicted **within the film's class** (conditional invariance, Li et al. 2018, "Deep
Domain Generalization via Conditional Invariant Adversarial Networks", ECCV): the adversary's softmax runs
only over the sources that hold films of that class in training. In this data every source holds one
class (the COVID-19 films come from MHH and COVID-CXNet, the negatives from NIH, Montgomery and Shenzhen),
so an unconditional adversary would also erase the class; the conditional one asks only that an NIH
negative look like a Shenzhen negative, and an MHH COVID-19 film like a web-collection one. A class whose
films all come from one source adds nothing (a softmax over one logit has zero loss).

Used by ``models.train --source-adversary-weight λ``; the adversary is discarded after training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the incoming gradient times ``-weight`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: float) -> Tensor:  # noqa: ANN001
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return -ctx.weight * grad, None


def reverse_gradient(x: Tensor, weight: float) -> Tensor:
    """R_λ(x): ``x`` unchanged, its gradient multiplied by ``-weight`` on the way back."""
    return _ReverseGradient.apply(x, weight)


class SourceAdversary(nn.Module):
    """Names a film's source from its pooled features, choosing only among its own class's sources.

    ``sources[i]`` and ``labels[i]`` describe the training films; they fix the source list and which
    sources each class may be confused with.
    """

    allowed: Tensor  # (class, source) bool buffer: which sources each class's films come from

    def __init__(self, n_features: int, sources: Sequence[str], labels: Sequence[int], *, hidden: int = 256,
                 weight: float = 1.0) -> None:
        super().__init__()
        if len(sources) != len(labels):
            raise ValueError(f"{len(sources)} sources for {len(labels)} labels")
        self.source_names: tuple[str, ...] = tuple(sorted(set(sources)))
        n_classes = max(labels) + 1 if len(labels) else 0
        allowed = torch.zeros(n_classes, len(self.source_names), dtype=torch.bool)
        allowed[torch.tensor(list(labels), dtype=torch.long), self.source_index(sources)] = True
        self.register_buffer("allowed", allowed, persistent=False)  # (class, source): films of both in training
        self.weight = weight
        self.head = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, len(self.source_names)))

    def source_index(self, sources: Sequence[str]) -> Tensor:
        """The adversary's class index of each source name."""
        index = {s: i for i, s in enumerate(self.source_names)}
        return torch.tensor([index[s] for s in sources], dtype=torch.long)

    def masked_logits(self, features: Tensor, labels: Tensor) -> Tensor:
        """Source logits with the sources outside each film's class set to -inf (gradient reversed on the
        way into ``features``)."""
        logits = self.head(reverse_gradient(features, self.weight))
        return logits.masked_fill(~self.allowed[labels], float("-inf"))

    def loss(self, features: Tensor, labels: Tensor, sources: Tensor) -> Tensor:
        """Mean cross-entropy of naming each film's source among its class's sources."""
        logits = self.masked_logits(features, labels)
        log_p = torch.log_softmax(logits, dim=1).gather(1, sources.view(-1, 1)).squeeze(1)
        return -log_p.mean()

    @torch.no_grad()
    def accuracy(self, features: Tensor, labels: Tensor, sources: Tensor) -> float | None:
        """Share of films whose source the adversary names, counting only classes with two or more sources
        (None when there are none)."""
        contested = self.allowed[labels].sum(1) > 1
        if not bool(contested.any()):
            return None
        guess = self.masked_logits(features, labels).argmax(1)
        return float((guess == sources)[contested].float().mean())

