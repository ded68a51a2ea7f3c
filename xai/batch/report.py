"""The batch report: one row per film, streamed into ``report.csv`` and ``index.html``.

Rows arrive one at a time (from the local loop or from Ray workers) and are written as they come:
:class:`ReportWriter` keeps running sums for the agreement summary and the names of failed files, never
the rows or their images, so a report over an archive of any size runs in bounded memory. The HTML is
assembled at the end from the cards it streamed to a temporary file (the summary goes on top).

Cells that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@`` ...) are quoted in the CSV;
everything in the HTML is escaped (:mod:`xai.batch.html`).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from xai.batch import html as report_html_parts
from xai.batch.html import ood_fields
from xai.batch.lungs import COHORT_METHOD, CohortTally

AGREEMENT_KEYS = ("hit", "energy_inside", "iou_otsu")
#: Stability columns per method (:meth:`xai.trust.stability.StabilityResult.summary`); ``_checkpoint``
#: ones are filled when a second checkpoint was compared.
STABILITY_KEYS = tuple(f"{m}_{s}" for m in ("spearman", "ssim", "iou_top10") for s in ("mean", "worst", "checkpoint"))
OOD_KEYS = ("ood_score", "ood_flag", "ood_warning")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class ReportRow:
    """One image of a batch report (a failed one has ``error`` and nothing else).

    ``files``: what was written into the film's folder (relative names; thumbnails under ``thumbs/``);
    ``thumbnails``: JPEG bytes by key (``original``, then each method), filled only while the HTML card
    is written.
    """

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
    in_lungs: dict[str, float | None] = field(default_factory=dict)
    """Share of each map's mass inside the (dilated) lung field; None for a flat map or no lung field."""
    lung_area_fraction: float | None = None
    anatomy: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per method: the share of its mass per anatomical region (:data:`xai.anatomy.REGIONS`; None: unknown)."""
    periphery: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per method: ``{"peripheral": x, "central": y}`` inside the lung zones (None: unknown)."""
    registered: dict[str, str] | None = field(default=None, repr=False)
    """The Grad-CAM map and lung mask registered to the lungs' box (:mod:`xai.batch.lungs`), for the cohort."""
    groups: dict[str, str] = field(default_factory=dict)
    """The cohort groups this film counts in: ``{"folder": ..., "predicted class": ...}``."""
    files: tuple[str, ...] = ()
    thumbnails: dict[str, bytes] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (no thumbnails: they live in the film's folder)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "thumbnails"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReportRow:
        known = {f.name for f in fields(cls)} - {"thumbnails"}
        values = {k: v for k, v in data.items() if k in known}
        values["notices"] = tuple(values.get("notices", ()))
        values["files"] = tuple(values.get("files", ()))
        return cls(**values)

    def thumbnail_files(self) -> dict[str, str]:
        """Thumbnail key -> file (relative to the film's folder), in the order they were written."""
        return {Path(name).stem: name for name in self.files if name.startswith("thumbs/")}


@dataclass(frozen=True)
class ReportMeta:
    """What a report is about: the methods, the model's classes and identity, the explained class."""

    methods: tuple[str, ...]
    class_names: tuple[str, ...]
    model: Mapping[str, str]
    target: str
    stability: bool = False
    lungs: bool = False


@dataclass
class Report:
    """A finished report's figures: counts, failed files and the agreement summary (no rows kept)."""

    meta: ReportMeta
    total: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    cohort: CohortTally = field(default_factory=CohortTally, repr=False)
    _sums: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    _box_shares: list[float] = field(default_factory=list, repr=False)

    @property
    def methods(self) -> tuple[str, ...]:
        return self.meta.methods

    @property
    def target(self) -> str:
        return self.meta.target

    @property
    def done(self) -> int:
        return self.total - len(self.failed)

    def add(self, row: ReportRow) -> None:
        """Count one row into the figures."""
        self.total += 1
        if row.error is not None:
            self.failed.append((row.file, row.error))
            return
        for method, scored in row.agreement.items():
            sums = self._sums.setdefault(method, {"n": 0.0, **dict.fromkeys(AGREEMENT_KEYS, 0.0)})
            sums["n"] += 1
            for key in AGREEMENT_KEYS:
                sums[key] += float(scored[key])
        if row.agreement and row.box_fraction is not None:
            self._box_shares.append(float(row.box_fraction))
        if row.registered:
            self.cohort.add(row.registered, row.groups, row.anatomy.get(cohort_method(self.meta.methods)))

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method over images with boxes: ``n``, ``hit_rate``, ``mean_energy_inside``, ``miou``."""
        out: dict[str, dict[str, float]] = {}
        for method in self.methods:
            sums = self._sums.get(method)
            if not sums:
                continue
            n = sums["n"]
            out[method] = {"n": int(n), "hit_rate": sums["hit"] / n, "mean_energy_inside": sums["energy_inside"] / n,
                           "miou": sums["iou_otsu"] / n}
        return out

    def chance_hit_rate(self) -> float | None:
        """Hit rate of a point drawn uniformly over each image (mean box area share), for comparison."""
        return sum(self._box_shares) / len(self._box_shares) if self._box_shares else None

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


# ------------------------------------------------------------------------------------------ csv
def csv_cell(value: Any) -> Any:
    """Quote text a spreadsheet would execute as a formula (CSV injection); floats with 6 significant digits."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _blank_none(value: Any) -> Any:
    return "" if value is None else value


def cohort_method(methods: tuple[str, ...]) -> str:
    """The method the cohort view and the region columns describe: Grad-CAM when run, else the first."""
    return COHORT_METHOD if COHORT_METHOD in methods else methods[0]


def region_columns(methods: tuple[str, ...]) -> list[str]:
    """One CSV column per anatomical region for :func:`cohort_method`: ``gradcam_right_upper_zone``, ..."""
    from xai.anatomy import REGIONS

    method = cohort_method(methods)
    return [f"{method}_{region.replace(' ', '_')}" for region in REGIONS]


def csv_header(meta: ReportMeta) -> list[str]:
    header = ["file", "status", "error", "prediction", "probability", "target"]
    header += [f"p_{c}" for c in meta.class_names] + list(OOD_KEYS) + ["n_boxes", "box_fraction"]
    header += [f"{m}_{k}" for m in meta.methods for k in AGREEMENT_KEYS]
    if meta.lungs:
        header += ["lung_area_fraction"] + [f"{m}_in_lungs" for m in meta.methods]
        header += region_columns(meta.methods)
    if meta.stability:
        header += [f"{m}_stability_{k}" for m in meta.methods for k in STABILITY_KEYS]
    return header


def csv_values(meta: ReportMeta, row: ReportRow) -> list[Any]:
    ok = row.error is None
    values: list[Any] = [row.file, "ok" if ok else "failed", row.error or ""]
    values += [row.predicted or "", row.probabilities.get(row.predicted or "", ""), row.target or ""]
    values += [row.probabilities.get(c, "") for c in meta.class_names]
    ood = ood_fields(row.ood)  # the same record as result.json's "ood"; no record, no flag
    values += [ood["score"], "" if row.ood.get("is_ood") is None else int(ood["warning"]), ood["reason"] or ""]
    values += [row.n_boxes if ok else "", row.box_fraction]
    values += [row.agreement.get(m, {}).get(k, "") for m in meta.methods for k in AGREEMENT_KEYS]
    if meta.lungs:
        values += [row.lung_area_fraction]
        values += [_blank_none(row.in_lungs.get(m)) for m in meta.methods]
        from xai.anatomy import REGIONS

        shares = row.anatomy.get(cohort_method(meta.methods), {})
        values += [_blank_none(shares.get(region)) for region in REGIONS]
    if meta.stability:
        values += [row.stability.get(m, {}).get(k, "") for m in meta.methods for k in STABILITY_KEYS]
    return [csv_cell(v) for v in values]


# ------------------------------------------------------------------------------------------ the writer
class ReportWriter:
    """Streams rows into ``report.csv`` and ``index.html`` (see the module docstring).

    Use as a context manager or call :meth:`close`; both files appear (renamed into place) only at the
    end. A card embeds the thumbnails the row lists, read from ``out_dir/<stem>/`` as it is written.
    """

    def __init__(self, out_dir: Path, meta: ReportMeta) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.report = Report(meta)
        self._csv_path = self.out_dir / f".report.csv.{os.getpid()}.tmp"
        self._cards_path = self.out_dir / f".cards.html.{os.getpid()}.tmp"
        self._csv_file: TextIO = self._csv_path.open("w", encoding="utf-8", newline="")
        self._cards: TextIO = self._cards_path.open("w", encoding="utf-8")
        self._csv = csv.writer(self._csv_file, lineterminator="\n")
        self._csv.writerow(csv_header(meta))

    def add(self, row: ReportRow) -> None:
        """Write one row (its CSV line and, for a film that was explained, its HTML card)."""
        meta = self.report.meta
        self.report.add(row)
        self._csv.writerow(csv_values(meta, row))
        if row.error is None:
            if not row.thumbnails and row.stem is not None:
                row.thumbnails = _read_thumbnails(self.out_dir / row.stem, row)
            self._cards.write(report_html_parts.card(row))
            row.thumbnails = {}

    def close(self) -> Report:
        """Finish both files (atomic renames) and return the report's figures."""
        self._csv_file.close()
        self._cards.close()
        os.replace(self._csv_path, self.out_dir / "report.csv")
        page = self.out_dir / f".index.html.{os.getpid()}.tmp"
        with page.open("w", encoding="utf-8") as out, self._cards_path.open(encoding="utf-8") as cards:
            out.write(report_html_parts.head(self.report))
            shutil.copyfileobj(cards, out)
            out.write(report_html_parts.TAIL)
        os.replace(page, self.out_dir / "index.html")
        self._cards_path.unlink(missing_ok=True)
        return self.report

    def abort(self) -> None:
        """Drop the unfinished files (an interrupted run leaves the films' folders, not half a report)."""
        for handle in (self._csv_file, self._cards):
            handle.close()
        self._csv_path.unlink(missing_ok=True)
        self._cards_path.unlink(missing_ok=True)

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _read_thumbnails(folder: Path, row: ReportRow) -> dict[str, bytes]:
    out = {}
    for key, name in row.thumbnail_files().items():
        try:
            out[key] = (folder / name).read_bytes()
        except OSError:
            continue
    return out


def report_texts(meta: ReportMeta, rows: Iterable[ReportRow]) -> tuple[str, str, Report]:
    """``(report.csv, index.html, figures)`` of rows in memory (thumbnails from the rows themselves)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header(meta))
    report = Report(meta)
    cards = []
    for row in rows:
        report.add(row)
        writer.writerow(csv_values(meta, row))
        if row.error is None:
            cards.append(report_html_parts.card(row))
    return buffer.getvalue(), report_html_parts.head(report) + "".join(cards) + report_html_parts.TAIL, report
