"""Lung fields in the app, for every page: one cached :func:`xai.anatomy.find_lungs` per image, the outline to
draw, and the share of each map inside the lungs (:func:`xai.anatomy.lung_evidence`, cached per explanation).

Cached with ``st.cache_resource`` keyed by the image's sha256 (the LungField's arrays are read-only, so
sharing one object between sessions is safe); the lung model itself is loaded once per process by
:func:`xai.anatomy.load_lung_model`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import streamlit as st

from xai.anatomy import EvidenceShare, LungField, LungModelError, find_lungs, lung_evidence
from xai.radiograph import Radiograph

CACHE_ENTRIES = 16
CACHE_TTL_S = 3600


@st.cache_resource(max_entries=CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def lung_field(image_sha: str, _radiograph: Radiograph) -> LungField | str:
    """The image's lung field, or the reason there is none to show (the lung model could not be loaded)."""
    try:
        return find_lungs(_radiograph)
    except LungModelError as exc:
        return f"Lung fields are unavailable: {exc}"


#: One background worker for every session: the lung model runs beside the engine, not after it.
_EARLY = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xai-lungs")


def start_lung_field(image_sha: str, radiograph: Radiograph) -> Future:
    """Start :func:`lung_field` for a film in the background (returns at once, with the Future): a page that
    explains the film next gets the lung field from the cache, found while the engine ran on the other core,
    instead of after it (~0.1 s of the first result). A failure is left for the page's own call to report."""
    return _EARLY.submit(lung_field, image_sha, radiograph)


def warm_up_lung_worker(radiograph: Radiograph) -> LungField:
    """The lung model on a film in the background worker, uncached (start-up warm-up): the worker's first torch
    call starts that thread's OpenMP team before a user's first film needs it."""
    return _EARLY.submit(find_lungs, radiograph).result()


def lung_outline(image_sha: str, radiograph: Radiograph) -> np.ndarray | None:
    """The lung mask to draw on the film; None when it has no lung field or the lung model is unavailable."""
    field = lung_field(image_sha, radiograph)
    return field.mask if isinstance(field, LungField) and field.found else None


#: Longest side of the grid the app's lung evidence is computed on (the caption gives whole percents).
LUNG_EVIDENCE_SIDE = 1024


@st.cache_resource(max_entries=CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def lung_shares(result_key: Hashable, _maps: Mapping[str, np.ndarray], _field: LungField) -> dict[str, EvidenceShare]:
    """Per map of one explanation (``result_key`` names it: image, model, target, methods): the share inside the
    lungs and where the rest lies (:func:`xai.anatomy.lung_evidence`; nan / {} without a lung field).

    Scored on the film's grid up to :data:`LUNG_EVIDENCE_SIDE` px; larger films on a grid shrunk by area, which
    keeps mass shares (a 12 MP film then costs milliseconds instead of a second)."""
    from xai.render import downsample_for_display

    if not _field.found:
        return {m: EvidenceShare(float("nan"), {}) for m in _maps}
    maps = {m: downsample_for_display(a, LUNG_EVIDENCE_SIDE) for m, a in _maps.items()}
    mask = _field.mask
    if max(mask.shape) > LUNG_EVIDENCE_SIDE:
        mask = downsample_for_display(mask.astype("float32"), LUNG_EVIDENCE_SIDE) >= 0.5
    return lung_evidence(maps, mask)


def contour_thumbnail(pixels: np.ndarray, field: LungField | Any, side: int) -> np.ndarray:
    """Film downsampled to ``side`` px with the lung contour drawn in green (RGB uint8)."""
    import cv2

    from xai import render

    gray = render.downsample_for_display(pixels, side)
    rgb = np.repeat((np.clip(gray, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    if isinstance(field, LungField) and field.found:
        small = cv2.resize(field.mask.astype(np.uint8), (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, (40, 200, 90), max(1, side // 160))
    return rgb
