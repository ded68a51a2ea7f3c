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
from pathlib import Path
from typing import BinaryIO

import numpy as np

# The record, its errors and windowing live in the leaf module (xai.dicom imports it too, not this one);
# re-exported so that ``from xai.radiograph import Radiograph, RadiographError, apply_window`` keeps working.
from xai import radiograph_core as _core
from xai.dicom import decode_dicom
from xai.radiograph_core import *  # noqa: F403 - its public names are this module's too
from xai.radiograph_core import (
    DEFAULT_MAX_PIXELS,
    CorruptImageError,
    ImageTooLargeError,
    NotAnImageError,
    Radiograph,
    RadiographError,
    UnreadableSourceError,
    apply_window,
    check_plausible,
    check_size,
    stored_range_window,
    to_luminance,
)

__all__ = [*_core.__all__, "Source", "load_radiograph", "sniff_format"]


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
        data = getvalue() if getvalue is not None else read()  # type: ignore[misc]  # one of them is set (checked above)
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
        radiograph = decode_dicom(data, max_pixels=max_pixels)
    else:
        radiograph = _decode_raster(data, kind, max_pixels)
    return radiograph


# ------------------------------------------------------------------------------------- raster images
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP", "webp": "WEBP"}



def _png_ihdr(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG IHDR chunk, or None."""
    if len(data) < 26 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height, data[24], data[25]


def _decode_raster(data: bytes, kind: str, max_pixels: int) -> Radiograph:
    from PIL import Image, ImageOps, UnidentifiedImageError

    notices: list[str] = []
    ihdr = _png_ihdr(data) if kind == "png" else None
    if ihdr is not None:  # check the PNG header ourselves before Pillow touches the data
        check_size(ihdr[0], ihdr[1], 1, max_pixels)
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]])
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
