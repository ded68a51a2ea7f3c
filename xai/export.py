"""Exports of an explanation: captioned overlay PNG, one-page report (PNG/PDF), DICOM Secondary Capture.

Every export carries its provenance — model name and sha256, app version (``xai.__version__``), method
and settings, date — and the line "Research and teaching use — not for diagnosis". No export carries
patient identifiers unless the caller passes ``include_patient=True`` (the app's "show patient details"
switch, off by default):

* PNG files: the caption band is burned into the pixels; text chunks hold the provenance only.
* Report PDF/PNG: drawn with matplotlib (``Figure`` + Agg/PDF backends, no pyplot state, so concurrent
  sessions do not share a figure); document metadata holds the provenance only.
* DICOM Secondary Capture (``highdicom.sc.SCImage``): see :func:`secondary_capture` for which source
  attributes are copied by default.

Pure library: no UI imports. Matplotlib and highdicom are imported when an export is made.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from xai import __version__
from xai.render import DEFAULT_CMAP, downsample_for_display, gray_to_rgb

if TYPE_CHECKING:
    import pydicom
    from matplotlib.figure import Figure
    from PIL import ImageFont

__all__ = [
    "APP_NAME",
    "DISCLAIMER",
    "METHOD_TITLES",
    "PATIENT_FIELDS",
    "ExportError",
    "Provenance",
    "captioned_panel",
    "method_title",
    "overlay_png",
    "patient_line",
    "report_figure",
    "report_pdf",
    "report_png",
    "secondary_capture",
]

APP_NAME = "ChestCOVNet XAI"
DISCLAIMER = "Research and teaching use — not for diagnosis"
METHOD_TITLES: Mapping[str, str] = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "guided_backprop": "Guided Backprop",
    "guided_gradcam": "Guided Grad-CAM",
}
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
# SOP classes for a source reference when the caller has only the modality (CR / DX radiographs).
_SOP_CLASS_BY_MODALITY = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
}
_MAX_SIDE = 4096  # exports never upscale; panels larger than this are shrunk (a 4k panel is 48 MB RGB)


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
    """

    model_name: str
    model_sha256: str
    method: str
    target_class: str
    target_layer: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    app_version: str = __version__
    created: datetime = field(default_factory=_utc_now)

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
            "created": self.created.astimezone(UTC).isoformat(),
            "disclaimer": DISCLAIMER,
        }


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


# ------------------------------------------------------------------------------------- caption band
def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans shipped with matplotlib (covers the em dash and middle dot), so no system font needed.

    Opened per call (about a millisecond), not cached: a FreeType face is not safe to share between the
    threads of concurrent app sessions.
    """
    import matplotlib
    from PIL import ImageFont

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def _wrap(lines: Sequence[str], font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    out: list[str] = []
    for line in lines:
        words, current = line.split(" "), ""
        for word in words:
            trial = f"{current} {word}".strip()
            if current and font.getlength(trial) > max_width:
                out.append(current)
                current = word
            else:
                current = trial
        out.append(current)
    return out


def captioned_panel(
    panel_rgb: NDArray[np.uint8],
    provenance: Provenance,
    *,
    patient: Mapping[str, Any] | None = None,
    include_patient: bool = False,
) -> NDArray[np.uint8]:
    """The panel with a dark caption band below it (provenance lines; patient line only if asked)."""
    from PIL import Image, ImageDraw

    panel = _as_rgb(panel_rgb)
    h, w = panel.shape[:2]
    size = int(np.clip(w / 64, 10, 28))
    font = _font(size)
    lines = list(provenance.lines())
    if include_patient and (line := patient_line(patient)):
        lines.insert(0, line)
    margin = max(4, size // 2)
    wrapped = _wrap(lines, font, max(1, w - 2 * margin))
    line_h = int(size * 1.3)
    band_h = 2 * margin + line_h * len(wrapped)
    canvas = Image.new("RGB", (w, h + band_h), (20, 20, 24))
    canvas.paste(Image.fromarray(panel), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(wrapped):
        draw.text((margin, h + margin + i * line_h), text, fill=(235, 235, 235), font=font)
    return np.asarray(canvas)


def _as_rgb(image: NDArray) -> NDArray[np.uint8]:
    a = np.asarray(image)
    if a.ndim == 2:
        a = gray_to_rgb(a) if a.dtype != np.uint8 else np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ExportError(f"panel must be an RGB image (H, W, 3), got shape {a.shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ExportError(f"panel must be uint8 or float in [0, 1], got dtype {a.dtype}")
        a = np.round(np.clip(np.nan_to_num(a), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(downsample_for_display(a, _MAX_SIDE))


def _png_with_text(rgb: NDArray[np.uint8], text: Mapping[str, str]) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", pnginfo=info, compress_level=6)
    return buffer.getvalue()


def _provenance_text(provenance: Provenance) -> dict[str, str]:
    import json

    return {
        "Title": f"{APP_NAME}: {method_title(provenance.method)} overlay",
        "Software": f"{APP_NAME} {provenance.app_version}",
        "Description": json.dumps(provenance.to_dict(), ensure_ascii=False),
        "Disclaimer": DISCLAIMER,
    }


def overlay_png(
    panel_rgb: NDArray[np.uint8],
    provenance: Provenance,
    *,
    patient: Mapping[str, Any] | None = None,
    include_patient: bool = False,
) -> bytes:
    """PNG of an overlay with its caption band burned in (see :func:`captioned_panel`).

    Text chunks (``iTXt``) hold the provenance as JSON; patient fields are never written to chunks,
    and appear in the burned-in caption only with ``include_patient=True``.
    """
    rgb = captioned_panel(panel_rgb, provenance, patient=patient, include_patient=include_patient)
    return _png_with_text(rgb, _provenance_text(provenance))


def provenance_png(rgb: NDArray[np.uint8], provenance: Provenance) -> bytes:
    """Full-resolution PNG whose pixels are ``rgb`` unchanged, provenance in its text chunks.

    For file outputs that must keep the original pixel grid (CLI and batch overlays): the model name,
    sha256, app version, settings, date and disclaimer travel as ``iTXt`` chunks, never patient data.
    """
    return _png_with_text(np.ascontiguousarray(rgb, dtype=np.uint8), _provenance_text(provenance))


# ----------------------------------------------------------------------------------------- report
def report_figure(
    radiograph: NDArray,
    panels: Mapping[str, NDArray[np.uint8]],
    provenance: Provenance,
    *,
    class_names: Sequence[str],
    probabilities: Sequence[float],
    threshold: float | None = None,
    threshold_class: str | None = None,
    predicted: str | None = None,
    colormap: str = DEFAULT_CMAP,
    notes: Sequence[str] = (),
    patient: Mapping[str, Any] | None = None,
    include_patient: bool = False,
) -> Figure:
    """A one-page A4 report as a matplotlib ``Figure`` (no pyplot: safe with concurrent sessions).

    Layout: title; the radiograph and up to five overlay ``panels`` (``{title: uint8 RGB}``) with the
    prediction bar chart (threshold drawn on ``threshold_class``, default the last class) in a 3-column
    grid; colour bar; model / target layer / class / settings / timings; notes; the disclaimer.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if len(panels) > 5:
        raise ExportError(f"a report holds at most 5 panels, got {len(panels)}")
    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if len(probs) != len(class_names):
        raise ExportError(f"{len(probs)} probabilities for {len(class_names)} classes")
    images: list[tuple[str, NDArray[np.uint8]]] = [("Radiograph", _as_rgb(downsample_for_display(
        np.asarray(radiograph), 1024)))]
    images += [(title, _as_rgb(downsample_for_display(np.asarray(img), 1024))) for title, img in panels.items()]
    cells = len(images) + 1  # + the prediction chart
    rows = -(-cells // 3)

    fig = Figure(figsize=(8.27, 11.69))  # A4 portrait, inches
    grid = fig.add_gridspec(rows + 2, 3, height_ratios=[0.5] + [3.0] * rows + [2.6 + 0.25 * len(notes)],
                            left=0.05, right=0.95, top=0.97, bottom=0.03, hspace=0.35, wspace=0.12)
    head = fig.add_subplot(grid[0, :])
    head.axis("off")
    head.text(0, 0.75, f"{APP_NAME} — explanation report", fontsize=15, weight="bold", va="center")
    head.text(0, 0.05, DISCLAIMER, fontsize=10, color="#b00020", va="center")

    for i, (title, img) in enumerate(images):
        ax = fig.add_subplot(grid[1 + i // 3, i % 3])
        ax.imshow(img, interpolation="lanczos")
        ax.set_title(title, fontsize=9)
        ax.axis("off")

    i = len(images)
    bars = fig.add_subplot(grid[1 + i // 3, i % 3])
    y = np.arange(len(class_names))
    positive = threshold_class if threshold_class in class_names else class_names[-1]
    colours = ["#d95f02" if name == predicted else "#7570b3" for name in class_names]
    bars.barh(y, probs, color=colours, height=0.6)
    bars.set_yticks([])
    bars.set_xlim(0, 1)
    bars.set_ylim(-0.6, len(class_names) - 0.2)
    bars.set_xlabel("probability", fontsize=8)
    bars.tick_params(axis="x", labelsize=7)
    for yi, name, p in zip(y, class_names, probs, strict=True):  # class names inside the axes: no overlap
        bars.text(0.02, yi + 0.38, f"{name}  {p:.3f}", va="center", fontsize=8)
    if threshold is not None:
        k = list(class_names).index(positive)
        bars.plot([threshold, threshold], [k - 0.45, k + 0.45], color="black", ls="--", lw=1.2)
        bars.text(threshold + 0.02, k - 0.4, f"threshold {threshold:.2f}", fontsize=7, va="bottom")
    bars.set_title("Prediction" + (f": {predicted}" if predicted else ""), fontsize=9)

    info = fig.add_subplot(grid[rows + 1, :])
    info.axis("off")
    cax = info.inset_axes((0.0, 0.9, 0.35, 0.06))
    fig.colorbar(ScalarMappable(Normalize(0, 1), colormap), cax=cax, orientation="horizontal")
    cax.set_title(f"map value ({colormap})", fontsize=7)
    cax.tick_params(labelsize=6)
    text = [
        f"Model: {provenance.model_name}   sha256 {provenance.model_sha256 or 'unknown'}",
        f"Method: {method_title(provenance.method)}   target class: {provenance.target_class}"
        f"   target layer: {provenance.target_layer}",
    ]
    if provenance.settings:
        text.append("Settings: " + provenance.settings_text())
    if provenance.timings_ms:
        text.append("Timings: " + ", ".join(f"{k} {float(v):.0f} ms" for k, v in provenance.timings_ms.items()))
    text.append(f"Created {provenance.date_text} with {APP_NAME} {provenance.app_version}")
    if include_patient and (line := patient_line(patient)):
        text.append(line)
    text += [f"Note: {n}" for n in notes]
    wrapped = [w for t in text for w in textwrap.wrap(t, 120)]
    info.text(0, 0.72, "\n".join(wrapped), fontsize=7.5, va="top", family="DejaVu Sans", linespacing=1.5)
    info.text(0, 0.0, f"{DISCLAIMER}. Saliency maps show what the model used, not where disease is.",
              fontsize=8.5, color="#b00020", va="bottom")
    return fig


def _metadata_text(provenance: Provenance) -> str:
    return (f"{method_title(provenance.method)}, class {provenance.target_class}, model {provenance.model_name} "
            f"sha256 {provenance.model_sha256}, {APP_NAME} {provenance.app_version}. {DISCLAIMER}")


def report_png(*args: Any, dpi: int = 150, **kwargs: Any) -> bytes:
    """The :func:`report_figure` page as PNG bytes (provenance in text chunks, never patient data)."""
    fig = report_figure(*args, **kwargs)
    provenance: Provenance = kwargs.get("provenance") or args[2]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={
        "Title": f"{APP_NAME} report", "Software": f"{APP_NAME} {provenance.app_version}",
        "Description": _metadata_text(provenance)})
    return buffer.getvalue()


def report_pdf(*args: Any, **kwargs: Any) -> bytes:
    """The :func:`report_figure` page as a one-page PDF (document info holds provenance only)."""
    fig = report_figure(*args, **kwargs)
    provenance: Provenance = kwargs.get("provenance") or args[2]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="pdf", metadata={
        "Title": f"{APP_NAME} report", "Author": None, "Subject": _metadata_text(provenance),
        "Creator": f"{APP_NAME} {provenance.app_version}", "Keywords": DISCLAIMER,
        "CreationDate": provenance.created})
    return buffer.getvalue()


# ----------------------------------------------------------------------------- secondary capture
def _source_attributes(source: pydicom.Dataset | Mapping[str, Any] | bytes | str | Path) -> dict[str, str]:
    """DICOM keyword -> string for the attributes an SC needs from its source."""
    import pydicom

    if isinstance(source, bytes | bytearray | str | Path):
        try:
            ds = pydicom.dcmread(io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray) else source,
                                 stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not a DICOM source"
            raise ExportError(f"the source is not a readable DICOM file ({type(exc).__name__})") from None
        source = ds
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
            "PatientOrientation", *PATIENT_FIELDS)
    out: dict[str, str] = {}
    for key in keys:
        value = source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)
        if value is None:
            continue
        out[key] = "\\".join(str(v) for v in value) if key == "PatientOrientation" and not isinstance(
            value, str) else str(value)
    return out


def secondary_capture(
    panel_rgb: NDArray[np.uint8],
    source: pydicom.Dataset | Mapping[str, Any] | bytes | str | Path,
    provenance: Provenance,
    *,
    include_patient: bool = False,
    series_number: int = 990,
    instance_number: int = 1,
) -> bytes:
    """A DICOM Secondary Capture (RGB, Explicit VR Little Endian) of the captioned panel, as file bytes.

    ``source`` is the explained DICOM: a pydicom ``Dataset``, the file bytes or path, or a mapping of
    DICOM keywords (``Radiograph.patient``) with at least StudyInstanceUID, SeriesInstanceUID,
    SOPInstanceUID and SOPClassUID (or Modality CR/DX).

    What is copied from the source:

    * Always: StudyInstanceUID (the SC joins the source study), and the source Series/SOP Instance UIDs
      in ReferencedSeriesSequence and SourceImageSequence. UIDs are study references, not patient
      identifiers; without them the SC could not be filed with its study.
    * Never by default: PatientName is "ANONYMOUS^", PatientID "ANON"; birth date, sex, study date/time,
      accession number, study ID and referring physician are empty; PatientIdentityRemoved = YES.
      Institution and device attributes of the source are never copied.
    * With ``include_patient=True``: PatientName, PatientID, PatientBirthDate, PatientSex, StudyDate,
      StudyTime, AccessionNumber, StudyID and ReferringPhysicianName are copied so PACS files the SC
      with the patient's study (and the caption band shows them).

    New SeriesInstanceUID and SOPInstanceUID are generated for every call. Provenance (model + sha256,
    app version, method, settings, date, disclaimer) goes into SeriesDescription, ImageComments,
    DerivationDescription, ManufacturerModelName and SoftwareVersions.
    """
    import pydicom
    from highdicom import UID
    from highdicom.sc import SCImage
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian

    src = _source_attributes(source)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not src.get(k)]
    if missing:
        raise ExportError(f"a Secondary Capture needs a DICOM source; missing {', '.join(missing)}")
    sop_class = src.get("SOPClassUID") or _SOP_CLASS_BY_MODALITY.get(src.get("Modality", "").upper())
    if not sop_class:
        raise ExportError("a Secondary Capture needs the source SOPClassUID (or Modality CR/DX)")

    pixels = captioned_panel(panel_rgb, provenance, patient=src, include_patient=include_patient)
    orientation = tuple(src.get("PatientOrientation", "").split("\\"))
    if len(orientation) != 2 or not all(orientation):
        orientation = ("L", "F")  # conventional display of a frontal chest film (patient's right on the left)

    def _keep(key: str) -> str | None:
        value = src.get(key, "").strip()
        return value if include_patient and value else None

    sc = SCImage(
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=src["StudyInstanceUID"],
        series_instance_uid=UID(),
        series_number=series_number,
        sop_instance_uid=UID(),
        instance_number=instance_number,
        manufacturer=APP_NAME,
        patient_id=_keep("PatientID") or ("ANON" if not include_patient else None),
        patient_name=_keep("PatientName") or ("ANONYMOUS^" if not include_patient else None),
        patient_birth_date=_keep("PatientBirthDate"),
        patient_sex=_keep("PatientSex"),
        accession_number=_keep("AccessionNumber"),
        study_id=_keep("StudyID"),
        study_date=_keep("StudyDate"),
        study_time=_keep("StudyTime"),
        referring_physician_name=_keep("ReferringPhysicianName"),
        patient_orientation=orientation,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=f"{APP_NAME} {method_title(provenance.method)} (not for diagnosis)"[:64],
        manufacturer_model_name=f"{provenance.model_name}"[:64],
        software_versions=f"{APP_NAME} {provenance.app_version}"[:64],
        content_date=provenance.created.date(),
        content_time=provenance.created.time().replace(microsecond=0),
        specific_character_set="ISO_IR 192",  # UTF-8: captions use an em dash, names may be non-ASCII
    )
    if not include_patient:
        sc.PatientIdentityRemoved = "YES"
        sc.DeidentificationMethod = f"{APP_NAME}: patient module not copied"[:64]
    sc.BurnedInAnnotation = "YES" if include_patient and patient_line(src) else "NO"
    sc.ImageComments = " | ".join(provenance.lines())[:10240]
    sc.DerivationDescription = (f"{method_title(provenance.method)} saliency overlay of the source image; "
                                f"model {provenance.model_name} sha256 {provenance.model_sha256}; "
                                f"{provenance.settings_text()}")[:1024]

    reference = Dataset()
    reference.ReferencedSOPClassUID = sop_class
    reference.ReferencedSOPInstanceUID = src["SOPInstanceUID"]
    sc.SourceImageSequence = DicomSequence([reference])
    series_item = Dataset()
    series_item.SeriesInstanceUID = src["SeriesInstanceUID"]
    instance = Dataset()
    instance.ReferencedSOPClassUID = sop_class
    instance.ReferencedSOPInstanceUID = src["SOPInstanceUID"]
    series_item.ReferencedInstanceSequence = DicomSequence([instance])
    sc.ReferencedSeriesSequence = DicomSequence([series_item])

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, sc, enforce_file_format=True)
    return buffer.getvalue()
