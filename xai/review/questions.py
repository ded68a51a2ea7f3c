"""What a review session asks and the answers it accepts: the questions, their scales, the checks an
answer passes before it is stored, and the reference diagnoses read from a labels CSV."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from xai.review.errors import ReviewError

__all__ = [
    "CONFIDENCE_RANGE",
    "DIAGNOSES",
    "MAX_NAME",
    "MAX_NOTE",
    "PLAUSIBILITY_LABELS",
    "PLAUSIBILITY_RANGE",
    "QUESTIONS",
    "REFERENCE_DIAGNOSES",
    "clean_name",
    "clip_box",
    "int_in",
    "read_labels_csv",
]

DIAGNOSES = ("covid19", "non_covid", "uncertain")
#: What a reference diagnosis can be (a reader may be uncertain; a reference is not).
REFERENCE_DIAGNOSES = ("covid19", "non_covid")
CONFIDENCE_RANGE = (1, 5)
PLAUSIBILITY_RANGE = (1, 5)
#: The plausibility scale: higher is more plausible (the mean per method reads "higher is better").
PLAUSIBILITY_LABELS = {
    5: "on the finding",
    4: "mostly on the finding",
    3: "partly on the finding",
    2: "in the lungs, off the finding",
    1: "artefact / outside the lungs",
}
#: The questions a session can ask; a session asks all of them unless created with fewer.
QUESTIONS = ("diagnosis", "confidence", "plausibility", "note", "box")
MAX_NAME = 200
MAX_NOTE = 10_000


def read_labels_csv(text: str | bytes) -> dict[str, str]:
    """``{file name: reference diagnosis}`` from a CSV with a header naming a ``file`` column and a
    ``diagnosis`` column (``covid19`` or ``non_covid``); :class:`ReviewError` naming the bad line."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ReviewError("the labels file is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "file" not in fields or "diagnosis" not in fields:
        raise ReviewError(f"the labels CSV needs a header with 'file' and 'diagnosis' columns, got {fields or 'none'}")
    out: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        name, diagnosis = Path(row["file"]).name, row["diagnosis"]
        if not name:
            raise ReviewError(f"labels line {line}: the file name is empty")
        if diagnosis not in REFERENCE_DIAGNOSES:
            raise ReviewError(f"labels line {line}: diagnosis must be one of {', '.join(REFERENCE_DIAGNOSES)}, "
                              f"got {diagnosis!r}")
        if out.get(name, diagnosis) != diagnosis:
            raise ReviewError(f"labels line {line}: {name} is labelled twice, differently")
        out[name] = diagnosis
    return out


def clean_name(value: Any, what: str) -> str:
    """``value`` as a name (a session, an owner, a reader): stripped, not empty, at most :data:`MAX_NAME`
    characters, no control characters; :class:`ReviewError` saying which rule ``what`` breaks."""
    text = str(value if value is not None else "").strip()
    if not text:
        raise ReviewError(f"{what} must not be empty")
    if len(text) > MAX_NAME:
        raise ReviewError(f"{what} is {len(text)} characters long; at most {MAX_NAME}")
    if any(ord(c) < 32 for c in text):
        raise ReviewError(f"{what} must not contain control characters")
    return text


def int_in(value: Any, bounds: tuple[int, int], what: str) -> int:
    """``value`` as a whole number within ``bounds`` (inclusive); :class:`ReviewError` naming ``what``."""
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise ReviewError(f"{what} must be a whole number from {lo} to {hi}, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ReviewError(f"{what} must be from {lo} to {hi}, got {int(value)}")
    return int(value)


def clip_box(value: Any, shape: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """A box ``[x, y, w, h]`` in pixels of the film (``shape`` = (H, W)), clipped to it; None for none."""
    if value is None:
        return None
    try:
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ReviewError(f"box must be [x, y, w, h] (four numbers), got {value!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ReviewError(f"box must have positive finite width and height, got {[x, y, w, h]}")
    height, width = shape
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if x1 <= x0 or y1 <= y0:
        raise ReviewError(f"box {[x, y, w, h]} lies outside the {width}x{height} film")
    return (x0, y0, x1 - x0, y1 - y0)

