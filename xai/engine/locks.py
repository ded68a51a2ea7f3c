"""Safety on a shared model: one lock per model, buffers restored after a training-mode call."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from xai.layers import last_linear

_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises hook registration + forward passes of the engine on ``model``."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _MODEL_LOCKS[model] = lock
        return lock


@contextlib.contextmanager
def _buffers_restored(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (batch-norm running statistics, counters) on exit; used in training mode."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _last_linear_of(model: nn.Module) -> nn.Module | None:
    """The model's last ``nn.Linear`` (its input: the penultimate features), or None when it has none."""
    try:
        return last_linear(model)[1]
    except ValueError:
        return None
