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

from pages._access import ensure_routed
from pages._models import ActiveModel, active_model, default_model, set_user_model, user_model, wrap_model
from pages._record import held_out_performance
from pages._state import Key, session
from xai.export import DISCLAIMER
from xai.trust.held_out import held_out_record, silent_error_rate

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
#: The expander that holds a section's modeler's details (rules, statistics, command lines, names).
FOR_MODELERS = "For modelers"


# ------------------------------------------------------------------------------------------ card
def _num(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "–"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _calls(m: Mapping[str, Any]) -> tuple[str, str]:
    """("what the rate is", "k of n") from a metrics entry's confusion matrix [[tn, fp], [fn, tp]]."""
    cm = m.get("confusion_matrix")
    if not (isinstance(cm, list | tuple) and len(cm) == 2):
        return "", ""
    (tn, fp), (fn, tp) = cm
    if tp + fn and not tn + fp:
        return "COVID-19 films called COVID-19 (sensitivity)", f"{tp} of {tp + fn}"
    if tn + fp and not tp + fn:
        return "non-COVID films called non-COVID (specificity)", f"{tn} of {tn + fp}"
    return "both classes", f"{tp} of {tp + fn} COVID-19 found; {tn} of {tn + fp} non-COVID cleared"


def _rate(m: Mapping[str, Any]) -> str:
    sens, spec = m.get("sensitivity"), m.get("specificity")
    if isinstance(sens, int | float) and isinstance(spec, int | float):
        return f"sensitivity {sens:.2f}, specificity {spec:.2f}"
    return _num(sens if isinstance(sens, int | float) else spec)


def _summary_sentence(m: Mapping[str, Any], split: str, threshold: float, positive: str) -> str:
    _, calls = _calls(m)
    return (f"On the fixed **{split}** split ({m.get('n', '?')} films), at the card's threshold "
            f"{threshold:.3f} on P({positive}): **{_rate(m)}**, AUROC {_num(m.get('auroc'), 3)}, "
            f"precision {_num(m.get('precision'))}, calibration error (ECE) {_num(m.get('ece'), 3)}. "
            f"{calls}.")


def _source_table(per_source: Mapping[str, Any]) -> None:
    rows = [(name, m.get("n"), *_calls(m), _rate(m), _num(m.get("auroc"), 3))
            for name, m in per_source.items() if isinstance(m, Mapping)]
    if rows:
        st.dataframe({"source": [r[0] for r in rows], "films": [r[1] for r in rows],
                      "what is measured": [r[2] for r in rows], "correct calls": [r[3] for r in rows],
                      "rate": [r[4] for r in rows], "AUROC": [r[5] for r in rows]}, hide_index=True)


def _performance(card: Any, model: ActiveModel) -> None:
    metrics = _mapping(getattr(card, "metrics", {}))
    test = _mapping(metrics.get("test"))
    st.subheader("How well it does on the test split")
    if not test:
        st.caption("No test-split figures recorded for this model.")
    else:
        st.markdown(_summary_sentence(test, "test", card.threshold, card.positive_class))
        held_out_performance(card, key="card_performance")
        _source_table(_mapping(test.get("per_source")))
        st.caption("These films come from the same hospitals as the training films: they overstate how it does "
                   "elsewhere (see the next section).")
    val = _mapping(metrics.get("val"))
    if test or val:
        with st.expander(FOR_MODELERS):
            if test:
                st.caption(f"Measured by `{test.get('command', '?')}` on {test.get('date', '?')}. The decision "
                           "threshold was chosen on the val split, never on test.")
            if val:
                st.caption("Validation split (where the threshold was chosen): " + _rate(val)
                           + f", AUROC {_num(val.get('auroc'), 3)}, {val.get('n', '?')} films.")


def _held_out(card: Any) -> None:
    cross = _mapping(getattr(card, "cross_source", {}))
    st.subheader("A hospital it has never seen: leave one source out")
    if not cross:
        st.caption("No held-out-source checks recorded for this model.")
        return
    st.markdown(
        "Each row is a model retrained **without** that source, its threshold chosen on the remaining val "
        "split, then run on every film of the source (train, val and test). This is the honest estimate "
        "for a new hospital; the test-split figures above are not.")
    rows = []
    for source, check in cross.items():
        check = _mapping(check)
        rates = _mapping(check.get("all_splits"))
        what, calls = _calls(rates)
        ood = _mapping(check.get("ood_warnings"))
        versus = _mapping(check.get("vs_test_negatives"))
        rows.append((source, rates.get("n"), what, calls, _rate(rates),
                     _num(versus.get("auroc"), 3) if versus else "–",
                     f"{ood['warned']} of {ood['n']}" if {"warned", "n"} <= set(ood) else "–",
                     str(_mapping(check.get("model")).get("name", "")) or str(check.get("recipe", "")),
                     _silent_cell(check)))
    st.dataframe({"held-out source": [r[0] for r in rows], "films": [r[1] for r in rows],
                  "what is measured": [r[2] for r in rows], "correct calls": [r[3] for r in rows],
                  "rate": [r[4] for r in rows], "AUROC vs other sources' test negatives": [r[5] for r in rows],
                  "out-of-distribution warnings": [r[6] for r in rows],
                  "silent error rate (wrong, no warning)": [r[8] for r in rows]},
                 hide_index=True)
    recipe = next((str(_mapping(c).get("recipe")) for c in cross.values() if _mapping(c).get("recipe")), "")
    with st.expander(FOR_MODELERS):
        st.dataframe({"held-out source": [r[0] for r in rows], "retrained model": [r[7] for r in rows],
                      "command": [str(_mapping(c).get("command", "")) for c in cross.values()]}, hide_index=True)
        if recipe:
            st.caption(recipe)


def _silent_cell(check: Mapping[str, Any]) -> str:
    """A held-out source's silent errors as "rate (k of n)", or "–" when the card records none."""
    rate = silent_error_rate(check)
    if rate is None:
        return "–"
    record = _mapping(_mapping(check.get("silent_errors")).get("all_splits"))
    return f"{rate:.2f} ({record['silent_errors']} of {record['n']})"


def _lung_evidence(card: Any) -> None:
    evidence = _mapping(_mapping(_mapping(getattr(card, "metrics", {})).get("test")).get("grad_cam_lung_evidence"))
    if not evidence:
        return
    st.subheader("Is the evidence in the lungs?")
    st.markdown("Share of Grad-CAM's evidence for COVID-19 (the map's mass) that lies inside the lung fields, "
                "dilated by 3 % of the film's width, on the test split's COVID-19 films. 1.0 = all inside.")
    rows = []
    for masks, entry in evidence.items():
        entry = _mapping(entry)
        label = {"manual": "manual / V7 masks", "predicted": "lung U-Net masks"}.get(masks, masks)
        for source, s in {**_mapping(entry.get("per_source")), "all sources": _mapping(entry.get("all"))}.items():
            if s:
                rows.append((label, source, s.get("n"), _num(s.get("median")), _num(s.get("share_at_least_0.70"))))
    st.dataframe({"lung masks": [r[0] for r in rows], "source": [r[1] for r in rows], "films": [r[2] for r in rows],
                  "median share inside": [r[3] for r in rows], "films with ≥ 0.70 inside": [r[4] for r in rows]},
                 hide_index=True)
    border = _mapping(getattr(card, "grad_cam_border_energy", {}))
    if border.get("mean") is not None:
        st.caption(f"Grad-CAM energy in the outer 10 % band of the film: mean {border['mean']:.1%}, max "
                   f"{_num(border.get('max'), 3)} on {border.get('n', '?')} test films (a uniform map: 36 %).")


def _ood(card: Any) -> None:
    ood = _mapping(_mapping(_mapping(getattr(card, "metrics", {})).get("test")).get("ood_warnings"))
    if not ood:
        return
    st.subheader("Warnings for unusual films")
    record = held_out_record(getattr(card, "cross_source", None))
    silence = record.silence() if record else None
    st.markdown(f"The app warns when a film looks unlike the films the model learnt from. It warned on "
                f"**{ood.get('warned')} of {ood.get('n')}** test films. **No warning means no warning** — not "
                "\"like the training data\": a film from a hospital the model never saw can be scored "
                "confidently wrong without one" + (f"; {silence}." if silence else "."))
    per = _mapping(ood.get("per_source"))
    if per:
        st.dataframe({"source": list(per), "warnings": [f"{_mapping(v).get('warned')} of {_mapping(v).get('n')}"
                                                        for v in per.values()]}, hide_index=True)
    with st.expander(FOR_MODELERS):
        st.caption(f"Rule: {ood.get('rule', '?')}; statistics: {ood.get('fitted_on', '?')}. The distance is "
                   "Mahalanobis over the penultimate features (Lee et al., NeurIPS 2018).")


def _training(card: Any) -> None:
    training = _mapping(getattr(card, "training", {}))
    if not training:
        return
    with st.expander("How it was trained, and what was tried"):
        per_source = _mapping(training.get("train_images_per_source"))
        lines = [f"- **Data**: {training.get('train_images', '?')} training and {training.get('val_images', '?')} "
                 f"validation films; {training.get('split', '')}."]
        if per_source:
            lines.append("- **Training films per source**: " + "; ".join(f"{k} {v}" for k, v in per_source.items()) + ".")
        for key, label in (("sampling", "Sampling"), ("frozen", "Frozen layers"), ("optimizer", "Optimiser"),
                           ("early_stopping", "Early stopping"), ("initialisation", "Initialisation")):
            if training.get(key):
                lines.append(f"- **{label}**: {training[key]}.")
        whole = _mapping(training.get("whole_network"))
        if whole:
            lines.append(f"- **Whole network**: {whole.get('what', '')}; {whole.get('epochs_run', '?')} epoch(s), "
                         f"{whole.get('optimizer', '')}, {_num(whole.get('images_per_s'))} images/s, "
                         f"{whole.get('minutes', '?')} min.")
        lungs = _mapping(training.get("lung_masks"))
        if training.get("cam_lung_penalty"):
            lines.append(f"- **Evidence in the lungs**: penalty weight {training['cam_lung_penalty']} on Grad-CAM's "
                         f"share outside the lung mask dilated by {lungs.get('dilation_px', '?')} px; films with a "
                         f"mask: {', '.join(f'{k} {v}' for k, v in _mapping(lungs.get('train_films_with_mask')).items())}; "
                         f"films without one: {lungs.get('without_mask', '')}.")
        elif training.get("cam_border_penalty"):
            lines.append(f"- **Border penalty**: weight {training['cam_border_penalty']} on Grad-CAM's share in the "
                         "outer 10 % band.")
        adversary = _mapping(training.get("source_adversary"))
        if adversary:
            accuracy = adversary.get("val_within_class_source_accuracy")
            lines.append(f"- **Source adversary**: gradient-reversal weight {adversary.get('weight', '?')} against "
                         f"naming the hospital within a class ({', '.join(map(str, adversary.get('sources', [])))}); "
                         f"its accuracy on val afterwards: {_num(accuracy) if accuracy is not None else 'no class with two sources'}.")
        if training.get("mixstyle"):
            lines.append(f"- **MixStyle across sources**: in {_num(training['mixstyle'])} of the batches, each film's "
                         "features took channel statistics mixed with a film's from another source.")
        lines.append(f"- **Seed** {training.get('seed', '?')}; ran {training.get('minutes', '?')} min on "
                     f"{training.get('hardware', 'CPU')}, {training.get('date', '')}; command `{training.get('command', '')}`.")
        st.markdown("\n".join(lines))
        tried = training.get("recipes_compared")
        if isinstance(tried, list) and tried and all(isinstance(t, Mapping) for t in tried):
            st.markdown("**Recipes compared** (chosen on val and the held-out sources, never on test):")
            columns = list(dict.fromkeys(k for t in tried for k in t))
            st.dataframe({c: [str(t.get(c, "–")) for t in tried] for c in columns}, hide_index=True)


def expectation(card: Any) -> None:
    """One plain sentence above the figures: what a hospital the model never saw should expect (the card's
    leave-one-source-out checks, :mod:`xai.trust.held_out`); nothing when the card records none."""
    record = held_out_record(getattr(card, "cross_source", None))
    if record is not None:
        silent = record.silent_expectation()
        st.markdown(f"**{record.expectation()}**" + (f" **{silent}**" if silent else ""))


def render_card(model: ActiveModel) -> None:
    """The model card, in reading order: what it is, what it decides, how well, where it fails."""
    card = model.card
    st.header(f"{card.name} {card.version}")
    origin = "the bundled model, shared by every session" if model.origin == "bundled" else (
        "your own model, used in this session only")
    st.caption(f"{card.architecture} · {origin} · weights sha256 `{card.sha256}`")
    expectation(card)

    c1, c2 = st.columns(2)
    c1.metric("Classes", len(card.class_names), help=", ".join(card.class_names))
    c1.write(" · ".join(card.class_names))
    c2.metric(f"Threshold on P({card.positive_class})", f"{card.threshold:.3f}")
    c2.write(f"A film is called {card.positive_class} when the model gives it at least this probability.")
    pre = card.preprocessing
    with st.expander(FOR_MODELERS):
        st.markdown(f"- **Threshold rule**: {card.threshold_rule}\n"
                    f"- **Target layer** of the saliency maps: `{card.target_layer}`\n"
                    f"- **Preprocessing**: {pre.input_size}² px, {pre.channels} channel(s), resize {pre.resize}, "
                    f"equalize {pre.equalize}, crop {pre.crop}; mean {tuple(round(m, 3) for m in pre.mean)}, "
                    f"std {tuple(round(s, 3) for s in pre.std)}")

    st.subheader("Intended use")
    st.write(card.intended_use)
    st.caption(DISCLAIMER + ".")
    if getattr(card, "limitations", ""):
        st.subheader("Limitations and known confound")
        st.warning(card.limitations, icon=":material/report:")
    _performance(card, model)
    _held_out(card)
    _lung_evidence(card)
    _ood(card)
    _training(card)
    attribution = getattr(card, "data_attribution", ()) or ()
    if attribution or getattr(card, "license", ""):
        st.subheader("Data attribution and licences")
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
        set_user_model(wrap_model(loaded, origin="uploaded"))
    except Exception as exc:  # noqa: BLE001 - e.g. the target layer does not exist in this network
        st.error(f"The model loaded but cannot be explained: {type(exc).__name__}: {exc}")
        return
    session()[Key.MODEL_FLASH] = f"Using {loaded.card.name} in this session (the Explain page uses it now)."
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
    if flash := session().pop(Key.MODEL_FLASH, None):
        st.success(flash, icon=":material/check_circle:")
    own = user_model() is not None
    if own and st.button("Back to the bundled model", key="own_reset"):
        set_user_model(None)
        default_model()
        st.rerun()
    kind = st.radio("What do you have?", ("Weights file", "Bundle zip"), horizontal=True, key="own_kind")
    if kind == "Weights file":
        weights_form()
    else:
        bundle_form()


main()
