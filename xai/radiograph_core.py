"""The radiograph record, its errors and windowing: the leaf both loaders build on.

:mod:`xai.radiograph` (raster files, format sniffing, ``load_radiograph``) and :mod:`xai.dicom` (DICOM)
both produce a :class:`Radiograph`, raise the :class:`RadiographError` family and window modality
values with :func:`apply_window`. Those live here, in a module that imports nothing from ``xai``, so the
two loaders import it and not each other. The public import paths stay ``xai.radiograph.*`` (re-exported).

Display convention: ``pixels`` is float32 ``(H, W)`` in [0, 1] with bone white and air black.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xai.arrays import read_only

DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 16  # smaller than this cannot be a radiograph (and breaks the crop/resize heuristics)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow and OpenCV use

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "LUMA_WEIGHTS",
    "MIN_SIDE",
    "BlankImageError",
    "CodecMissingError",
    "CorruptImageError",
    "ImageTooLargeError",
    "NoPixelDataError",
    "NotARadiographError",
    "NotAnImageError",
    "Radiograph",
    "RadiographError",
    "UnreadableSourceError",
    "apply_window",
    "check_plausible",
    "check_size",
    "stored_range_window",
    "to_luminance",
]

# --------------------------------------------------------------------------------------------- errors
class RadiographError(Exception):
    """Base class: the only exception type that ``load_radiograph`` lets escape."""


class UnreadableSourceError(RadiographError):
    """The path, bytes or file object could not be read at all."""


class NotAnImageError(RadiographError):
    """The content is not a recognised image format."""


class CorruptImageError(RadiographError):
    """The file is recognised but truncated or damaged."""


class CodecMissingError(RadiographError):
    """The file needs a decoder that is not installed; ``codec`` names it."""

    def __init__(self, message: str, codec: str = "") -> None:
        super().__init__(message)
        self.codec = codec


class NoPixelDataError(RadiographError):
    """A DICOM file without an image (e.g. a report or structured data)."""


class ImageTooLargeError(RadiographError):
    """The header declares more pixels than ``max_pixels``; nothing was decoded."""


class BlankImageError(RadiographError):
    """Every pixel has the same value: nothing to show or explain."""


class NotARadiographError(RadiographError):
    """A valid image that is not a projection radiograph (CT/MR volume, ultrasound, tiny icon...)."""


# ----------------------------------------------------------------------------------------- the record
@dataclass(frozen=True)
class Radiograph:
    """A decoded radiograph on its original pixel grid.

    ``pixels``: float32 (H, W) in [0, 1], display-ready (bone white, air black).
    ``modality_values``: float32 (H, W) after the Modality LUT and before VOI/inversion (raw stored values
    for raster images), so a viewer can re-window with :meth:`rewindow` / :func:`apply_window`.
    ``window``: (centre, width) that produced ``pixels`` with ``voi_function`` (LINEAR, LINEAR_EXACT or
    SIGMOID), or None when a VOI LUT table (or plain /255 scaling) was used; ``voi_function`` is always a
    valid ``apply_window`` function for re-windowing. ``inverted``: whether the display inverts values.
    ``metadata``: non-identifying attributes only. ``patient``: identifying attributes (names, IDs,
    dates, institution, UIDs); excluded from ``repr`` and never logged.
    """

    pixels: np.ndarray = field(repr=False)
    modality_values: np.ndarray = field(repr=False)
    window: tuple[float, float] | None
    format: str
    bits_stored: int
    photometric: str
    pixel_spacing: tuple[float, float] | None = None
    frames: int = 1
    notices: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    patient: dict[str, str] = field(default_factory=dict, repr=False)
    inverted: bool = False
    voi_function: str = "LINEAR"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pixels", read_only(self.pixels, np.float32))
        object.__setattr__(self, "modality_values", read_only(self.modality_values, np.float32))
        if self.pixels.ndim != 2 or self.pixels.shape != self.modality_values.shape:
            raise ValueError("pixels and modality_values must be 2-D arrays of the same shape")

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the original pixel grid."""
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    def rewindow(self, center: float, width: float) -> np.ndarray:
        """Display pixels for another window (same inversion and VOI function as the file)."""
        return apply_window(self.modality_values, center, width, invert=self.inverted, function=self.voi_function)


# ------------------------------------------------------------------------------------------ windowing
def apply_window(
    modality_values: np.ndarray,
    center: float,
    width: float,
    *,
    invert: bool = False,
    function: str = "LINEAR",
    photometric: str | None = None,
) -> np.ndarray:
    """Map modality values through a VOI window to display pixels in [0, 1] (DICOM PS3.3 C.11.2.1.2).

    LINEAR: ``y = clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)`` (w >= 1; w == 1 is a threshold at c - 0.5).
    LINEAR_EXACT: ``y = clip((x - c) / w + 0.5, 0, 1)`` (w > 0).  SIGMOID: ``y = 1 / (1 + exp(-4 (x - c) / w))``.
    The inversion (MONOCHROME1 and/or Presentation LUT Shape INVERSE) comes after the window:
    ``y -> 1 - y``; pass ``invert=True`` or ``photometric="MONOCHROME1"``.
    """
    x = np.asarray(modality_values, dtype=np.float32)
    c = float(center)
    w = float(width)
    fn = (function or "LINEAR").upper()
    if not np.isfinite(c) or not np.isfinite(w):
        raise ValueError("window centre and width must be finite numbers")
    if fn == "LINEAR":
        if w < 1:
            raise ValueError(f"window width must be >= 1 for LINEAR, got {w}")
        if w == 1:
            y = (x > c - 0.5).astype(np.float32)
        else:
            y = (x - np.float32(c - 0.5)) * np.float32(1.0 / (w - 1)) + np.float32(0.5)
            np.clip(y, 0.0, 1.0, out=y)
    elif fn == "LINEAR_EXACT":
        if w <= 0:
            raise ValueError(f"window width must be > 0 for LINEAR_EXACT, got {w}")
        y = (x - np.float32(c)) * np.float32(1.0 / w) + np.float32(0.5)
        np.clip(y, 0.0, 1.0, out=y)
    elif fn == "SIGMOID":
        if w <= 0:
            raise ValueError(f"window width must be > 0 for SIGMOID, got {w}")
        with np.errstate(over="ignore"):
            y = (1.0 / (1.0 + np.exp(-4.0 * (x.astype(np.float64) - c) / w))).astype(np.float32)
    else:
        raise ValueError(f"unknown VOI LUT function {function!r} (LINEAR, LINEAR_EXACT or SIGMOID)")
    if invert or (photometric or "").upper() == "MONOCHROME1":
        y = np.float32(1.0) - y
    return y.astype(np.float32, copy=False)


def stored_range_window(values: np.ndarray) -> tuple[float, float]:
    """The LINEAR window that maps min -> 0 and max -> 1 (used when a file carries no window)."""
    lo = float(np.min(values))
    hi = float(np.max(values))
    return ((lo + hi) / 2.0 + 0.5, hi - lo + 1.0)



# ---------------------------------------------------------------------------------------- plausibility
def check_plausible(values: np.ndarray) -> None:
    """Refuse tiny, non-finite or constant images with a clear message (integer arrays skip the finite test)."""
    h, w = values.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise NotARadiographError(f"the image is only {w}x{h} pixels; too small to be a radiograph")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise CorruptImageError("the image contains invalid (NaN or infinite) values")
    if float(values.min()) == float(values.max()):
        raise BlankImageError("the image is blank: every pixel has the same value")


def check_size(width: int, height: int, frames: int, max_pixels: int) -> None:
    """Header-level size check, before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"the header declares an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
            f"{max_pixels / 1e6:g} megapixel limit; nothing was decoded")
    if frames > 1 and width * height * frames > max_pixels:
        raise ImageTooLargeError(
            f"the file declares {frames} frames of {width}x{height}; too large to read safely")


def to_luminance(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W, 3) -> (H, W) float32 luminance; second value: whether the channels actually differed."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):
        return r.astype(np.float32), False
    wr, wg, wb = LUMA_WEIGHTS
    lum = r.astype(np.float32) * np.float32(wr)
    lum += g.astype(np.float32) * np.float32(wg)
    lum += b.astype(np.float32) * np.float32(wb)
    return lum, True
