"""Registry of the architectures a bundle or a user's state dict can name.

Every builder makes a randomly initialised network (``weights=None``: nothing is ever downloaded) whose
classifier has ``num_classes`` outputs; weights come afterwards from a bundle or a user's file. The builders
import torch when called, not this module: a model card can be read and checked without it (the app shows the
bundled model's record while torch loads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

#: ChestCOVNet's Grad-CAM layer: ``EfficientNetLite0.default_target_layer``, the module's own name for its head
#: activation, written out here so that the registry, and with it reading a model card, needs no torch import
#: (tests/test_models.py checks that the two agree).
CHESTCOVNET_TARGET_LAYER = "head_act"


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture and where its explainable parts are.

    Attributes:
        name: registry key.
        build: ``num_classes -> nn.Module`` (random initialisation).
        classifier: dotted name of the final ``nn.Linear`` (its ``.weight`` rows = classes).
        target_layer: default Grad-CAM layer (module name whose output is the last post-activation
            feature map feeding the pooling; for densenet121 the engine applies the functional ReLU).
        description: one line for the UI.
    """

    name: str
    build: Callable[[int], nn.Module]
    classifier: str
    target_layer: str
    description: str


def _chestcovnet(num_classes: int) -> nn.Module:
    from models.efficientnet_lite import EfficientNetLite0

    return EfficientNetLite0(num_classes)


def _torchvision(factory: str, classifier: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision.models as tvm
        from torch import nn

        model = getattr(tvm, factory)(weights=None)
        parent_name, _, attr = classifier.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
        new = nn.Linear(old.in_features, num_classes)
        if attr.isdigit():
            parent[int(attr)] = new
        else:
            setattr(parent, attr, new)
        return model

    return build


_REGISTRY = {
    arch.name: arch
    for arch in (
        Architecture("chestcovnet", _chestcovnet, "classifier", CHESTCOVNET_TARGET_LAYER,
                     "EfficientNet-Lite0 (one module per activation), the project's default"),
        Architecture("densenet121", _torchvision("densenet121", "classifier"), "classifier", "features",
                     "torchvision DenseNet-121 (CheXNet-style)"),
        Architecture("resnet18", _torchvision("resnet18", "fc"), "fc", "layer4", "torchvision ResNet-18"),
        Architecture("resnet50", _torchvision("resnet50", "fc"), "fc", "layer4", "torchvision ResNet-50"),
        Architecture("efficientnet_b0", _torchvision("efficientnet_b0", "classifier.1"), "classifier.1",
                     "features", "torchvision EfficientNet-B0"),
        Architecture("mobilenet_v3_large", _torchvision("mobilenet_v3_large", "classifier.3"),
                     "classifier.3", "features", "torchvision MobileNetV3-Large"),
    )
}

#: Read-only mapping name -> :class:`Architecture`; iterating gives the names.
ARCHITECTURES = MappingProxyType(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    """Look an architecture up by name; ``KeyError`` lists the known names."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def build_model(name: str, num_classes: int) -> nn.Module:
    """A freshly initialised ``name`` network with ``num_classes`` outputs, in eval mode."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return get_architecture(name).build(num_classes).eval()
