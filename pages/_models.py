"""This session's model: the bundled one (loaded and warmed up once per server) or one loaded on the Model page.

* the bundled model is loaded once for all sessions (``st.cache_resource``), on a background thread once a
  session's first page has run (its widgets come from the card meanwhile); the engine serialises use of a
  shared module and leaves nothing on it;
* a model the user loads on the Model page lives in that session's ``st.session_state`` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import streamlit as st

from pages._access import ensure_routed
from pages._state import Key, session
from pages._warmup import warm_up_display, warm_up_page

if TYPE_CHECKING:
    from models import LoadedModel, ModelCard
    from xai.engine import Explainer

DEFAULT_MODEL = os.environ.get("XAI_APP_MODEL", "chestcovnet")  # a bundle name, folder or .zip
#: How long the bundled model's load waits once the first page has run, when no page needs the model yet. torch's
#: import holds the interpreter's lock for long stretches (its C libraries' start-up: one of ~0.25 s and many of
#: 20-70 ms), and the server's event loop needs that lock for each message it sends: started at once, the load
#: held the page's last messages back and the model's widgets were drawn 0.44-0.79 s later (paired medians of two
#: sets of 6 pairs; benchmarks/RESULTS.md, 2026-12-07, seventh pass).
LOAD_AFTER_PAGE_S = 0.3


@dataclass(frozen=True)
class ActiveModel:
    """A loaded model with its explainer and the identity that keys every cached result."""

    loaded: LoadedModel
    explainer: Explainer
    key: str
    origin: str  # "bundled" or "uploaded"

    @property
    def card(self) -> ModelCard:
        return self.loaded.card

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.loaded.card.class_names)


def model_key(card: ModelCard) -> str:
    """Identity of a model for caching: weights sha256 + target layer + preprocessing + classes (all on its card,
    so a page knows it before the model itself has loaded)."""
    identity = {
        "sha256": str(card.sha256),
        "target_layer": str(card.target_layer),
        "preprocessing": card.preprocessing.to_dict(),
        "classes": list(card.class_names),
        "architecture": str(card.architecture),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return f"{card.name}:{digest[:16]}"


@dataclass(frozen=True)
class ModelChoice:
    """This session's model as a page's widgets need it (its card, cache key and origin), known from the card
    alone: on a fresh server the page draws them while the bundled model is still loading."""

    card: ModelCard
    key: str
    origin: str  # "bundled" or "uploaded"

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.card.class_names)


def wrap_model(loaded: LoadedModel, origin: str) -> ActiveModel:
    from xai.pipeline import make_explainer

    return ActiveModel(loaded=loaded, explainer=make_explainer(loaded), key=model_key(loaded.card), origin=origin)


@st.cache_resource(show_spinner=False)
def start_up_worker() -> ThreadPoolExecutor:
    """The thread that loads the bundled model and warms it up (held by Streamlit's resource cache, not a module
    global)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="xai-start-up")


@dataclass(frozen=True)
class BundledLoad:
    """The bundled model's load on the start-up thread: its outcome, and the flag a page that needs the model
    raises so that the load starts without its short wait (:data:`LOAD_AFTER_PAGE_S`)."""

    model: Future[ActiveModel] = field(default_factory=Future)
    wanted: threading.Event = field(default_factory=threading.Event)


@st.cache_resource(show_spinner=False)
def bundled_model_loading() -> BundledLoad:
    """The bundled model's load, started on the first call (once per server) on :func:`start_up_worker`; the
    page warm-up follows it on that thread. app.py calls it once a session's first page has run, so a fresh
    server's first page is drawn before torch's import (~1.5-2 s of CPU) takes a core; a page that needs the
    model waits for it (:func:`default_model`)."""
    load = BundledLoad()
    start_up_worker().submit(load_bundled, load)
    return load


def load_bundled(load: BundledLoad) -> None:
    """Load the bundled model into ``load.model`` (or its failure), then warm the page up on it. Both run on the
    one start-up thread, so :func:`wait_for_warm_up` can queue behind them."""
    import models
    from xai.sandboxed_decoder import warm_up
    from xai.startup import freeze_heap

    load.wanted.wait(LOAD_AFTER_PAGE_S)  # the page's last messages go out first, unless a page waits already
    try:
        loaded = wrap_model(models.load(DEFAULT_MODEL), origin="bundled")
    except BaseException as exc:  # noqa: BLE001 - handed to the page that waits for it (require_model names it)
        load.model.set_exception(exc)
        return
    try:
        # Everything allocated so far (torch, plotly, the model: ~240,000 objects) lives as long as the server:
        # out of the cyclic collector's full passes (gc.freeze; what and why: xai.startup.freeze_heap). The
        # warm-up leaves ~9,000 more, which a full pass scans in ~2 ms.
        freeze_heap()
        # The upload decoders' fork server starts now, in the background, not on the first upload. It is a
        # separate process whose imports take ~0.75 s of CPU: started beside torch's import it ran on the core the
        # browser needs to draw the page, and the model was ready later; started after the warm-up, it was not up
        # yet when a film came right after the model was ready (see benchmarks/RESULTS.md). A film chosen before
        # it is up waits.
        decoders = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xai-decoder-warm-up")
        decoders.submit(warm_up)
        decoders.shutdown(wait=False)
    except Exception as failure:  # noqa: BLE001 - the pages waiting for the model get it all the same
        logging.getLogger(__name__).warning("The start-up's heap freeze or decoders failed (%s: %s).",
                                            type(failure).__name__, failure)
    load.model.set_result(loaded)
    # The page's warm-up (~0.5 s) runs after the model is handed out, not before: a film chosen meanwhile shares
    # the cores with it, and its engine run waits for the warm-up's on the model's lock (xai.engine.locks).
    try:
        warm_up_bundled(loaded)
    except Exception as failure:  # noqa: BLE001 - the app serves on; the first result pays the first-use costs
        logging.getLogger(__name__).warning("The start-up warm-up failed (%s: %s); the first result will be "
                                            "slower.", type(failure).__name__, failure)


def default_model() -> ActiveModel:
    """The bundled ChestCOVNet, ONE object for every session: waits for :func:`bundled_model_loading` (starting
    it when nothing has yet), with a spinner while it does. A failed load is not kept: the next call tries again."""
    load = bundled_model_loading()
    load.wanted.set()
    if not load.model.done():
        with st.spinner("Loading the bundled model…"):
            wait([load.model])
    try:
        return load.model.result()
    except Exception:
        bundled_model_loading.clear()
        raise


def forget_bundled_model() -> None:
    """Drop the loaded bundled model: the next :func:`default_model` loads :data:`DEFAULT_MODEL` again (tests)."""
    bundled_model_loading.clear()


def warm_up_bundled(loaded: ActiveModel) -> None:
    """The result page's whole path once on a bundled film; its explanation also builds the CPU kernels (oneDNN
    compiles one per convolution shape on first use: seconds), so the first user waits for none of it."""
    import torch

    features = warm_up_page(loaded)
    spec = loaded.card.preprocessing
    blank = torch.zeros(1, spec.channels, spec.input_size, spec.input_size)
    if features is None:  # no bundled film to warm up on: a blank input builds the kernels
        features = loaded.explainer.explain(blank).features
    warm_up_display(loaded, blank, features)


def wait_for_warm_up(timeout_s: float = 120) -> None:
    """Block until the bundled model's load and start-up warm-up have finished (tests; the pages never wait for
    the warm-up): returns at once when none is running, TimeoutError when it is still running after
    ``timeout_s``."""
    start_up_worker().submit(lambda: None).result(timeout=timeout_s)  # queued behind the load and warm-up


def user_model() -> ActiveModel | None:
    """The model this session loaded on the Model page, or None (the bundled model is used)."""
    chosen = session().get(Key.USER_MODEL)
    return chosen if isinstance(chosen, ActiveModel) else None


def set_user_model(model: ActiveModel | None) -> None:
    """Use ``model`` in this session from now on (None: back to the bundled model)."""
    if model is None:
        session().pop(Key.USER_MODEL, None)
    else:
        session()[Key.USER_MODEL] = model


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


def active_choice() -> ModelChoice | None:
    """This session's model as its widgets need it, without waiting for the bundled model to load (its card is
    read in milliseconds, see :func:`bundle_card`); None when the bundle's card does not read."""
    ensure_routed()
    chosen = user_model()
    if chosen is not None:
        return ModelChoice(card=chosen.card, key=chosen.key, origin=chosen.origin)
    card = bundle_card(DEFAULT_MODEL)
    return None if card is None else ModelChoice(card=card, key=model_key(card), origin="bundled")


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


def default_target_choice(model: ActiveModel) -> int:
    """Where a page's "Explain class" picker (``["predicted", *class names]``) starts: the card's positive class
    (the class its threshold decides on), else "predicted"."""
    positive = getattr(model.card, "positive_class", None)
    names = model.class_names
    return names.index(positive) + 1 if positive in names else 0
