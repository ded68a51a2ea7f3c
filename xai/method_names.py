"""The explanation methods' identity: code name, title, paper, formula and how-to text, in one table.

A leaf module (no torch) so a page can name and describe the methods before torch has loaded. The
computations are in :mod:`xai.engine`'s method table; :func:`xai.engine.register_method` adds a method to both,
so every list of methods (:func:`listed_methods`), every title (:data:`METHOD_TITLES`) and every how-to text
(:func:`method_identity`) includes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

#: The built-in methods, in the order pages, exports and sessions list them (the default set everywhere).
METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "guided_backprop", "guided_gradcam")


@dataclass(frozen=True)
class MethodIdentity:
    """What a method is called and what it computes: ``formula`` (LaTeX), ``paper``, a one-line ``summary``
    and its known failure modes (``pitfalls``), for the app's how-to texts and every export's titles."""

    name: str
    title: str
    formula: str = ""
    paper: str = ""
    summary: str = ""
    pitfalls: tuple[str, ...] = ()


ADEBAYO = ("Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018: under cascading randomisation "
           "of the weights")

_BUILT_IN: dict[str, MethodIdentity] = {
    "gradcam": MethodIdentity(
        name="gradcam",
        title="Grad-CAM",
        formula=r"w_k=\frac{1}{hw}\sum_{a,b}\frac{\partial S}{\partial A^k_{ab}},\qquad "
                r"L_{\text{Grad-CAM}}=\mathrm{ReLU}\Big(\sum_k w_k\,A^k\Big)",
        paper="Selvaraju et al., *Grad-CAM: Visual Explanations from Deep Networks via Gradient-based "
              "Localization*, ICCV 2017.",
        summary="Each channel A^k of the target layer is weighted by the mean gradient of the class logit S "
                "over the map; the weighted channels are summed, the negative part is cut off (ReLU) and the "
                "coarse map is upsampled to the image.",
        pitfalls=(
            "Coarse: one value per cell of the target layer, smoothed by the bilinear upsampling.",
            "Per-image stretching (most libraries' default, and this app's \"per image\" scale): every map "
            "is divided by its own maximum, so weak evidence (a class the model gives 1 %) looks as bright as "
            "strong evidence. The Explain page's default scale divides by the model's typical peak instead.",
            "The layer matters: on DenseNet-121 the map must be the post-ReLU tensor feeding the pooling — "
            "captum, torchcam and pytorch-grad-cam disagree on that layer by 0.15–0.29.",
        ),
    ),
    "gradcam++": MethodIdentity(
        name="gradcam++",
        title="Grad-CAM++",
        formula=r"\alpha^k_{ab}=\frac{g_{ab}^2}{2g_{ab}^2+\sum_{ij}A^k_{ij}\,g_{ab}^3},\quad "
                r"w_k=\sum_{a,b}\alpha^k_{ab}\,\mathrm{ReLU}(g_{ab}),\quad g=\frac{\partial S}{\partial A^k}",
        paper="Chattopadhyay et al., *Grad-CAM++: Improved Visual Explanations for Deep Convolutional "
              "Networks*, WACV 2018 (eq. 19, exponential score).",
        summary="Like Grad-CAM, but each pixel's gradient gets its own weight alpha and only positive "
                "gradients count: channels whose gradient is negative are dropped instead of subtracted.",
        pitfalls=(
            "Evidence against the class never subtracts: explaining a class the model rejects still gives "
            "a broad, bright map (stretched to full brightness on a per-image scale).",
            "Behind global average pooling and a linear layer the gradient is the same at every pixel, so "
            "alpha is constant within a channel: only the channel weights change.",
            "Library bugs: an epsilon larger than g² (pytorch-grad-cam) or an in-place division that does "
            "nothing (torchcam 0.5) change the weights.",
        ),
    ),
    "guided_backprop": MethodIdentity(
        name="guided_backprop",
        title="Guided Backprop",
        formula=r"\text{plain: } R^{l}=R^{l+1}\odot[x^{l}>0]\qquad "
                r"\text{guided: } R^{l}=R^{l+1}\odot[x^{l}>0]\odot[R^{l+1}>0]",
        paper="Springenberg et al., *Striving for Simplicity: The All Convolutional Net*, ICLR workshop 2015.",
        summary="The input gradient, but at every ReLU (and ReLU6) only positive gradients are passed back: "
                "a sharp, edge-like map at full image resolution.",
        pitfalls=(
            f"{ADEBAYO} it barely changes: it shows the image's edges, not what the model learned.",
            "Not class-discriminative: the maps for two classes look alike (Selvaraju et al. 2017).",
            "Every ReLU means every ReLU: functional F.relu calls (DenseNet) and ReLU6 must be guided too.",
        ),
    ),
    "guided_gradcam": MethodIdentity(
        name="guided_gradcam",
        title="Guided Grad-CAM",
        formula=r"G=R_{\text{guided}}\odot\mathrm{up}\big(L_{\text{Grad-CAM}}\big)",
        paper="Selvaraju et al., ICCV 2017 (section 3.1).",
        summary="Guided backpropagation multiplied pixel by pixel with the upsampled Grad-CAM map: "
                "Grad-CAM says where, guided backprop adds the fine detail.",
        pitfalls=(
            f"{ADEBAYO} it changes little: its detail comes from the guided part, i.e. from edges.",
            "Inherits Grad-CAM's coarseness and its per-image stretching.",
        ),
    ),
}

_IDENTITIES: dict[str, MethodIdentity] = dict(_BUILT_IN)
_LOCK = threading.Lock()


def add_identity(identity: MethodIdentity) -> None:
    """Add a method's identity (called by :func:`xai.engine.register_method`); a known name cannot be replaced.

    Raises:
        ValueError: the name is already in the table.
    """
    with _LOCK:
        if identity.name in _IDENTITIES:
            raise ValueError(f"method {identity.name!r} is already registered")
        _IDENTITIES[identity.name] = identity


def listed_methods() -> tuple[str, ...]:
    """Every method in the table: the built-ins in :data:`METHODS` order, then registered ones as added."""
    return tuple(_IDENTITIES)


def method_identity(name: str) -> MethodIdentity | None:
    """The identity of method ``name``, or None for a name not in the table."""
    return _IDENTITIES.get(name)


class _Titles(Mapping[str, str]):
    """Method name -> title, read live from the table (a method registered later is included)."""

    def __getitem__(self, name: str) -> str:
        return _IDENTITIES[name].title

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(_IDENTITIES))

    def __len__(self) -> int:
        return len(_IDENTITIES)


#: Display titles of every method (``"gradcam++"`` -> ``"Grad-CAM++"``), including registered ones.
METHOD_TITLES: Mapping[str, str] = _Titles()
