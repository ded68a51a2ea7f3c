"""Lung fields and anatomical regions in the app, for every page: one cached :func:`xai.anatomy.anatomy_regions`
per image (its V7 lung field is the page's lung field: the lung model runs once per film), the outlines to draw
(lungs, zone boundaries) and each map's anatomical readout (:func:`xai.anatomy.anatomy_readout`: its share in the
visible lung fields and per region), cached per explanation.

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

from xai.anatomy import (
    AnatomyReadout,
    AnatomyRegions,
    LungField,
    LungModelError,
    anatomy_readout,
    anatomy_regions,
    zone_outlines,
)
from xai.radiograph import Radiograph

CACHE_ENTRIES = 16
CACHE_TTL_S = 3600
#: Longest side of the grid the anatomical regions are cut on, and of the copy the text and marker finder reads:
#: films up to this size keep their own grid, larger ones are shrunk by area. The shares are whole percents, which
#: a 512 px grid keeps (the lung model itself sees 128 px; ``tests/test_explain_readout.py`` bounds the change
#: against 1024 px), and the markers' thresholds are fractions of the long side, measured on 512 px films. It
#: runs beside the engine on a 2-core machine: 512 px costs ~60 ms of CPU on a 1 MP film, 1024 px ~150 ms, and
#: every one of them is taken from the first result (``benchmarks/bench_anatomy.py``).
REGIONS_SIDE = 512


@st.cache_resource(max_entries=CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def film_anatomy(image_sha: str, _radiograph: Radiograph) -> AnatomyRegions | str:
    """The film's anatomical regions (:func:`xai.anatomy.anatomy_regions` on at most :data:`REGIONS_SIDE` px,
    markers by image processing without OCR: Tesseract would add ~1 s per film), or the reason there are none
    (the lung model could not be loaded)."""
    try:
        return anatomy_regions(_radiograph, max_side=REGIONS_SIDE, markers_side=REGIONS_SIDE, ocr=False)
    except LungModelError as exc:
        return f"Lung fields are unavailable: {exc}"


@st.cache_resource(max_entries=CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def lung_field(image_sha: str, _radiograph: Radiograph) -> LungField | str:
    """The image's lung field (the V7 field of :func:`film_anatomy`, so the lung model runs once per film), or the
    reason there is none to show. On a film larger than :data:`REGIONS_SIDE` px the mask is brought back to the
    film's grid (bilinear, cut at one half: a smooth outline, not the small grid's steps)."""
    regions = film_anatomy(image_sha, _radiograph)
    if isinstance(regions, str):
        return regions
    field = regions.lungs
    shape = tuple(_radiograph.pixels.shape[:2])
    if field.mask.shape == shape:
        return field
    import cv2

    mask = cv2.resize(field.mask.astype(np.uint8) * 255, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) >= 128
    mask.setflags(write=False)
    return LungField(mask=mask, found=field.found, area_fraction=float(mask.mean()), convention=field.convention,
                     reason=field.reason, components=field.components)


def zone_boundaries(image_sha: str, radiograph: Radiograph) -> np.ndarray | None:
    """The lung zones' boundaries to draw (bool, on the regions' grid: :func:`xai.render.layers` brings it to the
    view's); None when the film has no lung field or the lung model is unavailable."""
    regions = film_anatomy(image_sha, radiograph)
    return zone_outline_mask(image_sha, regions) if isinstance(regions, AnatomyRegions) and regions.found else None


@st.cache_resource(max_entries=CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def zone_outline_mask(image_sha: str, _regions: AnatomyRegions) -> np.ndarray:
    """:func:`xai.anatomy.zone_outlines`, once per film (read-only)."""
    out = zone_outlines(_regions)
    out.setflags(write=False)
    return out


@st.cache_resource(max_entries=CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def readouts(result_key: Hashable, _maps: Mapping[str, np.ndarray], _regions: AnatomyRegions) -> dict[str, AnatomyReadout]:
    """Per map of one explanation (``result_key`` names it): where its evidence lies by anatomical region
    (:func:`xai.anatomy.anatomy_readout`; maps are resampled by area onto the regions' grid, straight from the
    model's grid when they are a :class:`xai.pipeline.FilmMaps`: no film-sized map is made for this)."""
    on_grid = getattr(_maps, "on_grid", None)
    return anatomy_readout(on_grid(_regions.shape) if on_grid is not None else _maps, _regions)


@st.cache_resource(show_spinner=False)
def lung_worker() -> ThreadPoolExecutor:
    """One background worker for every session (held by Streamlit's resource cache, not a module global): the lung
    model runs beside the engine, not after it."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="xai-lungs")


def start_film_anatomy(image_sha: str, radiograph: Radiograph) -> Future:
    """Start :func:`film_anatomy` for a film in the background (returns at once, with the Future): a page that
    explains the film next gets the regions (and the lung field, :func:`lung_field`) from the cache, found while
    the engine ran on the other core, instead of after it. The lung field on a large film's own grid is made only
    when its outline is drawn. A failure is left for the page's own call to report."""
    return lung_worker().submit(film_anatomy, image_sha, radiograph)


def warm_up_anatomy_worker(radiograph: Radiograph) -> AnatomyRegions:
    """:func:`film_anatomy`'s work on a film in the background worker, uncached (start-up warm-up): the lung model
    is read, the worker's torch thread team started and the marker finder's OpenCV paths run before a user's
    first film needs them."""
    return lung_worker().submit(anatomy_regions, radiograph, max_side=REGIONS_SIDE, markers_side=REGIONS_SIDE,
                                ocr=False).result()


def lung_outline(image_sha: str, radiograph: Radiograph) -> np.ndarray | None:
    """The lung mask to draw on the film; None when it has no lung field or the lung model is unavailable."""
    field = lung_field(image_sha, radiograph)
    return field.mask if isinstance(field, LungField) and field.found else None


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
