"""Many images at once: safe output names, per-image outputs, the batch report, safe zip reading.

Used by the ``explain`` and ``report`` commands (:mod:`xai.cli`) and the Batch page. Pure library: no UI
imports; progress is reported through a callback.

Safety rules kept here, in one place:

* Output names come from the input *file name* only (never DICOM header fields), are reduced to letters,
  digits, ``-`` and ``_`` (no dots, so no ``..``, no dot files, no extensions), capped in length, made
  unique case-insensitively, and checked to resolve inside the output folder.
* Zip uploads are read in memory with limits on the archive size, member count, per-member and total
  uncompressed size and compression ratio; sizes are enforced while reading, not trusted from headers.
* Cells that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@`` ...) are quoted in the CSV;
  everything in the HTML is escaped.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import stat
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from xai.pipeline import PipelineResult, explain_source, make_explainer, model_identity, result_record

if TYPE_CHECKING:
    from models import LoadedModel
    from xai.engine import Explainer

Progress = Callable[[int, int, str], None]
"""``progress(done, total, name)`` called after each image."""

# ------------------------------------------------------------------------------------------ names
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
)
_MAX_STEM_BYTES = 100


def safe_stem(name: str) -> str:
    """A file-system-safe stem from the last component of ``name`` (a file name or path as given).

    Unicode is NFKC-normalised; anything but letters, digits, ``-`` and ``_`` becomes ``_`` (dots too:
    no ``.``/``..``, no hidden files); runs of ``_`` collapse; empty -> ``image``; Windows device names
    get a ``_`` prefix; at most 100 UTF-8 bytes.
    """
    base = PurePosixPath(str(name).replace("\\", "/")).name
    if "." in base.lstrip("."):
        base = base.rsplit(".", 1)[0]
    base = unicodedata.normalize("NFKC", base)
    cleaned = "".join(c if (c.isalnum() or c in "-_") else "_" for c in base)
    while "__" in cleaned:
        cleaned = cleaned.replace("__", "_")
    cleaned = cleaned.strip("_-") or "image"
    if cleaned.lower() in _WINDOWS_RESERVED:
        cleaned = f"_{cleaned}"
    encoded = cleaned.encode("utf-8")[:_MAX_STEM_BYTES]
    return encoded.decode("utf-8", errors="ignore") or "image"


def unique_stems(names: Sequence[str]) -> list[str]:
    """:func:`safe_stem` of each name, made unique (case-insensitive) with ``_2``, ``_3``... in order."""
    taken: set[str] = set()
    stems: list[str] = []
    for name in names:
        stem = candidate = safe_stem(name)
        n = 1
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.casefold())
        stems.append(candidate)
    return stems


def output_dir_for(out_dir: Path, stem: str) -> Path:
    """``out_dir/stem``, refusing anything that would resolve outside ``out_dir`` (e.g. a planted symlink)."""
    root = Path(out_dir).resolve()
    target = (root / stem).resolve()
    if target.parent != root or stem in {"", ".", ".."} or "/" in stem or "\\" in stem:
        raise ValueError(f"output name {stem!r} would leave the output folder")
    return target


# ------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class InputItem:
    """One input: ``name`` as given (path or upload name), ``source`` a path or bytes, or an ``error``."""

    name: str
    source: Path | bytes | None
    error: str | None = None


def _walk_sorted(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` in sorted order, skipping hidden files and folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.startswith("."):
                yield Path(dirpath) / filename


#: Side files skipped when walking a folder (named explicitly, they are tried like any file): formats are
#: detected from content, so images need no extension, but these are never radiographs.
NOT_IMAGE_SUFFIXES = frozenset(
    {".md", ".txt", ".json", ".csv", ".tsv", ".html", ".htm", ".xml", ".pdf", ".py", ".yaml", ".yml",
     ".toml", ".log", ".npy", ".npz", ".zip", ".gz", ".ini", ".cfg"}
)


def collect_inputs(paths: Iterable[str | Path], skipped: list[str] | None = None) -> list[InputItem]:
    """Files as given, directories walked (sorted, deterministic); missing paths become error items.

    While walking, hidden files and obvious side files (:data:`NOT_IMAGE_SUFFIXES`) are left out and
    their names appended to ``skipped`` when a list is given.
    """
    items: list[InputItem] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for p in _walk_sorted(path):
                if p.suffix.lower() in NOT_IMAGE_SUFFIXES:
                    if skipped is not None:
                        skipped.append(str(p))
                elif p.is_file():
                    items.append(InputItem(str(p), p))
        elif path.is_file():
            items.append(InputItem(str(given), path))
        elif path.exists():
            items.append(InputItem(str(given), None, "not a regular file"))
        else:
            items.append(InputItem(str(given), None, "no such file or directory"))
    return items


# ------------------------------------------------------------------------------------------ zip uploads
class ArchiveError(ValueError):
    """A zip archive refused as unsafe or unreadable (the message says why)."""


@dataclass(frozen=True)
class ZipLimits:
    """Limits for reading an uploaded zip (defaults suit a few hundred radiographs)."""

    max_archive_bytes: int = 512 * 1024 * 1024
    max_members: int = 500
    max_member_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 1024 * 1024 * 1024
    max_ratio: float = 100.0


def _is_skippable_member(info: zipfile.ZipInfo) -> bool:
    parts = PurePosixPath(info.filename.replace("\\", "/")).parts
    return (
        info.is_dir()
        or not parts
        or any((p.startswith(".") and p not in {".", ".."}) or p == "__MACOSX" for p in parts)
        or stat.S_ISLNK(info.external_attr >> 16)
    )


def _member_display_name(filename: str) -> str:
    """The member path without drive, root or ``..`` parts (display only; outputs use :func:`safe_stem`)."""
    parts = [p for p in PurePosixPath(filename.replace("\\", "/")).parts if p not in {"", ".", "..", "/"}]
    parts = [p for p in parts if not (len(p) == 2 and p[1] == ":")]
    return "/".join(parts) or "image"


def read_zip(data: bytes, limits: ZipLimits = ZipLimits()) -> list[tuple[str, bytes]]:
    """The files of an uploaded zip as ``(name, bytes)``, read in memory (nothing touches the disk).

    Directories, symlinks, hidden files and ``__MACOSX`` are skipped. Raises :class:`ArchiveError` for a
    file that is not a zip, an encrypted member, or an archive over any of ``limits`` — the uncompressed
    sizes are counted while decompressing, so a header that lies about them does not help a zip bomb.
    """
    if len(data) > limits.max_archive_bytes:
        raise ArchiveError(f"archive is {len(data)} bytes; the limit is {limits.max_archive_bytes}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ArchiveError(f"not a readable zip archive ({exc})") from None
    with archive:
        members = [info for info in archive.infolist() if not _is_skippable_member(info)]
        if len(members) > limits.max_members:
            raise ArchiveError(f"archive holds {len(members)} files; the limit is {limits.max_members}")
        declared = sum(info.file_size for info in members)
        if declared > limits.max_total_bytes:
            raise ArchiveError(f"archive would unpack to {declared} bytes; the limit is {limits.max_total_bytes}")
        files: list[tuple[str, bytes]] = []
        total = 0
        for info in members:
            name = _member_display_name(info.filename)
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{name}: encrypted archive members are not supported")
            budget = min(limits.max_member_bytes, limits.max_total_bytes - total)
            ratio_cap = int(max(info.compress_size, 1) * limits.max_ratio)
            content = _read_bounded(archive, info, name, min(budget, max(ratio_cap, 1024)), limits, budget)
            total += len(content)
            files.append((name, content))
        return files


def _read_bounded(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, cap: int, limits: ZipLimits, budget: int
) -> bytes:
    """Decompress one member, stopping as soon as it exceeds ``cap`` bytes."""
    chunks: list[bytes] = []
    size = 0
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(min(1 << 20, cap + 1 - size)):
                size += len(chunk)
                if size > cap:
                    break
                chunks.append(chunk)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ArchiveError(f"{name}: cannot be decompressed ({exc})") from None
    if size > cap:
        if cap >= budget:
            raise ArchiveError(f"{name}: unpacks past the size limit ({budget} bytes); refused")
        raise ArchiveError(
            f"{name}: compression ratio over {limits.max_ratio:g}:1 (a zip bomb?); refused"
        )
    return b"".join(chunks)


def is_zip(data: bytes) -> bool:
    """True for the bytes of a zip archive (by content, not by name)."""
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def items_from_uploads(uploads: Sequence[tuple[str, bytes]], limits: ZipLimits = ZipLimits()) -> list[InputItem]:
    """Uploaded files as input items; a zip becomes its members (``archive.zip/member`` names).

    An unsafe or unreadable zip becomes one error item with the reason; the other uploads still run.
    The number of images across all uploads is capped at ``limits.max_members``.
    """
    items: list[InputItem] = []
    for name, data in uploads:
        if is_zip(data):
            try:
                members = read_zip(data, limits)
            except ArchiveError as exc:
                items.append(InputItem(name, None, str(exc)))
                continue
            items.extend(InputItem(f"{name}/{member}", content) for member, content in members)
        else:
            items.append(InputItem(name, data))
    if len(items) > limits.max_members:
        raise ArchiveError(f"{len(items)} images uploaded; the limit is {limits.max_members} per batch")
    return items


def zip_folder(folder: Path) -> bytes:
    """The files under ``folder`` as a zip (relative names, sorted), for one download."""
    buffer = io.BytesIO()
    root = Path(folder)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ per-image outputs
def write_explain_outputs(
    result: PipelineResult, model: LoadedModel, folder: Path, *, cmap: str = "inferno"
) -> None:
    """``folder/<method>.png`` (overlay at full resolution), ``<method>.npy`` (float32 map), ``result.json``."""
    from xai.render import overlay

    folder.mkdir(parents=True, exist_ok=True)
    for method, heat in result.maps.items():
        rgb = overlay(result.radiograph.pixels, heat, cmap=cmap)
        (folder / f"{_method_file(method)}.png").write_bytes(_overlay_file_bytes(rgb, result, model, method, cmap))
        np.save(folder / f"{_method_file(method)}.npy", np.asarray(heat, dtype=np.float32), allow_pickle=False)
    record = result_record(result, model)
    (folder / "result.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", "utf-8")


def _overlay_file_bytes(
    rgb: np.ndarray, result: PipelineResult, model: LoadedModel, method: str, cmap: str
) -> bytes:
    """The overlay PNG at full resolution with its provenance (model, sha256, version, settings, date)."""
    from xai.export import Provenance, provenance_png

    provenance = Provenance(
        model_name=model.card.name,
        model_sha256=model.card.sha256,
        method=method,
        target_class=result.target,
        target_layer=result.explanation.target_layer,
        settings={"colormap": cmap},
        timings_ms={"total": float(result.timings_ms.get("total", 0.0))},
    )
    return provenance_png(rgb, provenance)


def _method_file(method: str) -> str:
    """Method names are fixed identifiers (``gradcam++`` stays as is: ``+`` is a safe file character)."""
    return method.replace("/", "_")


def iter_explained(
    items: Sequence[InputItem],
    model: LoadedModel,
    *,
    methods: Sequence[str],
    target: str | int | None,
    max_pixels: int | None = None,
    explainer: Explainer | None = None,
    isolated: bool = True,
) -> Iterator[tuple[InputItem, PipelineResult | None, str | None]]:
    """Explain each item in turn: ``(item, result, None)`` or ``(item, None, reason)`` for a bad one.

    A file that is not a usable radiograph gives the loader's reason; any other failure for one image
    is reported by its exception type and message and the batch carries on. ``isolated`` decodes each
    file in a worker process with time and memory limits (:mod:`xai.isolation`), so a decoder that
    crashes or hangs on one file fails that file only.
    """
    from xai.radiograph import RadiographError

    loader = None
    if isolated:
        from xai.isolation import load_radiograph_isolated as loader

    explainer = explainer if explainer is not None else make_explainer(model)
    for item in items:
        if item.error is not None or item.source is None:
            yield item, None, item.error or "no data"
            continue
        try:
            result = explain_source(
                item.source,
                model,
                name=item.name,
                methods=methods,
                target=target,
                explainer=explainer,
                max_pixels=max_pixels,
                loader=loader,
            )
        except RadiographError as exc:
            yield item, None, str(exc) or type(exc).__name__
        except (MemoryError, ValueError, RuntimeError, OSError) as exc:
            yield item, None, f"{type(exc).__name__}: {exc}"
        else:
            yield item, result, None


# ------------------------------------------------------------------------------------------ boxes
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


# ------------------------------------------------------------------------------------------ the report
AGREEMENT_KEYS = ("hit", "energy_inside", "iou_otsu")


@dataclass
class ReportRow:
    """One image of a batch report (a failed one has ``error`` and nothing else)."""

    file: str
    stem: str | None = None
    error: str | None = None
    predicted: str | None = None
    target: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    ood: dict[str, Any] = field(default_factory=dict)
    n_boxes: int = 0
    box_fraction: float | None = None
    """Share of the image inside the boxes: the pointing game's chance level for this image."""
    agreement: dict[str, dict[str, float]] = field(default_factory=dict)
    stability: dict[str, dict[str, float]] = field(default_factory=dict)
    notices: tuple[str, ...] = ()
    thumbnails: dict[str, bytes] = field(default_factory=dict, repr=False)


@dataclass
class Report:
    """A finished batch report: rows in input order, the model and the question asked."""

    rows: list[ReportRow]
    methods: tuple[str, ...]
    class_names: tuple[str, ...]
    model: dict[str, str]
    target: str
    stability: bool

    @property
    def failed(self) -> list[ReportRow]:
        return [row for row in self.rows if row.error is not None]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method over images with boxes: ``n``, ``hit_rate``, ``mean_energy_inside``, ``miou``."""
        out: dict[str, dict[str, float]] = {}
        for method in self.methods:
            scored = [row.agreement[method] for row in self.rows if method in row.agreement]
            if not scored:
                continue
            out[method] = {
                "n": len(scored),
                "hit_rate": float(np.mean([s["hit"] for s in scored])),
                "mean_energy_inside": float(np.mean([s["energy_inside"] for s in scored])),
                "miou": float(np.mean([s["iou_otsu"] for s in scored])),
            }
        return out

    def chance_hit_rate(self) -> float | None:
        """Hit rate of a point drawn uniformly over each image (mean box area share), for comparison."""
        shares = [row.box_fraction for row in self.rows if row.agreement and row.box_fraction is not None]
        return float(np.mean(shares)) if shares else None

    def summary_markdown(self) -> str:
        """The per-method agreement summary as a markdown table."""
        summary = self.summary()
        if not summary:
            return "No image had a finding box: no agreement figures.\n"
        lines = [
            "| method | images | hit rate (pointing game) | mean energy inside box | mIoU (Otsu) |",
            "|---|---:|---:|---:|---:|",
        ]
        for method, s in summary.items():
            lines.append(
                f"| {method} | {int(s['n'])} | {s['hit_rate']:.3f} | {s['mean_energy_inside']:.3f} | {s['miou']:.3f} |"
            )
        chance = self.chance_hit_rate()
        if chance is not None:
            lines.append(f"| *chance: uniform map or random point (mean box area share)* | | {chance:.3f} | {chance:.3f} | |")
        return "\n".join(lines) + "\n"


def _agreement(heat: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Pointing hit, share of map energy inside, Otsu IoU (CheXlocalize conventions, :mod:`xai.trust.metrics`)."""
    from xai.trust.metrics import energy_inside, otsu_iou, pointing_game

    return {
        "hit": float(bool(pointing_game(heat, mask))),
        "energy_inside": float(energy_inside(heat, mask)),
        "iou_otsu": float(otsu_iou(heat, mask)),
    }


def _ood(result: PipelineResult, model: LoadedModel) -> dict[str, Any]:
    """Out-of-distribution score and warnings (:func:`xai.trust.ood.ood_report`) as a plain dict.

    Keys: ``score`` (Mahalanobis distance, None without fitted statistics), ``percentile``, ``threshold``,
    ``is_ood``, ``warnings`` (sentences; header hints included, never header values that identify)."""
    from dataclasses import asdict

    from xai.trust.ood import ood_report

    return asdict(ood_report(model, result.input_tensor, result.radiograph, features=result.explanation.features))


def _stability(result: PipelineResult, model: LoadedModel) -> dict[str, dict[str, float]]:
    """Mean and worst map agreement under small label-preserving changes (:mod:`xai.trust.stability`)."""
    from xai.trust.stability import stability_summary

    return stability_summary(model, result)


def _thumbnail(rgb: np.ndarray, max_side: int = 384) -> bytes:
    """A JPEG thumbnail for the HTML gallery (full-resolution PNGs are written beside it)."""
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RuntimeError("thumbnail encoding failed")
    return buffer.tobytes()


def default_report_target(class_names: Sequence[str]) -> str:
    """``covid19`` (the model's abnormality evidence) when the model has that class, else ``predicted``."""
    return "covid19" if "covid19" in class_names else "predicted"


def _report_row(
    item: InputItem,
    result: PipelineResult,
    model: LoadedModel,
    folder: Path,
    image_boxes: Sequence[Box],
    *,
    stability: bool,
) -> ReportRow:
    """One explained image: overlays written to ``folder``, thumbnails, OOD, agreement, stability."""
    from xai.render import gray_to_rgb, overlay

    mask = boxes_mask(image_boxes, result.radiograph.shape) if image_boxes else None
    row = ReportRow(
        file=item.name,
        stem=folder.name,
        predicted=result.predicted,
        target=result.target,
        probabilities=dict(result.probabilities),
        n_boxes=len(image_boxes),
        box_fraction=float(mask.mean()) if mask is not None else None,
        notices=result.notices,
    )
    try:
        row.ood = _ood(result, model)
    except (ValueError, RuntimeError) as exc:
        row.notices = (*row.notices, f"no out-of-distribution score: {exc}")
    row.thumbnails["original"] = _thumbnail(draw_boxes(gray_to_rgb(result.radiograph.pixels), image_boxes))
    folder.mkdir(parents=True, exist_ok=True)
    for method, heat in result.maps.items():
        rgb = draw_boxes(overlay(result.radiograph.pixels, heat), image_boxes)
        (folder / f"{_method_file(method)}.png").write_bytes(
            _overlay_file_bytes(rgb, result, model, method, "inferno")
        )
        row.thumbnails[method] = _thumbnail(rgb)
        if mask is not None and mask.any():
            row.agreement[method] = _agreement(heat, mask)
    if stability:
        try:
            row.stability = _stability(result, model)
        except (ValueError, RuntimeError) as exc:
            row.notices = (*row.notices, f"no stability figures: {exc}")
    return row


def run_report(
    items: Sequence[InputItem],
    model: LoadedModel,
    out_dir: Path,
    *,
    methods: Sequence[str],
    target: str | int | None = None,
    boxes: Mapping[str, Sequence[Box]] | None = None,
    stability: bool = False,
    progress: Progress | None = None,
    max_pixels: int | None = None,
    explainer: Explainer | None = None,
    isolated: bool = True,
) -> Report:
    """Explain every item, write overlays, ``report.csv`` and ``index.html`` into ``out_dir``.

    ``out_dir/<stem>/<method>.png`` are full-resolution overlays (finding boxes outlined in green);
    agreement figures are computed where ``boxes`` has the image's file name. ``target`` defaults to
    :func:`default_report_target`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    boxes = boxes or {}
    if target is None:
        target = default_report_target(model.card.class_names)
    explained = iter_explained(
        items, model, methods=methods, target=target, max_pixels=max_pixels, explainer=explainer, isolated=isolated
    )
    rows: list[ReportRow] = []
    target_name = str(target)
    for done, (stem, (item, result, error)) in enumerate(zip(unique_stems([i.name for i in items]), explained,
                                                             strict=True), start=1):
        if result is None:
            rows.append(ReportRow(file=item.name, error=error))
        else:
            target_name = result.target
            image_boxes = tuple(boxes.get(PurePosixPath(item.name.replace("\\", "/")).name, ()))
            rows.append(_report_row(item, result, model, output_dir_for(out_dir, stem), image_boxes,
                                    stability=stability))
        if progress is not None:
            progress(done, len(items), item.name)
    report = Report(
        rows=rows,
        methods=tuple(methods),
        class_names=tuple(model.card.class_names),
        model=model_identity(model),
        target=target_name,
        stability=stability,
    )
    (out_dir / "report.csv").write_text(report_csv(report), "utf-8")
    (out_dir / "index.html").write_text(report_html(report), "utf-8")
    return report


# ------------------------------------------------------------------------------------------ csv / html
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """Quote text a spreadsheet would execute as a formula (CSV injection); numbers pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _stability_keys(report: Report) -> list[str]:
    keys: dict[str, None] = {}
    for row in report.rows:
        for figures in row.stability.values():
            keys.update(dict.fromkeys(figures))
    return list(keys)


def report_csv(report: Report) -> str:
    """``report.csv``: one row per input, failures included with their reason."""
    stab_keys = _stability_keys(report)
    ood_keys = ["ood_score", "ood_flag", "ood_warning"]
    header = ["file", "status", "error", "prediction", "probability", "target"]
    header += [f"p_{c}" for c in report.class_names] + ood_keys + ["n_boxes", "box_fraction"]
    header += [f"{m}_{k}" for m in report.methods for k in AGREEMENT_KEYS]
    header += [f"{m}_stability_{k}" for m in report.methods for k in stab_keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in report.rows:
        ok = row.error is None
        values: list[Any] = [row.file, "ok" if ok else "failed", row.error or ""]
        values += [row.predicted or "", row.probabilities.get(row.predicted or "", ""), row.target or ""]
        values += [row.probabilities.get(c, "") for c in report.class_names]
        flag = row.ood.get("is_ood")
        values += [row.ood.get("score"), "" if flag is None else int(bool(flag)), _ood_warning_text(row.ood)]
        values += [row.n_boxes if ok else "", row.box_fraction]
        values += [row.agreement.get(m, {}).get(k, "") for m in report.methods for k in AGREEMENT_KEYS]
        values += [row.stability.get(m, {}).get(k, "") for m in report.methods for k in stab_keys]
        writer.writerow([_csv_cell(v) for v in values])
    return buffer.getvalue()


def _ood_warning_text(ood: Mapping[str, Any]) -> str:
    warnings = ood.get("warnings") or ()
    if isinstance(warnings, str):
        return warnings
    return "; ".join(str(w) for w in warnings)


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
td:first-child,th:first-child{text-align:left}.card{background:#fff;border:1px solid #ddd;margin:1rem 0;padding:.75rem}
.strip{display:flex;flex-wrap:wrap;gap:.5rem}.strip figure{margin:0}.strip img{max-width:256px;height:auto;display:block}
figcaption{font-size:.8rem;color:#555}.warn{color:#a40}.fail{color:#b00}.note{font-size:.85rem;color:#555}
"""


def report_html(report: Report) -> str:
    """A self-contained gallery (inline CSS, images as data URIs, no scripts, every string escaped)."""
    e = html.escape
    model = report.model
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>ChestCOVNet XAI batch report</title><style>{_CSS}</style></head><body>",
        "<h1>ChestCOVNet XAI batch report</h1>",
        f"<p>Model <b>{e(model['name'])}</b> version {e(model['version'])} "
        f"(weights sha256 <code>{e(model['sha256'][:16])}…</code>). Explained class: <b>{e(report.target)}</b>. "
        f"Images: {len(report.rows)}, failed: {len(report.failed)}.</p>",
        "<p class='note'>Where a radiologist's box exists (green), the agreement figures ask whether the "
        "model's evidence for the explained class sits on the boxed finding: pointing game (the map's maximum "
        "falls inside a box), share of map energy inside, and IoU of the Otsu-thresholded map with the boxes "
        "(CheXlocalize conventions). They do not say whether the prediction is right.</p>",
    ]
    summary = report.summary()
    if summary:
        parts.append("<h2>Agreement with the boxes</h2><table><tr><th>method</th><th>images</th>"
                     "<th>hit rate</th><th>mean energy inside</th><th>mIoU (Otsu)</th></tr>")
        for method, s in summary.items():
            parts.append(
                f"<tr><td>{e(method)}</td><td>{int(s['n'])}</td><td>{s['hit_rate']:.3f}</td>"
                f"<td>{s['mean_energy_inside']:.3f}</td><td>{s['miou']:.3f}</td></tr>"
            )
        chance = report.chance_hit_rate()
        if chance is not None:
            parts.append(f"<tr><td><i>chance: uniform map or random point</i></td><td></td><td>{chance:.3f}</td>"
                         f"<td>{chance:.3f}</td><td></td></tr>")
        parts.append("</table>")
    if report.failed:
        parts.append("<h2 class='fail'>Files not processed</h2><ul>")
        parts += [f"<li><b>{e(row.file)}</b>: {e(row.error or '')}</li>" for row in report.failed]
        parts.append("</ul>")
    parts.append("<h2>Images</h2>")
    for row in report.rows:
        if row.error is not None:
            continue
        probs = ", ".join(f"{e(c)} {p:.3f}" for c, p in row.probabilities.items())
        parts.append(f"<div class='card'><h3>{e(row.file)}</h3><p>Prediction <b>{e(row.predicted or '')}</b> "
                     f"({probs}); explained: {e(row.target or '')}.")
        if row.ood.get("score") is not None:
            parts.append(f" OOD score (Mahalanobis distance) {float(row.ood['score']):.1f}.")
        parts.append("</p>")
        warning = _ood_warning_text(row.ood)
        if warning:
            parts.append(f"<p class='warn'>⚠ {e(warning)}</p>")
        if row.notices:
            parts.append("<ul class='note'>" + "".join(f"<li>{e(n)}</li>" for n in row.notices) + "</ul>")
        parts.append("<div class='strip'>")
        for key, jpeg in row.thumbnails.items():
            caption = e(key)
            if key in row.agreement:
                a = row.agreement[key]
                caption += f" — hit {int(a['hit'])}, inside {a['energy_inside']:.2f}, IoU {a['iou_otsu']:.2f}"
            if key in row.stability and "spearman_mean" in row.stability[key]:
                caption += f" — stability: Spearman mean {row.stability[key]['spearman_mean']:.2f}"
            parts.append(f"<figure><img alt='{e(key)}' src='{_data_uri(jpeg)}'><figcaption>{caption}</figcaption></figure>")
        parts.append("</div></div>")
    parts.append("</body></html>\n")
    return "".join(parts)
