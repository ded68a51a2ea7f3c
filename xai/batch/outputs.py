"""Per-image outputs: overlays with their provenance, maps, thumbnails, each written atomically.

Overlays are drawn by :func:`xai.render.view` (the one function that turns a result and display settings
into pixels, the same as on screen) and encoded with OpenCV:

* ``compact`` (the default for reports): JPEG (quality 90) with the longest side at most 1024 px (what
  the app shows) — a 12 MP film's four overlays cost a few hundredths of a second instead of ~8 s as
  full-resolution PNG (PIL, zlib level 6), and a fiftieth of the disk;
* ``full``: PNG on the film's own pixel grid (zlib level 1: ~2x faster than level 6, ~10% larger).

Both carry the provenance (model, sha256, method, class, layer, date, disclaimer): PNG in ``iTXt``
chunks, JPEG in a comment (``COM``) segment. Every file is written to a temporary name in its folder and
renamed into place (:func:`write_atomic`), so a killed run never leaves a half-written output that a
``--resume`` would take for a finished one.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from xai.batch.names import method_file
from xai.render import to_png_bytes

if TYPE_CHECKING:
    from xai.export import Provenance
    from xai.pipeline import PipelineResult
    from xai.protocols import LoadedModel

THUMBNAIL_SIDE = 384
"""Longest side of the report's thumbnails (px)."""


@dataclass(frozen=True)
class OverlayFormat:
    """How overlay files are written: ``kind`` ``"jpeg"`` or ``"png"``, ``max_side`` (None: the film's
    own resolution), JPEG ``quality`` or PNG zlib ``compression`` (0-9)."""

    kind: Literal["jpeg", "png"] = "jpeg"
    max_side: int | None = 1024
    quality: int = 90
    compression: int = 1

    @property
    def suffix(self) -> str:
        return ".jpg" if self.kind == "jpeg" else ".png"

    def key(self) -> dict[str, Any]:
        """A JSON record of the format (part of what makes an output complete for ``--resume``)."""
        return {"kind": self.kind, "max_side": self.max_side, "quality": self.quality,
                "compression": self.compression}


COMPACT = OverlayFormat()
"""JPEG, longest side 1024 px (the size the app shows a film at): the report's default."""
FULL_RESOLUTION = OverlayFormat(kind="png", max_side=None)
"""PNG on the film's own pixel grid."""


# ------------------------------------------------------------------------------------------ encoders
def jpeg_bytes(rgb: np.ndarray, comment: str | None = None, *, quality: int = 90) -> bytes:
    """JPEG of a uint8 RGB (H, W, 3) image (OpenCV's encoder), ``comment`` in a ``COM`` segment after SOI."""
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    data = buffer.tobytes()
    if not comment:
        return data
    payload = comment.encode("utf-8")[:65533]
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def thumbnail(rgb: np.ndarray, max_side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG thumbnail (longest side ``max_side``, area interpolation) for the HTML gallery."""
    from xai.render import downsample_for_display

    return jpeg_bytes(downsample_for_display(rgb, max_side), quality=85)


def overlay_file(rgb: np.ndarray, provenance: Provenance, fmt: OverlayFormat) -> bytes:
    """An overlay file in ``fmt`` with ``provenance`` embedded (``iTXt`` chunks or a JPEG comment)."""
    from xai.export import provenance_text

    text = provenance_text(provenance)
    if fmt.kind == "png":
        return to_png_bytes(rgb, text, compression=fmt.compression)
    return jpeg_bytes(rgb, json.dumps(text, ensure_ascii=False), quality=fmt.quality)


# ------------------------------------------------------------------------------------------ files
def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save`` of ``array`` in memory (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def provenance(result: PipelineResult, model: LoadedModel, method: str, settings: Mapping[str, Any]) -> Provenance:
    """The :class:`~xai.export.Provenance` of one overlay of ``result``."""
    from xai.export import Provenance

    return Provenance(
        model_name=model.card.name,
        model_sha256=model.card.sha256,
        method=method,
        target_class=result.target,
        target_layer=result.explanation.target_layer,
        settings=dict(settings),
        timings_ms={"total": float(result.timings_ms.get("total", 0.0))},
    )


@dataclass(frozen=True)
class Film:
    """A film and its maps on one (possibly shrunk) pixel grid: what :func:`xai.render.view` reads of a
    radiograph and of a result, with the film's own display (no window, per-image scale)."""

    pixels: np.ndarray
    maps: Mapping[str, np.ndarray]
    modality_values: None = None
    inverted: bool = False
    voi_function: str = "LINEAR"
    explanation: None = None
    geometry: None = None


def shrunk_film(result: PipelineResult, max_side: int | None) -> Film:
    """The film and its maps with the longest side at most ``max_side`` (None: as they are).

    The film is shrunk with area interpolation (one pass over its pixels). The maps are not shrunk from
    their full-resolution copies: each is resampled straight from the model grid onto the smaller grid
    (:meth:`~xai.preprocessing.Geometry.to_original` of the film's geometry scaled down, the same bilinear
    rule), which costs a fraction of a pass over a 12 MP map. Overlays, thumbnails and lung figures all
    start from here.
    """
    from xai.render import downsample_for_display

    pixels = np.asarray(result.radiograph.pixels)
    if max_side is None or max(pixels.shape) <= max_side:
        return Film(pixels, dict(result.maps))
    small = downsample_for_display(pixels.astype(np.float32, copy=False), max_side)
    geometry = _scaled(result.geometry, small.shape)
    maps = {m: geometry.to_original(result.explanation.maps[m][0]) for m in result.maps}
    return Film(small, maps)


def _scaled(geometry: Any, shape: tuple[int, ...]) -> Any:
    """``geometry`` for the same film shrunk to ``shape`` (H, W): original size and crop box scaled."""
    from dataclasses import replace

    H, W = geometry.original_size
    h, w = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = geometry.crop_box
    box = (round(x0 * w / W), round(y0 * h / H), max(round(x1 * w / W), round(x0 * w / W) + 1),
           max(round(y1 * h / H), round(y0 * h / H) + 1))
    return replace(geometry, original_size=(h, w), crop_box=box)


def overlays(film: Film, cmap: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The radiograph and one overlay per method as uint8 RGB on the film's grid: :func:`xai.render.view`
    with the report's settings (per-image scale, default opacity)."""
    from xai.render import DisplaySettings, view

    drawn = view(film, film, DisplaySettings(side=None, cmap=cmap))
    return np.asarray(drawn.original), {m: np.asarray(rgb) for m, rgb in drawn.overlays.items()}


def write_explain_outputs(
    result: PipelineResult, model: LoadedModel, folder: Path, *, cmap: str = "inferno",
    extra: Mapping[str, Any] | None = None,
) -> None:
    """The ``explain`` command's files: ``<method>.png`` (overlay on the film's own grid), ``<method>.npy``
    (float32 map on that grid) and ``result.json`` (:func:`xai.pipeline.result_record` plus ``extra``, e.g.
    the lung figures); each written atomically, ``result.json`` last."""
    from xai.pipeline import result_record

    folder.mkdir(parents=True, exist_ok=True)
    _, drawn = overlays(shrunk_film(result, None), cmap)
    for method, heat in result.maps.items():
        name = method_file(method)
        write_atomic(folder / f"{name}.png", overlay_file(drawn[method], provenance(result, model, method,
                                                                                      {"colormap": cmap}),
                                                          FULL_RESOLUTION))
        write_atomic(folder / f"{name}.npy", npy_bytes(np.asarray(heat, dtype=np.float32)))
    record = {**result_record(result, model), **(extra or {})}
    write_atomic(folder / "result.json", (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
