"""Compare: one radiograph explained by two models, or for two classes, side by side.

Two models: the session's model, any bundled model (e.g. ``chestcovnet`` and its second training seed
``chestcovnet-seed2``) or a bundle zip uploaded here (weights-only files: load them on the Model page, then
pick "this session's model"). Two classes: one model, two target classes. Per method: both overlays, the
difference map and the Spearman rank correlation, SSIM and top-10 % IoU of the two maps
(:func:`xai.compare.compare_maps`, on the radiograph's own grid, so models with different input sizes
compare on the same anatomy). Maps that change greatly between training seeds show what a seed learned,
not what the disease looks like.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages._access import ensure_routed
from pages._display import overlay_style
from pages._explanations import CACHE_TTL_S, explain
from pages._figures import DIFFERENCE_RANGE, maps_figure, sidebar_film
from pages._methods import method_label
from pages._models import DEFAULT_MODEL, ActiveModel, default_model, require_model, wrap_model
from pages._state import page_store
from xai import render
from xai.compare import MapComparison, compare_maps, to_grid
from xai.engine import METHODS
from xai.pipeline import PREDICTED, PipelineResult

SESSION = "This session's model"
UPLOAD = "Upload a bundle zip…"


@st.cache_resource(max_entries=4, show_spinner="Loading the bundled model…")
def bundled_model(name: str) -> ActiveModel:
    """A bundled model by name, loaded once for every session (the default one is never loaded twice)."""
    if name == DEFAULT_MODEL:
        return default_model()
    import models

    return wrap_model(models.load(name), origin="bundled")


def uploaded_bundle(upload: Any) -> ActiveModel | None:
    """A bundle zip uploaded on this page, loaded once per session (kept in this page's store)."""
    import models

    store = page_store("compare")
    if upload.file_id not in store:
        with tempfile.TemporaryDirectory(prefix="xai-compare-") as folder:
            path = Path(folder) / "bundle.zip"  # never the upload's own name
            path.write_bytes(upload.getvalue())
            try:
                store[upload.file_id] = wrap_model(models.load(path), origin="uploaded")
            except Exception as exc:  # noqa: BLE001 - models.ModelError or a layer that cannot be explained
                st.error(f"Could not load the bundle: {exc}")
                return None
    return store[upload.file_id]


def classifier_bundles() -> tuple[str, ...]:
    """The shipped bundles whose card names a classifier architecture (not e.g. the lung segmenter)."""
    import json

    import models
    from models.bundle import BUNDLES_DIR, CARD_FILE

    names = []
    for name in models.available_bundles():
        try:
            card = json.loads((BUNDLES_DIR / name / CARD_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if card.get("architecture") in models.ARCHITECTURES and card.get("class_names"):
            names.append(name)
    return tuple(names)


def pick_model(side: str, default_choice: str, session_model: ActiveModel) -> ActiveModel | None:
    """One side's model: the session's, a bundled classifier, or an uploaded bundle zip."""
    options = [SESSION, *(f"bundled: {n}" for n in classifier_bundles()), UPLOAD]
    index = options.index(default_choice) if default_choice in options else 0
    choice = st.selectbox(f"Model {side}", options, index=index, key=f"compare_model_{side}",
                          format_func=lambda o: f"{o} ({session_model.card.name})" if o == SESSION else o)
    if choice == SESSION:
        return session_model
    if choice == UPLOAD:
        upload = st.file_uploader("Bundle zip (card.json + model.safetensors)", type=["zip"],
                                  key=f"compare_zip_{side}")
        return uploaded_bundle(upload) if upload is not None else None
    try:
        return bundled_model(choice.removeprefix("bundled: "))
    except Exception as exc:  # noqa: BLE001 - a corrupt bundle: say so, keep serving
        st.error(f"Could not load {choice}: {exc}")
        return None


def target_of(choice: str, model: ActiveModel) -> int | None:
    """A class name to this model's index (None: the model's own decision)."""
    return None if choice == PREDICTED else model.class_names.index(choice)


@st.cache_resource(max_entries=8, ttl=CACHE_TTL_S, show_spinner=False)
def comparison(key: tuple[Any, ...], _a: PipelineResult, _b: PipelineResult) -> Mapping[str, MapComparison]:
    """:func:`xai.compare.compare_maps` of two results, once per (image, models, classes)."""
    return compare_maps(_a.maps, _b.maps)


def metrics_figure(comparisons: Mapping[str, MapComparison]) -> go.Figure:
    names = [method_label(m) for m in comparisons]
    fig = go.Figure([
        go.Bar(x=names, y=[c.spearman for c in comparisons.values()], name="Spearman", marker_color="#e4572e",
               text=[f"{c.spearman:.2f}" for c in comparisons.values()], textposition="outside"),
        go.Bar(x=names, y=[c.ssim for c in comparisons.values()], name="SSIM", marker_color="#4c9be8",
               text=[f"{c.ssim:.2f}" for c in comparisons.values()], textposition="outside"),
        go.Bar(x=names, y=[c.iou_top10 for c in comparisons.values()], name="top-10 % IoU", marker_color="#7f8c9a",
               text=[f"{c.iou_top10:.2f}" for c in comparisons.values()], textposition="outside"),
    ])
    fig.update_layout(barmode="group", height=320, margin={"l": 8, "r": 8, "t": 30, "b": 8},
                      yaxis={"range": [-0.2, 1.15], "title": "agreement of the two maps"},
                      legend={"orientation": "h", "y": 1.15})
    return fig


def difference_title(difference: np.ndarray) -> str:
    """The A − B panel's title: its fixed scale, and the range this difference actually spans."""
    lo, hi = float(np.min(difference)), float(np.max(difference))
    return (f"A − B on a fixed scale −{DIFFERENCE_RANGE:g} … +{DIFFERENCE_RANGE:g} (red: A stronger); "
            f"here {lo:+.2f} … {hi:+.2f}")


def side_label(model: ActiveModel, result: PipelineResult) -> str:
    return f"{model.card.name} · {result.target} (P = {result.probabilities[result.target]:.3f})"


def show(image_gray: np.ndarray, a: tuple[ActiveModel, PipelineResult], b: tuple[ActiveModel, PipelineResult],
         comparisons: Mapping[str, MapComparison]) -> None:
    label_a, label_b = side_label(*a), side_label(*b)
    st.subheader("Agreement per method")
    st.plotly_chart(metrics_figure(comparisons), key="compare_metrics")
    st.dataframe([{"method": method_label(m), "Spearman": round(c.spearman, 3), "SSIM": round(c.ssim, 3),
                   "top-10 % IoU": round(c.iou_top10, 3), "mean |A − B|": round(c.mean_abs_difference, 3)}
                  for m, c in comparisons.items()], hide_index=True, key="compare_table")
    st.caption(f"A = {label_a}; B = {label_b}. Maps compared on the radiograph's grid shrunk to "
               f"{next(iter(comparisons.values())).a.shape[1]} px wide. Spearman 1: same ranking of pixels, "
               "0: unrelated. Flat maps (no evidence) have no ranking: shown as NaN. Each map is the engine's "
               "display map (divided by its own maximum): the rank correlation does not depend on that, the "
               "difference and SSIM do.")
    gray = to_grid(image_gray).astype(np.float32)
    style = overlay_style()  # the user's colormap and opacity, as on the Explain page
    for m, c in comparisons.items():
        st.markdown(f"**{method_label(m)}** — Spearman {c.spearman:.2f}, SSIM {c.ssim:.2f}")
        st.plotly_chart(maps_figure([
            ("A: " + label_a, render.overlay(gray, np.clip(c.a, 0, 1).astype(np.float32), **style), "rgb"),
            ("B: " + label_b, render.overlay(gray, np.clip(c.b, 0, 1).astype(np.float32), **style), "rgb"),
            (difference_title(c.difference), c.difference, "difference"),
        ], height=320), key=f"compare_maps_{m}")


def main() -> None:
    ensure_routed()
    st.title("Compare")
    st.caption("One radiograph, two models or two classes, side by side: where do the maps agree?")
    session_model = require_model()
    image = sidebar_film("compare_")
    if image is None:
        return
    mode = st.radio("Compare", ("Two models", "Two classes"), horizontal=True, key="compare_mode")
    if mode == "Two models":
        left, right = st.columns(2)
        with left:
            model_a = pick_model("A", SESSION, session_model)
        with right:
            model_b = pick_model("B", f"bundled: {session_model.card.name}-seed2", session_model)
        if model_a is None or model_b is None:
            st.info("Choose both models.")
            return
        shared = [c for c in model_a.class_names if c in model_b.class_names]
        choice = st.selectbox("Class", [PREDICTED, *shared], key="compare_class",
                              format_func=lambda c: "Each model's predicted class" if c == PREDICTED else c)
        sides = ((model_a, target_of(choice, model_a)), (model_b, target_of(choice, model_b)))
    else:
        names = session_model.class_names
        left, right = st.columns(2)
        class_a = left.selectbox("Class A", names, index=0, key="compare_class_A")
        class_b = right.selectbox("Class B", names, index=min(1, len(names) - 1), key="compare_class_B")
        sides = ((session_model, names.index(class_a)), (session_model, names.index(class_b)))
    try:
        results = [(m, explain(image, m, t, tuple(METHODS))) for m, t in sides]
    except Exception as exc:  # noqa: BLE001 - e.g. a user's exotic model: say so, keep serving
        st.error(f"The explanation failed: {type(exc).__name__}: {exc}")
        return
    (ma, ra), (mb, rb) = results
    key = (image.sha256, ma.key, ra.target_index, mb.key, rb.target_index)
    if key[1:3] == key[3:5]:
        st.warning("Both sides are the same model and class: the maps are identical.")
    comparisons = comparison(key, ra, rb)
    show(image.radiograph.pixels, results[0], results[1], comparisons)


main()
