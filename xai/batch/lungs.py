"""Where each film's evidence lies relative to its lungs, and the cohort view over many films.

Per film (:func:`lung_figures`): the lung field (:func:`xai.anatomy.find_lungs`), the share of each map's
mass inside it (:func:`xai.anatomy.evidence_in_lungs`, mask dilated by 3 % of the width) and the Grad-CAM
map *registered to the lungs' bounding box* — cropped to the box and resampled to
:data:`REGISTERED_SIDE` pixels — so that films of any size, position and framing line up lung on lung.

Per film too, the anatomical readout (:func:`xai.anatomy.anatomy_regions`, :func:`xai.anatomy.anatomy_readout`):
each map's share per named region (lung zones, heart and mediastinum, ...) and, inside the lungs, peripheral
against central. The lung model runs once for both (:func:`xai.anatomy.find_lung_fields`).

Large films are measured on their grid shrunk to at most :data:`WORK_SIDE` pixels (area averaging, the
same for the film, the mask and every map): the dilation alone of a 12 MP mask takes seconds, and a share of
mass barely changes with area averaging. Films up to that size are measured on their own grid.

Per cohort (:class:`CohortTally`): the mean registered map and the mean registered lung mask per group —
per folder (a proxy for the source hospital in an archive laid out by site) and per predicted class —
drawn as one image per group in ``index.html``: where the model looks, on average, relative to the lungs.
Running sums only; at most :data:`MAX_GROUPS` groups per grouping (the rest are pooled as "other"). The
cohort also sums each film's readout of that map, for the mean share per region per group.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from xai.radiograph import Radiograph

WORK_SIDE = 1024
REGISTERED_SIDE = 64
MAX_GROUPS = 24
COHORT_METHOD = "gradcam"
NO_LUNG_NOTICE = "no lung field found: the image may not be a frontal chest radiograph"


@dataclass(frozen=True)
class LungFigures:
    """One film's lung figures: ``in_lungs`` per method (None for a flat map or no lung field),
    ``area_fraction`` (lung pixels / film pixels), ``found`` and, when found, the registered map and mask
    (uint8, :data:`REGISTERED_SIDE` square) of :data:`COHORT_METHOD` (or the first method)."""

    in_lungs: dict[str, float | None]
    area_fraction: float
    found: bool
    reason: str = ""
    registered_map: np.ndarray | None = None
    registered_mask: np.ndarray | None = None
    anatomy: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per method: share per region of :data:`xai.anatomy.REGIONS` (None when unknown)."""
    periphery: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per method: ``{"peripheral": x, "central": y}`` inside the lung zones (None when unknown)."""
    laterality_rule: str = ""

    def record(self) -> dict[str, Any]:
        """JSON-ready: ``evidence_in_lungs``, ``lung_area_fraction``, ``anatomy``, ``periphery`` and
        ``laterality_rule`` (the keys of ``result.json``)."""
        return {"evidence_in_lungs": dict(self.in_lungs), "lung_area_fraction": self.area_fraction,
                "anatomy": self.anatomy, "periphery": self.periphery, "laterality_rule": self.laterality_rule}

    def registered(self) -> dict[str, str] | None:
        """The registered map and mask as base64 text (a few KB: small enough to travel in a report row)."""
        if self.registered_map is None or self.registered_mask is None:
            return None
        return {"map": base64.b64encode(self.registered_map.tobytes()).decode("ascii"),
                "mask": base64.b64encode(self.registered_mask.tobytes()).decode("ascii")}


def _shrink(a: np.ndarray) -> np.ndarray:
    from xai.render import downsample_for_display

    return downsample_for_display(np.asarray(a, dtype=np.float32), WORK_SIDE)


def _share(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def lung_figures(pixels: np.ndarray, maps: Mapping[str, np.ndarray], *,
                 radiograph: Radiograph | None = None) -> LungFigures:
    """The lung figures and anatomical readout of a film (``pixels``) and its maps, all on one grid of any size
    (the film's own, or a shrunk copy); see the module docstring. ``radiograph``: the film as decoded, when
    at hand: its DICOM PatientOrientation then decides laterality, and burned-in text and markers are
    looked for at its full resolution."""
    from xai.anatomy import anatomy_readout, anatomy_regions, lung_box, lung_evidence

    methods = tuple(maps)
    regions = anatomy_regions(radiograph if radiograph is not None else _shrink(pixels), max_side=WORK_SIDE)
    lungs = regions.lungs
    gray_shape = regions.shape
    readout = {m: r.record() for m, r in anatomy_readout({m: _shrink(heat) for m, heat in maps.items()},
                                                         regions).items()}
    anatomy = {m: r["regions"] for m, r in readout.items()}
    periphery = {m: r["periphery"] for m, r in readout.items()}
    if lungs is None or not lungs.found:
        return LungFigures(dict.fromkeys(methods), 0.0, False, lungs.reason if lungs else regions.reason,
                           anatomy=anatomy, periphery=periphery, laterality_rule=regions.laterality_rule)
    small = {m: _on_grid(heat, gray_shape) for m, heat in maps.items()}
    in_lungs = {m: _share(shares.inside) for m, shares in lung_evidence(small, lungs.mask).items()}
    x0, y0, x1, y1 = lung_box(lungs.mask) or (0, 0, gray_shape[1], gray_shape[0])
    cohort = COHORT_METHOD if COHORT_METHOD in small else methods[0]

    def register(a: np.ndarray) -> np.ndarray:
        crop = np.ascontiguousarray(a[y0:y1, x0:x1], dtype=np.float32)
        side = (REGISTERED_SIDE, REGISTERED_SIDE)
        return np.clip(np.rint(cv2.resize(crop, side, interpolation=cv2.INTER_AREA) * 255), 0, 255).astype(np.uint8)

    return LungFigures(in_lungs, round(float(lungs.area_fraction), 6), True, "", register(small[cohort]),
                       register(lungs.mask.astype(np.float32)), anatomy=anatomy, periphery=periphery,
                       laterality_rule=regions.laterality_rule)


def _on_grid(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map shrunk like the film (:func:`_shrink`), then onto the regions' grid when it is not there yet."""
    small = _shrink(heat)
    if small.shape == shape:
        return small
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------------------------------ the cohort
@dataclass
class _Sums:
    n: int = 0
    heat: np.ndarray = field(default_factory=lambda: np.zeros((REGISTERED_SIDE, REGISTERED_SIDE)))
    lungs: np.ndarray = field(default_factory=lambda: np.zeros((REGISTERED_SIDE, REGISTERED_SIDE)))
    readouts: int = 0
    regions: dict[str, float] = field(default_factory=dict)


@dataclass
class CohortTally:
    """Running sums of registered maps per group (see the module docstring)."""

    groups: dict[str, dict[str, _Sums]] = field(default_factory=dict)

    def add(self, registered: Mapping[str, str], groups: Mapping[str, str],
            shares: Mapping[str, float | None] | None = None) -> None:
        """Count one film's registered map and mask, and its readout ``shares`` per region when known (no
        None in it), into each of its ``{grouping: group}``."""
        known = {k: v for k, v in (shares or {}).items() if v is not None}
        if shares is not None and len(known) < len(shares):  # a share is unknown: no readout counted
            known = {}
        shape = (REGISTERED_SIDE, REGISTERED_SIDE)
        heat = np.frombuffer(base64.b64decode(registered["map"]), np.uint8).reshape(shape) / 255.0
        lungs = np.frombuffer(base64.b64decode(registered["mask"]), np.uint8).reshape(shape) / 255.0
        for grouping, group in groups.items():
            table = self.groups.setdefault(grouping, {})
            key = group if group in table or len(table) < MAX_GROUPS else "other"
            sums = table.setdefault(key, _Sums())
            sums.n += 1
            sums.heat += heat
            sums.lungs += lungs
            if known:
                sums.readouts += 1
                for region, value in known.items():
                    sums.regions[region] = sums.regions.get(region, 0.0) + float(value)

    def means(self, grouping: str) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
        """``(group, films, mean map, mean lung mask)`` per group, largest first."""
        table = self.groups.get(grouping, {})
        return [(name, s.n, s.heat / s.n, s.lungs / s.n)
                for name, s in sorted(table.items(), key=lambda kv: (-kv[1].n, kv[0]))]


    def region_means(self, grouping: str) -> dict[str, dict[str, float]]:
        """``{group: {region: mean share}}`` over the films of each group with a readout (groups without one
        are left out); same group order as :meth:`means`."""
        table = self.groups.get(grouping, {})
        ordered = sorted(table.items(), key=lambda kv: (-kv[1].n, kv[0]))
        return {name: {r: v / s.readouts for r, v in s.regions.items()} for name, s in ordered if s.readouts}


def cohort_image(mean_map: np.ndarray, mean_lungs: np.ndarray, side: int = 192) -> np.ndarray:
    """The mean map in colour (inferno, 0 to its own maximum) with the mean lung outline (half the films)
    in cyan, ``side`` pixels square, uint8 RGB."""
    from xai.render import colorize

    top = float(mean_map.max())
    scaled = mean_map / top if top > 0 else np.zeros_like(mean_map)
    rgb = cv2.resize(colorize(scaled), (side, side), interpolation=cv2.INTER_LINEAR)
    outline = (cv2.resize(mean_lungs.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR) >= 0.5)
    contours, _ = cv2.findContours(outline.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(rgb, contours, -1, (0, 255, 255), 1, lineType=cv2.LINE_AA)
    return rgb
