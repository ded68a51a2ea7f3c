"""Plumbing shared by the Streamlit pages: disclaimer, access gate, the cached model and explanations.

The UI stays a thin layer over the library: every map comes from :func:`xai.pipeline.explain_radiograph`
(the same path as the CLI and the batch report), called in ONE place, :func:`run_engine`, which counts its
calls so a test can prove that display-only changes (opacity, colormap, contours, zoom, window) compute
nothing.

Sharing rules (Streamlit runs every session in its own thread of one process):

* the bundled model is loaded once for all sessions (``st.cache_resource``); the engine serialises use of
  a shared module and leaves nothing on it;
* a model the user loads on the Model page lives in that session's ``st.session_state`` only;
* explanations are cached by image content hash + model identity + target + methods, with a bounded
  number of entries, so memory levels off however many images are explained.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from pages._lungs import lung_field, lung_outline, lung_shares, warm_up_lung_worker
from xai.anatomy import LungField

# One home for the disclaimer and the methods' display names: the export module prints them on every file.
from xai.export import DISCLAIMER
from xai.export import METHOD_TITLES as METHOD_LABELS
from xai.radiograph import RadiographError

if TYPE_CHECKING:
    from models import LoadedModel, ModelCard
    from xai.engine import Explainer
    from xai.pipeline import PipelineResult
    from xai.radiograph import Radiograph
    from xai.render import DisplaySettings, Layers, View

APP_DIR = Path(__file__).resolve().parents[1]
SAMPLES_DIR = APP_DIR / "samples"
DEFAULT_MODEL = os.environ.get("XAI_APP_MODEL", "chestcovnet")  # a bundle name, folder or .zip

#: Bounded caches: about 8 explained films (full-resolution maps) and their display versions.
EXPLANATION_CACHE_ENTRIES = 8
DISPLAY_CACHE_ENTRIES = 8
CACHE_TTL_S = 3600
WRONG_PASSWORD_DELAY_S = 1.0


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


# ------------------------------------------------------------------------------------ session state
class Key:
    """Every ``st.session_state`` key the app's own state uses (widget keys live next to their widget).

    Read and write them through the typed accessors below, never as bare strings in a page.
    """

    ACCESS_GRANTED = "_access_granted"
    IMAGE = "image"  # LoadedImage: the radiograph every page looks at
    LOAD_ERROR = "load_error"  # str: why the last chosen file could not be read
    SEEN_INPUTS = "_seen_inputs"  # {uploader/selectbox key: the choice already loaded}
    USER_MODEL = "user_model"  # ActiveModel loaded on the Model page (this session only)
    PREDICTED = "_predicted"  # {(image sha, model key): predicted class name}
    STORES = "_stores"  # {name: dict}: per-page result stores (e.g. the Trust page's checks)
    CHART_CODE_SENT = "_chart_code_sent"  # bool: this session's page was given a chart to load plotly's code
    KEPT_WIDGETS = "_kept_widgets"  # {widget key: value}: what widgets drawn only sometimes held when last drawn


def _state() -> Any:
    return st.session_state


def access_granted() -> bool:
    return bool(_state().get(Key.ACCESS_GRANTED, False))


def grant_access() -> None:
    _state()[Key.ACCESS_GRANTED] = True


def current_image() -> LoadedImage | None:
    """The radiograph this session looks at (shared by every page), or None."""
    image = _state().get(Key.IMAGE)
    return image if isinstance(image, LoadedImage) else None


def set_image(image: LoadedImage) -> None:
    _state()[Key.IMAGE] = image
    set_load_error(None)


def load_error() -> str | None:
    return _state().get(Key.LOAD_ERROR)


def set_load_error(message: str | None) -> None:
    if message is None:
        _state().pop(Key.LOAD_ERROR, None)
    else:
        _state()[Key.LOAD_ERROR] = message


# Streamlit drops a widget's state at the end of a run that did not draw it: widgets drawn only sometimes (e.g.
# inside an expander that draws its content only while open) keep their values in Key.KEPT_WIDGETS instead.
def kept_value(key: str, default: Any) -> Any:
    """The value of widget ``key`` whether or not this run draws it: its state, else the value it held when last
    drawn, else ``default``."""
    state = _state()
    if key in state:
        return state[key]
    return state.get(Key.KEPT_WIDGETS, {}).get(key, default)


def restore_widget(key: str, default: Any) -> None:
    """Before drawing widget ``key``: give it back its kept value (or ``default``) when Streamlit dropped its
    state. Draw it without a ``value``/``index``: its state is its value (no default to conflict with)."""
    if key not in _state():
        _state()[key] = kept_value(key, default)


def keep_widgets(keys: Iterable[str]) -> None:
    """After drawing widgets: keep their values for runs that do not draw them (see :func:`kept_value`)."""
    state = _state()
    kept = state.setdefault(Key.KEPT_WIDGETS, {})
    for key in keys:
        if key in state:
            kept[key] = state[key]


def user_model() -> ActiveModel | None:
    """The model this session loaded on the Model page, or None (the bundled model is used)."""
    chosen = _state().get(Key.USER_MODEL)
    return chosen if isinstance(chosen, ActiveModel) else None


def set_user_model(model: ActiveModel | None) -> None:
    if model is None:
        _state().pop(Key.USER_MODEL, None)
    else:
        _state()[Key.USER_MODEL] = model


def predicted_class(image_sha: str, model_key: str) -> str | None:
    """The class the model predicted for this image, once it has been explained in this session."""
    return _state().get(Key.PREDICTED, {}).get((image_sha, model_key))


def remember_predicted(image_sha: str, model_key: str, name: str) -> None:
    _state().setdefault(Key.PREDICTED, {})[(image_sha, model_key)] = name


def page_store(name: str) -> dict[Any, Any]:
    """A page's own results for this session (created empty on first use)."""
    return _state().setdefault(Key.STORES, {}).setdefault(name, {})


def _seen(widget_key: str) -> Any:
    return _state().setdefault(Key.SEEN_INPUTS, {}).get(widget_key)


def _mark_seen(widget_key: str, value: Any) -> None:
    _state().setdefault(Key.SEEN_INPUTS, {})[widget_key] = value


# ------------------------------------------------------------------------------------ page furniture
def ensure_routed() -> None:
    """Make sure the disclaimer and the password gate ran in this run, even when ``app.py`` did not.

    Streamlit treats an app with a ``pages/`` folder as a legacy multipage app until the entry script has
    called ``st.navigation`` once in the process: the FIRST request of a fresh server to a deep link such
    as ``/model`` runs ``pages/model.py`` alone, skipping ``app.py`` and its password gate (and showing
    Streamlit's own page list, helper modules included). Every page calls this first (``active_model``
    does too). In that legacy run it switches the legacy mode off as ``st.navigation`` does; then a new
    session (nothing in its state yet, so no click to lose) simply reruns, now through ``app.py``; a run
    that may carry a widget event instead shows the disclaimer and applies the gate itself (stopping the
    run when locked), and the next run goes through ``app.py``.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        if not st.session_state:
            st.rerun()
        disclaimer()
        if not access_gate():
            st.stop()


def disclaimer() -> None:
    """The banner every page shows before anything else."""
    st.warning(f"**{DISCLAIMER}.** Saliency maps show where a model looked, not what is there.", icon="⚠️")


def _auth_secrets() -> dict[str, Any]:
    """The ``[auth]`` table of ``.streamlit/secrets.toml``; empty when there is no secrets file."""
    try:
        auth = st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - no secrets file (or an unreadable one) means no gate configured
        return {}
    return dict(auth) if auth else {}


def configured_password() -> str | None:
    """The shared password from ``st.secrets["auth"]["password"]``, or None when none is set."""
    password = _auth_secrets().get("password")
    return str(password) if password else None


def password_ok(entered: str, expected: str) -> bool:
    """Constant-time comparison (no timing hint about how many leading characters matched)."""
    return hmac.compare_digest(entered.encode("utf-8"), expected.encode("utf-8"))


def oidc_provider() -> str | None:
    """The ``st.login`` provider configured in ``[auth]`` ("" for the default provider), else None.

    OIDC is on when ``[auth]`` holds ``client_id`` (one provider) or a sub-table with one
    (``[auth.<provider>]``), next to ``redirect_uri`` and ``cookie_secret`` as ``st.login`` requires.
    """
    auth = _auth_secrets()
    if auth.get("client_id"):
        return ""
    for name, value in auth.items():
        if isinstance(value, Mapping) and value.get("client_id"):
            return str(name)
    return None


def access_gate() -> bool:
    """True when this session may see the app; otherwise draws the sign-in and returns False.

    * ``[auth] password`` in ``.streamlit/secrets.toml``: a shared password, compared in constant time.
    * OIDC configured in ``[auth]`` (see :func:`oidc_provider`): sign in with ``st.login`` first.
    * Neither: no gate (the default config binds to localhost only).
    """
    provider = oidc_provider()
    if provider is not None and not st.user.get("is_logged_in", False):
        st.subheader("Sign in to use this app")
        st.button("Log in", key="_oidc_login", type="primary", on_click=st.login,
                  args=(provider,) if provider else ())
        return False
    expected = configured_password()
    if expected is None or access_granted():
        return True
    st.subheader("This app is password protected")
    with st.form("access_form"):
        entered = st.text_input("Password", type="password", key="_access_password")
        submitted = st.form_submit_button("Enter")
    if submitted:
        if password_ok(entered or "", expected):
            grant_access()
            st.rerun()
        time.sleep(WRONG_PASSWORD_DELAY_S)  # slows scripted guessing; only this session's thread waits
        st.error("Wrong password.")
    return False


# ------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ActiveModel:
    """A loaded model with its explainer and the identity that keys every cached result."""

    loaded: LoadedModel
    explainer: Explainer
    key: str
    origin: str  # "bundled" or "uploaded"

    @property
    def card(self) -> Any:
        return self.loaded.card

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.loaded.card.class_names)


def model_key(loaded: LoadedModel) -> str:
    """Identity of a model for caching: weights sha256 + target layer + preprocessing + classes."""
    card = loaded.card
    identity = {
        "sha256": str(card.sha256),
        "target_layer": str(card.target_layer),
        "preprocessing": card.preprocessing.to_dict(),
        "classes": list(card.class_names),
        "architecture": str(card.architecture),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return f"{card.name}:{digest[:16]}"


def wrap_model(loaded: LoadedModel, origin: str) -> ActiveModel:
    from xai.pipeline import make_explainer

    return ActiveModel(loaded=loaded, explainer=make_explainer(loaded), key=model_key(loaded), origin=origin)


@st.cache_resource(show_spinner="Loading the bundled model…")
def default_model() -> ActiveModel:
    """The bundled ChestCOVNet, ONE object for every session."""
    import models
    from xai.isolation import warm_up
    from xai.startup import freeze_heap

    # The upload decoders' fork server starts with the server, not on the first upload. It is a separate
    # process (about 1 s of imports), so it starts first, before torch loads, and runs on the other core while
    # this thread imports torch and loads the model; the page warm-up then decodes a film in it.
    decoders = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xai-decoder-warm-up")
    decoders_ready = decoders.submit(warm_up)
    decoders.shutdown(wait=False)
    loaded = wrap_model(models.load(DEFAULT_MODEL), origin="bundled")
    decoders_ready.result()
    # The result page's whole path once on a bundled film; its explanation also builds the CPU kernels
    # (oneDNN compiles one per convolution shape on first use: seconds), so the first user waits for none of it.
    features = warm_up_page(loaded)
    import torch

    spec = loaded.card.preprocessing
    blank = torch.zeros(1, spec.channels, spec.input_size, spec.input_size)
    if features is None:  # no bundled film to warm up on: a blank input builds the kernels
        features = loaded.explainer.explain(blank).features
    warm_up_display(loaded, blank, features)
    # Everything allocated so far lives as long as the server: out of the cyclic collector's full passes
    # (gc.freeze; what and why: xai.startup.freeze_heap).
    freeze_heap()
    return loaded


def warm_up_display(model: ActiveModel, blank: Any, features: Any) -> None:
    """Pay the first-use costs of the result page at start-up instead of on the first upload (~0.3 s).

    The colour tables (shipped data since they cost a matplotlib import), plotly's figure validators and the OOD
    statistics (read from the bundle) are each slow only the first time they are used in a process. ``features``:
    penultimate features from a warm-up explanation, so the OOD warm-up needs no forward pass (``blank``, an input
    of the model's shape, is not run).
    """
    import numpy as np

    import models
    from pages._panel import Panel, panel_figure, prediction_figure
    from xai import render
    from xai.trust import ood

    tiny = np.zeros((8, 8), np.float32)
    rgb = render.overlay(tiny, tiny)
    panel_figure([Panel("", rgb), Panel("", rgb)], per_row=2, row_height=100, uirevision="warm-up",
                 colorscale=render.plotly_colorscale())
    prediction_figure({"a": 0.5, "b": 0.5}, threshold=0.5, positive_class="b", decision="b")
    with contextlib.suppress(ValueError, RuntimeError):  # statistics that do not fit: the page says so later
        ood.score(model.loaded, blank, models.ood_stats(model.loaded), features=features)


def warm_up_page(model: ActiveModel) -> Any:
    """The result page's whole path once on a bundled film at start-up (~1 s), so the first user's
    result is as fast as every later one: the decoder worker's first film, the engine on a real film,
    the mapping back, the lung model, every colour table, the screen layers and their images, the panel figure. Nothing is
    cached for users (the engine is called directly, not through the explanation cache).

    Returns the film's penultimate features (for the OOD warm-up), or None when no film could be explained.
    """
    from pages._panel import (
        GRAY_COLORSCALE,
        Panel,
        colormap_filters_js,
        panel_figure,
        screen_heat_uri,
        screen_image_uri,
    )
    from xai import render

    samples = list_samples()
    if not samples:
        return None
    try:
        image = load_bytes((SAMPLES_DIR / next(iter(samples.values()))).read_bytes(), "warm-up", source="upload")
        result = run_engine(image.radiograph, model, None, tuple(METHODS_FOR_WARM_UP), count=False)
    except Exception:  # noqa: BLE001 - best effort: a failing warm-up only makes the first result slower
        return None
    prepared = render.layers(image.radiograph, result, render.DisplaySettings())
    base = screen_image_uri(prepared.original)
    panels = [Panel("", prepared.original, source=base)] + [
        Panel("", prepared.original, source=base, heat=screen_heat_uri(index)) for index in prepared.heat.values()]
    with contextlib.suppress(Exception):  # the lung model: read once per process, its first film slow
        from xai.anatomy import lung_evidence

        lung_evidence(result.maps, warm_up_lung_worker(image.radiograph).mask)
    colormap_filters_js()  # every colour table, once per process
    render.outlines(prepared, render.DisplaySettings(contour_level=0.5))
    panel_figure(panels, per_row=3, row_height=300, uirevision="warm-up", colorscale=GRAY_COLORSCALE).to_json()
    return result.explanation.features


#: The methods the start-up warm-up explains (the Explain page's default: all of them).
METHODS_FOR_WARM_UP = ("gradcam", "gradcam++", "guided_backprop", "guided_gradcam")


@st.cache_resource(show_spinner=False)
def bundle_card(name_or_path: str) -> ModelCard | None:
    """A bundle's card alone, read without torch (milliseconds), so a fresh server's first page can show the
    bundled model's record while the model itself loads; None when it does not read (:func:`require_model`
    then names the problem)."""
    import models

    try:
        return models.read_card(name_or_path)
    except (models.ModelError, OSError):
        return None


def active_card() -> ModelCard | None:
    """This session's model's card without waiting for the bundled model to load (see :func:`bundle_card`)."""
    ensure_routed()
    chosen = user_model()
    return chosen.card if chosen is not None else bundle_card(DEFAULT_MODEL)


def active_model() -> ActiveModel:
    """This session's model: the one loaded on the Model page, else the shared bundled model."""
    ensure_routed()
    return user_model() or default_model()


def require_model() -> ActiveModel:
    """:func:`active_model`, or a clear message and the end of this page's run when the bundle is
    missing or corrupt: the server keeps serving, and the Model page can still load another model."""
    try:
        return active_model()
    except Exception as exc:  # noqa: BLE001 - models.ModelError, OSError…: name it, never a traceback
        st.error(f"The model could not be loaded: {exc}. Load a model on the Model page, or restore the "
                 f"bundle '{DEFAULT_MODEL}' and restart the app.")
        st.stop()


#: Out of sight and out of the layout, but mounted: the browser loads the chart's code for it.
_CHART_CODE_STYLE = ("<style>.st-key-chart_code_preload { position: absolute; width: 1px; height: 1px; "
                     "overflow: hidden; opacity: 0; pointer-events: none; }</style>")


def chart_code_preload() -> Any:
    """Once per session, before a page imports torch and loads the model: an invisible one-point chart, so
    the browser fetches and compiles plotly's code (a 4.7 MB script: ~2 s of this machine's cores) while the
    server does that on a fresh start, instead of after it, when the first page with a chart (every page has
    one) would wait for it. Returns the slot to clear after the page (None after the session's first run)."""
    if _state().get(Key.CHART_CODE_SENT):
        return None
    _state()[Key.CHART_CODE_SENT] = True
    st.html(_CHART_CODE_STYLE)
    slot = st.empty()
    with slot.container(key="chart_code_preload"):
        st.plotly_chart({"data": [{"type": "scatter", "x": [0], "y": [0]}], "layout": {"height": 10}},
                        key="chart_code_preload_chart",
                        config={"staticPlot": True})
    return slot


# ----------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class LoadedImage:
    """The radiograph a session is looking at. ``label`` is for the screen only (never exported).

    ``dicom_bytes`` keeps a DICOM file's bytes so a Secondary Capture can reference the exact source
    (its SOP class and instance UIDs); None for other formats.
    """

    label: str
    sha256: str
    radiograph: Radiograph
    source: str  # "upload" or "sample"
    dicom_bytes: bytes | None = field(default=None, repr=False)


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_bytes(data: bytes, label: str, source: str) -> LoadedImage:
    """Decode an image. Raises ``xai.radiograph.RadiographError`` with a message naming the problem.

    Uploads are untrusted: they are decoded in a worker process with a time and memory limit, so a
    crash or hang inside a C decoder fails that file only and the server keeps serving everyone else.
    The bundled samples are ours and decode in-process.
    """
    from xai.isolation import load_radiograph_isolated
    from xai.radiograph import load_radiograph

    radiograph = load_radiograph_isolated(data) if source == "upload" else load_radiograph(data)
    return LoadedImage(
        label=label, sha256=content_sha256(data), radiograph=radiograph, source=source,
        dicom_bytes=data if radiograph.format == "dicom" else None,
    )


def list_samples() -> dict[str, str]:
    """Bundled samples, ``{title: file name}``, from ``samples/samples.json`` (else the folder's images)."""
    index = SAMPLES_DIR / "samples.json"
    entries: dict[str, str] = {}
    if index.is_file():
        try:
            for item in json.loads(index.read_text(encoding="utf-8")):
                if (SAMPLES_DIR / item["file"]).is_file():
                    entries[str(item.get("title") or item["file"])] = str(item["file"])
        except (ValueError, KeyError, TypeError):
            entries = {}
    if not entries and SAMPLES_DIR.is_dir():
        skip = {".md", ".json", ".txt"}
        entries = {p.name: p.name for p in sorted(SAMPLES_DIR.iterdir()) if p.is_file() and p.suffix not in skip}
    return entries


@st.cache_resource(max_entries=8, show_spinner=False)
def load_sample(file_name: str) -> LoadedImage:
    """A bundled sample, decoded once for every session (samples carry no patient data)."""
    path = SAMPLES_DIR / Path(file_name).name  # a name from samples.json, never a path that leaves the folder
    data = path.read_bytes()
    return load_bytes(data, label=file_name, source="sample")


NO_SAMPLE = "—"


def load_input(*, prefix: str = "", container: Any = None) -> LoadedImage | None:
    """The uploader and the sample picker, and the session's radiograph — one helper for every page.

    Draws the two widgets (keys ``{prefix}upload`` and ``{prefix}sample``) in ``container`` (e.g.
    ``st.sidebar``; default: where the page is drawing), loads what the user has just chosen (a new upload
    or another sample) as :func:`current_image` for every page, and returns the current image. A file
    that cannot be read leaves the previous image in place and shows a message naming the problem.
    """
    samples = list_samples()
    with container if container is not None else contextlib.nullcontext():
        upload = st.file_uploader(
            "Upload a radiograph", key=f"{prefix}upload",
            help="DICOM, PNG, JPEG, TIFF, BMP or WEBP — recognised from the file's content, not its name.",
        )
        sample = st.selectbox("…or a bundled sample", [NO_SAMPLE, *samples], key=f"{prefix}sample")
    _ingest(upload, f"{prefix}upload", sample, f"{prefix}sample", samples)
    image = current_image()
    if message := load_error():
        st.error(message + (" The previous image is still shown." if image is not None else ""))
    return image


def _ingest(upload: Any, upload_key: str, sample: str, sample_key: str, samples: dict[str, str]) -> None:
    """Load a new choice of either widget into :func:`current_image` (errors go to :func:`load_error`)."""
    if upload is not None and upload.file_id != _seen(upload_key):
        _mark_seen(upload_key, upload.file_id)
        try:
            set_image(load_bytes(upload.getvalue(), label=upload.name, source="upload"))
        except RadiographError as exc:
            set_load_error(f"Could not read “{upload.name}”: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bad file must never take the page down
            set_load_error(f"Could not read “{upload.name}”: unexpected {type(exc).__name__}.")
    elif upload is None and _seen(upload_key) is not None:
        _mark_seen(upload_key, None)
        set_load_error(None)  # the bad file was removed from the uploader
    if sample != _seen(sample_key):
        _mark_seen(sample_key, sample)
        if sample in samples:
            try:
                set_image(replace(load_sample(samples[sample]), label=sample))
            except (RadiographError, OSError) as exc:
                set_load_error(f"Could not read the sample “{sample}”: {exc}")


# ------------------------------------------------------------------------------------ explanations
ENGINE_CALLS = 0
"""How many times :func:`run_engine` ran in this process (tests read it to prove caching)."""
_ENGINE_CALLS_LOCK = threading.Lock()


def run_engine(
    radiograph: Radiograph, model: ActiveModel, target: int | None, methods: tuple[str, ...], *,
    count: bool = True,
) -> PipelineResult:
    """The only place the app computes maps: prepare -> explain -> maps on the original grid.

    ``count=False`` for work no user asked for (the start-up warm-up, background prefetches, which have
    their own counter), so :data:`ENGINE_CALLS` counts what a page computed while a user waited.
    """
    global ENGINE_CALLS

    if count:
        with _ENGINE_CALLS_LOCK:
            ENGINE_CALLS += 1
    with _foreground(count):
        return _explain_radiograph(radiograph, model, target, methods)


_FOREGROUND = 0
"""Engine calls a user is waiting for, in flight now (a prefetch that finds one skips: users first)."""


@contextlib.contextmanager
def _foreground(active: bool) -> Any:
    global _FOREGROUND
    if not active:
        yield
        return
    with _ENGINE_CALLS_LOCK:
        _FOREGROUND += 1
    try:
        yield
    finally:
        with _ENGINE_CALLS_LOCK:
            _FOREGROUND -= 1


def _explain_radiograph(radiograph: Radiograph, model: ActiveModel, target: int | None,
                        methods: tuple[str, ...]) -> PipelineResult:
    from xai.pipeline import PREDICTED, explain_radiograph

    return explain_radiograph(
        radiograph,
        model.loaded,
        name="image",  # never the upload's file name: it may carry identifiers
        methods=methods,
        target=PREDICTED if target is None else int(target),
        explainer=model.explainer,
    )


@st.cache_resource(
    max_entries=EXPLANATION_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner="Computing the explanations…"
)
def explain_cached(
    image_sha: str, model_id: str, target: int | None, methods: tuple[str, ...], _image: LoadedImage,
    _model: ActiveModel,
) -> PipelineResult:
    """Cached :func:`run_engine`, keyed by image hash + model identity + target + methods.

    ``st.cache_resource`` (not ``cache_data``) because results are immutable records of read-only arrays:
    no pickling on every rerun, and the bounded ``max_entries`` keeps memory flat. A result computed in
    the background by :func:`prefetch_targets` is taken from there (waiting for it if still running).
    """
    pending = _take_prefetched((image_sha, model_id, target, methods))
    if pending is not None:
        with contextlib.suppress(Exception):  # a failed prefetch: compute here, where the error is shown
            return pending.result()
    return run_engine(_image.radiograph, _model, target, methods)


def explain(image: LoadedImage, model: ActiveModel, target: int | None, methods: tuple[str, ...]) -> PipelineResult:
    """:func:`explain_cached` for the page's image and model (every page calls this one)."""
    return explain_cached(image.sha256, model.key, target, methods, image, model)


# A single background worker explains the other classes of the film on screen while the user looks at the
# first result, so switching the target class costs a cache lookup, not an engine pass (issue 17).
_PREFETCH_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xai-prefetch")
_PREFETCHED: OrderedDict[tuple[Any, ...], Future[PipelineResult]] = OrderedDict()
_PREFETCH_LOCK = threading.Lock()
#: Films whose classes were prefetched (or explained), so a rerun does not prefetch them again.
_PREFETCH_SEEN: OrderedDict[tuple[Any, ...], None] = OrderedDict()
#: Prefetch only for models with at most this many classes (each class is one more engine pass);
#: ``XAI_APP_PREFETCH=0`` turns prefetching off (benchmarks/bench_app.py compares both).
PREFETCH_MAX_CLASSES = 4 if os.environ.get("XAI_APP_PREFETCH", "1") != "0" else 0
PREFETCH_CALLS = 0
"""How many explanations the background worker computed (tests read it)."""
#: Seconds the background worker waits before its first class: the browser is still drawing the result
#: the user waits for, on the same cores (``XAI_APP_PREFETCH_DELAY_S`` overrides it).
PREFETCH_DELAY_S = float(os.environ.get("XAI_APP_PREFETCH_DELAY_S", "1.0"))


def _take_prefetched(key: tuple[Any, ...]) -> Future[PipelineResult] | None:
    with _PREFETCH_LOCK:
        return _PREFETCHED.pop(key, None)


class PrefetchSkipped(RuntimeError):
    """A prefetch that did not run because a user was waiting for the engine (the page computes it)."""


def _prefetch_one(image: LoadedImage, model: ActiveModel, target: int, methods: tuple[str, ...],
                  settings: DisplaySettings | None, not_before: float) -> PipelineResult:
    """One other class: the explanation, then (best effort) what its page will need — the screen layers
    for the display settings in use and the evidence in the lungs — into the same caches the page reads."""
    global PREFETCH_CALLS
    # After the browser has drawn what the user is waiting for; classes queued behind one another wait for
    # the same moment (``not_before``, time.monotonic()), not a delay each.
    time.sleep(max(0.0, not_before - time.monotonic()))
    with _ENGINE_CALLS_LOCK:
        if _FOREGROUND:  # under load (many sessions) the background work would only slow everyone down
            raise PrefetchSkipped("a user is waiting for the engine")
        PREFETCH_CALLS += 1
    result = run_engine(image.radiograph, model, target, methods, count=False)
    key = ResultKey.of(image, model, result)
    with contextlib.suppress(Exception):  # the page computes whatever this could not
        if settings is not None:
            _screen(key, settings, image.radiograph, result)
        field = lung_field(image.sha256, image.radiograph)
        if isinstance(field, LungField):
            lung_shares(key, result.maps, field)
    return result


def prefetch_targets(image: LoadedImage, model: ActiveModel, result: PipelineResult,
                     settings: DisplaySettings | None = None) -> int:
    """Explain the film's other classes in the background (once per film, model and methods), with their
    screen layers for ``settings`` (the layer fields of the display in use) and their lung evidence.

    Bounded: at most :data:`PREFETCH_MAX_CLASSES` classes and :data:`EXPLANATION_CACHE_ENTRIES` results
    waiting; the oldest waiting result is dropped first. Returns how many were queued.
    """
    if len(model.class_names) > PREFETCH_MAX_CLASSES:
        return 0
    film = (image.sha256, model.key, result.methods)
    not_before = time.monotonic() + PREFETCH_DELAY_S
    queued = 0
    with _PREFETCH_LOCK:
        if film in _PREFETCH_SEEN:
            return 0
        _PREFETCH_SEEN[film] = None
        while len(_PREFETCH_SEEN) > 4 * EXPLANATION_CACHE_ENTRIES:
            _PREFETCH_SEEN.popitem(last=False)
        for index in range(len(model.class_names)):
            if index == result.target_index:
                continue
            key = (image.sha256, model.key, index, result.methods)
            _PREFETCHED[key] = _PREFETCH_POOL.submit(_prefetch_one, image, model, index, result.methods,
                                                     None if settings is None else settings.only("layers"),
                                                     not_before)
            queued += 1
        while len(_PREFETCHED) > EXPLANATION_CACHE_ENTRIES:
            _PREFETCHED.popitem(last=False)[1].cancel()
    return queued


def clear_prefetches() -> None:
    """Forget every prefetch (with ``explain_cached.clear()``: a fresh start for tests)."""
    with _PREFETCH_LOCK:
        for future in _PREFETCHED.values():
            future.cancel()
        _PREFETCHED.clear()
        _PREFETCH_SEEN.clear()


def wait_for_prefetches(timeout_s: float = 600) -> None:
    """Block until every queued prefetch has finished (tests and the benchmark)."""
    with _PREFETCH_LOCK:
        pending = list(_PREFETCHED.values())
    for future in pending:
        with contextlib.suppress(Exception):
            future.result(timeout=timeout_s)


@dataclass(frozen=True)
class ScreenLayers:
    """:func:`xai.render.layers` on the screen grid, encoded for the browser: the radiograph (JPEG, no
    outline) and each map's heat index (gray PNG or, when speckled, JPEG q95; coloured and blended in the page)."""

    layers: Layers
    original_uri: str
    heat_uris: Mapping[str, str]


@dataclass(frozen=True)
class ResultKey:
    """What identifies an explained image: content hash, model identity, explained class, methods."""

    image: str
    model: str
    target: int
    methods: tuple[str, ...]

    @classmethod
    def of(cls, image: LoadedImage, model: ActiveModel, result: PipelineResult) -> ResultKey:
        return cls(image.sha256, model.key, int(result.target_index), tuple(result.methods))


@st.cache_resource(max_entries=DISPLAY_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def _screen_layers(key: ResultKey, settings: DisplaySettings, _radiograph: Radiograph,
                   _result: PipelineResult) -> Layers:
    """:func:`xai.render.layers` on the screen grid (keyed by the explanation and ``settings.only("layers")``)."""
    from xai import render

    lungs = lung_outline(key.image, _radiograph) if settings.lungs else None
    return render.layers(_radiograph, _result, settings, lungs)


@st.cache_resource(max_entries=DISPLAY_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def _screen_images(key: ResultKey, settings: DisplaySettings, _layers: Layers) -> ScreenLayers:
    """The cached layers encoded for the Explain panel (only that page blends in the browser; a page that
    shows composed pixels, e.g. Review, never pays for these encodings)."""
    from pages._panel import screen_heat_uri, screen_image_uri

    return ScreenLayers(_layers, screen_image_uri(_layers.original),
                        {m: screen_heat_uri(index) for m, index in _layers.heat.items()})


def _screen(key: ResultKey, settings: DisplaySettings, radiograph: Radiograph, result: PipelineResult) -> ScreenLayers:
    """The Explain panel's encoded layers for ``settings.only("layers")`` (both caches above)."""
    layer_settings = settings.only("layers")
    return _screen_images(key, layer_settings, _screen_layers(key, layer_settings, radiograph, result))


@st.cache_resource(max_entries=DISPLAY_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def _screen_outlines(key: ResultKey, settings: DisplaySettings, _layers: Layers) -> Mapping[str, str | None]:
    """:func:`xai.render.outlines` as RGBA PNG data URIs (keyed by the layer settings and the contour level)."""
    from pages._panel import screen_png_uri
    from xai import render

    return {panel: None if rgba is None else screen_png_uri(rgba)
            for panel, rgba in render.outlines(_layers, settings).items()}


def screen_layers(image: LoadedImage, model: ActiveModel, result: PipelineResult,
                  settings: DisplaySettings) -> tuple[ScreenLayers, Mapping[str, str | None]]:
    """What the Explain panel draws, behind the app's one display cache: the encoded layers (keyed by the
    explanation's own key and ``settings.only("layers")``: windows, scale, size) and the outlines (also by
    the contour level). Colour and opacity are not in either key: the page blends them (``pages._panel``)."""
    key = ResultKey.of(image, model, result)
    screen = _screen(key, settings, image.radiograph, result)
    outline_settings = replace(settings.only("layers"), contour_level=settings.contour_level)
    return screen, _screen_outlines(key, outline_settings, screen.layers)


def screen_view(image: LoadedImage, model: ActiveModel, result: PipelineResult, settings: DisplaySettings) -> View:
    """The pure :func:`xai.render.view` of an explanation at screen size, from the cached layers (for pages
    that show composed pixels, e.g. Review)."""
    from xai import render

    layers = _screen_layers(ResultKey.of(image, model, result), settings.only("layers"), image.radiograph, result)
    return render.compose(layers, settings)


# ------------------------------------------------------------------------------ out-of-distribution
@st.cache_resource(max_entries=EXPLANATION_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def ood_verdict(image_sha: str, model_id: str, _result: PipelineResult, _model: ActiveModel) -> Any:
    """:func:`xai.trust.ood.score` of one explained image, cached so display changes cost nothing; the
    features come from the explanation's own forward pass (no second pass)."""
    import models
    from xai.trust import ood

    return ood.score(_model.loaded, _result.input_tensor, models.ood_stats(_model.loaded), radiograph=_result.radiograph,
                     features=_result.explanation.features)


@dataclass(frozen=True)
class OodSummary:
    """The out-of-distribution verdict in words: ``warnings`` to show, else ``text`` (the reassurance or
    why there is no check)."""

    warnings: tuple[str, ...]
    text: str

    @property
    def sentence(self) -> str:
        """One line for an export."""
        return " ".join(self.warnings) if self.warnings else self.text


def ood_summary(image_sha: str, model: ActiveModel, result: PipelineResult) -> OodSummary:
    """:func:`ood_verdict` as sentences for the page and the exports."""
    try:
        verdict = ood_verdict(image_sha, model.key, result, model)
    except (ValueError, RuntimeError) as exc:  # e.g. a user's model whose features the statistics do not fit
        return OodSummary((), f"No out-of-distribution check for this model: {exc}")
    if verdict.warnings:
        return OodSummary(tuple(verdict.warnings), "")
    if verdict.score is None:
        return OodSummary((), "No out-of-distribution score for this image.")
    return OodSummary((), f"No out-of-distribution warning: Mahalanobis distance {verdict.score:.1f} "
                          f"(percentile {verdict.percentile:.0f} among validation images, warning above "
                          f"{verdict.threshold:.1f}). No warning is not proof the film is like the training "
                          "data: a film from a hospital the model never saw can be scored confidently wrong "
                          "without one.")


def ood_banner(image_sha: str, model: ActiveModel, result: PipelineResult) -> None:
    """A visible warning when the input is unlike the training data (features or header hints)."""
    summary = ood_summary(image_sha, model, result)
    for warning in summary.warnings:
        st.warning(warning, icon=":material/warning:")
    if not summary.warnings:
        st.caption(summary.text)


# ------------------------------------------------------------------------------------- model record
def held_out_performance(card: ModelCard, key: str) -> bool:
    """The model's test-split sensitivity and specificity, overall and per data source, and on each source
    left out of training in the card's cross-source checks, as a chart.

    Shown before a radiograph is chosen so a reader meets the model's record (and the sources it fails on)
    first. False when the card records no test rates (e.g. a user's model without metrics).
    """
    from pages._panel import source_metrics_figure

    metrics = getattr(card, "metrics", None) or {}
    test = metrics.get("test") if isinstance(metrics, Mapping) else None
    cross = getattr(card, "cross_source", None)
    fig = source_metrics_figure(test, cross_source=cross if isinstance(cross, Mapping) else None) \
        if isinstance(test, Mapping) else None
    if fig is None:
        return False
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})
    return True
