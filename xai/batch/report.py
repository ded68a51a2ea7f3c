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
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from xai.batch import html as report_html_parts
from xai.batch.html import ood_fields
from xai.batch.records import AGREEMENT_KEYS, Report, ReportMeta, ReportRow, cohort_method

#: Stability columns per method (:meth:`xai.trust.stability.StabilityResult.summary`); ``_checkpoint``
#: ones are filled when a second checkpoint was compared.
STABILITY_KEYS = tuple(f"{m}_{s}" for m in ("spearman", "ssim", "iou_top10") for s in ("mean", "worst", "checkpoint"))
OOD_KEYS = ("ood_score", "ood_flag", "ood_warning")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
def csv_cell(value: Any) -> Any:
    """Quote text a spreadsheet would execute as a formula (CSV injection); floats with 6 significant digits."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _blank_none(value: Any) -> Any:
    return "" if value is None else value


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
