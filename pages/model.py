"""Model page: the model card, and loading your own model for this session only.

A user's model (a state dict for a known architecture, or a bundle zip) is written to a private temporary
folder that is deleted as soon as it is loaded; weights are read with safetensors or
``torch.load(weights_only=True)`` by ``models`` — nothing is ever unpickled. The chosen model lives in this
session's ``st.session_state``; the bundled model stays shared and unchanged for everyone else.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from pages._shared import (
    DISCLAIMER,
    ActiveModel,
    active_model,
    default_model,
    ensure_routed,
    held_out_performance,
    wrap_model,
)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# ------------------------------------------------------------------------------------------ card
def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(_flatten(value, f"{name} › "))
        elif isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        elif isinstance(value, list | tuple) and all(not isinstance(v, Mapping) for v in value):
            rows.append((name, ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)))
        else:
            rows.append((name, str(value)))
    return rows


def _table(data: Mapping[str, Any], empty: str) -> None:
    rows = _flatten(data)
    if rows:
        st.dataframe({"field": [r[0] for r in rows], "value": [r[1] for r in rows]}, hide_index=True)
    else:
        st.caption(empty)


def render_card(model: ActiveModel) -> None:
    """The model card, in reading order: what it is, what it decides, how well, where it fails."""
    card = model.card
    st.header(f"{card.name} {card.version}")
    origin = "the bundled model, shared by every session" if model.origin == "bundled" else (
        "your own model, used in this session only")
    st.caption(f"{card.architecture} · {origin} · weights sha256 `{card.sha256}`")

    c1, c2, c3 = st.columns(3)
    c1.metric("Classes", len(card.class_names), help=", ".join(card.class_names))
    c1.write(" · ".join(f"`{c}`" for c in card.class_names))
    c2.metric(f"Threshold on P({card.positive_class})", f"{card.threshold:.3f}")
    c2.write(card.threshold_rule)
    c3.metric("Target layer", card.target_layer)
    pre = card.preprocessing
    c3.write(
        f"{pre.input_size}² px, {pre.channels} channel(s), resize {pre.resize}, equalize {pre.equalize}, "
        f"crop {pre.crop}; mean {tuple(round(m, 3) for m in pre.mean)}, std {tuple(round(s, 3) for s in pre.std)}"
    )

    st.subheader("Intended use")
    st.write(card.intended_use)
    st.caption(DISCLAIMER + ".")
    if getattr(card, "limitations", ""):
        st.subheader("Limitations and known confound")
        st.warning(card.limitations, icon=":material/report:")

    st.subheader("Test metrics")
    held_out_performance(model, key="card_performance")
    _table(getattr(card, "metrics", {}) or {}, "No metrics recorded for this model.")
    st.subheader("Cross-source checks")
    _table(getattr(card, "cross_source", {}) or {}, "No cross-source checks recorded.")
    border = getattr(card, "grad_cam_border_energy", {}) or {}
    if border:
        st.subheader("Grad-CAM energy near the image border")
        _table(border, "")
    training = getattr(card, "training", {}) or {}
    if training:
        with st.expander("Training"):
            _table(training, "")
    attribution = getattr(card, "data_attribution", ()) or ()
    if attribution or getattr(card, "license", ""):
        st.subheader("Data attribution and licence")
        for line in attribution:
            st.markdown(f"- {line}")
        if getattr(card, "license", ""):
            st.caption(f"Licence: {card.license}")
    with st.expander("Card as JSON"):
        st.json(card.to_dict(), expanded=False)


# ------------------------------------------------------------------------------------ your own model
def _safe_file_name(name: str, fallback: str) -> str:
    cleaned = _SAFE_NAME.sub("_", Path(name).name).strip("._")
    return cleaned[:100] or fallback


def _parse_floats(text: str, n: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError:
        raise ValueError(f"{what}: numbers separated by commas, got {text!r}") from None
    if len(values) == 1 and n > 1:
        values = values * n
    if len(values) != n:
        raise ValueError(f"{what}: expected {n} value(s) (one per channel), got {len(values)}")
    return values


def _load_from_upload(upload: Any, loader: Any) -> Any:
    """Write the upload to a private temporary folder, load it, and delete the folder whatever happens."""
    with tempfile.TemporaryDirectory(prefix="xai-model-") as folder:
        path = Path(folder) / _safe_file_name(upload.name, "upload.bin")
        path.write_bytes(upload.getvalue())
        return loader(path)


def _use(loaded: Any) -> None:
    try:
        st.session_state["user_model"] = wrap_model(loaded, origin="uploaded")
    except Exception as exc:  # noqa: BLE001 - e.g. the target layer does not exist in this network
        st.error(f"The model loaded but cannot be explained: {type(exc).__name__}: {exc}")
        return
    st.session_state["_model_flash"] = f"Using {loaded.card.name} in this session (the Explain page uses it now)."
    st.rerun()  # redraw the card above with the new model


def weights_form() -> None:
    import models
    from xai.preprocessing import (
        CROP_MODES,
        EQUALIZE_MODES,
        IMAGENET_MEAN,
        IMAGENET_STD,
        RESIZE_MODES,
        Preprocessing,
    )

    names = list(models.ARCHITECTURES)
    with st.form("weights_form"):
        c1, c2 = st.columns(2)
        arch = c1.selectbox("Architecture", names, key="own_arch",
                            format_func=lambda a: f"{a} — {models.ARCHITECTURES[a].description}")
        weights = c1.file_uploader("Weights (.safetensors, .pt, .pth — a state dict)",
                                   type=["safetensors", "pt", "pth"], key="own_weights")
        classes = c1.text_input("Class names (comma-separated, in output order)", "non_covid, covid19",
                                key="own_classes")
        target_layer = c1.text_input("Target layer (empty: the architecture's default)", "", key="own_layer")
        size = c2.number_input("Input size (px, square)", 32, 1024, 224, 16, key="own_size")
        channels = c2.radio("Channels", (3, 1), horizontal=True, key="own_channels")
        mean = c2.text_input("Normalisation mean", ", ".join(f"{m:g}" for m in IMAGENET_MEAN), key="own_mean")
        std = c2.text_input("Normalisation std", ", ".join(f"{s:g}" for s in IMAGENET_STD), key="own_std")
        c3, c4, c5, c6 = st.columns(4)
        resize = c3.selectbox("Resize", RESIZE_MODES, key="own_resize")
        equalize = c4.selectbox("Equalize", EQUALIZE_MODES, key="own_equalize")
        crop = c5.selectbox("Crop", CROP_MODES, key="own_crop")
        threshold = c6.number_input("Threshold on the last class", 0.0, 1.0, 0.5, 0.01, key="own_threshold")
        submitted = st.form_submit_button("Load weights", type="primary")
    if not submitted:
        return
    if weights is None:
        st.error("Choose a weights file first.")
        return
    try:
        class_names = [c.strip() for c in classes.split(",") if c.strip()]
        if len(class_names) < 1:
            raise ValueError("give at least one class name")
        if len(set(class_names)) != len(class_names):
            raise ValueError("class names must be different from each other")
        preprocessing = Preprocessing(
            input_size=int(size), channels=int(channels),
            mean=_parse_floats(mean, int(channels), "mean"), std=_parse_floats(std, int(channels), "std"),
            resize=resize, equalize=equalize, crop=crop,
        )
        loaded = _load_from_upload(weights, lambda path: models.load_weights(
            path, arch, class_names, preprocessing, target_layer=target_layer.strip() or None,
            threshold=float(threshold), name=Path(_safe_file_name(weights.name, "weights")).stem,
        ))
    except (models.ModelError, ValueError) as exc:
        st.error(f"Could not load the weights: {exc}")
        return
    _use(loaded)


def bundle_form() -> None:
    import models

    with st.form("bundle_form"):
        upload = st.file_uploader("Model bundle (.zip holding card.json and model.safetensors)", type=["zip"],
                                  key="own_bundle")
        submitted = st.form_submit_button("Load bundle", type="primary")
    if not submitted:
        return
    if upload is None:
        st.error("Choose a bundle zip first.")
        return
    try:
        loaded = _load_from_upload(upload, models.load)
    except models.ModelError as exc:
        st.error(f"Could not load the bundle: {exc}")
        return
    _use(loaded)


def main() -> None:
    ensure_routed()
    try:
        model = active_model()
    except Exception as exc:  # noqa: BLE001 - a missing or corrupt bundle: say so, keep the page usable
        st.error(f"The bundled model could not be loaded: {exc}")
        model = None
    if model is not None:
        render_card(model)
    st.divider()
    st.header("Use your own model")
    st.caption("For this session only; the bundled model stays the default for everyone else. "
               "Weights are loaded without unpickling (safetensors or weights-only).")
    if flash := st.session_state.pop("_model_flash", None):
        st.success(flash, icon=":material/check_circle:")
    own = isinstance(st.session_state.get("user_model"), ActiveModel)
    if own and st.button("Back to the bundled model", key="own_reset"):
        st.session_state.pop("user_model", None)
        default_model()
        st.rerun()
    kind = st.radio("What do you have?", ("Weights file", "Bundle zip"), horizontal=True, key="own_kind")
    if kind == "Weights file":
        weights_form()
    else:
        bundle_form()


main()
