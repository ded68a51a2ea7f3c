"""Explain page: a radiograph, the model's prediction, and the four saliency maps side by side.

Reruns are cheap by design: the maps are computed once per (image, model, target, methods) by
``pages._explanations.explain``; everything under "Display" (overlay, opacity, colormap, contours,
colour bar, scale, window/level, panel layout) only re-draws pixels inside a fragment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import streamlit as st

from pages._access import ensure_routed
from pages._display import DISPLAY_DEFAULTS, SCALES, fixed_maxima_store, heat_look, light_theme
from pages._explanations import ResultKey, explain, prefetch_targets, screen_layers
from pages._figures import readout_bars_html
from pages._howto import how_popovers
from pages._ingest import LoadedImage, load_input
from pages._lungs import film_anatomy, lung_outline, readouts, start_film_anatomy, zone_boundaries
from pages._methods import method_label
from pages._models import ActiveModel, active_choice, require_model
from pages._ood import ood_banner, ood_summary
from pages._pacs import pacs_input, page_results, send_to_pacs
from pages._panel import (
    GRAY_COLORSCALE,
    HEAT_PREVIEW_JS,
    PANEL_KEY,
    Panel,
    colormap_filters_js,
    heat_style,
    panel_figure,
    prediction_bars_html,
    row_height_for,
)
from pages._record import held_out_performance
from pages._state import (
    Key,
    explain_target_key,
    keep_widgets,
    kept_value,
    predicted_class,
    remember_predicted,
    restore_widget,
)
from xai import display_scale, export, render
from xai.export import DISCLAIMER, METHOD_TITLES
from xai.method_names import METHODS, listed_methods  # no torch: the page draws these first
from xai.pipeline import PREDICTED, PipelineResult
from xai.render import DisplaySettings
from xai.trust.verdict import anatomy_verdict

if TYPE_CHECKING:
    from streamlit.delta_generator import DeltaGenerator

    from models import ModelCard
    from xai.anatomy import AnatomyReadout

#: Longest side of the on-screen images (px); maps are computed and exported at full resolution.
#: 768 is the default: sharp on a 1080p projector, and a display change sends ~half the pixels of 1024.
SCREEN_SIDES = {"768 px (fast)": 768, "1024 px": 1024, "1536 px (fine)": 1536}
ZOOM_STEPS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
PANEL_SIZES = {"Small": 0.7, "Medium": 1.0, "Large": 1.4}
#: What is computed when no method is chosen: the prediction still shows (Grad-CAM is the cheapest pass).
PREDICTION_ONLY = ("gradcam",)


def resolve_target(choice: str, image: LoadedImage, model: ActiveModel) -> int | None:
    """The class index to explain, or None for the predicted class (shares the predicted result's cache)."""
    if choice == PREDICTED or choice not in model.class_names:
        return None
    if predicted_class(image.sha256, model.key) == choice:
        return None
    return model.class_names.index(choice)


# ------------------------------------------------------------------------------------------ output
def prediction_section(result: PipelineResult, model: ActiveModel) -> None:
    card = model.card
    threshold = getattr(card, "threshold", None)
    positive = getattr(card, "positive_class", None)
    with st.container(key="prediction_chart"):
        st.html(prediction_bars_html(result.probabilities, threshold=threshold, positive_class=positive,
                                     decision=result.predicted))
    rule = getattr(card, "threshold_rule", "")
    said = f"Decision: **{result.predicted}**"
    if threshold is not None and positive in model.class_names:
        said += f" — the model calls a film {positive} when P({positive}) is at least {threshold:.3f}."
    st.caption(said, help=f"How the threshold was chosen: {rule}" if rule else None)


def image_facts(image: LoadedImage, short: bool = False) -> str:
    r = image.radiograph
    h, w = r.shape
    facts = [f"{r.format.upper()}", f"{w}×{h} px", f"{r.bits_stored}-bit", r.photometric]
    if short:
        return " · ".join(facts[:2])
    if r.pixel_spacing:
        facts.append(f"{r.pixel_spacing[0]:.3f}×{r.pixel_spacing[1]:.3f} mm/px")
    if r.frames > 1:
        facts.append(f"{r.frames} frames (first shown)")
    for key in ("modality", "view_position", "body_part"):
        if r.metadata.get(key):
            facts.append(f"{key.replace('_', ' ')} {r.metadata[key]}")
    return " · ".join(facts)


def patient_section(image: LoadedImage) -> None:
    patient = image.radiograph.patient
    with st.expander("Patient details", expanded=True):
        if patient:
            st.table({"field": list(patient), "value": [str(v) for v in patient.values()]})
        else:
            st.write("This file carries no patient details.")


class FilmWindow(NamedTuple):
    """A DICOM's value range, its own window (clipped to the range), the sliders' step and their keys."""

    lo: float
    hi: float
    center: float
    width: float
    step: float
    center_key: str
    width_key: str


def _film_window(image: LoadedImage) -> FilmWindow:
    r = image.radiograph
    lo, hi = float(np.min(r.modality_values)), float(np.max(r.modality_values))
    center0, width0 = r.window if r.window else ((lo + hi) / 2.0, max(hi - lo, 1.0))
    return FilmWindow(lo, hi, float(min(max(center0, lo), hi)), float(min(max(width0, 1.0), hi - lo + 1.0)),
                      render.nice_step(hi - lo), f"wc:{image.sha256}", f"ww:{image.sha256}")


def _set_window(image: LoadedImage, preset: str | None) -> None:
    """Button callback: put the sliders on a preset (or back on the file's own window) before they draw."""
    fw = _film_window(image)
    center, width = render.window_preset(image.radiograph, preset) if preset is not None else (fw.center, fw.width)
    st.session_state[fw.center_key] = float(np.clip(round(center / fw.step) * fw.step, fw.lo, fw.hi))
    st.session_state[fw.width_key] = float(np.clip(round(width / fw.step) * fw.step, fw.step, fw.hi - fw.lo + 1.0))


def window_controls(image: LoadedImage) -> None:
    """Window presets, a reset and centre/width sliders for a DICOM (see :func:`window_choice` for the window
    they give). The sliders step by a round ~1/200 of the value range, so arrow keys move visibly."""
    r = image.radiograph
    if r.format != "dicom":
        return
    fw = _film_window(image)
    with st.container(horizontal=True):
        for preset in render.WINDOW_PRESETS:
            st.button(preset.capitalize(), key=f"win_{preset}", on_click=_set_window, args=(image, preset),
                      help=f"{preset.capitalize()} window: brightness percentiles "
                      f"{render.WINDOW_PRESETS[preset][0]:g}–{render.WINDOW_PRESETS[preset][1]:g} of this film.")
        st.button("Reset", key="win_reset", on_click=_set_window, args=(image, None),
                  help="Back to the file's own window.")
    restore_widget(fw.center_key, fw.center)  # the slider's start (a preset's callback may have set it)
    restore_widget(fw.width_key, fw.width)
    st.slider("Window centre", fw.lo, fw.hi, step=fw.step, key=fw.center_key)
    st.slider("Window width", fw.step, max(fw.hi - fw.lo + 1.0, 2 * fw.step), step=fw.step, key=fw.width_key)
    keep_widgets((fw.center_key, fw.width_key))


def window_choice(image: LoadedImage) -> tuple[float, float] | None:
    """The (centre, width) the window sliders hold for a DICOM, also while they are not drawn; None while that
    is the file's own window (and for other formats)."""
    r = image.radiograph
    if r.format != "dicom":
        return None
    fw = _film_window(image)
    center, width = float(kept_value(fw.center_key, fw.center)), float(kept_value(fw.width_key, fw.width))
    if r.window is None or abs(center - fw.center) > fw.step / 2 or abs(width - fw.width) > fw.step / 2:
        return (center, width)
    return None


def fixed_maxima(result: PipelineResult, model: ActiveModel, reset: bool) -> tuple[tuple[str, float], ...]:
    """Per-method maxima of the session's fixed scale (first image shown, or on request): the 99.5th
    percentile of each method's raw magnitude on the model grid."""
    store = fixed_maxima_store()
    for m in result.methods:
        if reset or (model.key, m) not in store:
            store[(model.key, m)] = render.robust_max(render.raw_magnitude(result.explanation, m))
    return tuple((m, float(store[(model.key, m)])) for m in result.methods)


@dataclass(frozen=True)
class Scale:
    """The scale in use: the settings' part (``scale``, ``vmax``) and what the page says about it."""

    mode: str
    vmax: tuple[tuple[str, float], ...]
    label: str
    colorbar_title: str
    notice: str | None = None

    @property
    def render_mode(self) -> render.ScaleMode:
        return "per_image" if self.mode == "per_image" else "fixed"


def resolve_scale(choice: str, result: PipelineResult, model: ActiveModel, reset: bool) -> Scale:
    """The chosen scale, or the per-image stretch with a notice when the card has no calibration."""
    if choice == "session":
        vmax = fixed_maxima(result, model, reset)
        return Scale("session", vmax, "Scale: fixed on this session's first image (" + ", ".join(
            f"{method_label(m)} {v:.3g}" for m, v in vmax) + ").", "× the session's maximum")
    calibration = display_scale.from_card(model.card)
    if choice == "model" and calibration is not None and all(m in calibration.vmax for m in result.methods):
        n = f"{calibration.n} {calibration.split} films".strip() if calibration.n else "validation films"
        return Scale("model", tuple((m, calibration.vmax[m]) for m in result.methods),
                     f"Scale: the model's typical range — 1 is the median peak of its maps on {n}; "
                     "brighter than that is clipped.", "× the model's typical peak")
    notice = None if choice == "per_image" else (
        f"The card of {model.card.name} has no calibrated display scale: each map is stretched to its own "
        "range (per image), so a weak map looks as bright as a strong one.")
    return Scale("per_image", (), "Scale: per image — each map stretched from its own minimum to its own "
                 "maximum.", "saliency (per image)", notice)


#: The Display expander's key: it tracks whether it is open, and draws its controls only then.
DISPLAY_OPEN = "disp_open"
def display_settings(image: LoadedImage, result: PipelineResult, model: ActiveModel) -> tuple[DisplaySettings, Scale]:
    """The display controls (in an expander) as one :class:`DisplaySettings`, and the scale in use. Nothing
    here touches a map's computation.

    The expander draws its ~20 controls only while open (Streamlit's lazy expander; opening it reruns this
    fragment): closed, they cost neither the server nor the browser anything on a result's path (in the
    browser they were ~0.5 s of a first result), and the settings are the values the controls held when last
    drawn (:func:`pages._state.kept_value`)."""
    n_panels = 1 + len(result.methods)
    defaults = {**DISPLAY_DEFAULTS, "disp_per_row": min(n_panels, 3)}
    controls = st.expander("Display", key=DISPLAY_OPEN, on_change="rerun", icon=":material/tune:")
    reset_fixed = False
    if controls.open:
        with controls:
            reset_fixed = display_controls(image, n_panels, defaults)
    v = {key: kept_value(key, default) for key, default in defaults.items()}
    scale = resolve_scale(str(v["disp_scale"]), result, model, reset_fixed)
    zoom = float(v["disp_zoom"])
    settings = DisplaySettings(
        side=SCREEN_SIDES[v["disp_side"]], window=window_choice(image), scale=scale.render_mode, vmax=scale.vmax,
        lungs=bool(v["disp_lungs"]), zones=bool(v["disp_zones"]), show_heat=bool(v["disp_overlay"]), alpha=float(v["disp_alpha"]),
        cmap=str(v["disp_cmap"]), contour_level=float(v["disp_contour_level"]) if v["disp_contours"] else None,
        colorbar=bool(v["disp_colorbar"]), per_row=min(int(v["disp_per_row"]), max(2, n_panels)),
        size=PANEL_SIZES[v["disp_size"]], zoom=(zoom, int(v["disp_cx"]) / 100.0, int(v["disp_cy"]) / 100.0),
    )
    return settings, scale


def display_controls(image: LoadedImage, n_panels: int, defaults: Mapping[str, object]) -> bool:
    """Draw the Display widgets on their kept values (see :func:`display_settings`); True when "Fix the scale
    on this image" was pressed in this run."""
    for key, default in defaults.items():
        restore_widget(key, default)
    if st.session_state["disp_per_row"] > max(2, n_panels):  # kept from a page with more methods
        st.session_state["disp_per_row"] = max(2, n_panels)
    c1, c2, c3, c4 = st.columns(4)
    c1.toggle("Overlay", key="disp_overlay")
    c1.slider("Opacity", 0.0, 1.0, step=0.05, key="disp_alpha")
    c2.selectbox(
        "Colormap", render.COLORMAPS, key="disp_cmap",
        format_func=lambda c: c if c in render.PERCEPTUALLY_UNIFORM else f"{c} (not perceptually uniform)",
    )
    c2.toggle("Colour bar", key="disp_colorbar")
    c3.toggle("Contours", key="disp_contours")
    c3.slider("Contour level", 0.05, 1.0, step=0.05, key="disp_contour_level")
    c3.toggle("Lung outline", key="disp_lungs",
              help="Outline the lung fields the lung model found (green), on every panel.")
    c3.toggle("Zone boundaries", key="disp_zones",
              help="Draw the six lung zones the anatomical readout uses (each visible lung cut into thirds of its "
              "height), thin white lines on every panel.")
    choice = c4.radio(
        "Scale", tuple(SCALES), key="disp_scale", format_func=SCALES.get,
        help="The model's typical range: each method's raw values divided by what its maps typically "
        "reach on validation films (stored on the model card), so weak evidence looks weak. Per image: "
        "each map stretched to its own range. Fixed: one maximum per method kept for the session.",
    )
    reset_fixed = c4.button(
        "Fix the scale on this image", key="disp_fix_here", disabled=choice != "session",
        help="Take each method's fixed maximum (99.5th percentile) from the image shown now.",
    )
    c5, c6, c7 = st.columns([1, 1, 2])
    c6.select_slider(
        "Screen resolution", list(SCREEN_SIDES), key="disp_side",
        help="Longest side of the images sent to the browser. Maps are computed and exported at full "
        "resolution whatever you choose.",
    )
    c5.slider("Panels per row", 1, max(2, n_panels), key="disp_per_row")
    c6.select_slider("Panel size", list(PANEL_SIZES), key="disp_size")
    z1, z2, z3 = st.columns(3)
    zoom = z1.select_slider("Zoom (all panels)", ZOOM_STEPS, key="disp_zoom", format_func=lambda z: f"{z:g}×",
                            help="Stays across display changes. Click a panel, then scroll and drag to "
                            "zoom and pan too, until the next change.")
    z2.slider("Zoom centre, left → right (%)", 0, 100, key="disp_cx", disabled=zoom == 1.0)
    z3.slider("Zoom centre, top → bottom (%)", 0, 100, key="disp_cy", disabled=zoom == 1.0)
    with c7:
        window_controls(image)
    keep_widgets(defaults)
    return bool(reset_fixed)


def panel_caption(result: PipelineResult, model: ActiveModel) -> str:
    """Model and target layer, then class and the time the (shared) computation of all maps took."""
    total = result.explanation.timings.get("total")
    took = f" · {float(total):.0f} ms" if total is not None else ""
    return f"{model.card.name} · {result.explanation.target_layer}<br>class {result.target}{took}"


def panel_titles(image: LoadedImage, result: PipelineResult, model: ActiveModel, s: DisplaySettings,
                 readout: Mapping[str, AnatomyReadout] | None) -> list[str]:
    """The original's title, then one per method (name, flat-map flag, model, layer, class, time, the share of
    its evidence in the visible lung fields, and its two largest anatomical regions when a lung field was found)."""
    window_note = f"window {s.window[0]:.0f}/{s.window[1]:.0f}" if s.window else " "
    titles = [f"<b>Original</b><br>{image_facts(image, short=True)}<br>{window_note}<br> "]
    for m in result.methods:
        flat = bool(np.asarray(result.explanation.flat.get(m, False)).reshape(-1)[0])
        found = (readout or {}).get(m)
        share = found.in_visible_lungs if found is not None else float("nan")
        lungs = f" · {share:.0%} in lungs" if np.isfinite(share) else ""
        where = (found.sentence(2) if found is not None else "") or " "
        titles.append(f"<b>{method_label(m)}</b>{' — flat map' if flat else ''}<br>"
                      f"{panel_caption(result, model)}{lungs}<br>{where}")
    return titles


#: What the page says under the panels about the headline share and the regions (one home for the wording).
READOUT_NOTE = ("“In lungs” counts the visible lung fields only (the six zones: each lung cut into thirds of its "
                "height); evidence behind the heart's shadow counts as heart and mediastinum. Regions come from "
                "the lung model's masks (see the How page).")


def anatomy_notes(image: LoadedImage, model: ActiveModel, result: PipelineResult) -> dict[str, AnatomyReadout] | None:
    """Warn when no lung field is found, and for each map whose evidence lies mostly on the heart and
    mediastinum, outside the body, the film border or text (:func:`xai.trust.verdict.anatomy_verdict`, naming the
    region); return each method's anatomical readout (None without a lung field)."""
    try:
        regions = film_anatomy(image.sha256, image.radiograph)
    except Exception as exc:  # noqa: BLE001 - the lung model failing on this film must not hide the maps
        regions = f"No lung-field check: {type(exc).__name__}: {exc}"
    if isinstance(regions, str):  # the lung model is unavailable: say so once, keep the maps
        st.caption(regions)
        return None
    if not regions.found:
        st.warning(f"No lung field found ({regions.reason}): this image may not be a frontal chest radiograph, "
                   "and the model's output on it means little.", icon=":material/pulmonology:")
        return None
    found = readouts(ResultKey.of(image, model, result), result.maps, regions)
    verdicts = [(m, anatomy_verdict(r.shares, regions.found)) for m, r in found.items()]
    flagged = [(m, v) for m, v in verdicts if v.light in ("amber", "red")]
    if flagged:  # one box for every flagged map (red when any is), so the panels stay in view
        say = st.error if any(v.light == "red" for _, v in flagged) else st.warning
        say("\n\n".join(f"**{method_label(m)}:** {v.sentence}" for m, v in flagged), icon=":material/crisis_alert:")
    return found


def readout_section(result: PipelineResult, readout: Mapping[str, AnatomyReadout] | None) -> None:
    """One stacked bar per method of where its evidence lies (every region), and what "in lungs" counts."""
    if not readout or all(not r.sentence() for r in readout.values()):
        return
    with st.container(key="readout_chart"):
        st.html(readout_bars_html({method_label(m): readout[m].shares for m in result.methods if m in readout}))
        st.caption(READOUT_NOTE)


@st.fragment
def panel_section(image: LoadedImage, result: PipelineResult, model: ActiveModel, show_patient: bool) -> None:
    """Original + overlays, linked zoom/pan, display controls and downloads (reruns on its own)."""
    # The heat layers' colour and opacity go out first: an opacity or colormap change needs nothing else,
    # and the widgets' state already holds the new value before they are drawn again below.
    heat_panels = range(1, 1 + len(result.methods))
    look = heat_look()
    panel_scripts()
    st.html(heat_style(heat_panels, cmap=look.cmap, alpha=look.alpha, show_heat=look.show_heat))
    s, scale = display_settings(image, result, model)
    if (s.show_heat, s.alpha, s.cmap) != (look.show_heat, look.alpha, look.cmap):  # never expected; the later rule wins
        st.html(heat_style(heat_panels, cmap=s.cmap, alpha=s.alpha, show_heat=s.show_heat))
    screen, outlines = screen_layers(image, model, result, s)
    original = screen.layers.original
    readout = anatomy_notes(image, model, result)
    titles = panel_titles(image, result, model, s, readout)
    # Every panel is the radiograph; an overlay adds its map's heat layer, which the page colours and
    # blends (heat_style): an opacity or colormap change leaves the figure, and so the chart, untouched.
    panels = [Panel(titles[0], original, source=screen.original_uri, lines=outlines[""])]
    panels += [Panel(t, original, source=screen.original_uri, heat=screen.heat_uris[m], lines=outlines[m])
               for t, m in zip(titles[1:], result.methods, strict=True)]
    if scale.notice:
        st.info(scale.notice, icon=":material/straighten:")
    weak = display_scale.weak_evidence(
        result.target, float(result.probabilities[result.target]), display_scale.map_peaks(result.explanation),
        display_scale.from_card(model.card) if scale.mode == "model" else None, METHOD_TITLES,
        rejected=result.target != result.predicted)
    if weak:
        st.warning(weak, icon=":material/blur_on:")
    fig = panel_figure(
        panels,
        per_row=s.per_row,
        row_height=row_height_for(original.shape[:2], min(s.per_row, len(panels)), s.size),
        uirevision=f"{image.sha256}:{model.key}",
        colorscale=GRAY_COLORSCALE if s.colorbar and s.show_heat else None,  # painted by heat_style
        colorbar_title=scale.colorbar_title,
        view=s.zoom,
        light=light_theme(),
    )
    # No "download as PNG" in the mode bar: plotly would draw the heat layers gray and opaque (their colour
    # and opacity are the page's style); the Downloads below give the real overlays at full resolution.
    st.plotly_chart(fig, key=PANEL_KEY, theme=None,
                    config={"scrollZoom": True, "displaylogo": False, "modeBarButtonsToRemove": ["toImage"]})
    how_popovers(result.methods)  # "How <method> works" under the panel, linking to the How page
    notes = [scale.label]
    if image.radiograph.shape != original.shape[:2]:
        h, w = image.radiograph.shape
        notes.append(f"Shown at {original.shape[1]}×{original.shape[0]}; maps are computed and "
                     f"exported at {w}×{h}.")
    notes.append("Click a panel, then scroll to zoom and drag to pan: all panels move together; double-click "
                 "resets. Scrolling elsewhere moves the page. For a zoom that stays while you change the "
                 "display, use Zoom under Display.")
    st.caption(" ".join(notes))
    readout_section(result, readout)
    downloads_section(image, result, model, s, show_patient)
    # The other classes in the background, drawn as now: a target switch then needs no engine pass.
    prefetch_targets(image, model, result, s)


#: Mouse-wheel zoom only once the user has clicked a panel: until then a wheel over the panels scrolls the
#: page (the event is stopped before plotly sees it, without preventing the browser's scroll). A click
#: elsewhere, or a wheel turned outside the panels, disarms it again.
_WHEEL_GATE_JS = """<script>
(() => {
  if (window.__xaiWheelGate) return;
  window.__xaiWheelGate = true;
  let armed = false;
  const inPanel = (t) => !!(t && t.closest && t.closest('.st-key-panel_chart'));
  document.addEventListener('pointerdown', (e) => { armed = inPanel(e.target); }, true);
  window.addEventListener('wheel', (e) => {
    if (!inPanel(e.target)) armed = false;  // scrolling elsewhere: the next wheel over the panels scrolls too
    else if (!armed) e.stopPropagation();   // plotly never sees it; the browser still scrolls the page
  }, {capture: true, passive: true});
})();
</script>"""



def panel_scripts() -> None:
    """Install :data:`_WHEEL_GATE_JS`, the colour filters the heat layers use and their live preview
    (:data:`pages._panel.HEAT_PREVIEW_JS`), once per page load (a rerun finds them installed)."""
    st.html(_WHEEL_GATE_JS + colormap_filters_js() + HEAT_PREVIEW_JS, unsafe_allow_javascript=True)


# --------------------------------------------------------------------------------------- downloads
def readout_sentences(image: LoadedImage, model: ActiveModel, result: PipelineResult) -> dict[str, str]:
    """``{method: where its evidence lies, in one sentence}`` for the exports, from the page's cached readout
    ({} when the film has no lung field or the lung model is unavailable)."""
    regions = film_anatomy(image.sha256, image.radiograph)
    if isinstance(regions, str) or not regions.found:
        return {}
    found = readouts(ResultKey.of(image, model, result), result.maps, regions)
    return {m: r.sentence(2) for m, r in found.items() if r.sentence(2)}


def provenance(result: PipelineResult, model: ActiveModel, method: str, s: DisplaySettings,
               readout: str = "") -> export.Provenance:
    return export.Provenance(
        readout=readout,
        model_name=str(model.card.name),
        model_sha256=str(model.card.sha256),
        method=method,
        target_class=result.target,
        target_layer=result.explanation.target_layer,
        settings={"methods": ", ".join(method_label(m) for m in result.methods), **s.describe()},
        timings_ms={"total": float(result.explanation.timings.get("total", 0.0))},
    )


def film_view(image: LoadedImage, result: PipelineResult, s: DisplaySettings) -> render.View:
    """The view at the film's own resolution with the current display settings (what exports draw)."""
    lungs = lung_outline(image.sha256, image.radiograph) if s.lungs else None
    zones = zone_boundaries(image.sha256, image.radiograph) if s.zones else None
    return render.view(image.radiograph, result, replace(s, side=None), lungs, zones)


def export_stem(image: LoadedImage, model: ActiveModel) -> str:
    """File names carry the model and a content-hash prefix, never the upload's name (it may hold PHI);
    the rule's one home is :func:`xai.batch.names.export_stem` (the Batch page's downloads use it too)."""
    from xai.batch.names import export_stem as hashed_stem

    return hashed_stem(model.card.name, image.sha256)


def report_spec(
    image: LoadedImage, result: PipelineResult, model: ActiveModel, s: DisplaySettings, show_patient: bool,
) -> export.ReportSpec:
    """The report of what is on screen, drawn at the film's resolution, with the OOD verdict."""
    film = film_view(image, result, s)
    ood = ood_summary(image.sha256, model, result)
    return export.ReportSpec(
        radiograph=film.original,
        panels={method_label(m): film.overlays[m] for m in result.methods},
        provenance=provenance(result, model, ", ".join(result.methods), s),
        class_names=list(result.class_names),
        probabilities=[result.probabilities[c] for c in result.class_names],
        threshold=getattr(model.card, "threshold", None),
        threshold_class=getattr(model.card, "positive_class", None),
        predicted=result.predicted,
        colormap=s.cmap,
        notes=list(result.notices),
        ood=ood.sentence,
        ood_warning=bool(ood.warnings),
        readout={method_label(m): line for m, line in readout_sentences(image, model, result).items()},
        patient=image.radiograph.patient if show_patient else None,
        include_patient=show_patient,
    )


def sc_zip(image: LoadedImage, result: PipelineResult, model: ActiveModel, s: DisplaySettings,
           mode: export.ScMode) -> bytes:
    """One Secondary Capture per method at the film's resolution, zipped (names carry no identifiers)."""
    import io
    import zipfile

    film = film_view(image, result, s)
    source = image.dicom_bytes or {**image.radiograph.patient,
                                   "Modality": image.radiograph.metadata.get("modality", ""),
                                   "SOPClassUID": image.radiograph.metadata.get("sop_class_uid", "")}
    files = export.secondary_captures(dict(film.overlays), source, provenance(result, model, ", ".join(
        result.methods), s), mode=mode, readouts=readout_sentences(image, model, result))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for method, data in zip(result.methods, files, strict=True):
            archive.writestr(f"{export_stem(image, model)}_{method_file_key(method)}.dcm", data)
    return buffer.getvalue()


def method_file_key(method: str) -> str:
    """A method key fit for a file name: ``gradcam++`` -> ``gradcampp``."""
    return method.replace("+", "p")


def downloads_section(
    image: LoadedImage, result: PipelineResult, model: ActiveModel, s: DisplaySettings, show_patient: bool,
) -> None:
    """Download buttons; every file is generated only when its button is clicked."""
    stem = export_stem(image, model)
    patient = image.radiograph.patient if show_patient else None
    with st.container(horizontal=True):
        for m in result.methods:
            st.download_button(
                f"{method_label(m)} PNG",
                data=lambda m=m: export.overlay_png(
                    film_view(image, result, s).overlays[m],
                    provenance(result, model, m, s, readout_sentences(image, model, result).get(m, "")),
                    patient=patient, include_patient=show_patient,
                ),
                file_name=f"{stem}_{method_file_key(m)}.png", mime="image/png", on_click="ignore",
                key=f"dl_{m}", icon=":material/download:",
            )
        st.download_button(
            "Report PDF", data=lambda: export.report_pdf(report_spec(image, result, model, s, show_patient)),
            file_name=f"{stem}_report.pdf", mime="application/pdf", on_click="ignore", key="dl_report_pdf",
            icon=":material/picture_as_pdf:",
        )
        st.download_button(
            "Report PNG", data=lambda: export.report_png(report_spec(image, result, model, s, show_patient)),
            file_name=f"{stem}_report.png", mime="image/png", on_click="ignore", key="dl_report_png",
            icon=":material/description:",
        )
        if image.radiograph.format == "dicom":
            st.download_button(
                "DICOM for our PACS — contains patient identifiers",
                data=lambda: sc_zip(image, result, model, s, "pacs"),
                file_name=f"{stem}_sc_pacs.zip", mime="application/zip", on_click="ignore", key="dl_sc_pacs",
                icon=":material/medical_information:",
                help="One Secondary Capture per method at the film's resolution, filed with the patient's "
                "study (same patient and study, a new series). The files carry the patient's name and ID.",
            )
            st.download_button(
                "DICOM, de-identified",
                data=lambda: sc_zip(image, result, model, s, "deidentified"),
                file_name=f"{stem}_sc_deidentified.zip", mime="application/zip", on_click="ignore",
                key="dl_sc_deid", icon=":material/shield:",
                help="One Secondary Capture per method at the film's resolution with new patient, study and "
                "series identifiers and no patient details: nothing links it back to the patient.",
            )
    send_to_pacs(image, lambda mode, kinds: page_results(image, result, model, s.cmap, mode, kinds))
    st.caption(f"Every export carries the model, its sha256, the settings, the date and “{DISCLAIMER}”. "
               f"Patient details are {'INCLUDED' if show_patient else 'not included'} (except in the "
               "“for our PACS” DICOM, which says so).")


# -------------------------------------------------------------------------------------------- page
#: Said when the card's intended use names adults (its limitations say what it does on children).
ADULTS_ONLY = "It is meant for adults' frontal chest films; on children it is untested (see the Model page)."


def landing(card: ModelCard | None) -> DeltaGenerator | None:
    """Before a radiograph is chosen: where to choose one, and the model's record on held-out films in words (its
    card alone: on a fresh server this is drawn before the model loads). Returns the slot
    for the record's chart (:func:`landing_chart`), None when the card does not read."""
    st.info("Upload a radiograph or pick a bundled sample in the sidebar.", icon=":material/upload_file:")
    if card is None:  # the bundle does not read: require_model says why
        return None
    st.subheader(f"How {card.name} did on held-out radiographs")
    from xai.trust.held_out import held_out_record

    record = held_out_record(getattr(card, "cross_source", None))
    adults = ADULTS_ONLY if "adult" in str(getattr(card, "intended_use", "")).lower() else ""
    if record or adults:
        said = (record.expectation(), record.silent_expectation() or "") if record else ()
        st.markdown(" ".join(t for t in (*said, adults) if t))
    return st.container()


def landing_chart(card: ModelCard, slot: DeltaGenerator) -> None:
    """The record's chart, drawn after the model's widgets: on a fresh server the browser loads the chart's code
    (plotly: ~1.2 s of a core) only once it has drawn them (pages._preload)."""
    with slot:
        if held_out_performance(card, key="landing_performance"):
            st.caption("Rates at the card's threshold, per source hospital or collection; “never seen in "
                       "training” rows come from a model retrained without that source, the honest estimate "
                       "for a new hospital. Sources with one class have one rate. See the Model page for the "
                       "full card and its known confound.")
        else:
            st.caption("This model's card records no test metrics.")


def main() -> None:
    ensure_routed()
    # What needs no model first (the uploader, the model's record in words): a fresh server's first visitor can
    # choose a film while the model loads (the run then goes on with it), and the browser draws these meanwhile.
    with st.sidebar:
        st.header("Radiograph")
    image = load_input(container=st.sidebar)
    image = pacs_input(st.sidebar) or image  # "From PACS", only when a PACS is configured
    choice = active_choice()
    chart_slot = landing(choice.card if choice is not None else None) if image is None else None
    if choice is None:  # the bundle's card does not read: require_model names the problem and ends the run
        choice = require_model()
    # The model's widgets come from its card: on a fresh server they are drawn while the model loads (app.py
    # starts that once the page has run); a film chosen meanwhile waits for it below.
    with st.sidebar:
        st.header("Explanation")
        chosen = st.multiselect(
            "Methods", listed_methods(), default=list(METHODS), format_func=method_label, key="methods"
        )
        target_choice = st.selectbox(
            "Target class", [PREDICTED, *choice.class_names], key=explain_target_key(choice.key),
            format_func=lambda c: "Predicted class" if c == PREDICTED else c,
            help="Explain the class the model predicts, or any other class.",
        )
        show_patient = st.toggle(
            "Show patient details", value=False, key=Key.SHOW_PATIENT,
            help="Off: nothing identifying is shown or exported.",
        )
        origin = "bundled" if choice.origin == "bundled" else "your own"
        st.caption(f"Model: **{choice.card.name}** ({origin}) · layer `{choice.card.target_layer}`")

    if image is None:
        if chart_slot is not None:  # the card read: its record's chart
            landing_chart(choice.card, chart_slot)
        return
    model = require_model()
    start_film_anatomy(image.sha256, image.radiograph)  # beside the engine (cached: once per film)
    methods = tuple(m for m in listed_methods() if m in chosen)
    target = resolve_target(target_choice, image, model)
    try:  # with no method chosen, the cheapest one still gives the prediction (its map is not shown)
        result = explain(image, model, target, methods or PREDICTION_ONLY)
    except Exception as exc:  # noqa: BLE001 - e.g. a user's exotic model: say so, keep serving
        st.error(f"The explanation failed with model {model.card.name}: {type(exc).__name__}: {exc}")
        return
    if target is None:
        remember_predicted(image.sha256, model.key, result.predicted)

    top_left, top_right = st.columns([3, 2])
    with top_left:
        st.subheader(image.label if image.source == "sample" or show_patient else "Uploaded radiograph")
        st.caption(image_facts(image))
        for notice in result.notices:
            if methods or ": the map is flat" not in notice:  # no word about a map that is not shown
                st.info(notice, icon=":material/info:")
        ood_slot = st.container()
    with top_right:
        prediction_section(result, model)
    if show_patient:
        patient_section(image)
    if methods:
        panel_section(image, result, model, show_patient)
    else:
        st.warning("No method chosen: choose at least one in the sidebar to see where the model looked.")
    # The overlays go out first; the out-of-distribution verdict (Mahalanobis distance of the features the
    # explanation already recorded) fills the slot above them a moment later, cached like the maps.
    with ood_slot:
        ood_banner(image.sha256, model, result)


main()
