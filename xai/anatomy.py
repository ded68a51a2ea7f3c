"""Lung fields: where the lungs are on a radiograph, and how much of a saliency map lies inside them.

.. code-block:: python

    from xai.anatomy import lung_mask, evidence_in_lungs
    mask = lung_mask(radiograph)                 # bool (H, W) on radiograph.pixels' own grid
    share = evidence_in_lungs(saliency, mask)    # float in [0, 1]; nan for a flat map

**The model.** A compact U-Net (:class:`xai.unet.LungUNet`, 0.49 M parameters) trained from scratch on 904
films with manual lung masks (``../shared/data/lungs``; see ``models/bundles/lungs/card.json`` for data,
figures and licences). Its bundle (``card.json`` + ``model.safetensors``, sha256-checked, never unpickled) is
read once per process and shared; inference runs under ``torch.inference_mode`` on a module in eval mode, which
mutates nothing, so concurrent calls from several sessions are safe.

**Input.** The same path as every model here: :func:`xai.preprocessing.prepare` with
:data:`LUNG_PREPROCESSING` (no crop, letterbox to 128 px, global histogram equalisation — which also makes
the mask nearly independent of the display window — then ``(x - 0.5) / 0.25``). A ``Radiograph`` is already
bone-white/air-black whatever its DICOM photometric interpretation, so MONOCHROME1 films need nothing more.

**Two conventions, one answer.** The network has one output per convention (:data:`CONVENTIONS`): ``"nlm"``
(Montgomery/Shenzhen manual masks: the lungs without the heart's shadow) and ``"v7"`` (V7 Labs polygons: the
lungs including the retrocardiac lung behind the heart). :func:`lung_mask` returns ``"v7"`` by default: lung
tissue behind the heart is lung, and evidence there should count as inside the lungs.

**Post-processing** (on the 128 px grid): probability > 0.5; keep the two largest connected components
(8-connectivity) that each cover at least :data:`MIN_COMPONENT` of the image. The film has a lung field only
if they look like a pair of lungs: together :data:`AREA_RANGE` of the image, spanning at least
:data:`MIN_SPAN` of its width and height; two regions, one on each side of the midline, side by side
(vertical overlap >= :data:`MIN_OVERLAP` of the shorter), each at least :data:`MIN_ASPECT` as tall as wide,
mean solidity (area / convex-hull area) >= :data:`MIN_SOLIDITY`, and mean probability inside >=
:data:`MIN_CONFIDENCE`. (On the training masks: always two regions; height/width >= 0.79, solidity >= 0.66.)
Otherwise the mask is all False and :attr:`LungField.reason` says why: a document, a photograph or a
non-frontal view has no lung field (nor, by design, a film where one lung is not seen at all). The kept
probability map is then resampled onto the original grid (bilinear,
:meth:`xai.preprocessing.Geometry.to_original`) and thresholded at 0.5, so the contour is smooth at any
resolution.

**Evidence inside the lungs.** :func:`evidence_in_lungs` is the share of the map's mass ``sum |s|`` that falls
inside the mask dilated by :data:`DEFAULT_DILATION` of the image width (a disc; 3 % keeps hilar and pleural
evidence from counting as outside — Field guide section 6). Both signs count as evidence (a signed map such as
Integrated Gradients marks where the model looks either way). :func:`evidence_outside` splits the rest by
region (film border, above, below, beside or between the lungs) so a warning can say where it lies.

**The anatomical readout** answers "where is it looking?" in a radiologist's words:

.. code-block:: python

    regions = anatomy_regions(radiograph)            # 13 named, disjoint bool masks covering the film
    shares = evidence_by_region(saliency, regions)   # {region: share of sum |s|}; sums to 1; nan for a flat map
    readout_sentence(shares)                         # "58% heart and mediastinum · 22% left lower zone"

The regions (:data:`REGIONS`) are the six lung zones of the visible lung fields (NLM convention; upper, middle
and lower = thirds of each lung's own height, the usual stand-in for the Brixia zones), ``heart and
mediastinum`` (the retrocardiac lung the V7 convention adds, plus the space between the lungs), ``above`` /
``below the lungs``, ``chest wall``, ``outside the body``, ``film border`` and ``text and markers``; the
patient's right and left follow the DICOM PatientOrientation when the file gives it, the display convention
otherwise (:func:`laterality`). Definitions in :func:`anatomy_regions_from_masks`. Both lung conventions come
from one pass of the network (:func:`find_lung_fields`), and several maps of one film are scored with one
weighted histogram each (:func:`anatomy_readout`).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numpy.typing import NDArray

from xai.preprocessing import Preprocessing, body_crop_box, prepare, register_crop_rule
from xai.radiograph import Radiograph

if TYPE_CHECKING:
    from xai.unet import LungUNet

__all__ = [
    "AREA_RANGE",
    "AnatomyReadout",
    "AnatomyRegions",
    "LUNG_ZONES",
    "PERIPHERY",
    "REGIONS",
    "REGION_COLOURS",
    "anatomy_readout",
    "anatomy_regions",
    "anatomy_regions_from_masks",
    "evidence_by_region",
    "evidence_periphery",
    "laterality",
    "outside_body",
    "readout_sentence",
    "visible_lung_share",
    "zone_outlines",
    "BORDER_BAND",
    "BUNDLE_DIR",
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "DEFAULT_DILATION",
    "LUNG_CROP_MARGIN",
    "LUNG_PREPROCESSING",
    "LungField",
    "LungModel",
    "LungModelError",
    "MIN_COMPONENT",
    "MIN_ASPECT",
    "MIN_CONFIDENCE",
    "MIN_OVERLAP",
    "MIN_SOLIDITY",
    "MIN_SPAN",
    "OUTSIDE_REGIONS",
    "EvidenceShare",
    "dilate_mask",
    "evidence_in_lungs",
    "evidence_outside",
    "find_lung_fields",
    "find_lungs",
    "load_lung_model",
    "lung_box",
    "lung_crop_box",
    "lung_evidence",
    "lung_mask",
]

CONVENTIONS: tuple[str, ...] = ("nlm", "v7")
DEFAULT_CONVENTION = "v7"
LUNG_PREPROCESSING = Preprocessing(input_size=128, channels=1, mean=(0.5,), std=(0.25,), resize="letterbox",
                                   equalize="hist", crop="none")
BUNDLE_DIR = Path(__file__).resolve().parent.parent / "models" / "bundles" / "lungs"
DEFAULT_DILATION = 0.03
BORDER_BAND = 0.05
OUTSIDE_REGIONS = ("film border", "above the lungs", "below the lungs", "beside the lungs", "between the lungs")
MIN_COMPONENT = 0.01
AREA_RANGE = (0.06, 0.65)
MIN_SPAN = (0.30, 0.25)
MIN_CONFIDENCE = 0.80
MIN_OVERLAP = 0.5
MIN_ASPECT = 0.6
MIN_SOLIDITY = 0.6
_MAX_WEIGHTS_BYTES = 64 * 1024 * 1024


class LungModelError(Exception):
    """The lung-field bundle is missing, damaged or inconsistent with its card."""


# ------------------------------------------------------------------------------------------ the model
@dataclass(frozen=True)
class LungModel:
    """A loaded lung-field network with what its card says about it (read-only; share freely)."""

    module: LungUNet
    preprocessing: Preprocessing
    conventions: tuple[str, ...]
    card: dict[str, Any]


_LOCK = threading.Lock()
_LOADED: dict[Path, LungModel] = {}


def load_lung_model(bundle: str | Path | None = None) -> LungModel:
    """Read a lung bundle (default :data:`BUNDLE_DIR`) once per process; later calls return the same object.

    The weights' sha256 must match the card; weights are safetensors (no code is ever executed).
    Raises :class:`LungModelError` naming the problem.
    """
    directory = Path(bundle).resolve() if bundle is not None else BUNDLE_DIR
    with _LOCK:
        if directory not in _LOADED:
            _LOADED[directory] = _read_bundle(directory)
        return _LOADED[directory]


def _read_bundle(directory: Path) -> LungModel:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from xai.unet import LungUNet

    card_path, weights_path = directory / "card.json", directory / "model.safetensors"
    try:
        card = json.loads(card_path.read_text())
        weights = weights_path.read_bytes() if weights_path.stat().st_size <= _MAX_WEIGHTS_BYTES else None
    except (OSError, ValueError) as exc:
        raise LungModelError(f"lung bundle {directory}: cannot read card.json / model.safetensors "
                             f"({type(exc).__name__}: {exc})") from None
    if weights is None:
        raise LungModelError(f"lung bundle {directory}: model.safetensors is larger than {_MAX_WEIGHTS_BYTES} bytes")
    if hashlib.sha256(weights).hexdigest() != card.get("sha256"):
        raise LungModelError(f"lung bundle {directory}: model.safetensors does not match the card's sha256")
    try:
        preprocessing = Preprocessing.from_dict(card["preprocessing"])
        conventions = tuple(card["conventions"])
        module = LungUNet(preprocessing.channels, len(conventions), card["widths"])
        module.load_state_dict(load_safetensors(weights), strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as exc:
        raise LungModelError(f"lung bundle {directory}: card and weights disagree ({type(exc).__name__}: {exc})") from None
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LungModel(module=module, preprocessing=preprocessing, conventions=conventions, card=card)


# ------------------------------------------------------------------------------------------- the mask
@dataclass(frozen=True)
class LungField:
    """The result of :func:`find_lungs`.

    ``mask``: bool (H, W) on the image's grid (read-only; all False when ``found`` is False).
    ``area_fraction``: mask pixels / image pixels. ``convention``: which output was used. ``reason``: why no
    lung field was accepted ("" when found). ``components``: number of kept components (0-2).
    """

    mask: np.ndarray
    found: bool
    area_fraction: float
    convention: str
    reason: str
    components: int


def _grid_probabilities(image: Radiograph | np.ndarray, model: LungModel) -> tuple[np.ndarray, Any]:
    """Every convention's probability map on the network's grid, (C, h, w), from one pass, and the geometry."""
    import torch

    x, geometry = prepare(image, model.preprocessing)
    with torch.inference_mode():
        return torch.sigmoid(model.module(x)[0]).numpy(), geometry


def _checked_convention(convention: str, model: LungModel) -> int:
    if convention not in model.conventions:
        raise ValueError(f"convention must be one of {', '.join(model.conventions)}; got {convention!r}")
    return model.conventions.index(convention)


def _solidity(component: np.ndarray) -> float:
    """Area / convex-hull area of a binary component (1 for a convex shape)."""
    import cv2

    contours, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.contourArea(cv2.convexHull(np.vstack(contours)))
    return float(component.sum()) / max(hull, 1.0)


def _implausible(labels: np.ndarray, stats: np.ndarray, order: list[int], content_box: tuple[int, int, int, int]) -> str:
    """Why two kept components are not a pair of lungs ("" when they are); see the module docstring."""
    import cv2

    x0, y0, x1, y1 = content_box
    if len(order) < 2:
        return "only one lung-like region found (a frontal chest film shows two lungs)"
    left, right = sorted(order, key=lambda i: stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH] / 2)
    centre = (x0 + x1) / 2
    if not (stats[left, cv2.CC_STAT_LEFT] < centre < stats[right, cv2.CC_STAT_LEFT] + stats[right, cv2.CC_STAT_WIDTH]):
        return "the two lung-like regions are not on either side of the image's midline"
    tops = [stats[i, cv2.CC_STAT_TOP] for i in (left, right)]
    heights = [stats[i, cv2.CC_STAT_HEIGHT] for i in (left, right)]
    overlap = min(t + h for t, h in zip(tops, heights, strict=True)) - max(tops)
    if overlap < MIN_OVERLAP * min(heights):
        return "the two lung-like regions are not side by side"
    if min(stats[i, cv2.CC_STAT_HEIGHT] / stats[i, cv2.CC_STAT_WIDTH] for i in (left, right)) < MIN_ASPECT:
        return "a lung-like region is much wider than tall"
    if np.mean([_solidity(labels == i) for i in (left, right)]) < MIN_SOLIDITY:
        return "the lung-like regions are too ragged to be lungs"
    return ""


def _keep_lungs(prob: np.ndarray, content_box: tuple[int, int, int, int]) -> tuple[np.ndarray, int, str]:
    """Binary lungs on the grid after the plausibility rules (see the module docstring)."""
    import cv2

    x0, y0, x1, y1 = content_box
    content = np.zeros(prob.shape, bool)
    content[y0:y1, x0:x1] = True
    binary = (prob > 0.5) & content
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    area_total = float((x1 - x0) * (y1 - y0))
    order = sorted(range(1, n), key=lambda i: -stats[i, cv2.CC_STAT_AREA])[:2]
    order = [i for i in order if stats[i, cv2.CC_STAT_AREA] >= MIN_COMPONENT * area_total]
    keep = np.isin(labels, order) if order else np.zeros(prob.shape, bool)
    fraction = float(keep.sum()) / area_total
    if not order:
        return keep, 0, "no lung-shaped region found"
    if not AREA_RANGE[0] <= fraction <= AREA_RANGE[1]:
        return keep, len(order), f"the lung-like region covers {fraction:.0%} of the image (expected " \
                                 f"{AREA_RANGE[0]:.0%}-{AREA_RANGE[1]:.0%})"
    ys, xs = np.nonzero(keep)
    span_x, span_y = (xs.max() - xs.min() + 1) / (x1 - x0), (ys.max() - ys.min() + 1) / (y1 - y0)
    if span_x < MIN_SPAN[0] or span_y < MIN_SPAN[1]:
        return keep, len(order), f"the lung-like region spans {span_x:.0%} x {span_y:.0%} of the image " \
                                 f"(expected at least {MIN_SPAN[0]:.0%} x {MIN_SPAN[1]:.0%})"
    shape = _implausible(labels, stats, order, content_box)
    if shape:
        return keep, len(order), shape
    confidence = float(prob[keep].mean())
    if confidence < MIN_CONFIDENCE:
        return keep, len(order), f"the segmentation is unsure (mean probability {confidence:.2f} < {MIN_CONFIDENCE})"
    return keep, len(order), ""


def find_lungs(image: Radiograph | np.ndarray, *, convention: str = DEFAULT_CONVENTION,
               model: LungModel | None = None) -> LungField:
    """Segment the lung fields of a frontal chest radiograph; see the module docstring for every rule.

    ``image``: a :class:`Radiograph` or a 2-D gray array (uint8, or float in [0, 1], bone white). The mask is on
    the image's own grid. ``convention``: ``"v7"`` (default; retrocardiac lung included) or ``"nlm"``.
    """
    model = model if model is not None else load_lung_model()
    channel = _checked_convention(convention, model)
    probs, geometry = _grid_probabilities(image, model)
    return _field(probs[channel], geometry, convention)


def find_lung_fields(image: Radiograph | np.ndarray, *, model: LungModel | None = None) -> dict[str, LungField]:
    """:func:`find_lungs` for every convention of the model (``{"nlm": ..., "v7": ...}``) from ONE network pass:
    the outputs share the network, so the second convention costs only its post-processing."""
    model = model if model is not None else load_lung_model()
    probs, geometry = _grid_probabilities(image, model)
    return {c: _field(probs[i], geometry, c) for i, c in enumerate(model.conventions)}


def _field(prob: np.ndarray, geometry: Any, convention: str) -> LungField:
    """One convention's probability map (network grid) -> its :class:`LungField` on the original grid."""
    keep, components, reason = _keep_lungs(prob, geometry.content_box)
    H, W = geometry.original_size
    if reason:
        mask = np.zeros((H, W), bool)
    else:
        mask = geometry.to_original(np.where(keep, prob, 0.0).astype(np.float32)) > 0.5
    mask.setflags(write=False)
    return LungField(mask=mask, found=not reason, area_fraction=float(mask.mean()), convention=convention,
                     reason=reason, components=components)


def lung_mask(radiograph: Radiograph | np.ndarray, *, convention: str = DEFAULT_CONVENTION,
              model: LungModel | None = None) -> np.ndarray:
    """bool (H, W) lung fields on ``radiograph.pixels``' grid; all False when the image has no lung field."""
    return find_lungs(radiograph, convention=convention, model=model).mask


def lung_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) bounding box of a mask (x1/y1 exclusive); None for an empty mask."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


#: Margin around the lung box of :func:`lung_crop_box`, as a fraction of the box's size on each side.
LUNG_CROP_MARGIN = 0.08


def lung_crop_box(image: np.ndarray, *, margin: float = LUNG_CROP_MARGIN) -> tuple[int, int, int, int]:
    """Box around the lung fields: (x0, y0, x1, y1), x1/y1 exclusive — the ``"lungs"`` crop of
    :func:`xai.preprocessing.prepare` (this module registers it there when imported).

    Rule: the lung U-Net's lung field (:func:`find_lungs`, default convention, which includes the
    retrocardiac lung), its bounding box (:func:`lung_box`) plus ``margin`` of the box size on each side
    (keeps apices, costophrenic angles and the pleura when the mask is a little tight), clipped to the
    image. Everything outside — labels, markers, collimation, the film's border, shoulders and abdomen — is
    left out of the model's input. When the U-Net finds no plausible lung field
    :func:`xai.preprocessing.body_crop_box` is used instead, so a film is never cropped to a guess.
    """
    img = np.asarray(image, dtype=np.float32)
    H, W = img.shape
    field = find_lungs(img)
    box = lung_box(field.mask) if field.found else None
    if box is None:
        return body_crop_box(img)
    x0, y0, x1, y1 = box
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return (max(0, math.floor(x0 - mx)), max(0, math.floor(y0 - my)),
            min(W, math.ceil(x1 + mx)), min(H, math.ceil(y1 + my)))


register_crop_rule("lungs", lung_crop_box)


# --------------------------------------------------------------------------------------- the evidence
def dilate_mask(mask: np.ndarray, dilation: float = DEFAULT_DILATION) -> np.ndarray:
    """Grow a bool mask by a disc of radius ``r = round(dilation * width)`` pixels (0 -> unchanged copy).

    A pixel joins when its exact Euclidean distance to the mask is at most ``r`` (one distance transform,
    Felzenszwalb & Huttenlocher 2012 via OpenCV's ``DIST_MASK_PRECISE``): the same disc as a morphological
    dilation with a round structuring element, in time independent of ``r`` (8 ms at 1024 px against 45 ms).
    """
    import cv2

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    if not (isinstance(dilation, int | float) and math.isfinite(dilation) and 0 <= dilation < 1):
        raise ValueError(f"dilation must be a fraction of the width in [0, 1), got {dilation!r}")
    m = m.astype(bool)
    r = int(round(dilation * m.shape[1]))
    if r == 0 or not m.any():
        return m.copy()
    distance = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance <= r


@dataclass(frozen=True)
class EvidenceShare:
    """Where one map's mass ``sum |s|`` lies relative to a lung mask (see :func:`lung_evidence`).

    ``inside``: share inside the dilated mask, in [0, 1] (nan for a flat map or an empty mask);
    ``outside``: share of the TOTAL mass per region of :data:`OUTSIDE_REGIONS` (empty when ``inside`` is nan).
    """

    inside: float
    outside: dict[str, float]


class _Regions:
    """One lung mask cut into ``inside`` (0) and the :data:`OUTSIDE_REGIONS` (1..5) once, as the flat pixel
    indices of each, so every map of a film is scored with six gathered sums instead of a dilation and five
    full-size masks per map."""

    def __init__(self, m: np.ndarray, dilation: float) -> None:
        H, W = m.shape
        outside = ~dilate_mask(m, dilation)
        bw, bh = max(1, int(round(BORDER_BAND * W))), max(1, int(round(BORDER_BAND * H)))
        x0, y0, x1, y1 = lung_box(m) or (0, 0, W, H)
        # Each outside pixel takes the FIRST region of OUTSIDE_REGIONS that applies: assign in reverse order.
        label = np.where(outside, np.uint8(5), np.uint8(0))                        # between the lungs
        label[:, :x0][outside[:, :x0]] = 4                                         # beside the lungs
        label[:, x1:][outside[:, x1:]] = 4
        label[y1:][outside[y1:]] = 3                                                # below the lungs
        label[:y0][outside[:y0]] = 2                                                # above the lungs
        border = np.ones((H, W), bool)
        border[bh:H - bh, bw:W - bw] = False
        label[outside & border] = 1                                                 # film border
        flat = label.ravel()
        self.pixels = [np.flatnonzero(flat == k) for k in range(1 + len(OUTSIDE_REGIONS))]

    def share(self, weight: np.ndarray) -> EvidenceShare:
        w = weight.ravel()
        mass = [float(w.take(index).sum(dtype=np.float64)) for index in self.pixels]  # float64 sums of any map
        total = sum(mass)
        return EvidenceShare(inside=min(1.0, mass[0] / total),
                             outside={name: mass[i + 1] / total for i, name in enumerate(OUTSIDE_REGIONS)})


_NO_EVIDENCE = EvidenceShare(inside=float("nan"), outside={})


def lung_evidence(maps: Mapping[str, np.ndarray], mask: np.ndarray, *,
                  dilation: float = DEFAULT_DILATION) -> dict[str, EvidenceShare]:
    """Per map: the share of its mass inside the lungs and where the rest lies, all against one mask.

    ``inside = sum(|s| * M') / sum(|s|)`` with ``M'`` the mask dilated by ``dilation`` of the width (a disc;
    default 3 %, so hilar and pleural evidence counts as inside — Field guide section 6). Both signs count
    (a signed map such as Integrated Gradients marks where the model looks either way). The mass outside is
    split by region (:data:`OUTSIDE_REGIONS`, each pixel in the first that applies): ``"film border"`` (the
    outer :data:`BORDER_BAND` of the width / height: labels, collimation edges, text), then relative to the
    lungs' bounding box ``"above the lungs"`` (neck, shoulders), ``"below the lungs"`` (diaphragm, abdomen),
    ``"beside the lungs"`` (chest wall, arms) and ``"between the lungs"`` (mediastinum, heart, spine: inside
    the box, outside the mask); ``inside`` plus the regions is 1. The measure follows the "right for the right
    reasons" idea of Ross et al. (IJCAI 2017): evidence should lie where the pathology can be.

    The mask is dilated and cut into regions once for all maps. Each map must be finite, real and on the
    mask's grid (ValueError otherwise; resample with ``Geometry.to_original`` first). A flat map (it points
    nowhere) or an empty mask (no lung field) gives ``inside = nan`` and no regions.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"saliency and mask must be 2-D, got a mask of shape {m.shape}")
    m = m.astype(bool, copy=False)
    checked = {name: _checked(saliency, m.shape) for name, saliency in maps.items()}
    regions = _Regions(m, dilation) if m.any() else None
    out = {}
    for name, s in checked.items():
        flat = s.size == 0 or s.max() == s.min()
        out[name] = _NO_EVIDENCE if flat or regions is None else regions.share(np.abs(s))
    return out


def evidence_in_lungs(saliency: np.ndarray, mask: np.ndarray, *, dilation: float = DEFAULT_DILATION) -> float:
    """Share of one map's mass inside the (dilated) lungs, ``sum(|s| * M') / sum(|s|)``: :func:`lung_evidence`'s
    ``inside`` for a single map (nan for a flat map or an empty mask). Several maps of one film: call
    :func:`lung_evidence` once, which dilates the mask once."""
    return lung_evidence({"": saliency}, mask, dilation=dilation)[""].inside


def _checked(saliency: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The map as a float array (float32 kept, other numbers as float64) after the checks every evidence
    function applies: 2-D, on the mask's grid (``shape``), real-valued and finite."""
    s = np.asarray(saliency)
    if s.ndim != 2:
        raise ValueError(f"saliency and mask must be 2-D, got shapes {s.shape} and {shape}")
    if s.shape != shape:
        raise ValueError(f"saliency map {s.shape} and lung mask {shape} are not on the same pixel grid; "
                         "resample the map to the radiograph's grid first (Geometry.to_original)")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"saliency must be a real-valued array, got dtype {s.dtype}")
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError("saliency contains NaN or infinite values")
    return s


def evidence_outside(saliency: np.ndarray, mask: np.ndarray, *,
                     dilation: float = DEFAULT_DILATION) -> dict[str, float]:
    """Where one map's mass outside the (dilated) lungs lies, as a share of the TOTAL mass per region:
    :func:`lung_evidence`'s ``outside`` for a single map (the regions are defined there). The shares add up to
    ``1 - evidence_in_lungs(...)``; empty dict for a flat map or an empty mask."""
    return lung_evidence({"": saliency}, mask, dilation=dilation)[""].outside


# ------------------------------------------------------------------------------- the anatomical readout
#: The regions of :func:`anatomy_regions`, in this order (patient's right and left).
REGIONS: tuple[str, ...] = (
    "right upper zone", "right middle zone", "right lower zone",
    "left upper zone", "left middle zone", "left lower zone",
    "heart and mediastinum", "above the lungs", "below the lungs", "chest wall",
    "outside the body", "film border", "text and markers",
)
#: The six lung zones (the visible lung fields, NLM convention): Brixia's zones approximated by thirds.
LUNG_ZONES: tuple[str, ...] = REGIONS[:6]
PERIPHERY: tuple[str, ...] = ("peripheral", "central")
#: One colour per region for stacked bars and legends: the lung zones in blues (right) and greens (left), light
#: to dark from upper to lower; heart and mediastinum red; the rest in distinct hues (outside the body near black).
REGION_COLOURS: dict[str, str] = dict(zip(REGIONS, (
    "#9ecae1", "#4292c6", "#08519c", "#a1d99b", "#41ab5d", "#006d2c", "#d62728", "#9467bd", "#8c564b", "#e7ba52",
    "#222222", "#7f7f7f", "#ffdd00"), strict=True))
_HEART, _ABOVE, _BELOW, _WALL, _OUTSIDE, _BORDER, _TEXT = range(6, 13)
#: Longest side of the grid the body outline is searched on (the outline is smooth; 256 px keeps it ~2 ms).
BODY_SIDE = 256
DISPLAY_CONVENTION = "display convention"
PATIENT_ORIENTATION = "PatientOrientation"


class AnatomyRegions(Mapping[str, np.ndarray]):
    """Named, disjoint regions covering every pixel of one film: ``regions[name]`` is a bool (H, W) mask.

    Built by :func:`anatomy_regions` (or :func:`anatomy_regions_from_masks`); see there for every definition.
    ``labels``: uint8 (H, W), the index into :data:`REGIONS` of each pixel (read-only). ``found``: whether the
    film has a lung field (without one, every readout is nan and ``reason`` says why). ``laterality_rule``:
    ``"PatientOrientation"`` (the file says which way the patient faces) or ``"display convention"`` (the
    patient's right shown on the viewer's left). ``right_on_viewer_left``: the side that rule chose.
    ``zone_rows``: per lung (``"right"``, ``"left"``), ``(top, upper/middle cut, middle/lower cut, bottom)`` in
    rows, bottom exclusive. ``visible_lungs`` / ``lungs``: the NLM and V7 lung fields the regions came from
    (``lungs`` is what :func:`find_lungs` returns by default, so a caller needs no second lung model call).
    ``markers``: how ``text and markers`` was found ("" when it was not looked for).

    Scoring is one weighted histogram per map over ``labels`` (``np.bincount``), so several maps of a film
    cost a pass each and nothing else. Read-only: safe to share between sessions.
    """

    def __init__(self, labels: np.ndarray, periphery: np.ndarray, *, found: bool, reason: str,
                 laterality_rule: str, right_on_viewer_left: bool,
                 zone_rows: Mapping[str, tuple[int, int, int, int]],
                 visible_lungs: LungField | None = None, lungs: LungField | None = None, markers: str = "") -> None:
        self.labels = read_only_copy(labels, np.uint8)
        self._periphery = read_only_copy(periphery, np.uint8)
        self.found = found
        self.reason = reason
        self.laterality_rule = laterality_rule
        self.right_on_viewer_left = right_on_viewer_left
        self.zone_rows = dict(zone_rows)
        self.visible_lungs = visible_lungs
        self.lungs = lungs
        self.markers = markers
        # One intp label per pixel for region x periphery part: one np.bincount per map (an intp array is read
        # directly; a uint8 one would be converted on every call, 13x slower).
        self._flat = read_only_copy((self.labels.astype(np.intp) * 3 + self._periphery).ravel(), np.intp)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.labels.shape[0]), int(self.labels.shape[1]))

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in REGIONS:
            raise KeyError(f"no region {name!r}; the regions are: {', '.join(REGIONS)}")
        return self.labels == REGIONS.index(name)

    def __iter__(self) -> Iterator[str]:
        return iter(REGIONS)

    def __len__(self) -> int:
        return len(REGIONS)

    def periphery_mask(self, part: str) -> np.ndarray:
        """bool (H, W): the ``"peripheral"`` or ``"central"`` part of the lung zones (see :func:`evidence_periphery`)."""
        if part not in PERIPHERY:
            raise KeyError(f"no part {part!r}; the parts are: {', '.join(PERIPHERY)}")
        return self._periphery == PERIPHERY.index(part) + 1

    def masses(self, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sum of ``weight`` (on this grid, >= 0) per region, and per part of :data:`PERIPHERY` (float64)."""
        table = np.bincount(self._flat, weights=weight.ravel(), minlength=3 * len(REGIONS)).reshape(len(REGIONS), 3)
        return table.sum(axis=1), table[:, 1:].sum(axis=0)


def read_only_copy(a: np.ndarray, dtype: Any) -> np.ndarray:
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


# ---------------------------------------------------------------------------------- which side is which
def laterality(radiograph: Radiograph | np.ndarray) -> tuple[bool, str]:
    """``(patient's right on the viewer's left, rule)``.

    The DICOM attribute PatientOrientation (0020,0020) gives the patient direction of the image's rows (left to
    right on screen) first: ``L`` (towards the patient's left) is the conventional frontal display, so the
    patient's right is on the viewer's left; ``R`` means the film is shown flipped. Without it (any raster
    image, or a DICOM that does not say) the display convention is assumed: a PA/AP film shows the patient's
    right on the viewer's left. Side markers ("L", "R") on the film are not read for this.
    """
    import re

    metadata = getattr(radiograph, "metadata", None) or {}
    tokens = re.findall(r"[LRAPHF]+", str(metadata.get("patient_orientation", "")).upper())
    if tokens and tokens[0][0] in "LR":
        return tokens[0][0] == "L", PATIENT_ORIENTATION
    return True, DISPLAY_CONVENTION


# ------------------------------------------------------------------------------------------ the regions
def anatomy_regions(radiograph: Radiograph | np.ndarray, *, model: LungModel | None = None,
                    markers: bool = True, ocr: bool | None = None, max_side: int | None = None,
                    markers_side: int | None = None) -> AnatomyRegions:
    """Cut a frontal chest film into the named, disjoint regions of :data:`REGIONS`, covering every pixel.

    ``radiograph``: a :class:`Radiograph` (its DICOM PatientOrientation decides laterality, see
    :func:`laterality`) or a 2-D gray array (display convention). The masks are on ``radiograph.pixels``' grid,
    or on that grid shrunk by area to ``max_side`` pixels when given (a 12 MP film then costs milliseconds;
    shares of a map's mass barely change). ``markers``: look for burned-in text and side markers
    (:func:`xai.markers.text_and_marker_mask`, with ``ocr`` passed on; found on the full-resolution film, on a
    copy of at most ``markers_side`` px when given, else the finder's own :data:`xai.markers.WORK_SIDE`).

    The lung model runs once and gives both lung conventions (:func:`find_lung_fields`); the regions are then
    those of :func:`anatomy_regions_from_masks`. Without a lung field (``found`` False) the film's body is all
    ``chest wall`` and every readout is nan.
    """
    pixels = radiograph.pixels if isinstance(radiograph, Radiograph) else _gray(radiograph)
    work = pixels
    if max_side is not None and max(pixels.shape) > max_side:
        from xai.render import downsample_for_display

        work = downsample_for_display(pixels, max_side)
    fields = find_lung_fields(work, model=model)
    text, how = (_text_and_markers(radiograph, pixels, ocr, markers_side, work.shape) if markers else (None, ""))
    right_on_left, rule = laterality(radiograph)
    return anatomy_regions_from_masks(work, fields["nlm"], fields["v7"], markers=text, markers_rule=how,
                                      right_on_viewer_left=right_on_left, laterality_rule=rule)


def _gray(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"a film must be a Radiograph or a 2-D gray array, got {a.dtype} {a.shape}")
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32, copy=False)


def _text_and_markers(radiograph: Radiograph | np.ndarray, pixels: np.ndarray, ocr: bool | None,
                      work_side: int | None = None,
                      grid: tuple[int, ...] | None = None) -> tuple[np.ndarray | None, str]:
    """The burned-in text and marker mask on ``grid`` (the regions' grid; the film's own by default: a box covers
    every cell it touches), and how it was found; (None, reason) when the finder is not installed in this tree."""
    try:
        from xai.markers import WORK_SIDE, text_and_marker_mask
    except ImportError:
        return None, "not looked for (xai.markers is not available)"
    film = radiograph if isinstance(radiograph, Radiograph) else Radiograph(
        pixels=pixels, modality_values=pixels, window=None, format="array", bits_stored=8, photometric="MONOCHROME2")
    try:
        shape = None if grid is None else (int(grid[0]), int(grid[1]))
        mask = text_and_marker_mask(film, ocr=ocr, work_side=work_side or WORK_SIDE, shape=shape)
        return np.asarray(mask, bool), "xai.markers.text_and_marker_mask"
    except (RuntimeError, OSError, ValueError) as exc:  # OCR asked for but missing, or failing on this film
        return None, f"not looked for ({exc})"


def anatomy_regions_from_masks(pixels: np.ndarray, visible: LungField | np.ndarray, lungs: LungField | np.ndarray,
                               *, markers: np.ndarray | None = None, markers_rule: str = "",
                               right_on_viewer_left: bool = True,
                               laterality_rule: str = DISPLAY_CONVENTION) -> AnatomyRegions:
    """The regions of a film from its two lung masks (any source: the lung model, or a human's masks).

    ``pixels``: the film (2-D, bone white, in [0, 1]); ``visible``: the visible lung fields (NLM convention:
    the heart's shadow excluded); ``lungs``: the lungs with the retrocardiac lung (V7 convention; when empty,
    ``visible`` is used). Definitions, on that grid, each pixel taking the FIRST that applies:

    1. ``text and markers``: ``markers`` (burned-in text, side markers).
    2. ``film border``: the outer :data:`BORDER_BAND` of the width / height (labels, collimation edges).
    3. the six lung zones: the visible lung fields, split into the patient's right and left lung at the
       midline between the two largest connected components, each lung cut into upper, middle and lower zone
       at thirds of ITS OWN height (top of its apex to the bottom of its base) — the usual approximation of
       the Brixia zones (Borghesi & Maroldi, Radiol Med 2020), whose landmarks (aortic arch, inferior
       pulmonary vein) are not visible to an image model. Laterality as ``right_on_viewer_left`` says.
    4. ``heart and mediastinum``: the retrocardiac lung (``lungs`` minus ``visible``) and the space between the
       two lungs: inside the convex hull of both lungs, between the two lungs' centroids.
    5. ``outside the body``: background air or collimation outside the patient (:func:`outside_body`).
    6. the rest of the body, per column relative to the lungs and the mediastinum: ``above the lungs`` (neck,
       shoulders, apices' surroundings), ``below the lungs`` (diaphragm, abdomen), otherwise ``chest wall``
       (beside the lungs: ribs, soft tissue, arms). Columns with no lung use the lungs' top and bottom row.

    Periphery (:func:`evidence_periphery`): in each row of each lung, the outer third of that row's lung
    width is ``peripheral`` (towards the chest wall), the rest ``central``.
    """
    gray = _gray(pixels)
    H, W = gray.shape
    vis, lung = (_mask_of(m, (H, W)) for m in (visible, lungs))
    lung = lung | vis
    reason = ""
    if not vis.any():
        reason = (visible.reason if isinstance(visible, LungField) and visible.reason
                  else "no visible lung field") or "no visible lung field"
    labels = np.full((H, W), _WALL, np.uint8)
    periphery = np.zeros((H, W), np.uint8)
    zone_rows: dict[str, tuple[int, int, int, int]] = {}
    if not reason:
        sides = _split_lungs(vis)
        heart = _heart_and_mediastinum(vis, lung, sides)
        _body_around_lungs(labels, vis | heart)
        labels[outside_body(gray, lung)] = _OUTSIDE
        labels[heart] = _HEART
        for viewer_left, side in zip((True, False), sides, strict=True):
            patient = "right" if viewer_left == right_on_viewer_left else "left"
            zone_rows[patient] = _label_zones(labels, side, REGIONS.index(f"{patient} upper zone"))
            _label_periphery(periphery, side, outer_is_low_x=viewer_left)
    else:
        labels[outside_body(gray, np.zeros((H, W), bool))] = _OUTSIDE
    bw, bh = max(1, int(round(BORDER_BAND * W))), max(1, int(round(BORDER_BAND * H)))
    border = np.ones((H, W), bool)
    border[bh:H - bh, bw:W - bw] = False
    labels[border] = _BORDER
    if markers is not None:
        labels[_mask_of(markers, (H, W))] = _TEXT
    periphery[labels >= _HEART] = 0  # only where the lung zones won
    return AnatomyRegions(labels, periphery, found=not reason, reason=reason, laterality_rule=laterality_rule,
                          right_on_viewer_left=right_on_viewer_left, zone_rows=zone_rows,
                          visible_lungs=visible if isinstance(visible, LungField) else None,
                          lungs=lungs if isinstance(lungs, LungField) else None, markers=markers_rule)


def _mask_of(mask: LungField | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(mask.mask if isinstance(mask, LungField) else mask)
    if m.shape != shape:
        raise ValueError(f"mask {m.shape} and film {shape} are not on the same pixel grid")
    return m.astype(bool)


def _split_lungs(visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(viewer-left lung, viewer-right lung): the visible field cut at the midline between its two largest
    connected components (the gap between their facing edges); one component: at the image's centre."""
    import cv2

    W = visible.shape[1]
    n, _, stats, centroids = cv2.connectedComponentsWithStats(visible.astype(np.uint8), connectivity=8)
    order = sorted(range(1, n), key=lambda i: -stats[i, cv2.CC_STAT_AREA])[:2]
    midline = W / 2
    if len(order) == 2:
        a, b = sorted(order, key=lambda i: centroids[i, 0])
        inner_a = stats[a, cv2.CC_STAT_LEFT] + stats[a, cv2.CC_STAT_WIDTH]  # exclusive right edge of the left one
        inner_b = stats[b, cv2.CC_STAT_LEFT]
        midline = (inner_a + inner_b) / 2 if inner_a <= inner_b else (centroids[a, 0] + centroids[b, 0]) / 2
    left = visible.copy()
    left[:, int(math.ceil(midline)):] = False
    return left, visible & ~left


def _heart_and_mediastinum(visible: np.ndarray, lungs: np.ndarray, sides: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Retrocardiac lung (``lungs`` minus ``visible``) plus the convex hull of both lungs between their centroids."""
    import cv2

    H, W = visible.shape
    hull = np.zeros((H, W), np.uint8)
    contours, _ = cv2.findContours((lungs | visible).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.vstack(contours)), 1)
    between = hull.astype(bool)
    columns = [side.sum(axis=0, dtype=np.int64) for side in sides]  # each lung's pixels per column
    if all(c.any() for c in columns):
        # each lung's mean column (its centroid's x), from the column counts: no pixel list needed
        x0, x1 = (int(round(float(np.arange(W) @ c / c.sum()))) for c in columns)
        between[:, :x0] = False
        between[:, x1 + 1:] = False
    return (between | lungs) & ~visible


def _body_around_lungs(labels: np.ndarray, core: np.ndarray) -> None:
    """Label every pixel above / below the lungs and mediastinum (``core``) in its column; the rest stays
    ``chest wall``. Columns without ``core`` use its top and bottom row."""
    H, W = core.shape
    rows = np.flatnonzero(core.any(axis=1))
    top_all, bottom_all = rows[0], rows[-1]
    has = core.any(axis=0)
    top = np.where(has, core.argmax(axis=0), top_all)
    bottom = np.where(has, H - 1 - core[::-1].argmax(axis=0), bottom_all)
    r = np.arange(H)[:, None]
    labels[r < top[None, :]] = _ABOVE
    labels[r > bottom[None, :]] = _BELOW


def _label_zones(labels: np.ndarray, side: np.ndarray, upper: int) -> tuple[int, int, int, int]:
    """Upper / middle / lower zone of one lung at thirds of its height; returns its (top, cut1, cut2, bottom)."""
    rows = np.flatnonzero(side.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    height = bottom - top
    cut1, cut2 = top + int(round(height / 3)), top + int(round(2 * height / 3))
    zone = np.full(labels.shape[0], upper + 2, np.uint8)
    zone[:cut2] = upper + 1
    zone[:cut1] = upper
    np.copyto(labels, zone[:, None], where=side)  # each lung pixel takes its row's zone
    return (top, cut1, cut2, bottom)


def _label_periphery(periphery: np.ndarray, side: np.ndarray, *, outer_is_low_x: bool) -> None:
    """1 (peripheral) for the outer third of each row of one lung, 2 (central) for the rest."""
    W = side.shape[1]
    has = cast(NDArray[np.bool_], side.any(axis=1))  # a 2-D array's row reduction is an array
    first = side.argmax(axis=1)
    last = W - 1 - side[:, ::-1].argmax(axis=1)
    third = (last - first + 1) / 3.0
    columns = np.arange(W)[None, :]
    outer = columns < (first + third)[:, None] if outer_is_low_x else columns > (last - third)[:, None]
    np.copyto(periphery, np.where(outer & has[:, None], 1, 2).astype(np.uint8), where=side)


def outside_body(pixels: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """bool (H, W): the background outside the patient — air or collimation that reaches the image's edge.

    On a copy shrunk to :data:`BODY_SIDE` px and smoothed (Gaussian, 1 px): a pixel is background when it is
    darker than halfway between the film's darkest level (1st percentile) and the lungs' median, and below
    60 % of the lungs' median (air outside the patient is darker than the lung, which holds tissue and
    blood), or when it is flat and nearly white (a collimator's shutter: local standard deviation < 0.02,
    value > 0.92); such pixels count only in connected regions that touch the image's edge and stay clear of
    the lungs (dilated by 3 % of the width), and a morphological opening removes specks. No lung field: the
    lungs' level is the film's 25th percentile.
    """
    import cv2

    gray = _gray(pixels)
    H, W = gray.shape
    scale = min(1.0, BODY_SIDE / max(H, W))
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    small = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA) if scale < 1 else gray.copy()
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    lung = cv2.resize(lungs.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    level = float(np.median(small[lung])) if lung.any() else float(np.percentile(small, 25))
    floor = float(np.percentile(small, 1))
    dark = small < min(floor + 0.5 * (level - floor), 0.6 * level)
    mean = cv2.blur(small, (5, 5))
    std = np.sqrt(np.maximum(cv2.blur(small * small, (5, 5)) - mean * mean, 0))
    shutter = (small > 0.92) & (std < 0.02)
    r = max(1, round(DEFAULT_DILATION * w))
    near_lungs = cv2.dilate(lung.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    candidate = (dark | shutter) & ~near_lungs.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    candidate = cv2.morphologyEx(candidate.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(candidate, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = [i for i in edge if i != 0 and stats[i, cv2.CC_STAT_AREA] >= 0.002 * h * w]
    background = np.isin(labels, keep).astype(np.float32)
    if scale < 1:
        background = cast(NDArray[np.float32], cv2.resize(background, (W, H), interpolation=cv2.INTER_LINEAR))
    return background > 0.5


# ------------------------------------------------------------------------------------------ the readout
def evidence_by_region(saliency: np.ndarray, regions: AnatomyRegions) -> dict[str, float]:
    """Share of the map's mass ``sum |s|`` in each region of :data:`REGIONS` (same order); they sum to 1.

    ``share(region) = sum(|s| over region) / sum(|s|)``. Both signs count (a signed map marks where the model
    looks either way). The map must be on the regions' grid, or on a grid of the same aspect ratio (it is then
    resampled by area, which keeps shares of mass); nan for every region for a flat map or a film without a
    lung field. The measure is the regional form of "right for the right reasons" (Ross et al., IJCAI 2017):
    it says where the evidence lies in a radiologist's words, not whether it is right.
    """
    return anatomy_readout({"": saliency}, regions)[""].shares


def evidence_periphery(saliency: np.ndarray, regions: AnatomyRegions) -> dict[str, float]:
    """``{"peripheral": x, "central": y}``: shares of the map's mass inside the six lung zones that lie in the
    outer third of each row of each lung (towards the chest wall) and in the rest; x + y = 1. COVID-19's
    typical pattern is peripheral (Wong et al., Radiology 2020). nan for both when no mass lies in the lungs
    (or a flat map, or no lung field)."""
    return anatomy_readout({"": saliency}, regions)[""].periphery


@dataclass(frozen=True)
class AnatomyReadout:
    """One map's readout: ``shares`` per region of :data:`REGIONS`, ``periphery`` (:data:`PERIPHERY`) and
    ``in_visible_lungs`` (the six zones together; nan when unknown). ``sentence(top)`` names the top regions."""

    shares: dict[str, float]
    periphery: dict[str, float]

    @property
    def in_visible_lungs(self) -> float:
        return visible_lung_share(self.shares)

    def sentence(self, top: int = 2) -> str:
        return readout_sentence(self.shares, top=top)

    def record(self) -> dict[str, Any]:
        """JSON-ready (nan -> None): ``{"regions": {...}, "periphery": {...}}``."""
        return {"regions": _json_shares(self.shares), "periphery": _json_shares(self.periphery)}


def _json_shares(shares: Mapping[str, float]) -> dict[str, float | None]:
    return {k: None if math.isnan(v) else round(float(v), 6) for k, v in shares.items()}


def anatomy_readout(maps: Mapping[str, np.ndarray], regions: AnatomyRegions) -> dict[str, AnatomyReadout]:
    """:func:`evidence_by_region` and :func:`evidence_periphery` of several maps of one film: one weighted
    histogram per map over the regions' label image."""
    out = {}
    nan_regions = dict.fromkeys(REGIONS, float("nan"))
    nan_parts = dict.fromkeys(PERIPHERY, float("nan"))
    for name, saliency in maps.items():
        s = _on_grid(saliency, regions.shape)
        if not regions.found or s.size == 0 or s.max() == s.min():
            out[name] = AnatomyReadout(dict(nan_regions), dict(nan_parts))
            continue
        mass, parts = regions.masses(np.abs(s))
        total, in_lungs = float(mass.sum()), float(parts.sum())
        shares = {r: float(m) / total for r, m in zip(REGIONS, mass, strict=True)}
        periphery = ({p: float(m) / in_lungs for p, m in zip(PERIPHERY, parts, strict=True)} if in_lungs > 0
                     else dict(nan_parts))
        out[name] = AnatomyReadout(shares, periphery)
    return out


def _on_grid(saliency: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The map on the regions' grid: as is, or resampled by area from a grid of the same aspect ratio."""
    import cv2

    s = np.asarray(saliency)
    if s.ndim == 2 and s.shape != shape and s.size:
        if abs(s.shape[1] / s.shape[0] - shape[1] / shape[0]) > 0.02 * shape[1] / shape[0]:
            raise ValueError(f"saliency map {s.shape} and regions {shape} have different aspect ratios: "
                             "the map is not of this film")
        s = _checked(s, s.shape)
        interpolation = cv2.INTER_AREA if s.shape[0] > shape[0] else cv2.INTER_LINEAR
        return cv2.resize(s.astype(np.float32), (shape[1], shape[0]), interpolation=interpolation)
    return _checked(s, shape)


def visible_lung_share(shares: Mapping[str, float]) -> float:
    """The share in the visible lung fields: the six lung zones together (nan when the shares are nan)."""
    return float(sum(shares[z] for z in LUNG_ZONES))


def readout_sentence(shares: Mapping[str, float], top: int = 2) -> str:
    """The ``top`` regions by share, as ``"58% heart and mediastinum · 22% left lower zone"`` (whole percents;
    regions under 0.5 % are left out). "" for nan shares (a flat map, no lung field)."""
    ranked = sorted(((v, k) for k, v in shares.items() if not math.isnan(v)), reverse=True)[:top]
    return " · ".join(f"{v:.0%} {k}" for v, k in ranked if v >= 0.005)


def zone_outlines(regions: AnatomyRegions) -> np.ndarray:
    """bool (H, W), one pixel wide: the boundaries of the six lung zones (each lung's outline and the two cuts
    across it), to draw thinly over the film (thicken with a dilation for large displays)."""
    zones = np.where(regions.labels < len(LUNG_ZONES), regions.labels.astype(np.int16), -1)
    edge = np.zeros(zones.shape, bool)
    across, down = zones[:, 1:] != zones[:, :-1], zones[1:, :] != zones[:-1, :]
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    edge[1:, :] |= down
    edge[:-1, :] |= down
    return edge & (zones >= 0)
