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
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xai.preprocessing import Preprocessing, body_crop_box, prepare, register_crop_rule
from xai.radiograph import Radiograph

if TYPE_CHECKING:
    from xai.unet import LungUNet

__all__ = [
    "AREA_RANGE",
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


def _grid_probability(image: Radiograph | np.ndarray, model: LungModel, convention: str) -> tuple[np.ndarray, Any]:
    import torch

    if convention not in model.conventions:
        raise ValueError(f"convention must be one of {', '.join(model.conventions)}; got {convention!r}")
    x, geometry = prepare(image, model.preprocessing)
    with torch.inference_mode():
        logits = model.module(x)[0, model.conventions.index(convention)]
    return torch.sigmoid(logits).numpy(), geometry


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
    prob, geometry = _grid_probability(image, model, convention)
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
