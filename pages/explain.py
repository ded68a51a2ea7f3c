"""Explain page: a radiograph, the model's prediction, and the four saliency maps side by side.

Reruns are cheap by design: the maps are computed once per (image, model, target, methods) by
``pages._shared.explain_cached``; everything under "Display" (overlay, opacity, colormap, contours,
colour bar, scale, window/level, panel layout) only re-draws pixels inside a fragment.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import streamlit as st

from pages._panel import Panel, panel_figure, prediction_figure, row_height_for, screen_image_uri
from pages._shared import (
    CACHE_TTL_S,
    DISCLAIMER,
    DISPLAY_CACHE_ENTRIES,
    ActiveModel,
    LoadedImage,
    display_magnitudes,
    display_maps,
    ensure_routed,
    explain_cached,
    held_out_performance,
    list_samples,
    load_bytes,
    load_sample,
    map_magnitude,
    method_label,
    ood_banner,
    require_model,
)
from xai import export, render
from xai.engine import METHODS
from xai.pipeline import PREDICTED, PipelineResult
from xai.radiograph import RadiographError, apply_window

#: Longest side of the on-screen images (px); maps are computed and exported at full resolution.
#: 768 is the default: sharp on a 1080p projector, and a display change sends ~half the pixels of 1024.
SCREEN_SIDES = {"768 px (fast)": 768, "1024 px": 1024, "1536 px (fine)": 1536}
ZOOM_STEPS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
PANEL_SIZES = {"Small": 0.7, "Medium": 1.0, "Large": 1.4}
NO_SAMPLE = "—"


# ------------------------------------------------------------------------------------------- input
def ingest(upload: Any, sample_title: str, samples: dict[str, str]) -> None:
    """Load what the user just chose (a new upload or another sample) into ``session_state["image"]``.

    A file that cannot be read leaves the previous image (and so its result) in place and stores a
    message naming the problem in ``session_state["load_error"]``.
    """
    state = st.session_state
    if upload is not None and upload.file_id != state.get("_seen_upload"):
        state["_seen_upload"] = upload.file_id
        try:
            state["image"] = load_bytes(upload.getvalue(), label=upload.name, source="upload")
            state.pop("load_error", None)
        except RadiographError as exc:
            state["load_error"] = f"Could not read “{upload.name}”: {exc}"
        except Exception as exc:  # noqa: BLE001 - a bad file must never take the page down
            state["load_error"] = f"Could not read “{upload.name}”: unexpected {type(exc).__name__}."
    elif upload is None and state.get("_seen_upload") is not None:
        state["_seen_upload"] = None
        state.pop("load_error", None)  # the bad file was removed from the uploader
    if sample_title != state.get("_seen_sample"):
        state["_seen_sample"] = sample_title
        if sample_title in samples:
            try:
                state["image"] = replace(load_sample(samples[sample_title]), label=sample_title)
                state.pop("load_error", None)
            except (RadiographError, OSError) as exc:
                state["load_error"] = f"Could not read the sample “{sample_title}”: {exc}"


def resolve_target(choice: str, image: LoadedImage, model: ActiveModel) -> int | None:
    """The class index to explain, or None for the predicted class (shares the predicted result's cache)."""
    if choice == PREDICTED or choice not in model.class_names:
        return None
    if st.session_state.get("_predicted", {}).get((image.sha256, model.key)) == choice:
        return None
    return model.class_names.index(choice)


# ------------------------------------------------------------------------------------------ output
def prediction_section(result: PipelineResult, model: ActiveModel) -> None:
    card = model.card
    threshold = getattr(card, "threshold", None)
    positive = getattr(card, "positive_class", None) or ("covid19" if "covid19" in model.class_names else None)
    st.plotly_chart(
        prediction_figure(result.probabilities, threshold=threshold, positive_class=positive, decision=result.predicted),
        key="prediction_chart",
        config={"displayModeBar": False},
    )
    rule = getattr(card, "threshold_rule", "")
    st.caption(
        f"Decision: **{result.predicted}**"
        + (f" — {rule}" if rule else (f" — threshold {threshold:.3f} on P({positive})" if threshold is not None else ""))
    )


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


@st.cache_resource(max_entries=8, show_spinner=False)
def _display_modality(image_sha: str, max_side: int, _image: LoadedImage) -> np.ndarray:
    """Modality values shrunk for the screen, so re-windowing costs a small array, not the full film."""
    return render.downsample_for_display(_image.radiograph.modality_values, max_side)


@st.cache_resource(max_entries=16, show_spinner=False)
def _original_uri(image_sha: str, window: tuple[float, float] | None, side: int, _image: np.ndarray) -> str:
    """The unchanged original panel, encoded once per image and window (not on every display change)."""
    return screen_image_uri(_image)


def display_settings(image: LoadedImage, n_panels: int) -> dict[str, Any]:
    """The display controls (tucked in an expander). Nothing here touches a map's computation."""
    s: dict[str, Any] = {}
    with st.expander("Display", expanded=False, icon=":material/tune:"):
        c1, c2, c3, c4 = st.columns(4)
        s["show_heat"] = c1.toggle("Overlay", value=True, key="disp_overlay")
        s["alpha"] = c1.slider("Opacity", 0.0, 1.0, render.DEFAULT_ALPHA, 0.05, key="disp_alpha")
        s["cmap"] = c2.selectbox(
            "Colormap", render.COLORMAPS, key="disp_cmap",
            format_func=lambda c: c if c in render.PERCEPTUALLY_UNIFORM else f"{c} (not perceptually uniform)",
        )
        s["colorbar"] = c2.toggle("Colour bar", value=True, key="disp_colorbar")
        contours = c3.toggle("Contours", value=False, key="disp_contours")
        level = c3.slider("Contour level", 0.05, 1.0, 0.5, 0.05, key="disp_contour_level")
        s["contour_level"] = level if contours else None
        s["scale"] = c4.radio(
            "Scale", ("per_image", "fixed"), key="disp_scale",
            format_func=lambda m: "per image" if m == "per_image" else "fixed (same for every image)",
            help="Per image: each map stretched to its own range. Fixed: each method's raw values divided "
            "by one maximum kept for the session, so colours mean the same value across images.",
        )
        s["reset_fixed"] = c4.button(
            "Fix the scale on this image", key="disp_fix_here", disabled=s["scale"] != "fixed",
            help="Take each method's fixed maximum (99.5th percentile) from the image shown now.",
        )
        c5, c6, c7 = st.columns([1, 1, 2])
        s["side"] = SCREEN_SIDES[c6.select_slider(
            "Screen resolution", list(SCREEN_SIDES), value="768 px (fast)", key="disp_side",
            help="Longest side of the images sent to the browser. Maps are computed and exported at full "
            "resolution whatever you choose.",
        )]
        s["per_row"] = c5.slider("Panels per row", 1, max(2, n_panels), min(n_panels, 3), key="disp_per_row")
        s["size"] = PANEL_SIZES[c6.select_slider("Panel size", list(PANEL_SIZES), value="Medium", key="disp_size")]
        z1, z2, z3 = st.columns(3)
        zoom = z1.select_slider("Zoom (all panels)", ZOOM_STEPS, value=1.0, key="disp_zoom",
                                format_func=lambda z: f"{z:g}×",
                                help="Stays across display changes. Scroll and drag on the panel zoom and pan "
                                "too, until the next change.")
        cx = z2.slider("Zoom centre, left → right (%)", 0, 100, 50, key="disp_cx", disabled=zoom == 1.0)
        cy = z3.slider("Zoom centre, top → bottom (%)", 0, 100, 50, key="disp_cy", disabled=zoom == 1.0)
        s["view"] = (float(zoom), cx / 100.0, cy / 100.0)
        r = image.radiograph
        s["window"] = None
        if r.format == "dicom":
            lo, hi = float(np.min(r.modality_values)), float(np.max(r.modality_values))
            center0, width0 = r.window if r.window else ((lo + hi) / 2.0, max(hi - lo, 1.0))
            center0 = float(min(max(center0, lo), hi))
            width0 = float(min(max(width0, 1.0), hi - lo + 1.0))
            with c7:
                center = st.slider("Window centre", lo, hi, center0, key=f"wc:{image.sha256}")
                width = st.slider("Window width", 1.0, max(hi - lo + 1.0, 2.0), width0, key=f"ww:{image.sha256}")
            if r.window is None or (center, width) != (center0, width0):
                s["window"] = (center, width)
    return s


@st.cache_resource(max_entries=DISPLAY_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def screen_rgb(image_sha: str, window: tuple[float, float] | None, side: int, _image: LoadedImage) -> np.ndarray:
    """The radiograph on the screen grid as uint8 RGB, once per image, window and size (read-only)."""
    rgb = render.gray_to_rgb(screen_gray(_image, window, side))
    rgb.setflags(write=False)
    return rgb


def screen_gray(image: LoadedImage, window: tuple[float, float] | None, side: int) -> np.ndarray:
    r = image.radiograph
    if window is None:
        return render.downsample_for_display(r.pixels, side)
    return apply_window(
        _display_modality(image.sha256, side, image), window[0], window[1],
        invert=r.inverted, function=r.voi_function,
    )


def fixed_maxima(result: PipelineResult, model: ActiveModel, magnitudes: dict[str, np.ndarray], reset: bool) -> dict[str, float]:
    """Per-method maxima of the fixed scale, kept in the session (first image shown, or on request)."""
    store: dict = st.session_state.setdefault("fixed_vmax", {})
    for m in result.methods:
        if reset or (model.key, m) not in store:
            store[(model.key, m)] = render.robust_max(magnitudes[m])
    return {m: store[(model.key, m)] for m in result.methods}


@st.cache_resource(max_entries=DISPLAY_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def _heat_indices(
    key: tuple, scale: str, vmax: tuple[tuple[str, float], ...] | None, _maps: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Screen maps scaled and quantised for :func:`xai.render.blend`, once per image, scale and maxima."""
    limits = dict(vmax or ())
    return {m: render.heat_index(render.scale_map(a, scale, limits.get(m))) for m, a in _maps.items()}


def heat_maps(
    image: LoadedImage, result: PipelineResult, model: ActiveModel, s: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Each method's map on the screen grid as a colour-table index, scaled as chosen (per image or fixed)."""
    key = (image.sha256, model.key, result.target_index, result.methods, s["side"])
    if s["scale"] == "fixed":
        magnitudes = display_magnitudes(*key, result)
        s["vmax"] = fixed_maxima(result, model, magnitudes, s["reset_fixed"])
        return _heat_indices(key, "fixed", tuple(sorted(s["vmax"].items())), _maps=magnitudes)
    return _heat_indices(key, "per_image", None, _maps=display_maps(*key, result))


def panel_caption(result: PipelineResult, model: ActiveModel) -> str:
    """Model and target layer, then class and the time the (shared) computation of all maps took."""
    total = result.explanation.timings.get("total")
    took = f" · {float(total):.0f} ms" if total is not None else ""
    return f"{model.card.name} · {result.explanation.target_layer}<br>class {result.target}{took}"


@st.fragment
def panel_section(image: LoadedImage, result: PipelineResult, model: ActiveModel, show_patient: bool) -> None:
    """Original + overlays, linked zoom/pan, display controls and downloads (reruns on its own)."""
    methods = result.methods
    s = display_settings(image, 1 + len(methods))
    original = screen_rgb(image.sha256, s["window"], s["side"], _image=image)
    heats = heat_maps(image, result, model, s)
    window_note = f"window {s['window'][0]:.0f}/{s['window'][1]:.0f}" if s["window"] else ""
    panels = [Panel(f"<b>Original</b><br>{image_facts(image, short=True)}<br>{window_note or ' '}", original,
                    source=_original_uri(image.sha256, s["window"], s["side"], _image=original))]
    for m in methods:
        rgb = render.blend(
            original, heats[m], cmap=s["cmap"], alpha=s["alpha"], contour_level=s["contour_level"],
            show_heat=s["show_heat"],
        )
        flat = bool(np.asarray(result.explanation.flat.get(m, False)).reshape(-1)[0])
        title = f"<b>{method_label(m)}</b>{' — flat map' if flat else ''}<br>{panel_caption(result, model)}"
        panels.append(Panel(title, rgb))
    fixed = s["scale"] == "fixed"
    fig = panel_figure(
        panels,
        per_row=s["per_row"],
        row_height=row_height_for(original.shape[:2], min(s["per_row"], len(panels)), s["size"]),
        uirevision=f"{image.sha256}:{model.key}",
        colorscale=render.plotly_colorscale(s["cmap"]) if s["colorbar"] and s["show_heat"] else None,
        colorbar_title="fraction of the fixed max" if fixed else "saliency (per image)",
        view=s["view"],
    )
    st.plotly_chart(fig, key="panel_chart", config={"scrollZoom": True, "displaylogo": False}, theme=None)
    notes = []
    if image.radiograph.shape != original.shape[:2]:
        h, w = image.radiograph.shape
        notes.append(f"Shown at {original.shape[1]}×{original.shape[0]}; maps are computed and exported at {w}×{h}.")
    if fixed:
        notes.append("Fixed maxima: " + ", ".join(f"{method_label(m)} {v:.3g}" for m, v in s["vmax"].items()))
    notes.append("Scroll to zoom, drag to pan: all panels move together; double-click resets. "
                 "For a zoom that stays while you change the display, use Zoom under Display.")
    st.caption(" ".join(notes))
    downloads_section(image, result, model, s, {p.title: p.rgb for p in panels}, show_patient)


# --------------------------------------------------------------------------------------- downloads
def export_settings(s: dict[str, Any], methods: tuple[str, ...]) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "methods": "+".join(methods),
        "colormap": s["cmap"],
        "opacity": s["alpha"] if s["show_heat"] else 0.0,
        "contour": s["contour_level"] if s["contour_level"] is not None else "off",
        "scale": "per image" if s["scale"] == "per_image" else "fixed",
    }
    if s["window"]:
        settings["window"] = f"{s['window'][0]:.0f}/{s['window'][1]:.0f}"
    return settings


def provenance(result: PipelineResult, model: ActiveModel, method: str, s: dict[str, Any]) -> export.Provenance:
    return export.Provenance(
        model_name=str(model.card.name),
        model_sha256=str(model.card.sha256),
        method=method,
        target_class=result.target,
        target_layer=result.explanation.target_layer,
        settings=export_settings(s, result.methods),
        timings_ms={"total": float(result.explanation.timings.get("total", 0.0))},
    )


def full_overlay(image: LoadedImage, result: PipelineResult, model: ActiveModel, method: str, s: dict[str, Any]) -> np.ndarray:
    """One method's overlay on the full-resolution radiograph, with the current display settings."""
    r = image.radiograph
    gray = r.pixels if s["window"] is None else r.rewindow(*s["window"])
    if s["scale"] == "fixed":
        heat = render.scale_map(result.geometry.to_original(map_magnitude(result, method)), "fixed", s["vmax"][method])
    else:
        heat = render.scale_map(result.maps[method], "per_image")
    return render.overlay(gray, heat, cmap=s["cmap"], alpha=s["alpha"], contour_level=s["contour_level"],
                          show_heat=s["show_heat"])


def side_by_side(images: list[np.ndarray], gap: int = 8) -> np.ndarray:
    """Panels of one height in a row with a black gap (the Secondary Capture's pixel data)."""
    h = max(i.shape[0] for i in images)
    strip = np.zeros((h, gap, 3), np.uint8)
    row: list[np.ndarray] = []
    for i, img in enumerate(images):
        pad = np.zeros((h - img.shape[0], img.shape[1], 3), np.uint8)
        row += ([strip] if i else []) + [np.vstack([img, pad])]
    return np.hstack(row)


def export_stem(image: LoadedImage, model: ActiveModel) -> str:
    """File names carry the model and a content-hash prefix, never the upload's name (it may hold PHI)."""
    return f"{model.card.name}_{image.sha256[:10]}"


def report_kwargs(
    image: LoadedImage, result: PipelineResult, model: ActiveModel, s: dict[str, Any], panels: dict[str, np.ndarray],
    show_patient: bool,
) -> dict[str, Any]:
    methods = result.methods
    titles = list(panels)[1:]
    gray = panels[next(iter(panels))]
    return {
        "radiograph": gray,
        "panels": {method_label(m): panels[t] for m, t in zip(methods, titles, strict=True)},
        "provenance": provenance(result, model, " + ".join(method_label(m) for m in methods), s),
        "class_names": list(result.class_names),
        "probabilities": [result.probabilities[c] for c in result.class_names],
        "threshold": getattr(model.card, "threshold", None),
        "threshold_class": getattr(model.card, "positive_class", None),
        "predicted": result.predicted,
        "colormap": s["cmap"],
        "notes": list(result.notices),
        "patient": image.radiograph.patient if show_patient else None,
        "include_patient": show_patient,
    }


def downloads_section(
    image: LoadedImage, result: PipelineResult, model: ActiveModel, s: dict[str, Any],
    panels: dict[str, np.ndarray], show_patient: bool,
) -> None:
    """Download buttons; every file is generated only when its button is clicked."""
    stem = export_stem(image, model)
    patient = image.radiograph.patient if show_patient else None
    with st.container(horizontal=True):
        for m in result.methods:
            st.download_button(
                f"{method_label(m)} PNG",
                data=lambda m=m: export.overlay_png(
                    full_overlay(image, result, model, m, s), provenance(result, model, m, s),
                    patient=patient, include_patient=show_patient,
                ),
                file_name=f"{stem}_{m.replace('+', 'pp')}.png", mime="image/png", on_click="ignore",
                key=f"dl_{m}", icon=":material/download:",
            )
        st.download_button(
            "Report PDF", data=lambda: export.report_pdf(**report_kwargs(image, result, model, s, panels, show_patient)),
            file_name=f"{stem}_report.pdf", mime="application/pdf", on_click="ignore", key="dl_report_pdf",
            icon=":material/picture_as_pdf:",
        )
        st.download_button(
            "Report PNG", data=lambda: export.report_png(**report_kwargs(image, result, model, s, panels, show_patient)),
            file_name=f"{stem}_report.png", mime="image/png", on_click="ignore", key="dl_report_png",
            icon=":material/description:",
        )
        if image.radiograph.format == "dicom":
            source = image.dicom_bytes or {**image.radiograph.patient,
                                            "Modality": image.radiograph.metadata.get("modality", ""),
                                            "SOPClassUID": image.radiograph.metadata.get("sop_class_uid", "")}
            st.download_button(
                "DICOM Secondary Capture",
                data=lambda: export.secondary_capture(
                    side_by_side(list(panels.values())), source,
                    provenance(result, model, " + ".join(result.methods), s), include_patient=show_patient,
                ),
                file_name=f"{stem}_sc.dcm", mime="application/dicom", on_click="ignore", key="dl_sc",
                icon=":material/medical_information:",
            )
    st.caption(f"Every export carries the model, its sha256, the settings, the date and “{DISCLAIMER}”. "
               f"Patient details are {'INCLUDED' if show_patient else 'not included'}.")


# -------------------------------------------------------------------------------------------- page
def main() -> None:
    ensure_routed()
    state = st.session_state
    model = require_model()
    samples = list_samples()
    with st.sidebar:
        st.header("Radiograph")
        upload = st.file_uploader(
            "Upload a radiograph", key="upload",
            help="DICOM, PNG, JPEG, TIFF, BMP or WEBP — recognised from the file's content, not its name.",
        )
        sample_title = st.selectbox("…or a bundled sample", [NO_SAMPLE, *samples], key="sample")
        st.header("Explanation")
        chosen = st.multiselect(
            "Methods", list(METHODS), default=list(METHODS), format_func=method_label, key="methods"
        )
        target_choice = st.selectbox(
            "Target class", [PREDICTED, *model.class_names], key=f"target:{model.key}",
            format_func=lambda c: "Predicted class" if c == PREDICTED else c,
            help="Explain the class the model predicts, or any other class.",
        )
        show_patient = st.toggle(
            "Show patient details", value=False, key="show_patient",
            help="Off: nothing identifying is shown or exported.",
        )
        origin = "bundled" if model.origin == "bundled" else "your own"
        st.caption(f"Model: **{model.card.name}** ({origin}) · layer `{model.card.target_layer}`")
    ingest(upload, sample_title, samples)

    image: LoadedImage | None = state.get("image")
    if state.get("load_error"):
        st.error(state["load_error"] + (" The previous image is still shown." if image is not None else ""))
    if image is None:
        st.info("Upload a radiograph or pick a bundled sample in the sidebar.", icon=":material/upload_file:")
        st.subheader(f"How {model.card.name} did on held-out radiographs")
        if held_out_performance(model, key="landing_performance"):
            st.caption("Rates at the card's threshold, per source hospital or collection; “never seen in "
                       "training” rows come from a model retrained without that source, the honest estimate "
                       "for a new hospital. Sources with one class have one rate. See the Model page for the "
                       "full card and its known confound.")
        else:
            st.caption("This model's card records no test metrics.")
        return
    methods = tuple(m for m in METHODS if m in chosen)
    if not methods:
        st.warning("Choose at least one method in the sidebar.")
        return

    target = resolve_target(target_choice, image, model)
    try:
        result = explain_cached(image.sha256, model.key, target, methods, image, model)
    except Exception as exc:  # noqa: BLE001 - e.g. a user's exotic model: say so, keep serving
        st.error(f"The explanation failed with model {model.card.name}: {type(exc).__name__}: {exc}")
        return
    if target is None:
        state.setdefault("_predicted", {})[(image.sha256, model.key)] = result.predicted

    top_left, top_right = st.columns([3, 2])
    with top_left:
        st.subheader(image.label if image.source == "sample" or show_patient else "Uploaded radiograph")
        st.caption(image_facts(image))
        for notice in result.notices:
            st.info(notice, icon=":material/info:")
        ood_slot = st.container()
    with top_right:
        prediction_section(result, model)
    if show_patient:
        patient_section(image)
    panel_section(image, result, model, show_patient)
    # The overlays go out first; the out-of-distribution verdict (Mahalanobis distance of the features the
    # explanation already recorded) fills the slot above them a moment later, cached like the maps.
    with ood_slot:
        ood_banner(image.sha256, model, result)


main()
