"""What every export says about itself: its provenance (model, sha256, method, settings, date), the
disclaimer, the methods' display names and the identifying fields an export may add on request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from xai import __version__
from xai.method_names import METHOD_TITLES

APP_NAME = "ChestCOVNet XAI"
DISCLAIMER = "Research and teaching use — not for diagnosis"
#: Identifying attributes that ``include_patient=True`` adds (DICOM keywords, in display order).
PATIENT_FIELDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)
#: BodyPartExamined of every DICOM result: the models read chest radiographs (an unpaired body part).
BODY_PART = "CHEST"


class ExportError(ValueError):
    """An export that cannot be made from what was given (e.g. a Secondary Capture without a DICOM source)."""


def method_title(method: str) -> str:
    """Display name of an engine method key (``"gradcam++"`` -> ``"Grad-CAM++"``); unknown keys unchanged.

    A comma-separated list of keys (a report with several panels) gives the list of names.
    """
    return ", ".join(METHOD_TITLES.get(m.strip(), m.strip()) for m in method.split(","))


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Provenance:
    """What produced an export; printed on every export, never any patient data.

    ``settings`` holds method and display settings (colormap, opacity, contour level, scale, …) as
    short strings or numbers; ``timings_ms`` the stage timings worth reporting (e.g. ``{"total": 812}``).
    ``readout``: where this map's evidence lies, in one sentence (:meth:`xai.anatomy.AnatomyReadout.sentence`,
    e.g. "58% heart and mediastinum · 22% left lower zone"); "" when unknown. Never patient data.
    """

    model_name: str
    model_sha256: str
    method: str
    target_class: str
    target_layer: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    readout: str = ""
    app_version: str = __version__
    # Looked up when a Provenance is made, not bound here: a caller (or a test) that sets the module's clock
    # gets it; binding the function at class creation made the "Created" minute follow the real clock.
    created: datetime = field(default_factory=lambda: _utc_now())

    @property
    def short_sha(self) -> str:
        return self.model_sha256[:12] if self.model_sha256 else "unknown"

    @property
    def date_text(self) -> str:
        return self.created.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")

    def settings_text(self) -> str:
        return ", ".join(f"{k} {_fmt(v)}" for k, v in self.settings.items())

    def lines(self) -> list[str]:
        """The caption: method/class/layer, model + sha256 + app version, settings, date + disclaimer."""
        lines = [
            f"{method_title(self.method)} · class {self.target_class} · layer {self.target_layer}",
            f"model {self.model_name} sha256 {self.short_sha} · {APP_NAME} {self.app_version}",
        ]
        if self.settings:
            lines.append(self.settings_text())
        if self.readout:
            lines.append(f"{READOUT_LABEL}: {self.readout}")
        lines.append(f"{self.date_text} · {DISCLAIMER}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record (for PNG text chunks, PDF metadata, DICOM comments)."""
        return {
            "app": APP_NAME,
            "app_version": self.app_version,
            "model_name": self.model_name,
            "model_sha256": self.model_sha256,
            "method": self.method,
            "target_class": self.target_class,
            "target_layer": self.target_layer,
            "settings": {k: _fmt(v) for k, v in self.settings.items()},
            "timings_ms": {k: round(float(v), 1) for k, v in self.timings_ms.items()},
            **({"readout": self.readout} if self.readout else {}),
            "created": self.created.astimezone(UTC).isoformat(),
            "disclaimer": DISCLAIMER,
        }


#: How a readout sentence is introduced on an export (caption band, report).
READOUT_LABEL = "Where the evidence lies (share of the map by anatomical region)"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def patient_line(patient: Mapping[str, Any] | None) -> str | None:
    """One line with the identifying fields present in ``patient`` (DICOM keywords), or None if none."""
    if not patient:
        return None
    parts = [f"{key} {patient[key]}" for key in PATIENT_FIELDS if str(patient.get(key, "") or "").strip()]
    return ("Patient: " + " · ".join(parts)) if parts else None
