"""Architectures, safe model bundles with model cards, training and evaluation for ChestCOVNet XAI.

``models.load("chestcovnet")`` returns the shipped default (EfficientNet-Lite0 trained here on real
radiographs, see ``models/README.md`` and its ``card.json``); ``models.load_weights`` loads a user's
state dict into one of :data:`ARCHITECTURES`. Nothing is ever unpickled: safetensors, or
``torch.load(weights_only=True)``.

``LoadedModel`` and ``ModelCard`` implement :mod:`xai.protocols` (the library takes such objects and never
imports this package). What a bundle carries beside the model is passed to ``xai`` as objects too:
``models.ood_stats(loaded)`` (out-of-distribution statistics for :func:`xai.trust.ood.score`) and
``models.second_checkpoint(card)`` (the second training seed for :func:`xai.trust.stability.stability`).
"""

from __future__ import annotations

from typing import Any

from models.architectures import ARCHITECTURES, Architecture, build_model, get_architecture
from models.bundle import (
    BUNDLES_DIR,
    DEFAULT_MODEL,
    LoadedModel,
    ModelCard,
    ModelError,
    available_bundles,
    load,
    load_weights,
    read_card,
    read_state_dict,
    save_bundle,
    second_checkpoint,
    second_checkpoint_name,
    sha256_file,
)


def __getattr__(name: str) -> Any:
    # The OOD statistics' reader imports torch (xai.trust.ood); resolved on first use so that reading a card
    # (models.read_card) stays free of torch.
    if name == "ood_stats":
        from models.ood import ood_stats

        return ood_stats
    raise AttributeError(f"module 'models' has no attribute {name!r}")

__all__ = [
    "ARCHITECTURES",
    "BUNDLES_DIR",
    "DEFAULT_MODEL",
    "Architecture",
    "LoadedModel",
    "ModelCard",
    "ModelError",
    "available_bundles",
    "build_model",
    "get_architecture",
    "load",
    "load_weights",
    "read_card",
    "read_state_dict",
    "ood_stats",
    "save_bundle",
    "second_checkpoint",
    "second_checkpoint_name",
    "sha256_file",
]
