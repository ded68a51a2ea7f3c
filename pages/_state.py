"""The app's own ``st.session_state`` keys, in one place, and the helpers that keep widget values.

Every key the app's code stores in a session is a constant of :class:`Key` (widget keys live next to their
widget). Pages never read or write these as bare strings: the module that owns a value gives typed accessors
(:func:`pages._ingest.current_image`, :func:`pages._models.user_model`, …).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

import streamlit as st


class Key:
    """Every ``st.session_state`` key the app's own state uses."""

    ACCESS_GRANTED = "_access_granted"  # bool: the shared password was entered in this session
    IMAGE = "image"  # LoadedImage: the radiograph every page looks at
    LOAD_ERROR = "load_error"  # str: why the last chosen file could not be read
    SEEN_INPUTS = "_seen_inputs"  # {uploader/selectbox key: the choice already loaded}
    USER_MODEL = "user_model"  # ActiveModel loaded on the Model page (this session only)
    MODEL_FLASH = "_model_flash"  # str: the Model page's message after loading a model
    PREDICTED = "_predicted"  # {(image sha, model key): predicted class name}
    STORES = "_stores"  # {name: dict}: per-page result stores (e.g. the Trust page's checks)
    CHART_CODE_SENT = "_chart_code_sent"  # bool: this session's page was given a chart to load plotly's code
    KEPT_WIDGETS = "_kept_widgets"  # {widget key: value}: what widgets drawn only sometimes held when last drawn
    SHOW_PATIENT = "show_patient"  # bool: the Explain page's "Show patient details" switch (every page obeys it)


def session() -> MutableMapping[str, Any]:
    """This session's state (``st.session_state``)."""
    return st.session_state  # type: ignore[return-value]


def explain_target_key(model_key: str) -> str:
    """The Explain page's "Target class" widget key for a model (the How page starts from the same class)."""
    return f"target:{model_key}"


def patient_details_shown() -> bool:
    """Whether this session switched patient details on (off until the user asks: names stay hidden)."""
    return bool(kept_value(Key.SHOW_PATIENT, False))


def page_store(name: str) -> dict[Any, Any]:
    """A page's own results for this session (created empty on first use), under :data:`Key.STORES`."""
    return session().setdefault(Key.STORES, {}).setdefault(name, {})


def predicted_class(image_sha: str, model_key: str) -> str | None:
    """The class the model predicted for this image, once it has been explained in this session."""
    return session().get(Key.PREDICTED, {}).get((image_sha, model_key))


def remember_predicted(image_sha: str, model_key: str, name: str) -> None:
    session().setdefault(Key.PREDICTED, {})[(image_sha, model_key)] = name


# Streamlit drops a widget's state at the end of a run that did not draw it: widgets drawn only sometimes (e.g.
# inside an expander that draws its content only while open) keep their values in Key.KEPT_WIDGETS instead.
def kept_value(key: str, default: Any) -> Any:
    """The value of widget ``key`` whether or not this run draws it: its state, else the value it held when last
    drawn, else ``default``."""
    state = session()
    if key in state:
        return state[key]
    return state.get(Key.KEPT_WIDGETS, {}).get(key, default)


def restore_widget(key: str, default: Any) -> None:
    """Before drawing widget ``key``: give it back its kept value (or ``default``) when Streamlit dropped its
    state. Draw it without a ``value``/``index``: its state is its value (no default to conflict with)."""
    if key not in session():
        session()[key] = kept_value(key, default)


def keep_widgets(keys: Iterable[str]) -> None:
    """After drawing widgets: keep their values for runs that do not draw them (see :func:`kept_value`)."""
    state = session()
    kept = state.setdefault(Key.KEPT_WIDGETS, {})
    for key in keys:
        if key in state:
            kept[key] = state[key]
