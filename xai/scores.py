"""One probability rule for every model: softmax over the logits, sigmoid for a single logit.

A leaf module (torch only): the engine (:mod:`xai.engine`) and the trust checks (:mod:`xai.trust`) turn
logits into probabilities here, so that a two-class softmax model and a one-logit sigmoid model are read
the same way everywhere.

* ``C > 1`` classes: ``p_c = exp(z_c) / sum_j exp(z_j)`` (softmax, the multinomial logistic model).
* ``C == 1``: ``p = 1 / (1 + exp(-z))`` (sigmoid, the binary logistic model): the probability of the
  positive class.
"""

from __future__ import annotations

import torch

__all__ = ["probabilities"]


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities for logits ``(N, C)``: softmax over ``C``, or sigmoid when ``C == 1``.

    Runs on the logits' device and keeps their dtype (no ``.numpy()``); gradients flow through when the
    logits require them.

    Raises:
        TypeError: ``logits`` is not a floating-point tensor.
        ValueError: ``logits`` is not 2-D ``(N, C)`` with ``C >= 1``.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        kind = f"dtype {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point torch.Tensor of shape (N, C); got {kind}")
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, C) with C >= 1; got {tuple(logits.shape)}")
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
