"""Load a radiograph from PNG, JPEG, TIFF, BMP, WEBP or DICOM into display-ready pixels.

``load_radiograph(source)`` accepts a path, ``bytes`` or a binary file object and returns a frozen
:class:`Radiograph`. The format is detected from the content (magic bytes), never from the file name.
Whatever the bytes, the only exception that escapes is :class:`RadiographError` (or a subclass), with
a message a user understands.

Display convention: ``pixels`` is float32 ``(H, W)`` in [0, 1] with bone white and air black.

- 8-bit raster images: ``value / 255``.
- 16-bit (or float) raster images: the stored range, ``(v - min) / (max - min)``; ``window`` records it.
- DICOM: Modality LUT -> VOI LUT or window (or the stored min/max when the file has none) -> one
  inversion when the file is MONOCHROME1 and/or has Presentation LUT Shape INVERSE (see ``xai.dicom``).

The size check (``max_pixels``) is done from the header before any pixel is decoded, which also stops
decompression bombs. Identifying DICOM attributes are kept apart in ``Radiograph.patient`` and never
appear in ``repr()``.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 16  # smaller than this cannot be a radiograph (and breaks the crop/resize heuristics)

__all__ = [
    "DEFAULT_MAX_PIXELS",
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
    "load_radiograph",
    "sniff_format",
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
def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    a.setflags(write=False)
    return a


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
        object.__setattr__(self, "pixels", _readonly(self.pixels))
        object.__setattr__(self, "modality_values", _readonly(self.modality_values))
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


# ----------------------------------------------------------------------------------------- sniffing
_DICOM_GROUPS = {0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028}


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM data set without the 128-byte preamble: starts with a plausible group/element tag."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in _DICOM_GROUPS or element > 0x0020:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR little endian
        return True
    (length,) = struct.unpack("<I", head[4:8])  # implicit VR: 32-bit length must be sane
    return 0 < length < 1024


def sniff_format(head: bytes) -> str | None:
    """Format name from the first bytes (>= 132 recommended), or None when unrecognised."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    if _looks_like_raw_dicom(head):
        return "dicom"
    return None


# ------------------------------------------------------------------------------------------ reading
Source = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO


def _read_source(source: Source) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        try:
            return Path(source).read_bytes()
        except FileNotFoundError:
            raise UnreadableSourceError("the file was not found") from None
        except IsADirectoryError:
            raise UnreadableSourceError("the path is a folder, not a file") from None
        except OSError as exc:
            raise UnreadableSourceError(f"the file could not be read ({exc.strerror or 'I/O error'})") from None
    getvalue = getattr(source, "getvalue", None)
    read = getattr(source, "read", None)
    if getvalue is None and read is None:
        raise UnreadableSourceError(
            f"cannot read an image from a {type(source).__name__}; pass a path, bytes or a binary file")
    try:
        data = getvalue() if getvalue is not None else read()
    except Exception as exc:  # noqa: BLE001 - any reader failure is the user's unreadable file
        raise UnreadableSourceError(f"the file could not be read ({type(exc).__name__})") from None
    if isinstance(data, str):
        raise UnreadableSourceError("the file object is opened in text mode; open it in binary mode ('rb')")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UnreadableSourceError("the file object did not return bytes")
    return bytes(data)


def load_radiograph(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Radiograph:
    """Decode a radiograph from a path, bytes or a binary file object.

    Raises only :class:`RadiographError` subclasses (not an image, corrupt, codec missing, no pixel data,
    too large, blank, not a radiograph). ``max_pixels`` is checked from the header before decoding.
    """
    try:
        if not isinstance(max_pixels, int) or max_pixels <= 0:
            raise RadiographError(f"max_pixels must be a positive integer, got {max_pixels!r}")
        data = _read_source(source)
        return _decode(data, max_pixels)
    except RadiographError:
        raise
    except MemoryError:
        raise ImageTooLargeError("not enough memory to decode this image") from None
    except RecursionError:
        raise CorruptImageError("the file's structure is malformed (nested too deeply)") from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the contract: nothing but RadiographError escapes;
        # BaseException because Rust decoders (pylibjpeg-rle via pyo3) raise PanicException, not an Exception
        raise CorruptImageError(f"the image could not be decoded; the file looks damaged ({type(exc).__name__})") from None


def _decode(data: bytes, max_pixels: int) -> Radiograph:
    if len(data) == 0:
        raise NotAnImageError("the file is empty")
    kind = sniff_format(data[:132])
    if kind is None:
        raise NotAnImageError(
            "not a recognised image: expected PNG, JPEG, TIFF, BMP, WEBP or DICOM content "
            "(the format is read from the file's content, not its name)")
    if kind == "dicom":
        from xai.dicom import decode_dicom

        radiograph = decode_dicom(data, max_pixels=max_pixels)
    else:
        radiograph = _decode_raster(data, kind, max_pixels)
    return radiograph


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


# ------------------------------------------------------------------------------------- raster images
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP", "webp": "WEBP"}
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow and OpenCV use


def _png_ihdr(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG IHDR chunk, or None."""
    if len(data) < 26 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height, data[24], data[25]


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


def _decode_raster(data: bytes, kind: str, max_pixels: int) -> Radiograph:
    from PIL import Image, ImageOps, UnidentifiedImageError

    notices: list[str] = []
    ihdr = _png_ihdr(data) if kind == "png" else None
    if ihdr is not None:  # check the PNG header ourselves before Pillow touches the data
        check_size(ihdr[0], ihdr[1], 1, max_pixels)
    try:
        image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]])
    except Image.DecompressionBombError:
        raise ImageTooLargeError("the image declares too many pixels (decompression bomb); nothing was decoded") from None
    except UnidentifiedImageError:
        raise CorruptImageError(f"the file starts like a {kind.upper()} image but its header is damaged") from None
    with image:
        width, height = image.size
        frames = int(getattr(image, "n_frames", 1) or 1)
        check_size(width, height, 1, max_pixels)
        if frames > 1:
            notices.append(f"multi-frame: first of {frames} frames shown")
        if ihdr is not None and ihdr[2] == 16 and ihdr[3] in (2, 6):
            values, bits, photometric, color_notice = _decode_png_rgb16(data)
        else:
            try:
                image.load()
            except Image.DecompressionBombError:
                raise ImageTooLargeError("the image declares too many pixels; nothing was decoded") from None
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise CorruptImageError(f"the {kind.upper()} file is truncated or damaged ({_short(exc)})") from None
            orientation = image.getexif().get(0x0112, 1) if kind in ("jpeg", "tiff", "webp", "png") else 1
            if orientation not in (None, 1):
                image = ImageOps.exif_transpose(image)
                notices.append("rotated as its EXIF orientation asks")
            values, bits, photometric, color_notice = _pil_to_values(image)
    if color_notice:
        notices.append(color_notice)
    check_plausible(values)
    values = values.astype(np.float32, copy=False)
    if bits <= 8:
        pixels = values * np.float32(1.0 / 255.0)
        window: tuple[float, float] | None = None
    else:
        window = stored_range_window(values)
        pixels = apply_window(values, *window)
    return Radiograph(
        pixels=pixels,
        modality_values=values,
        window=window,
        format=kind,
        bits_stored=bits,
        photometric=photometric,
        pixel_spacing=None,
        frames=frames,
        notices=tuple(notices),
        metadata={},
        patient={},
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:120]


def _decode_png_rgb16(data: bytes) -> tuple[np.ndarray, int, str, str | None]:
    """16-bit colour PNG: Pillow truncates to 8 bits, OpenCV keeps 16."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise CorruptImageError("the 16-bit PNG file is truncated or damaged")
    notice = None
    rgb = arr[..., 2::-1]  # BGR(A) -> RGB
    if arr.shape[2] == 4:
        alpha = arr[..., 3].astype(np.float32) / 65535.0
        if float(alpha.min()) < 1.0:
            rgb = rgb.astype(np.float32) * alpha[..., None]
            notice = "transparent areas shown as black"
    lum, coloured = to_luminance(rgb)
    if coloured:
        notice = "colour image: converted to grayscale (luminance)" if notice is None else notice
    return lum, 16, "RGB", notice


def _pil_to_values(image) -> tuple[np.ndarray, int, str, str | None]:  # noqa: ANN001 - PIL.Image
    """Pillow image -> (values (H, W), native dtype or float32, bits, photometric, notice)."""
    mode = image.mode
    notice: str | None = None
    if mode == "L":
        return np.asarray(image), 8, "MONOCHROME2", None  # native uint8; the caller converts once
    if mode == "1":
        return np.asarray(image.convert("L")), 8, "MONOCHROME2", None
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image).astype(np.uint16), 16, "MONOCHROME2", None
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        return values, 16 if mode == "I" else 32, "MONOCHROME2", None
    if mode in ("LA", "La", "PA", "P", "RGBA", "RGBa", "RGBX"):
        has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
            mode == "P" and "transparency" in image.info)
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3]
        if has_alpha:
            alpha = rgba[..., 3] / np.float32(255.0)
            if float(alpha.min()) < 1.0:
                rgb = rgb * alpha[..., None]
                notice = "transparent areas shown as black"
        lum, coloured = to_luminance(rgb)
        if coloured and notice is None:
            notice = "colour image: converted to grayscale (luminance)"
        return lum, 8, "PALETTE COLOR" if mode.startswith("P") else "RGB", notice
    # RGB, CMYK (Pillow undoes Adobe's inverted CMYK), YCbCr, LAB, HSV ...
    rgb = np.asarray(image.convert("RGB"))
    lum, coloured = to_luminance(rgb)
    if coloured:
        notice = "colour image: converted to grayscale (luminance)"
    return lum, 8, "CMYK" if mode == "CMYK" else "RGB", notice
