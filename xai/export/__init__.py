"""Exports of an explanation: captioned overlay PNG, one-page report (PNG/PDF), DICOM Secondary Capture.

Every export carries its provenance — model name and sha256, app version (``xai.__version__``), method
and settings, date — and the line "Research and teaching use — not for diagnosis". No export carries
patient identifiers unless the caller passes ``include_patient=True`` (the app's "show patient details"
switch, off by default):

* PNG files: the caption band is burned into the pixels; text chunks hold the provenance only.
* Report PDF/PNG: drawn with matplotlib (``Figure`` + Agg/PDF backends, no pyplot state, so concurrent
  sessions do not share a figure); document metadata holds the provenance only.
* DICOM Secondary Capture (``highdicom.sc.SCImage``): one image per method at the film's resolution, either
  for the hospital's PACS (patient and study of the source) or de-identified; see :func:`secondary_captures`.

Modules: :mod:`~xai.export.provenance` (what every export says about itself), :mod:`~xai.export.panels`
(captioned overlays), :mod:`~xai.export.report` (the one-page report), :mod:`~xai.export.secondary_capture`
(DICOM). Their public names are importable from ``xai.export``.

Pure library: no UI imports. Matplotlib and highdicom are imported when an export is made.
"""

from __future__ import annotations

from xai.export.panels import captioned_panel, overlay_png, provenance_text
from xai.export.provenance import (
    APP_NAME,
    BODY_PART,
    DISCLAIMER,
    METHOD_TITLES,
    PATIENT_FIELDS,
    READOUT_LABEL,
    ExportError,
    Provenance,
    method_title,
    patient_line,
)
from xai.export.report import ReportSpec, report_figure, report_pdf, report_png
from xai.export.secondary_capture import (
    ResultStudy,
    ScMode,
    quiet_highdicom,
    result_study,
    secondary_captures,
)

__all__ = [
    "APP_NAME",
    "BODY_PART",
    "DISCLAIMER",
    "METHOD_TITLES",
    "PATIENT_FIELDS",
    "READOUT_LABEL",
    "ExportError",
    "Provenance",
    "ReportSpec",
    "ResultStudy",
    "ScMode",
    "captioned_panel",
    "method_title",
    "overlay_png",
    "patient_line",
    "provenance_text",
    "quiet_highdicom",
    "report_figure",
    "report_pdf",
    "report_png",
    "result_study",
    "secondary_captures",
]
