"""Is this film like the training data? :func:`xai.trust.ood.score` of an explained image, cached, in words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import streamlit as st

from pages._explanations import CACHE_TTL_S, EXPLANATION_CACHE_ENTRIES

if TYPE_CHECKING:
    from pages._models import ActiveModel
    from xai.pipeline import PipelineResult
    from xai.trust.ood import OODResult


@st.cache_resource(max_entries=EXPLANATION_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def ood_score(image_sha: str, model_id: str, _result: PipelineResult, _model: ActiveModel) -> OODResult:
    """:func:`xai.trust.ood.score` of one explained image, cached so display changes cost nothing; the
    features come from the explanation's own forward pass (no second pass)."""
    import models
    from xai.trust import ood

    return ood.score(_model.loaded, _result.input_tensor, models.ood_stats(_model.loaded), radiograph=_result.radiograph,
                     features=_result.explanation.features)


#: The verdict on a warned film: the check's warnings say why; this says what follows from them.
DO_NOT_USE = ("Do not use this prediction: the out-of-distribution check warned that this film is unlike the "
              "films the model was trained and tested on, so its call and its maps were not validated for it.")


@dataclass(frozen=True)
class OodSummary:
    """The out-of-distribution check in words: ``warnings`` to show, else ``text`` (what no warning means, or
    why there is no check); ``detail``: the modeler's figures behind it (the page puts them in a tooltip)."""

    warnings: tuple[str, ...]
    text: str
    detail: str = ""

    @property
    def sentence(self) -> str:
        """One line for an export (with the figures)."""
        if self.warnings:
            return " ".join((DO_NOT_USE, *self.warnings))
        return f"{self.text} ({self.detail})" if self.detail else self.text


def ood_summary(image_sha: str, model: ActiveModel, result: PipelineResult) -> OodSummary:
    """:func:`ood_score` as sentences for the page and the exports."""
    try:
        scored = ood_score(image_sha, model.key, result, model)
    except (ValueError, RuntimeError) as exc:  # e.g. a user's model whose features the statistics do not fit
        return OodSummary((), f"No out-of-distribution check for this model: {exc}")
    if scored.warnings:
        return OodSummary(tuple(scored.warnings), "")
    if scored.score is None:
        return OodSummary((), "No out-of-distribution score for this image.")
    from xai.trust.held_out import held_out_record

    record = held_out_record(getattr(model.card, "cross_source", None))
    silence = record.silence() if record else None
    return OodSummary((), "No out-of-distribution warning — the check misses films from hospitals it never saw"
                          + (f": {silence}" if silence else "") + ". No warning does not mean the film is like the "
                          "training data: a film from a hospital the model never saw can be scored confidently "
                          "wrong without one.",
                      f"Mahalanobis distance of the film's features from the training films' {scored.score:.1f}, "
                      f"warning above {scored.threshold:.1f}.")


def ood_banner(image_sha: str, model: ActiveModel, result: PipelineResult) -> None:
    """A visible warning when the input is unlike the training data (features or header hints)."""
    summary = ood_summary(image_sha, model, result)
    if summary.warnings:
        st.error(DO_NOT_USE, icon=":material/block:")
    for warning in summary.warnings:
        st.warning(warning, icon=":material/warning:")
    if not summary.warnings:
        st.caption(summary.text, help=summary.detail or None)
