"""Review page (``/review``): radiologists read a worklist, judge each map, draw what they see.

A session (created here from uploads, a zip or the bundled samples, or with ``python -m xai review create
NAME DIR``) lives in the review database (:class:`xai.review.ReviewStore`). A reader (``st.user`` when
signed in with OIDC, else the name typed here) works through the cases with Previous / Next (keys ← / →):

1. blinded sessions first show the film alone (large, zoomable, with window level and width): the reader
   records their read (COVID-19 / not / uncertain, confidence 1-5) and may draw a box around what they see;
2. then the model's prediction and the maps appear, anonymised as "Map A-D" in an order shuffled per
   case and reader (:func:`xai.review.method_order`); the reader rates each map's plausibility 1-5 and
   may add a note. Every save is kept (append-only); the latest counts.

Ratings are never lost silently. They used to be separate widgets, each click a rerun of the whole page:
a click landing while the page was still busy (the first case, whose maps were being computed and laid
out after "Record my read") could be dropped, and Save then stored what had arrived with no word. Now the
read, the ratings and the note are one form, sent together with Save and saved in one transaction
(:meth:`xai.review.ReviewStore.save_case`), then read back: the reader is told what was stored, asked
before a save that leaves maps unrated, and told if anything was not stored.

Progress is stored, so a reader resumes where they stopped, after a reload (the name is kept in the
address, ``?reader=``) or a server restart; a case counts as done once the read and every map's rating
are stored. Readers see only their own answers, before and after the session closes. The owner proves
ownership with the secret shown once at creation (or the password set then; only a salted scrypt hash
is stored), or by the OIDC sign-in where one is configured, and sees the results (agreement,
plausibility with bootstrap CIs, reader vs model, reader accuracy against reference diagnoses, boxes vs
maps) with a CSV and an HTML report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages._access import ensure_routed, oidc_provider
from pages._display import light_theme
from pages._explanations import explain, screen_view
from pages._ingest import SAMPLES_DIR, LoadedImage, list_samples
from pages._methods import method_label
from pages._models import DEFAULT_MODEL, ActiveModel, default_model, wrap_model
from pages._pacs import accessions_input, films_for_accessions
from pages._panel import Panel, panel_figure, row_height_for, screen_image_uri
from xai.render import DisplaySettings, downsample_for_display, gray_to_rgb, plotly_colorscale
from xai.review import DIAGNOSES, QUESTIONS, ReviewError, ReviewSession, ReviewStore, default_url, map_letters
from xai.review.errors import MissingRatings
from xai.review.owner_secret import new_owner_secret
from xai.review.questions import PLAUSIBILITY_LABELS, REFERENCE_DIAGNOSES, read_labels_csv

#: Longest side of the film on screen (px); boxes are stored in the film's own pixels.
FILM_SIDE = 1024
#: Widest the film is drawn (px), whatever the screen: the maps below are each at least half of it.
FILM_MAX_WIDTH = 960
#: Spacing of the invisible points under the film that make plotly report a box selection.
SELECT_GRID = 24
DIAGNOSIS_LABELS = {"covid19": "COVID-19", "non_covid": "Not COVID-19", "uncertain": "Uncertain"}
CONFIDENCE_LABELS = {1: "1 – very unsure", 2: "2", 3: "3", 4: "4", 5: "5 – certain"}
NEXT_KEY, PREV_KEY, NEXT_OPEN_KEY = "review_next", "review_prev", "review_next_open"
#: Seconds a wrong owner secret waits before the answer (slows scripted guessing; this session only).
WRONG_SECRET_DELAY_S = 1.0


class K:
    """This page's ``st.session_state`` keys (widget keys are built next to their widgets)."""

    READER = "review_reader_name"
    SESSION = "review_session_choice"
    POSITION = "_review_position"  # {session id: index of the case on screen}
    OPENED = "_review_opened"  # {(session id, case id): monotonic time the case was first shown}
    BOX_NONCE = "_review_box_nonce"  # {(session id, case id): int}: a new value starts a fresh chart
    DRAWN = "_review_drawn"  # {(session id, case id): box drawn in this session, None once cleared}
    BOX_SCORES = "_review_box_scores"  # {(session id, rating ids): box agreement rows}
    FLASH = "_review_flash"  # (kind, text): a message to show after the rerun that follows a save
    CONFIRM = "_review_confirm"  # {(session id, case id): the answer waiting for "save without them"}
    OWNER_OK = "_review_owner_ok"  # session ids whose owner secret was given in this browser session
    NEW_SECRET = "_review_new_secret"  # (session name, secret) shown once after creation


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


@st.cache_resource(max_entries=32, ttl=3600, show_spinner=False)
def film_uri(image_sha: str, window: tuple[float, float], _image: LoadedImage) -> tuple[str, float]:
    """The film shrunk for the screen through the reader's window (centre, width on the display scale
    0-1) as a JPEG data URI, and the film-pixels-per-screen-pixel factor."""
    from xai.radiograph import apply_window  # windowing has one home

    small = downsample_for_display(_image.radiograph.pixels, FILM_SIDE)
    if window != (0.5, 1.0):
        small = apply_window(small, window[0], window[1], function="LINEAR_EXACT")
    return screen_image_uri(gray_to_rgb(small)), _image.radiograph.shape[1] / small.shape[1]



# ------------------------------------------------------------------------------------------ identity
def sign_in_configured() -> bool:
    """OIDC sign-in gives each person an identity; a shared password does not (anyone may type a name)."""
    return oidc_provider() is not None


def reader_identity() -> str | None:
    """The signed-in user (OIDC) or the name typed here — kept in the address (``?reader=``) so a reload
    of this browser tab resumes; None until there is one."""
    user = st.user
    if user.get("is_logged_in", False):
        return str(user.get("email") or user.get("name") or user.get("sub"))
    if K.READER not in st.session_state and st.query_params.get("reader"):
        st.session_state[K.READER] = str(st.query_params["reader"])[:200]
    name = st.text_input("Your name as a reader", key=K.READER, max_chars=200,
                         help="Your answers are stored under this name; type the same name to resume.").strip()
    if name:
        st.query_params["reader"] = name
    elif "reader" in st.query_params:
        del st.query_params["reader"]
    return name or None


def owner_verified(session: ReviewSession, reader: str) -> bool:
    """Signed in (OIDC): the identity is the owner's. Otherwise: the owner's secret was given in this
    browser session (typing the owner's name proves nothing)."""
    if sign_in_configured():
        return reader == session.owner
    return session.id in st.session_state.setdefault(K.OWNER_OK, set())


def owner_unlock(session: ReviewSession) -> None:
    """The owner's secret, checked against its stored scrypt hash."""
    if not session.has_owner_secret:
        st.info("This session was created without an owner secret: its answers can be exported with "
                "`python -m xai review export` on the server.")
        return
    with st.form(f"review_owner_form_{session.id}"):
        secret = st.text_input("Owner's secret (shown when the session was created)", type="password",
                               key=f"review_owner_secret_{session.id}")
        unlock = st.form_submit_button("Open the results", key="review_owner_unlock")
    if unlock:
        if review_store().verify_owner(session.id, secret or ""):
            st.session_state.setdefault(K.OWNER_OK, set()).add(session.id)
            st.rerun()
        time.sleep(WRONG_SECRET_DELAY_S)
        st.error("That is not this session's owner secret.")


def new_secret_notice() -> None:
    """The owner secret of the session just created, until the owner says it is kept."""
    shown = st.session_state.get(K.NEW_SECRET)
    if not shown:
        return
    name, secret = shown
    st.warning(f"Owner secret of “{name}” — shown only now. Keep it: it opens the session's results and "
               "closes it (only a salted hash is stored; it cannot be recovered).", icon=":material/key:")
    st.code(secret, language=None)
    if st.button("I have kept it", key="review_secret_done"):
        st.session_state.pop(K.NEW_SECRET, None)
        st.rerun()


# -------------------------------------------------------------------------------------------- films
def film_figure(uri: str, shape: tuple[int, int], factor: float, box: list[float] | None, uirevision: str,
                select: bool) -> dict:
    """The film, zoomable (wheel, zoom and pan buttons); with ``select`` a box-select drag mode, ``box``
    (film pixels) drawn as a rectangle.

    Written as a plain figure dict (no plotly validation): it is built on every case change. Invisible
    points under the film make plotly report the dragged box (an image trace alone is not selectable).
    """
    h, w = round(shape[0] / factor), round(shape[1] / factor)
    step = max(1.0, max(h, w) / SELECT_GRID)
    ys, xs = np.mgrid[step / 2 : h : step, step / 2 : w : step]
    hidden = {"opacity": 0}
    data = [{"type": "image", "source": uri, "x0": 0, "dx": 1, "y0": 0, "dy": 1, "hoverinfo": "skip"}]
    if select:
        data.append({"type": "scatter", "x": np.round(xs.ravel(), 1).tolist(), "y": np.round(ys.ravel(), 1).tolist(),
                     "mode": "markers", "hoverinfo": "skip", "showlegend": False, "marker": {"opacity": 0, "size": 6},
                     "selected": {"marker": hidden}, "unselected": {"marker": hidden}})
    shapes = []
    if box is not None:
        x, y, bw, bh = (v / factor for v in box)
        shapes.append({"type": "rect", "x0": x, "y0": y, "x1": x + bw, "y1": y + bh,
                       "line": {"color": "#00e676", "width": 2}})
    layout = {
        "template": {}, "dragmode": "select" if select else "zoom",
        # at most ~960 px wide and 90% of the main width: each map (half the width, less its colour bar)
        # stays at least half the film's size on screen
        "height": int(np.clip(FILM_MAX_WIDTH * h / max(w, 1), 420, 900)),
        "margin": {"l": 0, "r": 0, "t": 0, "b": 0}, "shapes": shapes, "uirevision": uirevision,
        "xaxis": {"visible": False, "range": [0, w], "domain": [0.05, 0.95]}, "yaxis": {"visible": False, "range": [h, 0], "scaleanchor": "x"},
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


def _reset_window(session_id: str) -> None:
    st.session_state[f"review_wl_{session_id}"] = 50
    st.session_state[f"review_ww_{session_id}"] = 100


def window_controls(session: ReviewSession) -> tuple[float, float]:
    """Window level and width on the display scale (percent of the film's grey range), per session."""
    level_col, width_col, reset_col = st.columns([2, 2, 1], vertical_alignment="bottom")
    level = level_col.slider("Window level (%)", 0, 100, 50, key=f"review_wl_{session.id}",
                             help="The grey level at the middle of the window: lower shows denser areas.")
    width = width_col.slider("Window width (%)", 5, 100, 100, key=f"review_ww_{session.id}",
                             help="The grey range spread over black to white: narrower is more contrast.")
    reset_col.button("Reset window", key="review_window_reset", on_click=_reset_window, args=(session.id,))
    return level / 100.0, width / 100.0


def film_with_box(session: ReviewSession, case: dict[str, Any], image: LoadedImage, saved: list[float] | None) -> list[float] | None:
    """Draw the film large, zoomable and windowable; return the box to save: the one drawn last in this
    session, else the saved one (None once the reader cleared it)."""
    window = window_controls(session)
    uri, factor = film_uri(case["image_sha"], window, image)
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
    fig = film_figure(uri, shape, factor, box, uirevision=f"{session.id}:{case['id']}", select=ask_box)
    zoom_buttons = ["zoom2d", "pan2d", "zoomIn2d", "zoomOut2d", "resetScale2d"]
    if not ask_box:
        st.plotly_chart(fig, key=key, theme=None, config={"displaylogo": False, "scrollZoom": True,
                                                          "modeBarButtons": [zoom_buttons]})
        return None
    st.caption("Drag on the film to draw a box around what you see (optional). Zoom with the wheel or the "
               "buttons at the top right; the box tool is the dashed square.")
    st.plotly_chart(fig, key=key, on_select="rerun", selection_mode=("box",), theme=None,
                    config={"displaylogo": False, "modeBarButtons": [["select2d", *zoom_buttons]], "scrollZoom": True})
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
    return {r["case"]: r for r in store.export(session.id, reader=reader)}


def _go(session_id: str, position: int) -> None:
    """Button callback: runs before the script, so everything drawn in this run shows the new case."""
    st.session_state.setdefault(K.POSITION, {})[session_id] = position


def navigation(session: ReviewSession, ids: list[str], position: int, progress: dict[str, Any]) -> None:
    """Previous / Next (keyboard ← / →, Streamlit's own button shortcuts) / next to finish, and the progress."""
    prev_col, next_col, open_col, _ = st.columns([1, 1, 1.4, 3])
    prev_col.button("◀ Previous", key=PREV_KEY, disabled=position == 0, shortcut="Left",
                    on_click=_go, args=(session.id, position - 1))
    next_col.button("Next ▶", key=NEXT_KEY, disabled=position >= len(ids) - 1, shortcut="Right",
                    on_click=_go, args=(session.id, position + 1))
    open_col.button("Next to finish", key=NEXT_OPEN_KEY, disabled=progress["next"] is None,
                    on_click=_go, args=(session.id, progress["next"] or 0))
    st.progress(progress["done"] / max(progress["total"], 1),
                text=f"Case {position + 1} of {len(ids)} · you have completed {progress['done']} of "
                     f"{progress['total']} (your read and every map's rating stored)")


def _seconds(session: ReviewSession, case_id: str) -> float:
    opened = st.session_state.setdefault(K.OPENED, {})
    return round(time.monotonic() - opened.setdefault((session.id, case_id), time.monotonic()), 1)


def _map_names(labels: dict[str, str], methods: list[str] | tuple[str, ...]) -> str:
    """The names the reader saw for ``methods`` ("Map B, Map D")."""
    shown = {method: label for label, method in labels.items()}
    return ", ".join(sorted(shown.get(m, m) for m in methods))


def not_stored(rating: dict[str, Any], row: dict[str, Any] | None) -> list[str]:
    """The answers in ``rating`` that the stored ``row`` does not hold (read back after the save)."""
    if row is None:
        return ["everything"]
    out = [k for k in ("diagnosis", "confidence") if rating.get(k) is not None and row.get(k) != rating[k]]
    if (rating.get("note") or "") != (row.get("note") or ""):
        out.append("note")
    if rating.get("box") is not None and row.get("box") is None:
        out.append("box")
    stored = row.get("plausibility") or {}
    out += [m for m, v in (rating.get("plausibility") or {}).items() if stored.get(m) != v]
    return out


def reference_line(case: dict[str, Any], diagnosis: str | None) -> str | None:
    """The teaching reveal, once the reader's read is stored and the case has a reference."""
    if not case.get("reference") or not diagnosis:
        return None
    verdict = "agrees" if diagnosis == case["reference"] else "differs"
    return (f"Reference diagnosis: **{DIAGNOSIS_LABELS[case['reference']]}** · your read: "
            f"{DIAGNOSIS_LABELS[diagnosis]} ({verdict}).")


def save_answer(store: ReviewStore, session: ReviewSession, case: dict[str, Any], reader: str, rating: dict[str, Any],
                labels: dict[str, str], *, allow_missing: bool, advance_to: int | None) -> None:
    """Save the whole answer in one transaction, read it back, and say exactly what was stored.

    Unrated maps (without ``allow_missing``) are not saved: the reader is asked first."""
    where = (session.id, case["id"])
    try:
        saved = store.save_case(session.id, case["id"], reader, {**rating, "seconds": _seconds(session, case["id"])},
                                allow_missing=allow_missing)
    except MissingRatings as missing:
        st.session_state.setdefault(K.CONFIRM, {})[where] = (rating, missing.methods)
        return
    except ReviewError as exc:
        st.error(f"Not saved: {exc}")
        return
    st.session_state.setdefault(K.CONFIRM, {}).pop(where, None)
    row = _my_latest(store, session, reader).get(case["id"])
    lost = not_stored(rating, row)
    if lost:
        st.session_state[K.FLASH] = ("error", f"Case {case['position'] + 1}: NOT stored: {', '.join(lost)}. "
                                              "Please answer them again.")
        st.rerun()
    unrated = [m for m in saved.missing if m in session.methods]
    text = f"Case {case['position'] + 1} saved: "
    text += "your read" if rating.get("diagnosis") else "your answer"
    if "plausibility" in session.questions and labels:
        text += f" and {len(saved.stored)} of {len(session.methods)} map ratings"
        if unrated:
            text += f" (not rated: {_map_names(labels, unrated)})"
    text += "."
    if advance_to is not None and (reveal := reference_line(case, (row or {}).get("diagnosis"))):
        text += " " + reveal
    st.session_state[K.FLASH] = ("success", text)
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
    """The model's prediction and the maps (anonymised and shuffled when the session says so), each map
    half the main width (at least half the film's size), titles and colour bar in the theme's text
    colour; returns ``{label: method}`` in the order shown."""
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
    fig = panel_figure(panels, per_row=2, row_height=row_height_for(view.original.shape[:2], 2),
                       uirevision=f"{session.id}:{case['id']}:maps", colorscale=plotly_colorscale(),
                       light=light_theme())
    st.plotly_chart(fig, key="review_maps", theme=None, config={"displaylogo": False, "scrollZoom": True})
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


def confirm_missing(store: ReviewStore, session: ReviewSession, case: dict[str, Any], reader: str,
                    labels: dict[str, str], next_position: int | None) -> None:
    """Ask before saving an answer that leaves maps unrated (set by :func:`save_answer`)."""
    pending = st.session_state.get(K.CONFIRM, {}).get((session.id, case["id"]))
    if pending is None:
        return
    rating, unrated = pending
    st.warning(f"Nothing saved yet: no rating for {_map_names(labels, unrated)}. Rate them and press Save "
               "again, or save without them (the case then stays unfinished in your progress).",
               icon=":material/rule:")
    if st.button("Save without them", key="review_confirm_save"):
        save_answer(store, session, case, reader, rating, labels, allow_missing=True, advance_to=next_position)


def owner_reference(store: ReviewStore, session: ReviewSession, case: dict[str, Any]) -> None:
    """The owner sets the case's reference diagnosis (teaching), shown to readers after their read."""
    options = [None, *REFERENCE_DIAGNOSES]

    def _set(key: str = f"review_ref_{session.id}_{case['id']}") -> None:
        store.set_reference(session.id, case["id"], st.session_state[key])

    with st.expander("Reference diagnosis (owner; shown to each reader after their read)"):
        st.selectbox("Reference diagnosis", options, index=options.index(case.get("reference")),
                     format_func=lambda d: "none" if d is None else DIAGNOSIS_LABELS[d],
                     key=f"review_ref_{session.id}_{case['id']}", on_change=_set)


def reading_view(session: ReviewSession, reader: str, is_owner: bool) -> None:
    store = review_store()
    ids = store.cases(session.id)
    progress = store.progress(session.id, reader)
    positions = st.session_state.setdefault(K.POSITION, {})
    position = positions.setdefault(session.id, progress["next"] if progress["next"] is not None else 0)
    position = positions[session.id] = min(max(int(position), 0), len(ids) - 1)
    navigation(session, ids, position, progress)
    if flash := st.session_state.pop(K.FLASH, None):
        (st.error if flash[0] == "error" else st.success)(flash[1])
    case = store.case_info(session.id, ids[position])
    pending = st.session_state.setdefault(K.CONFIRM, {})
    for other in [k for k in pending if k != (session.id, case["id"])]:
        del pending[other]  # a question about a case no longer on screen is not asked later
    mine = _my_latest(store, session, reader).get(case["id"])
    image = case_image(session.id, case["id"], case["image_sha"])
    _seconds(session, case["id"])  # starts this case's clock
    if session.patient_details and case["label"]:
        st.caption(f"File: {case['label']}")
    if is_owner:
        owner_reference(store, session, case)
    read_recorded = mine is not None and (mine.get("diagnosis") is not None or "diagnosis" not in session.questions)
    blinded_step = session.blinded and not read_recorded and {"diagnosis", "confidence"} & set(session.questions)
    next_position = position + 1 if position + 1 < len(ids) else None
    if session.closed:
        st.warning("This session is closed: answers can no longer be changed.")

    box = film_with_box(session, case, image, (mine or {}).get("box"))
    if blinded_step:
        st.markdown("**Your read first** — the model's output and the maps appear once it is recorded.")
        # A form: the choices travel to the server together, with the button, in one message.
        with st.form(f"review_read_form_{session.id}_{case['id']}"):
            read = read_inputs(session, case["id"], mine)
            record = st.form_submit_button("Record my read", key="review_record", type="primary",
                                           disabled=session.closed)
        if record:
            absent = [q for q in ("diagnosis", "confidence") if q in session.questions and read.get(q) is None]
            if absent:
                st.warning(f"Choose your {' and '.join(absent)} first; nothing was saved.")
            else:
                save_answer(store, session, case, reader, {**read, "box": box}, {}, allow_missing=True,
                            advance_to=None)
        return
    if session.blinded and mine is not None and mine.get("diagnosis"):
        st.markdown(f"Your read: **{DIAGNOSIS_LABELS[mine['diagnosis']]}**"
                    + (f", confidence {mine['confidence']}" if mine.get("confidence") else "")
                    + " (recorded before the model's output was shown).")
    if mine is not None and (reveal := reference_line(case, mine.get("diagnosis"))):
        st.info(reveal, icon=":material/school:")
    try:
        model = session_model(session)
    except Exception as exc:  # noqa: BLE001 - a missing bundle: say so, keep the page
        st.error(f"The session's model {session.model!r} could not be loaded: {exc}")
        return
    labels = maps_panel(session, case, image, reader, model)
    # One form for the whole answer: clicking a rating reruns nothing (no page re-layout can drop it), and
    # the read, every rating and the note reach the server together with Save, then go in one transaction.
    with st.form(f"review_form_{session.id}_{case['id']}"):
        if session.blinded and mine is not None and mine.get("diagnosis"):
            rating: dict[str, Any] = {k: mine.get(k) for k in ("diagnosis", "confidence") if k in session.questions}
        else:
            rating = read_inputs(session, case["id"], mine)
        if "plausibility" in session.questions:
            rating["plausibility"] = plausibility_inputs(session, case["id"], labels, mine)
        if "note" in session.questions:
            rating["note"] = st.text_area("Note (optional)", value=(mine or {}).get("note") or "",
                                          key=f"review_note_{session.id}_{case['id']}", max_chars=10_000)
        save = st.form_submit_button("Save and next" if next_position is not None else "Save", key="review_save",
                                     type="primary", disabled=session.closed)
    if "box" in session.questions:
        rating["box"] = box
    if save:
        save_answer(store, session, case, reader, rating, labels, allow_missing=False, advance_to=next_position)
    confirm_missing(store, session, case, reader, labels, next_position)


# ------------------------------------------------------------------------------------------ results
def box_scores(session: ReviewSession, rows: list[dict[str, Any]], model: ActiveModel) -> list[dict[str, Any]]:
    """Each box against each map (computed with the engine; remembered for these ratings), with the box's main
    anatomical region and each map's largest regions (the film's cached readout)."""
    from pages._explanations import ResultKey
    from pages._lungs import film_anatomy, readouts
    from xai.review.stats import MAP_TOP_ZONES, box_agreement, box_regions

    store = review_store()
    boxed = [r for r in rows if r.get("box")]
    key = (session.id, tuple(r["rating_id"] for r in boxed))
    cache = st.session_state.setdefault(K.BOX_SCORES, {})
    if key not in cache:
        out = []
        with st.spinner(f"Running the model on {len({r['case'] for r in boxed})} film(s)…"):
            for r in boxed:
                info = store.case_info(session.id, r["case"])
                image = case_image(session.id, r["case"], info["image_sha"])
                result = explain(image, model, None, session.methods)
                store.save_prediction(info["image_sha"], session.model, result.predicted, result.probabilities)
                regions = film_anatomy(image.sha256, image.radiograph)
                found = not isinstance(regions, str) and regions.found
                zone, tops = "", {}
                if found:
                    covered = box_regions(r["box"], image.radiograph.shape, regions)
                    zone = max(covered, key=covered.__getitem__)
                    tops = {m: sorted(ro.shares, key=ro.shares.__getitem__, reverse=True)[:MAP_TOP_ZONES]
                            for m, ro in readouts(ResultKey.of(image, model, result), result.maps, regions).items()}
                for method, scores in box_agreement(result.maps, r["box"]).items():
                    out.append({"case": r["case"], "reader": r["reader"], "method": method, **scores,
                                "reader_zone": zone, "map_zones": tops.get(method, [])})
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


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def human_time(iso: str | None) -> str:
    """An ISO 8601 UTC time as "7 Dec 2026, 14:03 UTC" ("–" for none)."""
    from datetime import datetime

    if not iso:
        return "–"
    moment = datetime.fromisoformat(iso)
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


def method_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per method, for people: rounded means and intervals, plain column names."""
    out = []
    for m, s in summary["methods"].items():
        b = summary["boxes"][m]
        ci = "–" if s["ci_low"] is None else f"{s['ci_low']:.2f} – {s['ci_high']:.2f}"
        out.append({"Method": method_label(m), "Mean plausibility (1–5)": _round(s["mean"]), "95% CI": ci,
                    "Cases": s["n_cases"], "Krippendorff's α": _round(s["alpha"]),
                    "Box hit rate": _round(b["hit"]), "Map energy in box": _round(b["energy_inside"]),
                    "Box IoU (Otsu)": _round(b["iou_otsu"])})
    return out


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def reader_tables(summary: dict[str, Any], readers: list[str] | None) -> None:
    """Reader vs model and, where references exist, reader accuracy (``readers``: only these; None: all)."""
    keep = (lambda r: True) if readers is None else (lambda r: r in readers)  # noqa: E731
    st.markdown("**Reader vs model** (uncertain reads left out)")
    st.dataframe([{"Reader": r, "Cases compared": int(v["n"] or 0), "Agreement with the model": _percent(v["agreement"]),
                   "Cohen's κ": _round(v["kappa"]), "Uncertain reads": int(v["uncertain"] or 0)}
                  for r, v in summary["reader_vs_model"].items() if keep(r)], hide_index=True)
    accuracy = {r: v for r, v in summary.get("reader_accuracy", {}).items() if keep(r)}
    if accuracy:
        st.markdown("**Readers against the reference diagnosis** (uncertain reads left out)")
        st.dataframe([{"Reader": r, "Decided reads": int(v["n"] or 0), "Correct": int(v["correct"] or 0),
                       "Accuracy": _percent(v["accuracy"]),
                       "95% CI (Wilson)": "–" if v["ci_low"] is None else f"{_percent(v['ci_low'])} – {_percent(v['ci_high'])}",
                       "Uncertain reads": int(v["uncertain"] or 0)} for r, v in accuracy.items()],
                     hide_index=True, key="review_accuracy_table")


def ratings_table(session: ReviewSession, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every reader's latest answer, for people: labels not codes, seconds and times readable, no JSON."""
    out = []
    for r in rows:
        box = r.get("box")
        item: dict[str, Any] = {"Case": r["position"]}
        if "file" in r:
            item["File"] = r["file"]
        item.update({
            "Reader": r["reader"], "Read": DIAGNOSIS_LABELS.get(r.get("diagnosis") or "", "–"),
            "Confidence": r.get("confidence") or "–",
            "Reference": DIAGNOSIS_LABELS.get(r.get("reference") or "", "–"),
            **{method_label(m): (r.get("plausibility") or {}).get(m, "–") for m in session.methods},
            "Box (px)": "–" if not box else "x {:.0f}, y {:.0f}, {:.0f} × {:.0f}".format(*box),
            "Note": r.get("note") or "",
            "Time on case": "–" if r.get("seconds") is None else f"{r['seconds']:.0f} s",
            "Saved": human_time(r.get("saved_at")),
        })
        out.append({k: str(v) for k, v in item.items()})
    return out


def results_view(session: ReviewSession, reader: str, full: bool) -> None:
    """``full``: the owner's view (every answer, notes, downloads). Otherwise (a closed session, another
    reader): the agreement statistics and the reader's own rows only — no other reader's answer or note."""
    from xai.review.report import ratings_csv, report_html
    from xai.review.stats import session_summary

    store = review_store()
    rows = store.export(session.id)
    if not rows:
        st.info("No ratings yet.")
        return
    scores: list[dict[str, Any]] = []
    if full and any(r.get("box") for r in rows) and st.toggle(
            "Score the readers' boxes against the maps (runs the model on the boxed films)",
            key=f"review_score_boxes_{session.id}"):
        scores = box_scores(session, rows, session_model(session))
    predictions = store.predictions(session.id, session.model)
    summary = session_summary(rows, session.methods, predictions=predictions, box_scores=scores)
    fmt = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    a, b, c = st.columns(3)
    a.metric("Readers", len(summary["readers"]))
    b.metric("Fleiss' kappa (read)", fmt(summary["fleiss_kappa"], 2),
             help=f"{summary['fleiss_cases']} case(s) read by every reader")
    c.metric("Krippendorff's α (plausibility)", fmt(summary["alpha_all"], 2), help="ordinal, all maps together")
    st.plotly_chart(plausibility_figure(summary), key="review_plausibility_chart")
    st.markdown("**Per method**")
    st.dataframe(method_table(summary), hide_index=True, key="review_method_table")
    reader_tables(summary, None if full else [reader])
    if summary.get("zones"):
        st.markdown("**The readers' zones against the maps' top zones** (per zone a box mostly covers: how many "
                    "boxes, and the share where that zone is among the map's two largest anatomical regions)")
        st.dataframe([{"method": method_label(m), "reader's zone": z, "boxes": c["boxes"],
                       "map agrees": round(float(c["agree"]), 2)}
                      for m, zones in summary["zones"].items() for z, c in sorted(zones.items())],
                     hide_index=True, key="review_zone_table")
    mine = rows if full else [r for r in rows if r["reader"] == reader]
    st.markdown("**Ratings** (latest per case and reader)" if full else "**Your answers**")
    st.dataframe(ratings_table(session, mine), hide_index=True, key="review_ratings_table")
    if not full:
        return
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
        accessions = accessions_input()  # drawn only when a PACS is configured
        labels_file = st.file_uploader("Reference diagnoses (optional CSV with columns file, diagnosis: "
                                       "covid19 or non_covid) — shown to each reader after their read",
                                       type=["csv"], key="review_new_labels")
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
        password = None
        if not sign_in_configured():
            password = st.text_input("Owner password (optional; at least 8 characters)", type="password",
                                     key="review_new_secret",
                                     help="It opens the results and closes the session. Left empty, a secret is "
                                          "made for you and shown once.")
        if not st.button("Create session", key="review_create", type="primary"):
            return
        try:
            items = items_from_uploads([(u.name, u.getvalue()) for u in uploads or []])
            bad = [i for i in items if i.error]
            if bad:
                raise ReviewError(f"{bad[0].name}: {bad[0].error}")
            files: list[Any] = [(i.name, i.source) for i in items]
            files += [str(SAMPLES_DIR / Path(samples[t]).name) for t in chosen]
            files += films_for_accessions(accessions)
            references = read_labels_csv(labels_file.getvalue()) if labels_file is not None else None
            secret = None if sign_in_configured() else (password or new_owner_secret())
            with st.spinner(f"Storing {len(files)} film(s)…"):
                sid = review_store().create_session(
                    name, files, model=DEFAULT_MODEL, methods=methods, questions=questions, blinded=blinded,
                    anonymised=anonymised, owner=reader, patient_details=details, loader=load_radiograph_isolated,
                    owner_secret=secret, references=references,
                )
        except (ReviewError, ArchiveError) as exc:
            st.error(f"The session was not created: {exc}")
            return
        session = review_store().session(sid)
        st.session_state[K.SESSION] = session.name
        st.session_state.setdefault(K.OWNER_OK, set()).add(sid)
        if secret is not None and not password:
            st.session_state[K.NEW_SECRET] = (session.name, secret)
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
    new_secret_notice()
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
    verified = owner_verified(session, reader)
    tabs = ["Read"] + (["Results"] if verified or session.closed or reader == session.owner else [])
    chosen = st.segmented_control("View", tabs, default="Read", key=f"review_view_{session.id}",
                                  label_visibility="collapsed") or "Read"
    if chosen == "Results":
        if verified:
            results_view(session, reader, full=True)
            if not session.closed and st.button("Close the session", key="review_close",
                                                help="No more answers; readers then see the agreement statistics."):
                store.close_session(session.id, by=session.owner)
                st.rerun()
        elif session.closed:
            st.caption("The session is closed: the agreement statistics and your own answers. Other readers' "
                       "answers and notes stay with the owner.")
            results_view(session, reader, full=False)
        else:
            owner_unlock(session)
    else:
        if not verified:
            st.caption("You see only your own answers; other readers' answers and notes are visible only to "
                       f"the session's owner ({session.owner}).")
        reading_view(session, reader, verified)


main()
