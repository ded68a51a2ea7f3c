"""This session's model: the bundled one (loaded and warmed up once per server) or one loaded on the Model page.

* the bundled model is loaded once for all sessions (``st.cache_resource``); the engine serialises use of a
  shared module and leaves nothing on it;
* a model the user loads on the Model page lives in that session's ``st.session_state`` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import streamlit as st

from pages._access import ensure_routed
from pages._state import Key, session
from pages._warmup import warm_up_display, warm_up_page

if TYPE_CHECKING:
    from models import LoadedModel, ModelCard
    from xai.engine import Explainer

DEFAULT_MODEL = os.environ.get("XAI_APP_MODEL", "chestcovnet")  # a bundle name, folder or .zip


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
    """The bundled ChestCOVNet, ONE object for every session, returned as soon as it is loaded; its warm-up
    goes on in the background (:func:`warm_up_bundled`)."""
    import models
    from xai.sandboxed_decoder import warm_up
    from xai.startup import freeze_heap

    loaded = wrap_model(models.load(DEFAULT_MODEL), origin="bundled")
    # Everything allocated so far (torch, plotly, the model: ~240,000 objects) lives as long as the server: out
    # of the cyclic collector's full passes (gc.freeze; what and why: xai.startup.freeze_heap). The warm-up
    # leaves ~9,000 more, which a full pass scans in ~2 ms.
    freeze_heap()
    # The upload decoders' fork server starts now, in the background, not on the first upload. It is a separate
    # process whose imports take ~0.75 s of CPU: started beside torch's import it ran on the core the browser
    # needs to draw the page, and the model was ready later; started after the warm-up, it was not up yet when a
    # film came right after the model was ready (see benchmarks/RESULTS.md). A film chosen before it is up waits.
    decoders = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xai-decoder-warm-up")
    decoders.submit(warm_up)
    decoders.shutdown(wait=False)
    # The page's warm-up (~0.5 s) runs beside the page, which draws the model's widgets at once instead of after
    # it (the model was usable ~0.5 s later). A film chosen meanwhile shares the cores with it, and its engine
    # run waits for the warm-up's on the model's lock (xai.engine.locks).
    start_up_worker().submit(warm_up_bundled, loaded).add_done_callback(report_failed_warm_up)
    return loaded


@st.cache_resource(show_spinner=False)
def start_up_worker() -> ThreadPoolExecutor:
    """The thread that warms the bundled model up (held by Streamlit's resource cache, not a module global)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="xai-page-warm-up")


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


def report_failed_warm_up(done: Future[None]) -> None:
    """Say in the server's log when the start-up warm-up failed (on a bundled film: nothing about a patient). The
    app goes on serving; the first result then pays the first-use costs the warm-up would have paid."""
    failure = done.exception()
    if failure is not None:
        logging.getLogger(__name__).warning("The start-up warm-up failed (%s: %s); the first result will be slower.",
                                            type(failure).__name__, failure)


def wait_for_warm_up(timeout_s: float = 120) -> None:
    """Block until the bundled model's start-up warm-up has finished (tests; the pages never wait for it): returns
    at once when none is running, TimeoutError when it is still running after ``timeout_s``."""
    start_up_worker().submit(lambda: None).result(timeout=timeout_s)  # queued behind the warm-up


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


def default_target_choice(model: ActiveModel) -> int:
    """Where a page's "Explain class" picker (``["predicted", *class names]``) starts: the card's positive class
    (the class its threshold decides on), else "predicted"."""
    positive = getattr(model.card, "positive_class", None)
    names = model.class_names
    return names.index(positive) + 1 if positive in names else 0
