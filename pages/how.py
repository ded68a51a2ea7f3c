"""How the maps are made: each method step by step, with the film's own numbers (a glass box).

For the radiograph and class on screen: the target layer and why; Grad-CAM's channel weights, weighted
sum, ReLU and upsampling; Grad-CAM++'s per-pixel alphas against Grad-CAM's mean gradient and where the two
maps differ; guided backpropagation beside the plain input gradient; Guided Grad-CAM as their product;
what each method is known to get wrong; and this model's sanity check and stability, on request.

Every number and plot comes from the real computation: one engine call with ``details=True`` (the
activations and gradients of the same passes that made the maps), for the plain input gradient one
extra forward + backward pass (:func:`xai.glassbox.plain_input_gradient`), and one forward pass whose graph
shows where the guided rule acts (:func:`xai.glassbox.guided_relus`). Both are cached per (image,
model, class) for every session; the checks are kept per session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages._access import ensure_routed
from pages._display import overlay_style
from pages._explanations import CACHE_TTL_S, explain
from pages._figures import maps_figure, sidebar_film
from pages._howto import WEAK_EVIDENCE
from pages._methods import method_label
from pages._models import ActiveModel, require_model
from pages._state import explain_target_key, page_store, predicted_class
from xai import display_scale, glassbox, render
from xai.engine import METHODS
from xai.method_names import method_identity
from xai.pipeline import PREDICTED, PipelineResult

TOP_K = 8


@dataclass(frozen=True, eq=False)
class GlassBox:
    """Everything the page draws for one (image, model, class), computed once."""

    details: glassbox.Details
    explanation: Any
    gradcam: glassbox.CamSteps
    top: tuple[glassbox.Channel, ...]
    plus_plus: glassbox.PlusPlusContrast
    guided: glassbox.GuidedContrast
    guided_gradcam: np.ndarray
    relus: Any  # xai.guided.GraphReport: where the guided rule acts on this network
    background: np.ndarray  # the model input as gray [0, 1], what the model saw


@st.cache_resource(max_entries=4, ttl=CACHE_TTL_S, show_spinner="Opening the glass box…")
def glass_box(image_sha: str, model_key: str, target: int, _result: PipelineResult, _model: ActiveModel) -> GlassBox:
    """One engine call with ``details=True`` and one plain input-gradient pass for this film and class."""
    x = _result.input_tensor
    e = _model.explainer.explain(x, target=target, methods=METHODS, details=True)
    d = glassbox.image_details(e)
    size = (int(x.shape[2]), int(x.shape[3]))
    cam = glassbox.cam_steps(d.activations, d.gradcam_weights, size)
    plain = glassbox.plain_input_gradient(_model.loaded.module, x, target)
    guided = np.asarray(e.raw["guided_backprop"][0])
    _product, ggc_display = glassbox.guided_gradcam(guided, cam.upsampled)
    gray = np.asarray(x[0, 0].detach().cpu().numpy(), dtype=np.float32)
    gray = (gray - gray.min()) / max(float(np.ptp(gray)), 1e-12)
    return GlassBox(
        details=d, explanation=e, gradcam=cam, top=glassbox.top_channels(d.activations, d.gradcam_weights, TOP_K),
        plus_plus=glassbox.plus_plus_contrast(d, size, k=4), guided=glassbox.guided_contrast(plain[0], guided),
        guided_gradcam=ggc_display, relus=glassbox.guided_relus(_model.loaded.module, x), background=gray,
    )


# ------------------------------------------------------------------------------------------ figures
def weights_figure(top: tuple[glassbox.Channel, ...]) -> go.Figure:
    """The top channels' Grad-CAM weights and contributions ``w_k * mean(A_k)`` as bars."""
    names = [f"ch {c.index}" for c in top]
    fig = go.Figure([
        go.Bar(x=names, y=[c.weight for c in top], name="weight w_k", marker_color="#e4572e",
               hovertemplate="%{x}: w=%{y:.3g}<extra></extra>"),
        go.Bar(x=names, y=[c.contribution for c in top], name="contribution w_k·mean(A_k)", marker_color="#4c9be8",
               yaxis="y2", hovertemplate="%{x}: %{y:.3g}<extra></extra>"),
    ])
    fig.update_layout(barmode="group", height=300, margin={"l": 8, "r": 8, "t": 30, "b": 8},
                      yaxis={"title": "weight"}, yaxis2={"title": "contribution", "overlaying": "y", "side": "right"},
                      legend={"orientation": "h", "y": 1.12})
    return fig


def channel_weights_scatter(pp: glassbox.PlusPlusContrast) -> go.Figure:
    """Every channel's Grad-CAM weight against its Grad-CAM++ weight."""
    w, wpp = np.asarray(pp.gradcam_weights), np.asarray(pp.gradcam_pp_weights)
    dropped = (wpp == 0) & (w != 0)
    fig = go.Figure([
        go.Scattergl(x=w[~dropped], y=wpp[~dropped], mode="markers", name="kept", marker={"size": 4, "color": "#e4572e"}),
        go.Scattergl(x=w[dropped], y=wpp[dropped], mode="markers", name="dropped by Grad-CAM++ (gradient < 0)",
                     marker={"size": 4, "color": "#7f8c9a"}),
    ])
    fig.update_layout(height=320, margin={"l": 8, "r": 8, "t": 30, "b": 8}, xaxis_title="Grad-CAM weight (mean gradient)",
                      yaxis_title="Grad-CAM++ weight (Σ α·ReLU(g))", legend={"orientation": "h", "y": 1.12})
    return fig


def _overlay(box: GlassBox, heat: np.ndarray) -> np.ndarray:
    return render.overlay(box.background, np.clip(heat, 0.0, 1.0), **overlay_style())  # the user's colours


# ------------------------------------------------------------------------------------------ sections
def value_title(prefix: str, a: np.ndarray) -> str:
    """A map's title with its values: one number when the map is constant, else its range."""
    lo, hi = float(np.min(a)), float(np.max(a))
    if hi - lo <= 1e-6 * max(abs(lo), abs(hi)):
        return f"{prefix} = {lo:.3g} at every cell"
    return f"{prefix}: {lo:.2g} … {hi:.2g}"


def note(method: str) -> None:
    n = method_identity(method)
    st.latex(n.formula)
    st.caption(n.paper)


def pitfalls(method: str) -> None:
    st.markdown(f"**What {method_label(method)} is known to get wrong**\n"
                + "\n".join(f"- {p}" for p in method_identity(method).pitfalls))


def layer_section(box: GlassBox, model: ActiveModel) -> None:
    st.header("1 · The target layer")
    d = box.details
    k, (h, w) = d.channels, d.feature_shape
    size = box.background.shape
    st.markdown(glassbox.target_layer_reason(model.loaded.module, box.explanation.target_layer,
                                             getattr(model.card, "target_layer", None)))
    st.markdown(f"Here: **{k} channels** of **{h} × {w}** cells; each cell summarises about "
                f"{size[0] / h:.0f} × {size[1] / w:.0f} px of the {size[1]} × {size[0]} px model input. "
                "Later layers would be pooled (no *where*), earlier ones less specific to the class.")


def typical_peak(model: ActiveModel, method: str) -> float | None:
    """The model's typical peak for ``method`` (the card's calibration: what the Explain page's default
    scale divides by), or None when the card has none."""
    cal = display_scale.from_card(model.card)
    return None if cal is None else cal.vmax.get(method)


def scale_truth(model: ActiveModel) -> str:
    """One sentence on how this page's figures relate to the Explain page's default display scale."""
    cal = display_scale.from_card(model.card)
    if cal is None:
        return ("The maps on this page are each divided by their own maximum, to show their shape. This model's "
                "card has no calibrated scale, so the Explain page stretches each map to its own range too.")
    n = f"{cal.n} {cal.split} films".strip() if cal.n else "validation films"
    return ("The maps on this page are each divided by their own maximum, to show their shape. The Explain "
            "page's default display does not: it divides each method's raw map by the model's typical peak "
            f"(the median of its maps' {cal.percentile:g}th percentiles on {n}), so weak evidence looks weak "
            "there and bright here.")


def gradcam_section(box: GlassBox, result: PipelineResult, model: ActiveModel) -> None:
    st.header("2 · Grad-CAM: channel weights, weighted sum, ReLU, upsampling")
    note("gradcam")
    d, cam = box.details, box.gradcam
    if d.uniform_gradient:
        st.info("This model pools the target layer globally and feeds a linear layer, so the gradient is the "
                "same at every cell of a channel: the Grad-CAM weights are the classifier's weights for "
                f"**{result.target}** divided by {d.feature_shape[0] * d.feature_shape[1]} (Grad-CAM equals CAM, "
                "Zhou et al. 2016).", icon=":material/info:")
    st.subheader(f"The {len(box.top)} channels with the largest weights")
    st.plotly_chart(weights_figure(box.top), key="how_weights")
    st.plotly_chart(maps_figure([(f"ch {c.index} · w={c.weight:.2g}", c.activation, "auto") for c in box.top],
                                height=200), key="how_channels")
    positive = int(np.sum(np.asarray(d.gradcam_weights) > 0))
    st.caption(f"Activation maps A_k of those channels ({d.feature_shape[0]} × {d.feature_shape[1]}). "
               f"{positive} of {d.channels} channels have a positive weight; the others count against "
               f"{result.target}.")
    st.subheader("From the weighted sum to the map")
    peak = typical_peak(model, "gradcam")
    steps = [
        ("Σ w_k A_k (blue < 0 < red)", cam.weighted_sum, "signed"),
        ("ReLU", cam.relu, "auto"),
        ("bilinear upsampling", cam.upsampled, "auto"),
        ("÷ its own maximum (this page)", _overlay(box, cam.display), "rgb"),
    ]
    if peak is not None:
        steps.append(("÷ the typical peak (Explain's default)",
                      _overlay(box, np.clip(np.asarray(cam.upsampled) / peak, 0.0, 1.0)), "rgb"))
    st.plotly_chart(maps_figure(steps), key="how_gradcam_steps")
    error = float(np.abs(cam.display - np.asarray(box.explanation.maps["gradcam"][0])).max())
    raw_max = float(cam.relu.max())
    typical = "" if peak is None else (
        f" The Explain page's default divides by the model's typical Grad-CAM peak instead ({peak:.3g}): this map "
        f"reaches {raw_max / peak:.2f}× of it (last panel).")
    st.caption(f"{100 * cam.negative_share:.0f} % of the cells are negative (evidence against "
               f"{result.target}) and set to zero by the ReLU. Raw maximum {raw_max:.3g}: the figures on this "
               f"page divide by it.{typical} Rebuilt from the weights, this map differs from the engine's "
               f"Grad-CAM by at most {error:.1e}.")
    pitfalls("gradcam")


def plus_plus_section(box: GlassBox, result: PipelineResult) -> None:
    st.header("3 · Grad-CAM++: per-pixel alphas instead of the mean gradient")
    note("gradcam++")
    pp, d = box.plus_plus, box.details
    h, w = d.feature_shape
    st.plotly_chart(maps_figure([(value_title(f"ch {c}: α", pp.alphas[i]), pp.alphas[i], "auto")
                                 for i, c in enumerate(pp.channels)], height=200), key="how_alphas")
    excess = [pp.pp_pixel_weights[i] - pp.cam_pixel_weights[i] for i in range(len(pp.channels))]
    st.plotly_chart(maps_figure([(value_title(f"ch {c}: α·ReLU(g) − g/{h * w}", excess[i]), excess[i], "signed")
                                 for i, c in enumerate(pp.channels)], height=200), key="how_pixel_weights")
    st.caption("Above: Grad-CAM++'s alphas for the four channels Grad-CAM weights most. Below: the per-pixel "
               "weight of Grad-CAM++ (α·ReLU(g), summing to its channel weight) minus Grad-CAM's (g / hw, "
               "summing to the mean gradient). " + ("Here alpha is flat within each channel (the gradient is "
                                                   "uniform behind the global pooling): what changes is the "
                                                   "channel weights." if d.uniform_gradient else ""))
    left, right = st.columns([2, 3])
    left.plotly_chart(channel_weights_scatter(pp), key="how_pp_scatter")
    left.caption(f"Rank correlation of the {d.channels} channel weights: {pp.weight_spearman:.2f}; "
                 f"{pp.dropped_channels} channels dropped by Grad-CAM++ (negative gradient).")
    with right:
        st.plotly_chart(maps_figure([
            ("Grad-CAM", pp.gradcam.display, "unit"),
            ("Grad-CAM++", pp.gradcam_pp.display, "unit"),
            ("difference (red: Grad-CAM higher)", pp.difference, "signed"),
            (f"where they differ (≥ {glassbox.DIFFER_LEVEL})", _overlay(box, pp.differ.astype(np.float32)), "rgb"),
        ], height=240), key="how_pp_difference")
        st.caption(f"The two maps differ by at least {glassbox.DIFFER_LEVEL} on "
                   f"**{100 * pp.differ_share:.1f} %** of the image; rank correlation of the maps "
                   f"**{pp.map_spearman:.2f}**. They part most when the class is one the model does not "
                   f"predict (try the other class above, or a film with disease in both lungs).")
    pitfalls("gradcam++")


def guided_section(box: GlassBox, result: PipelineResult) -> None:
    st.header("4 · Guided backpropagation: the plain gradient, with negative gradients stopped at every ReLU")
    note("guided_backprop")
    g = box.guided
    st.plotly_chart(maps_figure([
        ("plain input gradient |∂S/∂x|", g.plain_display, "unit"),
        ("guided backpropagation", g.guided_display, "unit"),
        ("plain, on the model input", _overlay(box, g.plain_display), "rgb"),
        ("guided, on the model input", _overlay(box, g.guided_display), "rgb"),
    ]), key="how_guided")
    st.caption(f"Both shown as the engine shows guided maps (|value|, max over colour channels, clipped at the "
               f"99.5th percentile). Negative entries: plain {100 * g.plain_negative:.1f} %, guided "
               f"{100 * g.guided_negative:.1f} %. Rank correlation of the two maps: {g.spearman:.2f}. The plain "
               "gradient costs one extra forward and backward pass of the model (the engine's single pass "
               "is guided).")
    others = ", ".join(f"{name} ×{n}" for name, n in sorted(box.relus.other_activations.items()))
    st.markdown(f"On this network the guided rule acts at **{box.relus.relus} ReLU nodes** of the forward "
                "pass's graph (ReLU and ReLU6, modules and functional calls alike)"
                + (f"; the gradient passes these other activations unguided: {others}." if others else "."))
    pitfalls("guided_backprop")


def guided_gradcam_section(box: GlassBox) -> None:
    st.header("5 · Guided Grad-CAM: guided backpropagation × upsampled Grad-CAM")
    note("guided_gradcam")
    st.plotly_chart(maps_figure([
        ("guided backpropagation", box.guided.guided_display, "unit"),
        ("× upsampled Grad-CAM", box.gradcam.display, "unit"),
        ("= Guided Grad-CAM", box.guided_gradcam, "unit"),
        ("on the model input", _overlay(box, box.guided_gradcam), "rgb"),
    ]), key="how_guided_gradcam")
    error = float(np.abs(box.guided_gradcam - np.asarray(box.explanation.maps["guided_gradcam"][0])).max())
    st.caption(f"The product of the raw guided gradient and the raw upsampled Grad-CAM, displayed like a guided "
               f"map; it differs from the engine's Guided Grad-CAM by at most {error:.1e}.")
    pitfalls("guided_gradcam")


def region_picture(regions: Any, pixels: np.ndarray) -> np.ndarray:
    """The film (shrunk to the regions' grid) with each region tinted in its :data:`xai.anatomy.REGION_COLOURS`."""
    from xai.anatomy import REGION_COLOURS, REGIONS

    gray = render.downsample_for_display(np.asarray(pixels, np.float32), max(regions.shape))
    if gray.shape != regions.shape:
        import cv2

        gray = cv2.resize(gray, (regions.shape[1], regions.shape[0]), interpolation=cv2.INTER_AREA)
    table = np.array([[int(REGION_COLOURS[r][i:i + 2], 16) for i in (1, 3, 5)] for r in REGIONS], np.float32)
    tint = table[regions.labels]
    base = np.clip(gray, 0, 1)[..., None] * 255.0
    return np.round(0.55 * base + 0.45 * tint).astype(np.uint8)


def readout_section(result: PipelineResult, model: ActiveModel, image: Any) -> None:
    """Where the evidence lies: the anatomical readout of this film, what each region is, how it was found, its
    limits (one paragraph with the film's own numbers) and the regions drawn."""
    from pages._explanations import ResultKey
    from pages._lungs import REGIONS_SIDE, film_anatomy, readouts
    from xai.anatomy import BORDER_BAND, LUNG_ZONES

    st.header("7 · Where the evidence lies: the anatomical readout")
    regions = film_anatomy(image.sha256, image.radiograph)
    if isinstance(regions, str) or not regions.found:
        st.markdown("No anatomical readout for this film: " + (regions if isinstance(regions, str) else
                    f"the lung model found no lung field ({regions.reason}), so no region can be named."))
        return
    found = readouts(ResultKey.of(image, model, result), result.maps, regions)
    first = next(iter(result.maps))
    lungs_area = float(np.isin(regions.labels, range(len(LUNG_ZONES))).mean())
    side = ("the file's PatientOrientation" if regions.laterality_rule == "PatientOrientation" else
            "the display convention (the patient's right on the viewer's left; this file does not say)")
    grid = (f"on the film's own {regions.shape[1]}×{regions.shape[0]} grid" if max(image.radiograph.shape) <=
            REGIONS_SIDE else f"on the film shrunk to {regions.shape[1]}×{regions.shape[0]} px")
    text = ("found by image processing: small high-contrast glyphs with sharp edges and even, thin strokes; "
            "without OCR here"
            if regions.markers.startswith("xai.markers") else "not looked for on this server")
    st.markdown(
        f"Each map's mass Σ|s| is split over 13 disjoint regions that cover every pixel ({grid}). The **six lung "
        f"zones** are the visible lung fields — the lung model's NLM-style mask, without the heart's shadow — "
        f"each lung cut into upper, middle and lower thirds of its own height (the usual stand-in for the Brixia "
        f"zones, whose landmarks a picture model cannot see); on this film they cover {lungs_area:.0%} of the "
        f"image, and right and left follow {side}. **Heart and mediastinum** is the lung behind the heart's "
        f"shadow (the V7-style mask minus the visible field) plus the space between the two lungs; **above / "
        f"below the lungs** and **chest wall** are the rest of the body by column; **outside the body** is air "
        f"or collimation reaching the edge; **film border** is the outer {BORDER_BAND:.0%} of each side; "
        f"**text and markers** are burned-in labels and side markers ({text}). Here {method_label(first)} reads "
        f"“{found[first].sentence(3)}”, {found[first].in_visible_lungs:.0%} in the visible lung fields (the "
        "Explain page's “in lungs”). Limits: the regions are only as good as the lung model's mask (a 0.49 M "
        "parameter U-Net trained on 904 films); thirds are not anatomical landmarks; small or faint markers "
        "are missed; and a share says where the map points, not whether the model is right to point there.")
    st.image(region_picture(regions, image.radiograph.pixels), width=360,
             caption="The regions of this film (colours as in the Explain page's bar chart).")


def checks_section(model: ActiveModel, result: PipelineResult, image_sha: str) -> None:
    """This model's own sanity check and stability on this film, on request (kept for the session)."""
    import models
    from xai.trust.sanity import PASS_THRESHOLD, sanity_check
    from xai.trust.stability import stability

    st.header("6 · This model on this film: sanity check and stability")
    st.markdown(
        "**Sanity check** (Adebayo et al. 2018): the weights are randomised layer group by layer group from "
        "the logits down, on a private copy of the model; a map that explains what the model learned must "
        f"change (passes when the rank correlation with the original drops below {PASS_THRESHOLD}). "
        "**Stability**: small label-preserving changes of the film (noise, ±5 % intensity, ±2 % shift and "
        "scale, ±3°) and the model's second training seed; the maps should stay put.")
    store = page_store("how")
    key = (image_sha, model.key, result.target_index)
    left, right = st.columns(2)
    if left.button("Run the sanity check", key="how_run_sanity"):
        with st.spinner("Randomising the weights layer by layer…"):
            store[("sanity", *key)] = sanity_check(model.loaded, result.input_tensor, target=result.target_index)
    if right.button("Run the stability check", key="how_run_stability"):
        with st.spinner("Explaining changed copies of the film…"):
            store[("stability", *key)] = stability(
                model.loaded, result.radiograph, target=result.target_index, methods=tuple(result.maps),
                reference_maps=result.maps, second_model=models.second_checkpoint(model.card))
    sanity = store.get(("sanity", *key))
    if sanity is not None:
        left.dataframe([{**row, "method": method_label(row["method"])} for row in sanity.table()], hide_index=True,
                       key="how_sanity_table")
        left.caption(f"Seed {sanity.seed}; {len(sanity.steps)} cascade steps, top first.")
    stable = store.get(("stability", *key))
    if stable is not None:
        right.dataframe([{"method": method_label(m), **{k: round(v, 3) for k, v in s.items()}}
                         for m, s in stable.summary().items()], hide_index=True, key="how_stability_table")
        for n in stable.notes:
            right.caption(n)
    if sanity is None and stable is None:
        st.caption("Each check takes a few seconds to a minute on a CPU; the Trust page has the full version.")


# ------------------------------------------------------------------------------------------ page
def main() -> None:
    ensure_routed()
    st.title("How the maps are made")
    st.caption("Each method step by step, with this film's own numbers: the same computation that draws the "
               "Explain page's maps, opened up.")
    model = require_model()
    image = sidebar_film("how_")
    if image is None:
        return
    names = model.class_names
    key = f"how_target:{model.key}"
    on_explain = st.session_state.get(explain_target_key(model.key))  # the class on the Explain page, if just there
    if key not in st.session_state and on_explain in (PREDICTED, *names):
        st.session_state[key] = on_explain  # start from the class the user was looking at
    choice = st.selectbox("Class to explain", [PREDICTED, *names], key=key,
                          format_func=lambda c: "Predicted class" if c == PREDICTED else c)
    target = None if choice == PREDICTED or choice == predicted_class(image.sha256, model.key) else names.index(choice)
    try:
        result = explain(image, model, target, tuple(METHODS))
        box = glass_box(image.sha256, model.key, result.target_index, result, model)
    except Exception as exc:  # noqa: BLE001 - e.g. a user's exotic model: say so, keep serving
        st.error(f"Could not open the computation with model {model.card.name}: {type(exc).__name__}: {exc}")
        return
    p = result.probabilities[result.target]
    st.markdown(f"**{model.card.name}** explaining **{result.target}** (P = {p:.3f}; predicted: "
                f"{result.predicted}) on {'the sample ' + image.label if image.source == 'sample' else 'the uploaded film'}.")
    if p < WEAK_EVIDENCE:
        st.warning(f"Weak evidence: the model gives {result.target} a probability of {p:.3f}. Every map below "
                   "is still stretched to full brightness by its own maximum (on this page only).",
                   icon=":material/warning:")
    st.info(scale_truth(model), icon=":material/straighten:")
    layer_section(box, model)
    gradcam_section(box, result, model)
    plus_plus_section(box, result)
    guided_section(box, result)
    guided_gradcam_section(box)
    checks_section(model, result, image.sha256)
    readout_section(result, model, image)


main()
