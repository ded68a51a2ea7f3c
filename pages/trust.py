"""Trust page: can these maps be trusted? A plain verdict per map first, the numbers for modelers below.

At the top, for a radiologist: a thumbnail of the film with its lung fields, a "Run all checks" button and,
for every map, the map itself (drawn as the Explain page draws it, with the user's display settings)
beside a traffic light and one sentence per check (changes when the model is randomised, stable under small
changes, evidence inside the lungs, faithful), plus one for the film (the out-of-distribution check: amber,
never green, when it is silent, with how often it stayed silent on hospitals left out of training). The
rules turning numbers into lights live in :mod:`xai.trust.verdict`; lights are coloured Material icons and
words (no emoji: they show as empty boxes where no emoji font is installed). With patient details off
(the Explain page's switch), an upload is never named. Then "Where is the finding?": a box drawn on the film with the mouse (Plotly box
selection) scored against every map. The raw figures stay in an expander for modelers.

A thin layer over :mod:`xai.trust` and :mod:`xai.anatomy`: every number comes from the library (the same
functions the CLI uses). Results are kept per session, keyed by (image, model, target), so display changes
never recompute them; each check runs on a button press with a progress bar.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

import models
from pages._access import ensure_routed
from pages._display import scale_choice, session_display
from pages._explanations import explain, screen_view
from pages._finding import box_figure, box_from_selection
from pages._ingest import LoadedImage, load_input
from pages._lungs import contour_thumbnail, film_anatomy, lung_field, readouts
from pages._methods import method_label
from pages._models import ActiveModel, default_target_choice, require_model
from pages._ood import ood_score
from pages._state import page_store, patient_details_shown
from xai import display_scale, render
from xai.anatomy import LUNG_ZONES, AnatomyReadout
from xai.engine import METHODS
from xai.pipeline import PipelineResult
from xai.trust import agreement as agreement_mod
from xai.trust import faithfulness as faith_mod
from xai.trust import held_out
from xai.trust import verdict as verdicts
from xai.trust.integrated_gradients import integrated_gradients
from xai.trust.sanity import GUIDED_NOTE, PASS_THRESHOLD, sanity_check
from xai.trust.stability import stability

THUMB_SIDE = 320
IG = "integrated_gradients"
FAITH_DEFAULTS = ("blur", 20)  # baseline and steps of "Run all checks" (the faithfulness tab's defaults)
MAP_SIDE = 384  # longest side of the maps drawn beside their verdicts (px)
#: Each light as Streamlit's coloured Material icon (rendered by the app's own icon font, never an emoji).
LIGHT = {"green": ":green[:material/check_circle:]", "amber": ":orange[:material/warning:]",
         "red": ":red[:material/error:]", "gray": ":gray[:material/radio_button_unchecked:]"}
LIGHT_WORD = {"green": ":green[no concern]", "amber": ":orange[caution]", "red": ":red[problem]",
              "gray": ":gray[not judged]"}


def _label(method: str) -> str:
    return "Integrated Gradients" if method == IG else method_label(method)


def _progress_callback(bar: Any, part: int = 0, parts: int = 1) -> Any:
    """A progress callback filling the ``part``-th of ``parts`` equal stretches of one bar."""
    def update(fraction: float, message: str) -> None:
        bar.progress(min(1.0, (part + min(1.0, max(0.0, fraction))) / parts), text=message)

    return update


def _results() -> dict[tuple[Any, ...], Any]:
    return page_store("trust")


def pick_image() -> LoadedImage | None:
    """The session's image (shared with the Explain page), or a new upload / sample chosen here."""
    return load_input(prefix="trust_")


def line_figure(x: list[str] | np.ndarray, series: dict[str, np.ndarray], title: str, ytitle: str,
                xtitle: str, threshold: float | None = None) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, y in series.items():
        fig.add_trace(go.Scatter(x=list(x), y=list(y), mode="lines+markers", name=_label(name)))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dot", annotation_text=f"pass below {threshold}")
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title=ytitle, height=360, uirevision=title,
                      margin={"l": 40, "r": 10, "t": 40, "b": 40})
    return fig


# -------------------------------------------------------------------------------------------- tabs
def sanity_tab(key: tuple[Any, ...], model: ActiveModel, result: PipelineResult) -> None:
    st.markdown(
        "**Cascading randomisation** (Adebayo et al. 2018): the model's weights are replaced by random "
        "values group by group, from the logits down to the stem, on a private copy of the model; a map "
        "that explains what the model learned must change. Spearman rank correlation and SSIM with the "
        f"original map; a method **passes** when the correlation after randomising every layer is below "
        f"{PASS_THRESHOLD}."
    )
    st.info(GUIDED_NOTE, icon=":material/info:")
    store = _results()
    if st.button("Run the sanity check", key="run_sanity"):
        bar = st.progress(0.0, text="starting")
        store[("sanity", *key)] = sanity_check(model.loaded, result.input_tensor, target=result.target_index,
                                               progress=_progress_callback(bar))
        bar.empty()
        st.rerun()  # the verdicts above were drawn earlier in this run: draw them again with the result
    res = store.get(("sanity", *key))
    if res is None:
        return
    cols = st.columns(len(res.methods))
    for col, m in zip(cols, res.methods, strict=True):
        verdict = res.passes[m]
        badge = {True: ":green-badge[passes]", False: ":red-badge[fails]", None: ":gray-badge[flat map]"}[verdict]
        if verdict and res.vanished.get(m):
            badge = ":orange-badge[passes: the map vanished]"
        col.markdown(f"**{_label(m)}** {badge}")
        col.metric("Spearman, all random", f"{res.final_spearman[m]:.2f}")
        col.caption(res.reason(m))  # the verdict's reason (e.g. a map that vanished, not changed)
        stack = res.maps[m]
        col.image(render.colorize(stack[-1]), caption="map after full randomisation", width="stretch")
    steps = ["original", *res.steps]
    left, right = st.columns(2)
    left.plotly_chart(line_figure(steps, {m: [1.0, *res.spearman[m]] for m in res.methods},
                                  "Spearman rank correlation with the original map", "Spearman",
                                  "randomised down to", PASS_THRESHOLD), key="sanity_rho")
    right.plotly_chart(line_figure(steps, {m: [1.0, *res.ssim[m]] for m in res.methods},
                                   "SSIM with the original map", "SSIM", "randomised down to"), key="sanity_ssim")
    st.caption(f"Seed {res.seed}; weights redrawn from a Gaussian with each tensor's own mean and spread; "
               f"display maps compared at model-input resolution (guided maps are absolute values). "
               f"{res.timings_ms.get('total', 0) / 1000:.1f} s.")


def stability_tab(key: tuple[Any, ...], model: ActiveModel, result: PipelineResult) -> None:
    st.markdown(
        "**Stability**: the radiograph is changed a little (noise, ±5 % intensity, ±2 % shift and scale, "
        "±3° rotation), explained again, and each map is brought back onto the original pixels (the "
        "geometric change undone) and compared with the unchanged one. Also: the same image under the "
        "model's second training seed, when that checkpoint is installed."
    )
    store = _results()
    if st.button("Run the stability check", key="run_stability"):
        bar = st.progress(0.0, text="starting")
        store[("stability", *key)] = stability(
            model.loaded, result.radiograph, target=result.target_index, methods=tuple(result.maps),
            reference_maps=result.maps, second_model=models.second_checkpoint(model.card), progress=_progress_callback(bar),
        )
        bar.empty()
        st.rerun()  # the verdicts above were drawn earlier in this run: draw them again with the result
    res = store.get(("stability", *key))
    if res is None:
        return
    rows = [{"method": _label(m), **{k: round(v, 3) for k, v in s.items()}} for m, s in res.summary().items()]
    st.dataframe(rows, hide_index=True)
    if res.checkpoint is None:
        st.caption("No second checkpoint of this model is installed: seed-to-seed comparison not shown.")
    for note in res.notes:
        st.warning(note)
    st.caption("Every change:")
    st.dataframe(res.table(), hide_index=True)


def _model_grid_maps(key: tuple[Any, ...], result: PipelineResult) -> dict[str, np.ndarray]:
    maps = {m: np.asarray(result.explanation.maps[m][0]) for m in result.maps}
    ig = _results().get(("ig", *key))
    if ig is not None:
        maps[IG] = ig.map
    return maps


def run_faithfulness(key: tuple[Any, ...], model: ActiveModel, result: PipelineResult, baseline: str, steps: int,
                     progress: Any) -> Any:
    """Deletion/insertion of every map plus a random pixel order on the same film (the verdict's reference)."""
    maps = _model_grid_maps(key, result)
    some = next(iter(maps.values()))
    maps[verdicts.RANDOM_REFERENCE] = np.random.default_rng(0).random(np.shape(some)[-2:]).astype(np.float32)
    res = faith_mod.faithfulness(model.loaded, result.input_tensor, maps, result.target_index, baseline=baseline,
                                 steps=steps, progress=progress)
    _results()[("faith", *key, baseline, steps)] = res
    return res


def faithfulness_tab(key: tuple[Any, ...], model: ActiveModel, result: PipelineResult) -> None:
    st.markdown(
        "**Deletion / insertion** (Petsiuk et al. 2018): pixels of the model input are removed (replaced by "
        "the baseline) or inserted in the order the map ranks them; the curve is the probability of the "
        "explained class. Faithful maps make deletion fall fast (**low** AUC) and insertion rise fast "
        "(**high** AUC). A random pixel order (seed 0) on the same film is the reference the verdict compares with."
    )
    left, right = st.columns(2)
    baseline = left.selectbox("Baseline for removed pixels", faith_mod.BASELINES, key="faith_baseline")
    steps = right.slider("Steps", 10, 50, 20, key="faith_steps")
    store = _results()
    fkey = ("faith", *key, baseline, steps)
    if st.button("Run deletion / insertion", key="run_faith"):
        bar = st.progress(0.0, text="starting")
        run_faithfulness(key, model, result, baseline, steps, _progress_callback(bar))
        bar.empty()
        st.rerun()  # the verdicts above were drawn earlier in this run: draw them again with the result
    res = store.get(fkey)
    if res is None:
        return
    st.caption(f"Baseline: {res.baseline}. The model's probability of the explained class: "
               f"{res.score:.3f} on the film, {res.baseline_score:.3f} on the baseline alone (where every curve "
               "starts or ends; when the two are close, the AUCs restate that score and say nothing about a map).")
    fractions = next(iter(res.curves.values())).fractions
    c1, c2 = st.columns(2)
    c1.plotly_chart(line_figure(fractions, {m: c.deletion for m, c in res.curves.items()}, "Deletion",
                                "probability", "fraction of pixels removed"), key="faith_del")
    c2.plotly_chart(line_figure(fractions, {m: c.insertion for m, c in res.curves.items()}, "Insertion",
                                "probability", "fraction of pixels inserted"), key="faith_ins")
    st.dataframe([{**row, "method": _label(row["method"])} for row in res.table()], hide_index=True)
    for note in res.notes:
        st.caption(note)


def _typed_box(shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    h, w = shape
    with st.expander("Or type the box (keyboard)"):
        use = st.checkbox("Use the typed box", key="box_typed")
        cols = st.columns(4)
        x = cols[0].number_input("left (px)", 0, w - 1, w // 4, key="box_x")
        y = cols[1].number_input("top (px)", 0, h - 1, h // 4, key="box_y")
        bw = cols[2].number_input("width (px)", 1, w, w // 4, key="box_w")
        bh = cols[3].number_input("height (px)", 1, h, h // 4, key="box_h")
    return (int(x), int(y), int(bw), int(bh)) if use else None


def _mask_from_inputs(shape: tuple[int, int], pixels: np.ndarray) -> np.ndarray | None:
    mode = st.radio("Finding location", ["Draw a box", "Upload a mask"], horizontal=True, key="agree_mode")
    if mode == "Draw a box":
        st.caption("Drag on the film to draw a box around the finding.")
        box = box_from_selection(st.session_state.get("finding_box"), shape)
        typed = _typed_box(shape)
        box = typed if typed is not None else box
        st.plotly_chart(box_figure(pixels, box), key="finding_box", on_select="rerun", selection_mode=("box",),
                        config={"displayModeBar": False})
        return agreement_mod.boxes_to_mask([box], shape) if box is not None else None
    upload = st.file_uploader("Mask image (same size as the radiograph; non-zero = finding)", type=["png", "bmp",
                              "tif", "tiff"], key="agree_mask")
    if upload is None:
        return None
    import cv2

    decoded = cv2.imdecode(np.frombuffer(upload.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        st.error("Could not decode the mask image.")
        return None
    try:
        return agreement_mod.mask_from_upload(decoded, shape)
    except ValueError as exc:
        st.error(str(exc))
        return None


def finding_section(key: tuple[Any, ...], result: PipelineResult) -> None:
    """Where is the finding? A box (or mask) scored against every map, in words; numbers kept for modelers."""
    st.subheader("Where is the finding?")
    mask = _mask_from_inputs(result.radiograph.pixels.shape, result.radiograph.pixels)
    if mask is None:
        _results().pop(("agreement", *key), None)
        return
    maps = dict(result.maps)
    ig = _results().get(("ig", *key))
    if ig is not None:
        maps[IG] = result.geometry.to_original(ig.map)
    scores = agreement_mod.agreement_for_maps(maps, mask)
    _results()[("agreement", *key)] = scores
    for m, a in scores.items():
        where = {True: "its strongest point lies inside your box", False: "its strongest point lies outside your box",
                 None: "it is flat"}[a.hit]
        st.markdown(f"**{_label(m)}**: {where}; {a.energy_inside:.0%} of its energy is inside.")


def agreement_tab(key: tuple[Any, ...]) -> None:
    st.markdown(
        "**Agreement with the radiologist** (CheXlocalize conventions, Saporta et al. 2022), for the box or mask "
        "given above: per map, pointing-game hit (the map's maximum inside, no tolerance), share of map energy "
        "inside, and IoU of the Otsu-thresholded map with it. Saporta et al. found Grad-CAM the best of "
        "seven methods — and all of them below radiologists."
    )
    scores = _results().get(("agreement", *key))
    if scores is None:
        st.caption("No finding marked yet (see \"Where is the finding?\").")
        return
    st.dataframe(
        [{"method": _label(m), "pointing hit": {True: "hit", False: "miss", None: "—"}[a.hit],
          "energy inside": round(a.energy_inside, 3), "IoU (Otsu)": round(a.iou_otsu, 3)}
         for m, a in scores.items()],
        hide_index=True,
    )


def lungs_tab(key: tuple[Any, ...], result: PipelineResult, field: Any) -> None:
    st.markdown(
        "**Evidence inside the lungs** (`xai.anatomy.anatomy_readout`): share of each map's mass `sum |s|` in the "
        "visible lung fields (the six zones; the lung behind the heart counts as heart and mediastinum), and per "
        "anatomical region. Lung fields from the lung U-Net (`models/bundles/lungs`)."
    )
    found = film_readouts(key, result)
    if isinstance(field, str) or not field.found or not found:
        st.caption(field if isinstance(field, str) else f"No lung field: {field.reason}.")
        return
    rows = [{"method": _label(m), "inside the lungs (visible lung fields)": round(r.in_visible_lungs, 3),
             **{k: round(v, 3) for k, v in r.shares.items()}} for m, r in found.items()]
    st.dataframe(rows, hide_index=True)
    st.caption(f"Lung area: {field.area_fraction:.1%} of the film; {field.components} lung regions.")


def film_readouts(key: tuple[Any, ...], result: PipelineResult) -> dict[str, AnatomyReadout]:
    """Each map's anatomical readout on the film's cached regions (empty when the lung model is unavailable)."""
    regions = film_anatomy(key[0], result.radiograph)
    return {} if isinstance(regions, str) else readouts(("trust", *key), result.maps, regions)


def ig_tab(key: tuple[Any, ...], model: ActiveModel, result: PipelineResult) -> None:
    st.markdown(
        "**Integrated Gradients** (Sundararajan et al. 2017), the reference method of the literature: the "
        "gradient of the class logit averaged along the straight path from a black image to the input "
        "(trapezoid rule), times the difference. Completeness: the attributions add up to the logit "
        "difference; the error is shown."
    )
    steps = st.slider("Integration steps", 8, 128, 32, key="ig_steps")
    store = _results()
    if st.button("Compute Integrated Gradients", key="run_ig"):
        bar = st.progress(0.0, text="starting")
        store[("ig", *key)] = integrated_gradients(model.loaded, result.input_tensor, target=result.target_index,
                                                   steps=steps, progress=_progress_callback(bar))
        bar.empty()
        st.rerun()  # tabs drawn earlier in this run (agreement, faithfulness) now include the IG map
    ig = store.get(("ig", *key))
    if ig is None:
        return
    gray = render.downsample_for_display(result.radiograph.pixels, THUMB_SIDE)
    panels = {m: result.maps[m] for m in result.maps}
    panels[IG] = result.geometry.to_original(ig.map)
    cols = st.columns(len(panels))
    for col, (m, heat) in zip(cols, panels.items(), strict=True):
        small = render.downsample_for_display(heat, THUMB_SIDE)
        col.image(render.overlay(gray, small), caption=_label(m), width="stretch")
    st.caption(f"Baseline: {ig.baseline}; {ig.steps} steps. Logit {ig.score:.3f} at the input, "
               f"{ig.baseline_score:.3f} at the baseline; completeness error {ig.delta:+.4f} "
               f"({100 * ig.relative_delta:.2f} % of the difference). Map: |IG| summed over channels, "
               "clipped at the 99.5th percentile.")


# ---------------------------------------------------------------------------------------- verdicts
def run_all(key: tuple[Any, ...], model: ActiveModel, result: PipelineResult) -> None:
    """Sanity check, stability and faithfulness (with its random reference) in one go, one progress bar."""
    bar = st.progress(0.0, text="sanity check")
    store = _results()
    store[("sanity", *key)] = sanity_check(model.loaded, result.input_tensor, target=result.target_index,
                                           progress=_progress_callback(bar, 0, 3))
    store[("stability", *key)] = stability(
        model.loaded, result.radiograph, target=result.target_index, methods=tuple(result.maps),
        reference_maps=result.maps, second_model=models.second_checkpoint(model.card), progress=_progress_callback(bar, 1, 3))
    run_faithfulness(key, model, result, *FAITH_DEFAULTS, _progress_callback(bar, 2, 3))
    bar.empty()


def map_verdicts(key: tuple[Any, ...], result: PipelineResult, field: Any) -> dict[str, list[verdicts.Verdict]]:
    """Per map, the five per-map verdicts (gray "not run yet" where a check has not run); where the evidence lies
    reads the anatomical readout (the page's cached regions of the film)."""
    store = _results()
    sanity, stab = store.get(("sanity", *key)), store.get(("stability", *key))
    faith = store.get(("faith", *key, *FAITH_DEFAULTS))
    lung_ok = not isinstance(field, str) and field.found
    found = film_readouts(key, result)
    out = {}
    for m in result.maps:
        # "inside the lungs" is the visible lung fields, as on the Explain page; the rest is named by region
        share = found[m].in_visible_lungs if m in found else float("nan")
        outside = {k: v for k, v in found[m].shares.items() if k not in LUNG_ZONES} if m in found else {}
        out[m] = [
            verdicts.sanity_verdict(sanity, m) if sanity is not None and m in sanity.methods else verdicts.not_run("sanity"),
            verdicts.stability_verdict(stab, m) if stab is not None and m in stab.methods else verdicts.not_run("stability"),
            verdicts.lung_verdict(share, outside, lung_ok),
            verdicts.anatomy_verdict(found[m].shares if m in found else {}, lung_ok and m in found),
            verdicts.faithfulness_verdict(faith, m) if faith is not None and m in faith.curves
            else verdicts.not_run("faithfulness"),
        ]
    return out


def _line(v: verdicts.Verdict) -> str:
    return f"{LIGHT[v.light]} **{verdicts.CHECKS[v.check]}** ({LIGHT_WORD[v.light]}) — {v.sentence}"


def display_settings(model: ActiveModel, result: PipelineResult) -> render.DisplaySettings:
    """The Explain page's display choices as this session last set them (:func:`pages._display.session_display`),
    at the size of the maps drawn here."""
    return session_display(model, result, side=MAP_SIDE)


def scale_caption(settings: render.DisplaySettings) -> str:
    if settings.scale == "per_image":
        return "Maps stretched per image (each to its own range), as chosen on the Explain page."
    return ("Maps on the same scale as the Explain page: each method's raw values divided by "
            + ("its typical peak on the model's validation films" if scale_choice() != "session"
               else "the session's fixed maximum") + " (brighter is clipped), so weak evidence looks weak.")


def verdict_section(image: LoadedImage, key: tuple[Any, ...], model: ActiveModel, result: PipelineResult,
                    field: Any) -> None:
    thumb, right = st.columns([1, 3])
    thumb.image(contour_thumbnail(result.radiograph.pixels, field, THUMB_SIDE), width="stretch",
                caption="The film; lung fields outlined in green" if not isinstance(field, str) and field.found
                else "The film (no lung field found)")
    with right:
        if st.button("Run all checks", key="run_all", type="primary",
                     help="Randomisation, stability and faithfulness for every map (about a minute on a CPU)"):
            run_all(key, model, result)
        try:
            ood = ood_score(image.sha256, model.key, result, model)
        except (ValueError, RuntimeError):  # statistics that do not fit a user's model
            ood = None
        lung_found = None if isinstance(field, str) else field.found
        record = held_out.held_out_record(getattr(model.card, "cross_source", None))
        st.markdown(_line(verdicts.ood_verdict(ood, lung_found, record.silence() if record else None)))
        if isinstance(field, str):
            st.caption(field)
    settings = display_settings(model, result)
    try:
        overlays = screen_view(image, model, result, settings).overlays
    except ValueError as exc:  # e.g. a fixed scale without a maximum for a method: draw nothing, say why
        st.caption(f"The maps cannot be drawn with these display settings: {exc}")
        overlays = {}
    st.caption(scale_caption(settings))
    weak = display_scale.weak_evidence(
        result.target, float(result.probabilities[result.target]), display_scale.map_peaks(result.explanation),
        display_scale.from_card(model.card) if settings.scale == "fixed" else None, {m: _label(m) for m in result.maps},
        rejected=result.target != result.predicted)
    if weak:
        st.warning(weak, icon=":material/blur_on:")
    for m, lines in map_verdicts(key, result, field).items():
        with st.container(border=True, key=f"trust_map_{m}"):
            picture, words = st.columns([1, 2]) if m in overlays else (None, st.container())
            if picture is not None:
                picture.image(overlays[m], caption=_label(m), width="stretch")
            words.markdown(f"**{_label(m)}** " + " ".join(LIGHT[v.light] for v in lines))
            words.markdown("\n".join(f"- {_line(v)}" for v in lines))


# -------------------------------------------------------------------------------------------- page
def main() -> None:
    ensure_routed()
    st.title("Trust: can these maps be trusted?")
    st.caption("Checks that say when a saliency map shows what the model learned — and when it does not.")
    model = require_model()
    image = pick_image()
    if image is None:
        st.info("Choose a radiograph above (or on the Explain page) to run the checks.")
        st.stop()

    names = model.class_names
    choice = st.selectbox("Explain class", ["predicted", *names], index=default_target_choice(model), key="trust_target")
    target = None if choice == "predicted" else names.index(choice)
    result = explain(image, model, target, tuple(METHODS))
    shown_name = image.label if image.source == "sample" or patient_details_shown() else "the uploaded film"
    st.caption(f"Image: {shown_name} — model {model.card.name} {model.card.version}; explaining "
               f"**{result.target}** (P = {result.probabilities[result.target]:.3f}; predicted: {result.predicted}).")
    key = (image.sha256, model.key, result.target_index)
    field = lung_field(image.sha256, image.radiograph)

    verdict_section(image, key, model, result, field)
    finding_section(key, result)

    with st.expander("Numbers for modelers"):
        tabs = st.tabs(["Sanity check", "Stability", "Faithfulness", "Lungs", "Agreement", "Integrated Gradients"])
        with tabs[0]:
            sanity_tab(key, model, result)
        with tabs[1]:
            stability_tab(key, model, result)
        with tabs[2]:
            faithfulness_tab(key, model, result)
        with tabs[3]:
            lungs_tab(key, result, field)
        with tabs[4]:
            agreement_tab(key)
        with tabs[5]:
            ig_tab(key, model, result)


main()
