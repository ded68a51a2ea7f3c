"""Prepare a radiograph for a model, and map model-grid maps back onto the original pixels exactly.

One function, :func:`prepare`, is used by training, evaluation, the CLI and the app alike. The steps, in
order, are fixed by a :class:`Preprocessing` spec (embedded in every model card as JSON):

1. **crop** (``"none"`` | ``"body"`` | ``"lungs"``): ``"body"`` is an explicit heuristic crop box (see
   :func:`body_crop_box`) computed on the original image; ``"lungs"`` is the lung U-Net's lung-field box plus a
   margin (see :func:`xai.anatomy.lung_crop_box`, registered by :mod:`xai.anatomy`; the body box when no lung
   field is found). Nothing is cropped silently:
   with ``"none"`` the whole image is used.
2. **resize** the crop to the square model grid of side ``input_size``:
   ``"letterbox"`` keeps the aspect ratio and centres the image, padding with pixel value 0 (black,
   i.e. air, in display space; after normalisation the pad equals ``-mean / std``); ``"stretch"``
   scales each axis independently. OpenCV INTER_AREA when shrinking, INTER_LINEAR when enlarging.
3. **equalize** (``"none"`` | ``"hist"`` | ``"clahe"``): applied to the resized image content only (not to the
   letterbox padding), at 8-bit precision, deterministically (CLAHE clip limit 2.0, 8x8 tiles).
4. **normalise** per channel: ``(x - mean[c]) / std[c]``; with ``channels == 3`` the gray image is
   replicated into the three channels.

:class:`Geometry` records original size, crop box and where the crop lands on the model grid, so that
:meth:`Geometry.to_original` puts any map on the model grid (at any resolution, e.g. a 7x7 CAM or a 224x224
map) back onto the original pixel grid by bilinear interpolation (pixel centres aligned; outside the crop
box the result is 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xai.radiograph_core import Radiograph  # the record only: no loader needed to prepare pixels

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("letterbox", "stretch")
EQUALIZE_MODES = ("none", "hist", "clahe")
CROP_MODES = ("none", "body", "lungs")
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILES = (8, 8)
BODY_COMPONENT_FRACTION = 0.10

__all__ = [
    "CROP_MODES",
    "EQUALIZE_MODES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESIZE_MODES",
    "Geometry",
    "Preprocessing",
    "body_crop_box",
    "crop_box",
    "register_crop_rule",
    "prepare",
    "prepare_array",
]


# ------------------------------------------------------------------------------------------ the spec
@dataclass(frozen=True)
class Preprocessing:
    """How an original radiograph becomes a model input. JSON round-trip: ``to_dict`` / ``from_dict``.

    ``input_size``: side S of the square model input. ``channels``: 1, or 3 (gray replicated).
    ``mean``/``std``: one value per channel (default ImageNet). ``resize``: ``"letterbox"`` | ``"stretch"``.
    ``equalize``: ``"none"`` | ``"hist"`` | ``"clahe"``. ``crop``: ``"none"`` | ``"body"`` | ``"lungs"``.
    """

    input_size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: str = "letterbox"
    equalize: str = "none"
    crop: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or not 8 <= self.input_size <= 4096:
            raise ValueError(f"input_size must be an integer between 8 and 4096, got {self.input_size!r}")
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = (float(value),) * self.channels
            try:
                value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a list of {self.channels} numbers, got {value!r}") from None
            if len(value) != self.channels:
                raise ValueError(f"{name} must have {self.channels} values (one per channel), got {len(value)}")
            if not all(math.isfinite(v) for v in value):
                raise ValueError(f"{name} values must be finite, got {value!r}")
            if name == "std" and not all(v > 0 for v in value):
                raise ValueError(f"std values must be > 0, got {value!r}")
            object.__setattr__(self, name, value)
        for name, allowed in (("resize", RESIZE_MODES), ("equalize", EQUALIZE_MODES), ("crop", CROP_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown or badly typed fields raise a clear ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocessing must be a JSON object, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing field(s): {', '.join(map(str, unknown))}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**d)


# -------------------------------------------------------------------------------------- the geometry
@dataclass(frozen=True)
class Geometry:
    """Where the original image sits on the model grid.

    ``original_size``: (H, W) of the original. ``crop_box``: (x0, y0, x1, y1) in original pixels, x1/y1
    exclusive. ``input_size``: S. ``content_box``: (x0, y0, x1, y1) on the S x S model grid covered by the
    resized crop (the rest is letterbox padding). An original point x maps to the model grid as
    ``u = content_x0 + (x - crop_x0) * (content_w / crop_w)`` (continuous coordinates, pixel edges at integers).
    """

    original_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    input_size: int
    content_box: tuple[int, int, int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): model-grid pixels per original pixel along x and y."""
        cx0, cy0, cx1, cy1 = self.crop_box
        mx0, my0, mx1, my1 = self.content_box
        return ((mx1 - mx0) / (cx1 - cx0), (my1 - my0) / (cy1 - cy0))

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) letterbox padding on the model grid."""
        mx0, my0, mx1, my1 = self.content_box
        return (mx0, my0, self.input_size - mx1, self.input_size - my1)

    def to_dict(self) -> dict[str, Any]:
        return {"original_size": list(self.original_size), "crop_box": list(self.crop_box),
                "input_size": self.input_size, "content_box": list(self.content_box)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(original_size=tuple(d["original_size"]), crop_box=tuple(d["crop_box"]),
                   input_size=int(d["input_size"]), content_box=tuple(d["content_box"]))

    # -- points and boxes ------------------------------------------------------------------------------
    def to_model(self, points: np.ndarray) -> np.ndarray:
        """Original (x, y) points, shape (N, 2), to continuous model-grid coordinates (N, 2)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        sx, sy = self.scale
        out = np.empty_like(p)
        out[:, 0] = self.content_box[0] + (p[:, 0] - self.crop_box[0]) * sx
        out[:, 1] = self.content_box[1] + (p[:, 1] - self.crop_box[1]) * sy
        return out

    def points_to_original(self, points: np.ndarray) -> np.ndarray:
        """Model-grid (u, v) points, shape (N, 2), to original (x, y) coordinates."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        sx, sy = self.scale
        out = np.empty_like(p)
        out[:, 0] = self.crop_box[0] + (p[:, 0] - self.content_box[0]) / sx
        out[:, 1] = self.crop_box[1] + (p[:, 1] - self.content_box[1]) / sy
        return out

    def box_to_model(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """Original box (x0, y0, x1, y1) to model-grid coordinates (continuous, not clipped)."""
        (x0, y0), (x1, y1) = self.to_model(np.array([[box[0], box[1]], [box[2], box[3]]]))
        return (float(x0), float(y0), float(x1), float(y1))

    # -- maps -----------------------------------------------------------------------------------------
    def to_original(self, heat: np.ndarray) -> np.ndarray:
        """A map on the model grid (any resolution h x w covering the S x S input) -> float32 (H, W).

        Bilinear interpolation with pixel centres aligned (the same convention as ``cv2.resize``
        INTER_LINEAR), edges clamped; pixels outside the crop box are 0.
        """
        m = np.asarray(heat, dtype=np.float32)
        if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
            raise ValueError(f"map must be 2-D (h, w), got shape {m.shape}")
        H, W = self.original_size
        cx0, cy0, cx1, cy1 = self.crop_box
        sx, sy = self.scale
        S = self.input_size
        # original pixel centre x + 0.5 -> model grid u -> map index (centre convention) u * w / S - 0.5
        xs = (self.content_box[0] + (np.arange(cx0, cx1) + 0.5 - cx0) * sx) * (m.shape[1] / S) - 0.5
        ys = (self.content_box[1] + (np.arange(cy0, cy1) + 0.5 - cy0) * sy) * (m.shape[0] / S) - 0.5
        x_lo, x_hi, fx = _interp_index(xs, m.shape[1])
        y_lo, y_hi, fy = _interp_index(ys, m.shape[0])
        rows = m[y_lo] * (1.0 - fy)[:, None] + m[y_hi] * fy[:, None]  # (crop_h, w)
        # np.take along the columns keeps the result C-contiguous (rows[:, idx] does not), which every
        # consumer (cv2.resize, JPEG/PNG encoders) would otherwise copy first: ~8 ms per 1024² map.
        crop = np.take(rows, x_lo, axis=1) * (1.0 - fx)[None, :]
        crop += np.take(rows, x_hi, axis=1) * fx[None, :]
        if (cx0, cy0, cx1, cy1) == (0, 0, W, H):
            return crop.astype(np.float32, copy=False)
        out = np.zeros((H, W), dtype=np.float32)
        out[cy0:cy1, cx0:cx1] = crop
        return out

    def to_display(self, heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """:meth:`to_original` then an area-average shrink to ``size`` (h, w) smaller than the film, without
        making the film-sized map: float32 (h, w).

        Both steps are linear and act on rows and columns apart, so the result is ``P_y m P_x^T`` with
        ``P = A R`` (``R``: the bilinear interpolation onto the crop, zero outside; ``A``: the area weights of
        ``cv2.INTER_AREA``, each output pixel the overlap-weighted mean of the film pixels it covers). Equal
        to ``cv2.resize(to_original(m), (w, h), interpolation=INTER_AREA)`` up to float rounding (OpenCV
        skips overlaps under 1e-3 px); a map on a 12 MP film's screen costs ~1 ms instead of ~0.1 s.
        """
        m = np.asarray(heat, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
            raise ValueError(f"map must be 2-D (h, w), got shape {m.shape}")
        H, W = self.original_size
        h, w = (int(v) for v in size)
        if not (0 < h <= H and 0 < w <= W):
            raise ValueError(f"size {size} must be positive and at most the film's {(H, W)}")
        cx0, cy0, cx1, cy1 = self.crop_box
        sx, sy = self.scale
        S = self.input_size
        xs = (self.content_box[0] + (np.arange(cx0, cx1) + 0.5 - cx0) * sx) * (m.shape[1] / S) - 0.5
        ys = (self.content_box[1] + (np.arange(cy0, cy1) + 0.5 - cy0) * sy) * (m.shape[0] / S) - 0.5
        py = _shrunk_interp(H, (cy0, cy1), ys, m.shape[0], h)
        px = _shrunk_interp(W, (cx0, cx1), xs, m.shape[1], w)
        # float32 products: errors ~1e-6 of the map's range, and half the time of float64 on a 256² gradient map
        return np.ascontiguousarray(py.astype(np.float32) @ m.astype(np.float32) @ px.T.astype(np.float32))


def _shrunk_interp(n_full: int, crop: tuple[int, int], coords: np.ndarray, n_map: int, n_out: int) -> np.ndarray:
    """(n_out, n_map) float64: the bilinear interpolation of a map axis onto the film's crop (zero outside
    it), followed by the area average of that film axis down to ``n_out`` pixels (``cv2.INTER_AREA``'s rule:
    each output pixel averages the input pixels it covers, weighted by overlap). Built from the ~s + 1 film
    pixels each output pixel covers (s = n_full / n_out), never an (n_full, n_map) matrix."""
    s = n_full / n_out
    start = np.arange(n_out, dtype=np.float64) * s
    j = np.floor(start).astype(np.intp)[:, None] + np.arange(int(np.ceil(s)) + 1)[None, :]  # (n_out, K)
    overlap = np.minimum(j + 1, start[:, None] + s) - np.maximum(j, start[:, None])
    weight = np.clip(overlap, 0.0, None) / s
    lo, hi, f = _interp_index(coords, n_map)
    inside = (j >= crop[0]) & (j < crop[1]) & (weight > 0)
    rows = np.broadcast_to(np.arange(n_out)[:, None], j.shape)[inside]
    k = j[inside] - crop[0]
    w = weight[inside]
    out = np.zeros((n_out, n_map), dtype=np.float64)
    np.add.at(out, (rows, lo[k]), w * (1.0 - f[k].astype(np.float64)))
    np.add.at(out, (rows, hi[k]), w * f[k].astype(np.float64))
    return out


def _interp_index(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = np.clip(coords, 0.0, n - 1)
    lo = np.floor(c).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, (c - lo).astype(np.float32)


# ------------------------------------------------------------------------------------------ crop rule
def body_crop_box(image: np.ndarray, *, margin: float = 0.05) -> tuple[int, int, int, int]:
    """Heuristic box around the body in a chest radiograph: (x0, y0, x1, y1), x1/y1 exclusive.

    Rule (deterministic): downsample to at most 256 px (INTER_AREA), Gaussian blur (sigma 2 px),
    blank a border of 3% of each side (burned-in text and film edges live there), threshold halfway
    between the darkest pixel and Otsu's level (so the dark lungs count as body),
    morphological opening (removes text and markers), keep the bright connected components of at least
    10% of the largest one's area (shoulders and abdomen are often split by the dark lungs), take
    their joint bounding box plus ``margin`` of the box size on each side, clipped to the image. Falls back to
    the full image when the result is implausible: covers < 25% of the image area, or an aspect ratio
    outside 1:3 .. 3:1, or nothing bright was found.
    """
    import cv2

    img = np.asarray(image, dtype=np.float32)
    H, W = img.shape
    full = (0, 0, W, H)
    f = min(1.0, 256.0 / max(H, W))
    small = cv2.resize(img, (max(1, round(W * f)), max(1, round(H * f))), interpolation=cv2.INTER_AREA) if f < 1 else img
    h, w = small.shape
    if h < 8 or w < 8:
        return full
    u8 = np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8)
    u8 = cv2.GaussianBlur(u8, (0, 0), sigmaX=2.0)
    by, bx = max(1, round(0.03 * h)), max(1, round(0.03 * w))
    inner = u8[by:h - by, bx:w - bx]
    if inner.size == 0 or int(inner.max()) == int(inner.min()):
        return full
    otsu, _ = cv2.threshold(inner, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    lowest = float(inner.min())
    # halfway between the darkest pixel and Otsu's level: keeps the (dark) lungs inside the body
    _, mask_inner = cv2.threshold(inner, lowest + 0.5 * (otsu - lowest), 255, cv2.THRESH_BINARY)
    mask = np.zeros_like(u8)
    mask[by:h - by, bx:w - bx] = mask_inner
    k = max(3, (min(h, w) // 40) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return full
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= BODY_COMPONENT_FRACTION * areas.max())
    x = int(stats[keep, cv2.CC_STAT_LEFT].min())
    y = int(stats[keep, cv2.CC_STAT_TOP].min())
    bw = int((stats[keep, cv2.CC_STAT_LEFT] + stats[keep, cv2.CC_STAT_WIDTH]).max()) - x
    bh = int((stats[keep, cv2.CC_STAT_TOP] + stats[keep, cv2.CC_STAT_HEIGHT]).max()) - y
    mx, my = margin * bw, margin * bh
    x0 = max(0, math.floor((x - mx) / f))
    y0 = max(0, math.floor((y - my) / f))
    x1 = min(W, math.ceil((x + bw + mx) / f))
    y1 = min(H, math.ceil((y + bh + my) / f))
    cw, ch = x1 - x0, y1 - y0
    if cw <= 0 or ch <= 0 or cw * ch < 0.25 * W * H or not (1 / 3 <= cw / ch <= 3):
        return full
    return (x0, y0, x1, y1)


CropRule = Callable[[np.ndarray], tuple[int, int, int, int]]
"""``rule(gray) -> (x0, y0, x1, y1)``: the crop box of a gray image (H, W), x1/y1 exclusive."""


def _whole_image(image: np.ndarray) -> tuple[int, int, int, int]:
    H, W = np.shape(image)
    return (0, 0, W, H)


# "lungs" is registered by xai.anatomy (the lung U-Net lives there and prepares its own input with this
# module: a rule this module imported would be an import cycle).
_CROP_RULES: dict[str, CropRule] = {"none": _whole_image, "body": body_crop_box}
_CROP_PROVIDERS = {"lungs": "xai.anatomy"}


def register_crop_rule(mode: str, rule: CropRule) -> None:
    """Make ``rule`` the crop box of ``mode`` (one of :data:`CROP_MODES`); :mod:`xai.anatomy` registers
    ``"lungs"`` (:func:`xai.anatomy.lung_crop_box`) when it is imported."""
    if mode not in CROP_MODES:
        raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}; got {mode!r}")
    _CROP_RULES[mode] = rule


def crop_box(image: np.ndarray, mode: str) -> tuple[int, int, int, int]:
    """The crop box of a gray image (H, W) under a crop mode of :data:`CROP_MODES` (``"none"``: the whole image)."""
    rule = _CROP_RULES.get(mode)
    if rule is not None:
        return rule(image)
    if mode in _CROP_PROVIDERS:
        raise ValueError(f"crop {mode!r} needs {_CROP_PROVIDERS[mode]}, which registers it: import it first "
                         "(xai.pipeline and the trust checks do)")
    raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}; got {mode!r}")


# --------------------------------------------------------------------------------------------- prepare
def _as_gray(image: Radiograph | np.ndarray) -> np.ndarray:
    if isinstance(image, Radiograph):
        return image.pixels
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"expected a Radiograph or a 2-D gray image, got an array of shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"empty image of shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1.0 / 255.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected float pixels in [0, 1] (or uint8), got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    lo, hi = float(a.min()), float(a.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"expected pixels in [0, 1], got values in [{lo:g}, {hi:g}]")
    return a


def _equalize(content: np.ndarray, mode: str) -> np.ndarray:
    import cv2

    u8 = np.clip(content * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if mode == "hist":
        out = cv2.equalizeHist(u8)
    else:
        out = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILES).apply(u8)
    return out.astype(np.float32) * np.float32(1.0 / 255.0)


def prepare_array(image: Radiograph | np.ndarray, preprocessing: Preprocessing) -> tuple[np.ndarray, Geometry]:
    """Like :func:`prepare` but returns a numpy float32 array (C, S, S) (no torch needed; DataLoader workers)."""
    import cv2

    if not isinstance(preprocessing, Preprocessing):
        raise ValueError(f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}")
    gray = _as_gray(image)
    H, W = gray.shape
    S = preprocessing.input_size
    box = crop_box(gray, preprocessing.crop)
    x0, y0, x1, y1 = box
    region = gray[y0:y1, x0:x1]
    ch, cw = region.shape
    if preprocessing.resize == "stretch":
        nw, nh = S, S
    else:
        s = S / max(ch, cw)
        nw, nh = max(1, min(S, round(cw * s))), max(1, min(S, round(ch * s)))
    interpolation = cv2.INTER_AREA if (nw <= cw and nh <= ch) else cv2.INTER_LINEAR
    content = cv2.resize(np.ascontiguousarray(region), (nw, nh), interpolation=interpolation) \
        if (nw, nh) != (cw, ch) else region.astype(np.float32, copy=True)
    if preprocessing.equalize != "none":
        content = _equalize(content, preprocessing.equalize)
    px, py = (S - nw) // 2, (S - nh) // 2
    canvas = np.zeros((S, S), dtype=np.float32)  # 0 = black (air) in display space
    canvas[py:py + nh, px:px + nw] = content
    out = np.empty((preprocessing.channels, S, S), dtype=np.float32)
    for c in range(preprocessing.channels):
        np.subtract(canvas, np.float32(preprocessing.mean[c]), out=out[c])
        out[c] *= np.float32(1.0 / preprocessing.std[c])
    geometry = Geometry(original_size=(H, W), crop_box=box, input_size=S,
                        content_box=(px, py, px + nw, py + nh))
    return out, geometry


def prepare(image: Radiograph | np.ndarray, preprocessing: Preprocessing) -> tuple[torch.Tensor, Geometry]:
    """Radiograph (or 2-D float image in [0, 1], or uint8) -> (tensor float32 (1, C, S, S), Geometry)."""
    import torch

    array, geometry = prepare_array(image, preprocessing)
    return torch.from_numpy(array).unsqueeze(0), geometry
