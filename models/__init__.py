"""Architectures, safe model bundles with model cards, training and evaluation for ChestCOVNet XAI.

``models.load("chestcovnet")`` returns the shipped default (EfficientNet-Lite0 trained here on real
radiographs, see ``models/README.md`` and its ``card.json``); ``models.load_weights`` loads a user's
state dict into one of :data:`ARCHITECTURES`. Nothing is ever unpickled: safetensors, or
``torch.load(weights_only=True)``.
"""

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
    read_state_dict,
    save_bundle,
    sha256_file,
)

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
    "read_state_dict",
    "save_bundle",
    "sha256_file",
]
