"""What each saliency method computes and gets wrong, in one place: the "How this method works" popovers
on the Explain page and the sections of the "How the maps are made" page (``pages/how.py``) read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import streamlit as st

from pages._methods import method_label

HOW_PAGE = "pages/how.py"
#: Below this probability for the explained class the "How" page warns that the evidence is weak.
WEAK_EVIDENCE = 0.05


@dataclass(frozen=True)
class MethodNote:
    """A method's formula (LaTeX), paper, one-line summary and known failure modes."""

    formula: str
    paper: str
    summary: str
    pitfalls: tuple[str, ...]


ADEBAYO = ("Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018: under cascading randomisation "
           "of the weights")

METHOD_NOTES: dict[str, MethodNote] = {
    "gradcam": MethodNote(
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
    "gradcam++": MethodNote(
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
    "guided_backprop": MethodNote(
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
    "guided_gradcam": MethodNote(
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


def method_popover(method: str) -> None:
    """A "How <method> works" popover: summary, formula, paper, pitfalls and a link to the how page."""
    note = METHOD_NOTES.get(method)
    if note is None:
        return
    with st.popover(f"How {method_label(method)} works", icon=":material/help:"):
        st.markdown(note.summary)
        st.latex(note.formula)
        st.caption(note.paper)
        st.markdown("**Known to get wrong**\n" + "\n".join(f"- {p}" for p in note.pitfalls))
        try:
            st.page_link(HOW_PAGE, label="Step by step on this film", icon=":material/schema:")
        except Exception:  # noqa: BLE001 - the page is not routed (e.g. a page run on its own): no link
            st.caption("See “How the maps are made” in the page list.")


def how_popovers(methods: Sequence[str]) -> None:
    """One "How this method works" popover per method, side by side (under the Explain panel)."""
    known = [m for m in methods if m in METHOD_NOTES]
    if not known:
        return
    for column, method in zip(st.columns(len(known)), known, strict=True):
        with column:
            method_popover(method)
