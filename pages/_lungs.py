"""Lung fields in the app: one cached :func:`xai.anatomy.find_lungs` per image, and the share of each map inside.

Cached with ``st.cache_resource`` keyed by the image's sha256 (the LungField's arrays are read-only, so
sharing one object between sessions is safe); the lung model itself is loaded once per process by
:func:`xai.anatomy.load_lung_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import streamlit as st

from xai.anatomy import LungField, LungModelError, evidence_in_lungs, evidence_outside, find_lungs
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


def lung_shares(field: LungField, maps: Mapping[str, np.ndarray]) -> dict[str, tuple[float, dict[str, float]]]:
    """Per map on the original grid: (share inside the lungs, where the rest lies) — see xai.anatomy."""
    if not field.found:
        return {m: (float("nan"), {}) for m in maps}
    return {m: (evidence_in_lungs(heat, field.mask), evidence_outside(heat, field.mask)) for m, heat in maps.items()}


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
