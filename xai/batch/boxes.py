"""Finding boxes: read from a CSV (the data manifest or ``file,x,y,w,h[,label]``), as a mask, drawn on a film."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np


@dataclass(frozen=True)
class Box:
    """A finding box in original pixel coordinates (x, y = top-left corner)."""

    x: float
    y: float
    w: float
    h: float
    label: str = ""


class BoxesError(ValueError):
    """A boxes CSV that cannot be read (the message names the line and the problem)."""


def _parse_manifest_boxes(text: str, width: float) -> list[Box]:
    scale = width / 1024.0
    boxes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        label, x, y, w, h = part.split("|")
        boxes.append(Box(float(x) * scale, float(y) * scale, float(w) * scale, float(h) * scale, label))
    return boxes


def load_boxes(path: str | Path) -> dict[str, tuple[Box, ...]]:
    """:func:`parse_boxes` of a CSV file."""
    try:
        text = Path(path).read_text("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BoxesError(f"cannot read boxes file: {exc}") from None
    return parse_boxes(text)


def parse_boxes(text: str) -> dict[str, tuple[Box, ...]]:
    """Finding boxes by file name (the name's last component) from CSV text.

    Two formats: the data manifest (columns ``file``, ``width``, ``nih_boxes_1024`` with
    ``label|x|y|w|h;...`` in the NIH 1024 px frame, scaled by ``width/1024``; rows without boxes are
    ignored) or a simple ``file,x,y,w,h[,label]`` in the image's own pixels (one row per box).
    """
    try:
        return _parse_boxes(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))
    except csv.Error as exc:
        raise BoxesError(f"not a readable CSV file ({exc})") from None


def _parse_boxes(reader: csv.DictReader) -> dict[str, tuple[Box, ...]]:
    columns = {c.strip().lower() for c in (reader.fieldnames or [])}
    manifest = {"file", "width", "nih_boxes_1024"} <= columns
    if not manifest and not {"file", "x", "y", "w", "h"} <= columns:
        raise BoxesError(
            "boxes CSV needs columns file,x,y,w,h[,label] or the manifest's file,width,nih_boxes_1024"
        )
    boxes: dict[str, list[Box]] = {}
    for line, raw in enumerate(reader, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        name = PurePosixPath(row["file"].replace("\\", "/")).name
        try:
            if manifest:
                if not row["nih_boxes_1024"]:
                    continue
                found = _parse_manifest_boxes(row["nih_boxes_1024"], float(row["width"]))
            else:
                found = [Box(float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"]), row.get("label", ""))]
        except (ValueError, KeyError) as exc:
            raise BoxesError(f"line {line}: cannot parse a box ({exc})") from None
        for box in found:
            if not (np.isfinite([box.x, box.y, box.w, box.h]).all() and box.w > 0 and box.h > 0):
                raise BoxesError(f"line {line}: box needs finite coordinates and positive width/height")
        boxes.setdefault(name, []).extend(found)
    return {name: tuple(found) for name, found in boxes.items()}


def boxes_mask(boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    """Union of the boxes as a bool (H, W) mask (pixel-centre rule of :func:`xai.trust.metrics.box_to_mask`).

    Boxes that cover no pixel of the image are left out (the mask may then be empty)."""
    from xai.trust.metrics import box_to_mask

    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        try:
            mask |= box_to_mask((box.x, box.y, box.w, box.h), shape)
        except ValueError:
            continue
    return mask


def draw_boxes(rgb: np.ndarray, boxes: Sequence[Box], color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """A copy of ``rgb`` with the boxes outlined (thickness ~0.4% of the image side, at least 1 px)."""
    out = np.ascontiguousarray(rgb).copy()
    thickness = max(1, round(max(out.shape[:2]) / 250))
    for box in boxes:
        p0 = (round(box.x), round(box.y))
        p1 = (round(box.x + box.w) - 1, round(box.y + box.h) - 1)
        cv2.rectangle(out, p0, p1, color, thickness, lineType=cv2.LINE_AA)
    return out
