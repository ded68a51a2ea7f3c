"""The batch report's records: one film's row, the run's settings, and the finished report's figures.

Plain data with no rendering: :mod:`xai.batch.report` streams them into ``report.csv`` and ``index.html``
and :mod:`xai.batch.html` draws them, so both import this module and neither imports the other's records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from xai.batch.lungs import COHORT_METHOD, CohortTally

AGREEMENT_KEYS = ("hit", "energy_inside", "iou_otsu")


def cohort_method(methods: tuple[str, ...]) -> str:
    """The method the cohort view and the region columns describe: Grad-CAM when run, else the first."""
    return COHORT_METHOD if COHORT_METHOD in methods else methods[0]


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
