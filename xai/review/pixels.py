"""A film as stored: de-identified display pixels as a 16-bit PNG without metadata, keyed by their SHA-256."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from xai.review.errors import ReviewError

__all__ = ["decode_pixels", "encode_pixels"]


def encode_pixels(pixels: np.ndarray) -> tuple[bytes, str]:
    """Display pixels in [0, 1] -> (16-bit grayscale PNG without metadata, SHA-256 of the 16-bit pixels)."""
    values = np.asarray(pixels, dtype=np.float64)
    if values.ndim != 2:
        raise ReviewError(f"a film must be a 2-D image, got shape {values.shape}")
    u16 = np.ascontiguousarray(np.round(np.clip(values, 0.0, 1.0) * 65535.0).astype(np.uint16))
    digest = hashlib.sha256(f"{u16.shape[0]}x{u16.shape[1]}:".encode() + u16.tobytes()).hexdigest()
    ok, buffer = cv2.imencode(".png", u16, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ReviewError("could not encode the film's pixels")
    return buffer.tobytes(), digest


def decode_pixels(png: bytes) -> np.ndarray:
    """The stored PNG back to float32 display pixels in [0, 1] (read-only)."""
    u16 = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if u16 is None or u16.ndim != 2:
        raise ReviewError("a stored film could not be decoded")
    pixels = (u16.astype(np.float32) / 65535.0)
    pixels.setflags(write=False)
    return pixels
