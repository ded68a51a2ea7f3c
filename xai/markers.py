"""Burned-in text and side markers: where they are on a radiograph (first version; see the final docstring)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from xai.radiograph import Radiograph

__all__ = ["MarkerBox", "find_text_and_markers", "text_and_marker_mask"]


@dataclass(frozen=True)
class MarkerBox:
    """One burned-in word or marker, on ``radiograph.pixels``' grid."""

    x: int
    y: int
    w: int
    h: int
    kind: str  # "text" | "marker"
    found_by: str  # "ocr" | "tophat"
    confidence: float


def find_text_and_markers(radiograph: Radiograph, *, ocr: bool | None = None) -> list[MarkerBox]:
    """Boxes of burned-in text and markers (white top-hat + connected components)."""
    pixels = radiograph.pixels
    h, w = pixels.shape
    img = np.clip(pixels * 255.0, 0, 255).astype(np.uint8)
    k = max(3, int(round(0.04 * max(h, w))) | 1)
    tophat = cv2.morphologyEx(img, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    binary = (tophat > 90).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    boxes = []
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if area < 6 or max(bw, bh) > 0.1 * max(h, w):
            continue
        boxes.append(MarkerBox(x, y, bw, bh, "marker", "tophat", 0.5))
    return boxes


def text_and_marker_mask(radiograph: Radiograph, *, ocr: bool | None = None) -> np.ndarray:
    """Bool (H, W) on ``radiograph.pixels``' grid: the union of the found boxes, slightly padded."""
    h, w = radiograph.shape
    mask = np.zeros((h, w), dtype=bool)
    pad = max(1, int(round(0.005 * max(h, w))))
    for b in find_text_and_markers(radiograph, ocr=ocr):
        mask[max(0, b.y - pad): b.y + b.h + pad, max(0, b.x - pad): b.x + b.w + pad] = True
    return mask
