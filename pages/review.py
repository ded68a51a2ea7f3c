"""Review page (``/review``): radiologists read a worklist, judge each map, draw what they see.

A session (created here from uploads, a zip or the bundled samples, or with ``python -m xai review create
NAME DIR``) lives in the review database (:class:`xai.review.ReviewStore`). A reader (``st.user`` when
signed in with OIDC, else the name typed here) works through the cases with Previous / Next (keys ← / →):

1. blinded sessions first show the film alone: the reader records their read (COVID-19 / not /
   uncertain, confidence 1-5) and may draw a box around what they see;
2. then the model's prediction and the maps appear, anonymised as "Map A-D" in an order shuffled per
   case and reader (:func:`xai.review.method_order`); the reader rates each map's plausibility 1-5 and
   may add a note. Every save is kept (append-only); the latest counts.

Progress is stored, so a reader resumes where they stopped, after a reload or a server restart. Readers
see only their own answers until the owner closes the session; the owner sees the results (agreement,
plausibility with bootstrap CIs, reader vs model, boxes vs maps) with a CSV and an HTML report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages._access import ensure_routed
from pages._explanations import explain, screen_view
from pages._ingest import SAMPLES_DIR, LoadedImage, list_samples
from pages._methods import method_label
from pages._models import DEFAULT_MODEL, ActiveModel, default_model, wrap_model
from pages._panel import Panel, panel_figure, row_height_for, screen_image_uri
from xai.render import DisplaySettings, downsample_for_display, gray_to_rgb, plotly_colorscale
from xai.review import DIAGNOSES, QUESTIONS, ReviewError, ReviewSession, ReviewStore, default_url, map_letters
from xai.review.store import PLAUSIBILITY_LABELS

#: Longest side of the film on screen (px); boxes are stored in the film's own pixels.
FILM_SIDE = 768
#: Spacing of the invisible points under the film that make plotly report a box selection.
SELECT_GRID = 24
DIAGNOSIS_LABELS = {"covid19": "COVID-19", "non_covid": "Not COVID-19", "uncertain": "Uncertain"}
CONFIDENCE_LABELS = {1: "1 – very unsure", 2: "2", 3: "3", 4: "4", 5: "5 – certain"}
NEXT_KEY, PREV_KEY, NEXT_OPEN_KEY = "review_next", "review_prev", "review_next_open"

class K:
    """This page's ``st.session_state`` keys (widget keys are built next to their widgets)."""

    READER = "review_reader_name"
    SESSION = "review_session_choice"
    POSITION = "_review_position"  # {session id: index of the case on screen}
    OPENED = "_review_opened"  # {(session id, case id): monotonic time the case was first shown}
    BOX_NONCE = "_review_box_nonce"  # {(session id, case id): int}: a new value starts a fresh chart
    DRAWN = "_review_drawn"  # {(session id, case id): box drawn in this session, None once cleared}
    BOX_SCORES = "_review_box_scores"  # {(session id, rating ids): box agreement rows}
    FLASH = "_review_flash"  # a message to show after the rerun that follows a save


# ---------------------------------------------------------------------------------------- resources
@st.cache_resource(show_spinner=False)
def _store_for(url: str) -> ReviewStore:
    return ReviewStore(url)


def review_store() -> ReviewStore:
    """The review database for every session of this server (``XAI_DB_URL`` / ``XAI_DATA_DIR``)."""
    return _store_for(default_url())


@st.cache_resource(max_entries=2, show_spinner="Loading the session's model…")
def _bundle_model(name: str) -> ActiveModel:
    import models

    return wrap_model(models.load(name), origin="bundled")


def session_model(session: ReviewSession) -> ActiveModel:
    """The model the session names: the app's shared default model, or that bundle loaded once."""
    return default_model() if session.model == DEFAULT_MODEL else _bundle_model(session.model)


@st.cache_resource(max_entries=16, ttl=3600, show_spinner=False)
def case_image(session_id: str, case_id: str, image_sha: str) -> LoadedImage:
    """A case's de-identified film as the app's image record (keyed by the pixels' hash)."""
    radiograph = review_store().radiograph(session_id, case_id)
    return LoadedImage(label="case", sha256=image_sha, radiograph=radiograph, source="review")


@st.cache_resource(max_entries=16, ttl=3600, show_spinner=False)
def film_uri(image_sha: str, _image: LoadedImage) -> tuple[str, float]:
    """The film shrunk for the screen as a JPEG data URI, and the film-pixels-per-screen-pixel factor."""
    small = downsample_for_display(_image.radiograph.pixels, FILM_SIDE)
    return screen_image_uri(gray_to_rgb(small)), _image.radiograph.shape[1] / small.shape[1]


# ------------------------------------------------------------------------------------------ identity
def reader_identity() -> str | None:
    """The signed-in user (OIDC) or the name typed here; None until there is one."""
    user = st.user
    if user.get("is_logged_in", False):
        return str(user.get("email") or user.get("name") or user.get("sub"))
    name = st.text_input("Your name as a reader", key=K.READER, max_chars=200,
                         help="Your answers are stored under this name; type the same name to resume.")
    return name.strip() or None


# -------------------------------------------------------------------------------------------- films
def film_figure(uri: str, shape: tuple[int, int], factor: float, box: list[float] | None, uirevision: str) -> dict:
    """The film with a box-select drag mode; ``box`` (film pixels) drawn as a rectangle.

    Written as a plain figure dict (no plotly validation): it is built on every case change. Invisible
    points under the film make plotly report the dragged box (an image trace alone is not selectable).
    """
    h, w = round(shape[0] / factor), round(shape[1] / factor)
    step = max(1.0, max(h, w) / SELECT_GRID)
    ys, xs = np.mgrid[step / 2 : h : step, step / 2 : w : step]
    hidden = {"opacity": 0}
    data = [
        {"type": "image", "source": uri, "x0": 0, "dx": 1, "y0": 0, "dy": 1, "hoverinfo": "skip"},
        {"type": "scatter", "x": np.round(xs.ravel(), 1).tolist(), "y": np.round(ys.ravel(), 1).tolist(),
         "mode": "markers", "hoverinfo": "skip", "showlegend": False, "marker": {"opacity": 0, "size": 6},
         "selected": {"marker": hidden}, "unselected": {"marker": hidden}},
    ]
    shapes = []
    if box is not None:
        x, y, bw, bh = (v / factor for v in box)
        shapes.append({"type": "rect", "x0": x, "y0": y, "x1": x + bw, "y1": y + bh,
                       "line": {"color": "#00e676", "width": 2}})
    layout = {
        "template": {}, "dragmode": "select", "height": min(820, max(360, int(h * 620 / max(w, 1)))),
        "margin": {"l": 0, "r": 0, "t": 0, "b": 0}, "shapes": shapes, "uirevision": uirevision,
        "xaxis": {"visible": False, "range": [0, w]}, "yaxis": {"visible": False, "range": [h, 0], "scaleanchor": "x"},
        "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "black",
    }
    return {"data": data, "layout": layout}


def drawn_box(event: Any, factor: float, shape: tuple[int, int]) -> list[float] | None:
    """The last box the reader dragged, in film pixels (clipped), or None."""
    boxes = (getattr(event, "selection", None) or {}).get("box") or []
    if not boxes:
        return None
    xs, ys = boxes[-1].get("x") or [], boxes[-1].get("y") or []
    if len(xs) < 2 or len(ys) < 2:
        return None
    x0, x1 = sorted(float(v) * factor for v in xs[:2])
    y0, y1 = sorted(float(v) * factor for v in ys[:2])
    x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(shape[1]), x1), min(float(shape[0]), y1)
    return None if x1 <= x0 or y1 <= y0 else [round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1)]


def film_with_box(session: ReviewSession, case: dict[str, Any], image: LoadedImage, saved: list[float] | None) -> list[float] | None:
    """Draw the film; return the box to save: the one drawn last in this session, else the saved one
    (None once the reader cleared it)."""
    uri, factor = film_uri(case["image_sha"], image)
    shape = (case["height"], case["width"])
    ask_box = "box" in session.questions
    nonces = st.session_state.setdefault(K.BOX_NONCE, {})
    drawn = st.session_state.setdefault(K.DRAWN, {})
    where = (session.id, case["id"])
    key = f"review_film_{session.id}_{case['id']}_{nonces.get(where, 0)}"
    new = drawn_box(st.session_state.get(key), factor, shape) if ask_box else None
    if new is not None:
        drawn[where] = new
    box = drawn.get(where, saved) if ask_box else None
    fig = film_figure(uri, shape, factor, box, uirevision=f"{session.id}:{case['id']}")
    if not ask_box:
        st.plotly_chart(fig, key=key, config={"displaylogo": False, "staticPlot": True})
        return None
    st.caption("Drag on the film to draw a box around what you see (optional).")
    st.plotly_chart(fig, key=key, on_select="rerun", selection_mode=("box",),
                    config={"displaylogo": False, "modeBarButtons": [["select2d"]], "scrollZoom": False})
    if box is not None:
        left, right = st.columns([3, 1])
        left.caption("Box: x {:.0f}, y {:.0f}, {:.0f} × {:.0f} px".format(*box))
        if right.button("Clear box", key=f"review_clear_box_{case['id']}"):
            drawn[where] = None
            nonces[where] = nonces.get(where, 0) + 1  # a new chart: its selection starts empty
            st.rerun()
    return box


# ---------------------------------------------------------------------------------------- reading
def _my_latest(store: ReviewStore, session: ReviewSession, reader: str) -> dict[str, dict[str, Any]]:
    return {r["case"]: r for r in store.export(session.id, reader=reader) if r["reader"] == reader}


def _go(session_id: str, position: int) -> None:
    """Button callback: runs before the script, so everything drawn in this run shows the new case."""
    st.session_state.setdefault(K.POSITION, {})[session_id] = position


def navigation(session: ReviewSession, ids: list[str], position: int, progress: dict[str, Any]) -> None:
    """Previous / Next (keyboard ← / →, Streamlit's own button shortcuts) / next unrated, and the progress."""
    prev_col, next_col, open_col, _ = st.columns([1, 1, 1.4, 3])
    prev_col.button("◀ Previous", key=PREV_KEY, disabled=position == 0, shortcut="Left",
                    on_click=_go, args=(session.id, position - 1))
    next_col.button("Next ▶", key=NEXT_KEY, disabled=position >= len(ids) - 1, shortcut="Right",
                    on_click=_go, args=(session.id, position + 1))
    open_col.button("Next unrated", key=NEXT_OPEN_KEY, disabled=progress["next"] is None,
                    on_click=_go, args=(session.id, progress["next"] or 0))
    st.progress(progress["done"] / max(progress["total"], 1),
                text=f"Case {position + 1} of {len(ids)} · you have rated {progress['done']} of {progress['total']}")


def _seconds(session: ReviewSession, case_id: str) -> float:
    opened = st.session_state.setdefault(K.OPENED, {})
    return round(time.monotonic() - opened.setdefault((session.id, case_id), time.monotonic()), 1)


def _save(store: ReviewStore, session: ReviewSession, case_id: str, reader: str, rating: dict[str, Any],
          advance_to: int | None) -> None:
    try:
        store.save_rating(session.id, case_id, reader, {**rating, "seconds": _seconds(session, case_id)})
    except ReviewError as exc:
        st.error(f"Not saved: {exc}")
        return
    st.session_state[K.FLASH] = "Saved."
    if advance_to is not None:
        st.session_state.setdefault(K.POSITION, {})[session.id] = advance_to
    st.rerun()


def read_inputs(session: ReviewSession, case_id: str, mine: dict[str, Any] | None) -> dict[str, Any]:
    """The reader's own read: diagnosis and confidence (as the session asks)."""
    out: dict[str, Any] = {}
    if "diagnosis" in session.questions:
        current = (mine or {}).get("diagnosis")
        out["diagnosis"] = st.radio("Your read", DIAGNOSES, format_func=DIAGNOSIS_LABELS.get, horizontal=True,
                                    index=DIAGNOSES.index(current) if current in DIAGNOSES else None,
                                    key=f"review_dx_{session.id}_{case_id}")
    if "confidence" in session.questions:
        current = (mine or {}).get("confidence")
        out["confidence"] = st.radio("Confidence", list(CONFIDENCE_LABELS), format_func=CONFIDENCE_LABELS.get,
                                     horizontal=True, index=current - 1 if current else None,
                                     key=f"review_conf_{session.id}_{case_id}")
    return out


def maps_panel(session: ReviewSession, case: dict[str, Any], image: LoadedImage, reader: str,
               model: ActiveModel) -> dict[str, str]:
    """The model's prediction and the maps (anonymised and shuffled when the session says so);
    returns ``{label: method}`` in the order shown."""
    store = review_store()
    result = explain(image, model, None, session.methods)
    store.save_prediction(case["image_sha"], session.model, result.predicted, result.probabilities)
    probabilities = ", ".join(f"{c} {p:.2f}" for c, p in result.probabilities.items())
    st.info(f"Model ({session.model}): **{DIAGNOSIS_LABELS.get(result.predicted, result.predicted)}** "
            f"({probabilities}).", icon=":material/smart_toy:")
    order = store.map_order(session.id, case["id"], reader)
    labels = map_letters(order) if session.anonymised else {method_label(m): m for m in order}
    view = screen_view(image, model, result, DisplaySettings())
    panels = [Panel(label, view.overlays[method]) for label, method in labels.items()]
    fig = panel_figure(panels, per_row=2, row_height=row_height_for(view.original.shape[:2], 2, 0.7),
                       uirevision=f"{session.id}:{case['id']}:maps", colorscale=plotly_colorscale())
    st.plotly_chart(fig, key="review_maps", config={"displaylogo": False})
    return labels


def plausibility_inputs(session: ReviewSession, case_id: str, labels: dict[str, str],
                        mine: dict[str, Any] | None) -> dict[str, int]:
    st.markdown("**How plausible is each map?** (5 = on the finding … 1 = artefact / outside the lungs)")
    given = (mine or {}).get("plausibility") or {}
    out = {}
    for i, (label, method) in enumerate(labels.items()):
        current = given.get(method)
        choice = st.radio(label, [5, 4, 3, 2, 1], format_func=lambda v: f"{v} {PLAUSIBILITY_LABELS[v]}",
                          horizontal=True, index=5 - current if current else None,
                          key=f"review_pl_{session.id}_{case_id}_{i}")
        if choice is not None:
            out[method] = int(choice)
    return out


def reading_view(session: ReviewSession, reader: str) -> None:
    store = review_store()
    ids = store.cases(session.id)
    progress = store.progress(session.id, reader)
    positions = st.session_state.setdefault(K.POSITION, {})
    position = positions.setdefault(session.id, progress["next"] if progress["next"] is not None else 0)
    position = positions[session.id] = min(max(int(position), 0), len(ids) - 1)
    navigation(session, ids, position, progress)
    if message := st.session_state.pop(K.FLASH, None):
        st.toast(message)
    case = store.case_info(session.id, ids[position])
    mine = _my_latest(store, session, reader).get(case["id"])
    image = case_image(session.id, case["id"], case["image_sha"])
    _seconds(session, case["id"])  # starts this case's clock
    if session.patient_details and case["label"]:
        st.caption(f"File: {case['label']}")
    read_recorded = mine is not None and (mine.get("diagnosis") is not None or "diagnosis" not in session.questions)
    blinded_step = session.blinded and not read_recorded and {"diagnosis", "confidence"} & set(session.questions)
    next_position = position + 1 if position + 1 < len(ids) else None
    if session.closed:
        st.warning("This session is closed: answers can no longer be changed.")

    film_col, side_col = st.columns([1, 1])
    with film_col:
        box = film_with_box(session, case, image, (mine or {}).get("box"))
    with side_col:
        if blinded_step:
            st.markdown("**Your read first** — the model's output and the maps appear once it is recorded.")
            read = read_inputs(session, case["id"], mine)
            if st.button("Record my read", key="review_record", type="primary", disabled=session.closed):
                _save(store, session, case["id"], reader, {**read, "box": box}, advance_to=None)
            return
        if session.blinded and mine is not None and mine.get("diagnosis"):
            st.markdown(f"Your read: **{DIAGNOSIS_LABELS[mine['diagnosis']]}**"
                        + (f", confidence {mine['confidence']}" if mine.get("confidence") else "")
                        + " (recorded before the model's output was shown).")
            read = {k: mine.get(k) for k in ("diagnosis", "confidence") if k in session.questions}
        else:
            read = read_inputs(session, case["id"], mine)
        try:
            model = session_model(session)
        except Exception as exc:  # noqa: BLE001 - a missing bundle: say so, keep the page
            st.error(f"The session's model {session.model!r} could not be loaded: {exc}")
            return
        labels = maps_panel(session, case, image, reader, model)
    rating: dict[str, Any] = {**read}
    if "plausibility" in session.questions:
        rating["plausibility"] = plausibility_inputs(session, case["id"], labels, mine)
    if "note" in session.questions:
        rating["note"] = st.text_area("Note (optional)", value=(mine or {}).get("note") or "",
                                      key=f"review_note_{session.id}_{case['id']}", max_chars=10_000)
    if "box" in session.questions:
        rating["box"] = box
    if st.button("Save and next" if next_position is not None else "Save", key="review_save", type="primary",
                 disabled=session.closed):
        _save(store, session, case["id"], reader, rating, advance_to=next_position)


# ------------------------------------------------------------------------------------------ results
def box_scores(session: ReviewSession, rows: list[dict[str, Any]], model: ActiveModel) -> list[dict[str, Any]]:
    """Each box against each map (computed with the engine; remembered for these ratings)."""
    from xai.review.stats import box_agreement

    store = review_store()
    boxed = [r for r in rows if r.get("box")]
    key = (session.id, tuple(r["rating_id"] for r in boxed))
    cache = st.session_state.setdefault(K.BOX_SCORES, {})
    if key not in cache:
        out = []
        with st.spinner(f"Running the model on {len({r['case'] for r in boxed})} film(s)…"):
            for r in boxed:
                info = store.case_info(session.id, r["case"])
                result = explain(case_image(session.id, r["case"], info["image_sha"]), model, None, session.methods)
                store.save_prediction(info["image_sha"], session.model, result.predicted, result.probabilities)
                for method, scores in box_agreement(result.maps, r["box"]).items():
                    out.append({"case": r["case"], "reader": r["reader"], "method": method, **scores})
        cache[key] = out
    return cache[key]


def plausibility_figure(summary: dict[str, Any]) -> go.Figure:
    methods = [m for m, s in summary["methods"].items() if s["mean"] is not None]
    stats = [summary["methods"][m] for m in methods]
    fig = go.Figure(go.Bar(
        x=[method_label(m) for m in methods], y=[s["mean"] for s in stats], marker_color="#4c9be8",
        error_y={"type": "data", "array": [s["ci_high"] - s["mean"] for s in stats],
                 "arrayminus": [s["mean"] - s["ci_low"] for s in stats]},
        text=[f"{s['mean']:.2f}" for s in stats], textposition="outside",
        hovertemplate="%{x}: mean %{y:.2f}<extra></extra>",
    ))
    fig.update_layout(height=340, margin={"l": 8, "r": 8, "t": 30, "b": 8},
                      yaxis={"range": [0, 5.5], "title": "plausibility (5 = on the finding)"},
                      title="Mean plausibility per method, 95% bootstrap CI over cases")
    return fig


def results_view(session: ReviewSession) -> None:
    from xai.review.report import ratings_csv, report_html
    from xai.review.stats import session_summary

    store = review_store()
    rows = store.export(session.id)
    if not rows:
        st.info("No ratings yet.")
        return
    scores: list[dict[str, Any]] = []
    if any(r.get("box") for r in rows) and st.toggle(
            "Score the readers' boxes against the maps (runs the model on the boxed films)",
            key=f"review_score_boxes_{session.id}"):
        scores = box_scores(session, rows, session_model(session))
    predictions = store.predictions(session.id, session.model)
    summary = session_summary(rows, session.methods, predictions=predictions, box_scores=scores)
    fmt = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    a, b, c = st.columns(3)
    a.metric("Readers", len(summary["readers"]))
    b.metric("Fleiss' kappa (read)", fmt(summary["fleiss_kappa"], 3),
             help=f"{summary['fleiss_cases']} case(s) read by every reader")
    c.metric("Krippendorff's α (plausibility)", fmt(summary["alpha_all"], 3), help="ordinal, all maps together")
    st.plotly_chart(plausibility_figure(summary), key="review_plausibility_chart")
    st.markdown("**Per method**")
    st.dataframe([{"method": method_label(m), "mean": s["mean"], "CI low": s["ci_low"], "CI high": s["ci_high"],
                   "cases": s["n_cases"], "Krippendorff α": s["alpha"],
                   **{f"box {k}": summary["boxes"][m][k] for k in ("hit", "energy_inside", "iou_otsu")}}
                  for m, s in summary["methods"].items()], hide_index=True)
    st.markdown("**Reader vs model** (uncertain reads left out)")
    st.dataframe([{"reader": r, **v} for r, v in summary["reader_vs_model"].items()], hide_index=True)
    st.markdown("**Ratings** (latest per case and reader)")
    st.dataframe([{k: v for k, v in r.items() if k not in ("map_order", "rating_id")} for r in rows], hide_index=True)
    safe = "".join(ch if ch.isalnum() else "-" for ch in session.name)[:60] or "session"
    d1, d2 = st.columns(2)
    d1.download_button("Ratings (CSV)", ratings_csv(rows, session.methods, predictions), f"review-{safe}.csv",
                       "text/csv", key="review_csv")
    d2.download_button("Session report (HTML)", report_html(session, summary, rows), f"review-{safe}.html",
                       "text/html", key="review_html")


# ----------------------------------------------------------------------------------------- creating
def create_form(reader: str) -> None:
    from xai.batch.archive import ArchiveError
    from xai.batch.inputs import items_from_uploads
    from xai.method_names import METHODS, listed_methods
    from xai.sandboxed_decoder import load_radiograph_isolated

    with st.expander("Create a session", expanded=not review_store().sessions()):
        name = st.text_input("Session name", key="review_new_name", max_chars=200)
        uploads = st.file_uploader("Films (images or a zip)", accept_multiple_files=True, key="review_new_files")
        samples = list_samples()
        chosen = st.multiselect("…and/or bundled samples", list(samples), key="review_new_samples")
        methods = st.multiselect("Methods", listed_methods(), default=list(METHODS), format_func=method_label,
                                 key="review_new_methods")
        questions = st.multiselect("Questions", list(QUESTIONS), default=list(QUESTIONS), key="review_new_questions")
        c1, c2, c3 = st.columns(3)
        blinded = c1.checkbox("Blinded read", value=True, key="review_new_blinded",
                              help="The model's output stays hidden until the reader has recorded a read.")
        anonymised = c2.checkbox("Anonymised maps", value=True, key="review_new_anonymised",
                                 help="Maps shown as Map A–D in an order shuffled per case and reader.")
        details = c3.checkbox("Keep file names", value=False, key="review_new_details",
                              help="Off: no file name is stored (only de-identified pixels).")
        if not st.button("Create session", key="review_create", type="primary"):
            return
        try:
            items = items_from_uploads([(u.name, u.getvalue()) for u in uploads or []])
            bad = [i for i in items if i.error]
            if bad:
                raise ReviewError(f"{bad[0].name}: {bad[0].error}")
            files: list[Any] = [(i.name, i.source) for i in items]
            files += [str(SAMPLES_DIR / Path(samples[t]).name) for t in chosen]
            with st.spinner(f"Storing {len(files)} film(s)…"):
                sid = review_store().create_session(
                    name, files, model=DEFAULT_MODEL, methods=methods, questions=questions, blinded=blinded,
                    anonymised=anonymised, owner=reader, patient_details=details, loader=load_radiograph_isolated,
                )
        except (ReviewError, ArchiveError) as exc:
            st.error(f"The session was not created: {exc}")
            return
        st.session_state[K.SESSION] = review_store().session(sid).name
        st.rerun()


# --------------------------------------------------------------------------------------------- page
def main() -> None:
    ensure_routed()
    st.title("Review sessions")
    try:
        store = review_store()
    except ReviewError as exc:
        st.error(f"The review database could not be opened: {exc}")
        st.stop()
    reader = reader_identity()
    if reader is None:
        st.info("Type your name (or sign in) to read or create a session.")
        st.stop()
    create_form(reader)
    sessions = {s.name: s for s in store.sessions()}
    if not sessions:
        st.info("No session yet: create one above, or from a folder with `python -m xai review create NAME DIR`.")
        return
    wanted = st.query_params.get("session")
    if wanted in sessions and K.SESSION not in st.session_state:
        st.session_state[K.SESSION] = wanted
    name = st.selectbox("Session", list(sessions), key=K.SESSION, format_func=lambda n: (
        f"{n} — {sessions[n].n_cases} cases, {'closed' if sessions[n].closed else 'open'}, owner {sessions[n].owner}"))
    st.query_params["session"] = name
    session = sessions[name]
    is_owner = reader == session.owner
    tabs = ["Read"] + (["Results"] if is_owner or session.closed else [])
    chosen = st.segmented_control("View", tabs, default="Read", key=f"review_view_{session.id}",
                                  label_visibility="collapsed") or "Read"
    if chosen == "Results":
        results_view(session)
        if is_owner and not session.closed and st.button("Close the session", key="review_close",
                                                         help="No more answers; every reader then sees the results."):
            store.close_session(session.id, by=reader)
            st.rerun()
    else:
        if not session.closed and not is_owner:
            st.caption(f"You see only your own answers until {session.owner} closes the session.")
        reading_view(session, reader)


main()
