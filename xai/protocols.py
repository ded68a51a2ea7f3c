"""What the library needs of a model, as protocols: the ``models`` package implements them, ``xai`` never imports it.

``xai`` takes objects, not bundle names: every function that needs a model takes anything with a
``module`` (a ``torch.nn.Module`` in eval mode) and a ``card`` that says how to feed and read it. The
shipped implementation is ``models.LoadedModel`` / ``models.ModelCard`` (a safetensors bundle with its
card.json); a test checks that they satisfy these protocols. Anything else with the same attributes
works too (a user's own wrapper, a test double built from a hand-set network).

Only the attributes the library reads are listed. Both protocols are ``runtime_checkable``:
``isinstance(x, LoadedModel)`` checks that the attributes exist (not their types).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import nn

    from xai.preprocessing import Preprocessing

__all__ = ["LoadedModel", "ModelCard"]


@runtime_checkable
class ModelCard(Protocol):
    """A model's identity and how to use it (Mitchell et al., "Model Cards", FAT* 2019)."""

    @property
    def name(self) -> str:
        """Short name (a bundle name); identifies the model in exports, caches and the OOD statistics."""

    @property
    def version(self) -> str: ...

    @property
    def sha256(self) -> str:
        """sha256 of the weights file: the audit trail and the key the OOD statistics are fitted for."""

    @property
    def class_names(self) -> tuple[str, ...]:
        """One name per logit (a one-logit model names two classes: negative, positive)."""

    @property
    def preprocessing(self) -> Preprocessing:
        """The exact input preparation the model was trained with (:class:`xai.preprocessing.Preprocessing`)."""

    @property
    def target_layer(self) -> str:
        """Dotted name of the Grad-CAM target layer in ``module``."""

    @property
    def threshold(self) -> float:
        """Decision threshold on the probability of ``positive_class``."""

    @property
    def positive_class(self) -> str: ...


@runtime_checkable
class LoadedModel(Protocol):
    """A network in eval mode and its card."""

    @property
    def module(self) -> nn.Module: ...

    @property
    def card(self) -> ModelCard: ...
