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

Pure library: no UI imports. Matplotlib and highdicom are imported when an export is made.
"""

from __future__ import annotations

import contextlib
import io
import textwrap
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from xai import __version__
from xai.method_names import METHOD_TITLES
from xai.render import DEFAULT_CMAP, downsample_for_display, gray_to_rgb, to_png_bytes

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
    "ReportSpec",
    "ResultStudy",
    "ScMode",
    "captioned_panel",
    "method_title",
    "overlay_png",
    "patient_line",
    "provenance_text",
    "report_figure",
    "report_pdf",
    "report_png",
    "result_study",
    "secondary_captures",
]

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
# SOP classes for a source reference when the caller has only the modality (CR / DX radiographs).
_SOP_CLASS_BY_MODALITY = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
}
#: BodyPartExamined of every DICOM result: the models read chest radiographs (an unpaired body part).
BODY_PART = "CHEST"
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


def provenance_text(provenance: Provenance) -> dict[str, str]:
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
    return to_png_bytes(rgb, provenance_text(provenance))


# ----------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class ReportSpec:
    """Everything a one-page report shows (see :func:`report_figure`).

    ``radiograph`` and ``panels`` (``{title: uint8 RGB}``, at most five) should be drawn at the export's
    resolution (``xai.render.view`` with ``side=None``), never taken from screen pixels. ``ood``: the
    out-of-distribution verdict in one sentence, ``ood_warning`` whether it warns. ``readout``: per panel title,
    where that map's evidence lies in one sentence (:meth:`xai.anatomy.AnatomyReadout.sentence`); optional.
    """

    radiograph: NDArray
    panels: Mapping[str, NDArray[np.uint8]]
    provenance: Provenance
    class_names: Sequence[str]
    probabilities: Sequence[float]
    threshold: float | None = None
    threshold_class: str | None = None
    predicted: str | None = None
    colormap: str = DEFAULT_CMAP
    notes: Sequence[str] = ()
    ood: str | None = None
    ood_warning: bool = False
    readout: Mapping[str, str] = field(default_factory=dict)
    patient: Mapping[str, Any] | None = field(default=None, repr=False)
    include_patient: bool = False

    def __post_init__(self) -> None:
        if len(self.panels) > 5:
            raise ExportError(f"a report holds at most 5 panels, got {len(self.panels)}")
        if len(self.probabilities) != len(self.class_names):
            raise ExportError(f"{len(self.probabilities)} probabilities for {len(self.class_names)} classes")


#: Longest side of each image drawn in the report (the A4 page at 150-300 dpi holds about this much).
REPORT_IMAGE_SIDE = 1024
_WARN_COLOUR = "#b00020"


def _prediction_axes(ax: Any, spec: ReportSpec) -> None:
    """Probability bars; names and values above each bar, the threshold a dashed line across its own bar
    only and written in the title, so no line crosses a label."""
    names = list(spec.class_names)
    probs = np.asarray(spec.probabilities, dtype=np.float64).reshape(-1)
    y = np.arange(len(names))
    ax.barh(y, probs, color=["#d95f02" if n == spec.predicted else "#7570b3" for n in names], height=0.5)
    ax.set_yticks([])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.4, len(names) - 0.1)
    ax.set_xlabel("probability", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for yi, name, p in zip(y, names, probs, strict=True):
        ax.text(0.01, yi + 0.3, f"{name}  {p:.3f}", va="bottom", fontsize=8)
    title = "Prediction" + (f": {spec.predicted}" if spec.predicted else "")
    if spec.threshold is not None:
        positive = spec.threshold_class if spec.threshold_class in names else names[-1]
        k = names.index(positive)
        ax.plot([spec.threshold, spec.threshold], [k - 0.25, k + 0.25], color="black", ls="--", lw=1.2)
        title += f"\n(dashed: threshold {spec.threshold:.2f} on P({positive}))"
    ax.set_title(title, fontsize=9)


def report_figure(spec: ReportSpec) -> Figure:
    """A one-page A4 report as a matplotlib ``Figure`` (no pyplot: safe with concurrent sessions).

    Layout: title and disclaimer; the out-of-distribution verdict; the radiograph and up to five overlay
    panels with the prediction chart in a 3-column grid; colour bar; model / target layer / class /
    settings / timings; notes; the disclaimer again.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    def shrink(img: NDArray) -> NDArray[np.uint8]:
        return _as_rgb(downsample_for_display(np.asarray(img), REPORT_IMAGE_SIDE))

    images = [("Radiograph", shrink(spec.radiograph))] + [(t, shrink(i)) for t, i in spec.panels.items()]
    rows = -(-(len(images) + 1) // 3)  # + the prediction chart

    fig = Figure(figsize=(8.27, 11.69))  # A4 portrait, inches
    readout = [f"{title}: {sentence}" for title, sentence in spec.readout.items() if sentence]
    grid = fig.add_gridspec(rows + 2, 3, height_ratios=[0.7] + [3.0] * rows
                            + [2.6 + 0.25 * (len(spec.notes) + len(readout) + bool(readout))],
                            left=0.05, right=0.95, top=0.97, bottom=0.03, hspace=0.35, wspace=0.12)
    head = fig.add_subplot(grid[0, :])
    head.axis("off")
    head.text(0, 0.85, f"{APP_NAME} — explanation report", fontsize=15, weight="bold", va="center")
    head.text(0, 0.45, DISCLAIMER, fontsize=10, color=_WARN_COLOUR, va="center")
    if spec.ood:
        head.text(0, 0.0, ("⚠ " if spec.ood_warning else "") + spec.ood, fontsize=8.5, va="center",
                  color=_WARN_COLOUR if spec.ood_warning else "#1b5e20", wrap=True)

    for i, (title, img) in enumerate(images):
        ax = fig.add_subplot(grid[1 + i // 3, i % 3])
        ax.imshow(img, interpolation="lanczos")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    i = len(images)
    _prediction_axes(fig.add_subplot(grid[1 + i // 3, i % 3]), spec)

    info = fig.add_subplot(grid[rows + 1, :])
    info.axis("off")
    cax = info.inset_axes((0.0, 0.9, 0.35, 0.06))
    fig.colorbar(ScalarMappable(Normalize(0, 1), spec.colormap), cax=cax, orientation="horizontal")
    cax.set_title(f"map value ({spec.colormap})", fontsize=7)
    cax.tick_params(labelsize=6)
    provenance = spec.provenance
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
    if spec.include_patient and (line := patient_line(spec.patient)):
        text.append(line)
    if readout:
        text += [f"{READOUT_LABEL}:", *(f"    {line}" for line in readout)]
    text += [f"Note: {n}" for n in spec.notes]
    wrapped = [w for t in text for w in textwrap.wrap(t, 120)]
    info.text(0, 0.72, "\n".join(wrapped), fontsize=7.5, va="top", family="DejaVu Sans", linespacing=1.5)
    info.text(0, 0.0, f"{DISCLAIMER}. Saliency maps show what the model used, not where disease is.",
              fontsize=8.5, color=_WARN_COLOUR, va="bottom")
    return fig


def _metadata_text(provenance: Provenance) -> str:
    return (f"{method_title(provenance.method)}, class {provenance.target_class}, model {provenance.model_name} "
            f"sha256 {provenance.model_sha256}, {APP_NAME} {provenance.app_version}. {DISCLAIMER}")


def report_png(spec: ReportSpec, *, dpi: int = 150) -> bytes:
    """The :func:`report_figure` page as PNG bytes (provenance in text chunks, never patient data)."""
    buffer = io.BytesIO()
    report_figure(spec).savefig(buffer, format="png", dpi=dpi, metadata={
        "Title": f"{APP_NAME} report", "Software": f"{APP_NAME} {spec.provenance.app_version}",
        "Description": _metadata_text(spec.provenance)})
    return buffer.getvalue()


def report_pdf(spec: ReportSpec) -> bytes:
    """The :func:`report_figure` page as a one-page PDF (document info holds provenance only)."""
    provenance = spec.provenance
    buffer = io.BytesIO()
    report_figure(spec).savefig(buffer, format="pdf", metadata={
        "Title": f"{APP_NAME} report", "Author": None, "Subject": _metadata_text(provenance),
        "Creator": f"{APP_NAME} {provenance.app_version}", "Keywords": DISCLAIMER,
        "CreationDate": provenance.created})
    return buffer.getvalue()


# ----------------------------------------------------------------------------- secondary capture
#: The two kinds of Secondary Capture: filed with the source study, or anonymous and unlinkable.
ScMode = Literal["pacs", "deidentified"]
#: Patient and Study module attributes a "pacs" export copies: DICOM keyword -> highdicom argument.
_PATIENT_AND_STUDY = {
    "PatientName": "patient_name", "PatientID": "patient_id", "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex", "StudyDate": "study_date", "StudyTime": "study_time",
    "AccessionNumber": "accession_number", "StudyID": "study_id", "ReferringPhysicianName": "referring_physician_name",
}


def _read_source_header(source: bytes | bytearray | str | Path) -> pydicom.Dataset:
    """The header of a DICOM source given as bytes or a path.

    Read as the app's loader reads it (``force=True``), so a data set without the 128-byte preamble and
    "DICM" prefix, which the app loads and explains, can be exported too; the content is sniffed first
    (:func:`xai.radiograph.sniff_format`) so that ``force`` never turns a PNG into a "DICOM" data set.
    """
    import pydicom

    from xai.radiograph import sniff_format
    from xai.startup import boot

    boot()  # pydicom's reading validation off before the first read (it logs values: identifiers)
    try:
        data = bytes(source) if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    except OSError as exc:
        raise ExportError(f"the source cannot be read ({type(exc).__name__})") from None
    if sniff_format(data[:512]) != "dicom":
        raise ExportError("the source is not a readable DICOM file (not DICOM content)")
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a DICOM source"
        raise ExportError(f"the source is not a readable DICOM file ({type(exc).__name__})") from None


def _valid_for_vr(keyword: str, value: str) -> bool:
    """Whether ``value`` is a valid value of the attribute's VR (DA and TM also parsed as a date/time).

    Real files carry values that break their VR (a hash in StudyDate, "female" in PatientSex); copied into
    an export they fail validation, and highdicom refuses them.
    """
    from pydicom.config import RAISE
    from pydicom.datadict import dictionary_VR
    from pydicom.valuerep import DA, TM, validate_value

    vr = dictionary_VR(keyword)
    try:
        validate_value(vr, value, RAISE)
        if vr == "DA":
            DA(value)
        elif vr == "TM":
            TM(value)
        elif keyword == "PatientSex" and value not in ("M", "F", "O"):
            return False
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def _source_attributes(source: pydicom.Dataset | Mapping[str, Any] | bytes | str | Path) -> dict[str, str]:
    """DICOM keyword -> string for the attributes an SC needs from its source."""

    if isinstance(source, bytes | bytearray | str | Path):
        source = _read_source_header(source)
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
            "PatientOrientation", "PixelSpacing", "ImagerPixelSpacing", *PATIENT_FIELDS)
    out: dict[str, str] = {}
    for key in keys:
        value = source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)
        if value is None:
            continue
        multi = key in ("PatientOrientation", "PixelSpacing", "ImagerPixelSpacing")
        out[key] = "\\".join(str(v) for v in value) if multi and not isinstance(value, str) else str(value)
    return out


@contextlib.contextmanager
def quiet_highdicom() -> Iterator[None]:
    """highdicom's person-name warnings quote the name they check: a patient identifier in a log line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent", category=UserWarning)
        yield


@dataclass(frozen=True)
class ResultStudy:
    """Where the DICOM results of one film are filed and which film they reference.

    ``"pacs"``: the source's Patient and Study modules (values that break their VR left empty) and the
    source image's own UIDs. ``"deidentified"``: a new study, a pseudonymous patient ID, and new
    pseudonymous UIDs standing for the film (``source_*``), so that the report and the maps of one export
    reference the same film without any UID of the source. Made by :func:`result_study`.
    """

    mode: ScMode
    patient_and_study: Mapping[str, str | None] = field(repr=False)
    study_instance_uid: str
    source_sop_class_uid: str
    source_sop_instance_uid: str
    source_series_instance_uid: str
    modality: str
    patient_orientation: tuple[str, str] = ("L", "F")
    #: (row, column) spacing in mm of the film's pixels (PixelSpacing, else ImagerPixelSpacing), if known.
    pixel_spacing: tuple[float, float] | None = None

    def highdicom_identity(self) -> dict[str, Any]:
        """Patient and Study keyword arguments of highdicom's SOP classes (empty where the mode has none)."""
        if self.mode == "pacs":
            values = {arg: self.patient_and_study.get(key) for key, arg in _PATIENT_AND_STUDY.items()}
        else:
            values = {"patient_id": self.patient_and_study["PatientID"], "patient_name": ""}
        return values | {"study_instance_uid": self.study_instance_uid}

    def source_references(self) -> tuple[Any, Any]:
        """SourceImageSequence and ReferencedSeriesSequence pointing at the explained image."""
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence as DicomSequence

        def instance() -> Dataset:
            item = Dataset()
            item.ReferencedSOPClassUID = self.source_sop_class_uid
            item.ReferencedSOPInstanceUID = self.source_sop_instance_uid
            return item

        series = Dataset()
        series.SeriesInstanceUID = self.source_series_instance_uid
        series.ReferencedInstanceSequence = DicomSequence([instance()])
        return DicomSequence([instance()]), DicomSequence([series])

    def source_dataset(self, rows: int, columns: int) -> pydicom.Dataset:
        """A header standing for the film (its study, patient and UIDs as this mode allows, its grid),
        for highdicom's derived objects, which copy patient and study from their source images."""
        from pydicom.dataset import Dataset

        ds = Dataset()
        identity = self.highdicom_identity()
        for key, arg in _PATIENT_AND_STUDY.items():
            setattr(ds, key, identity.get(arg) or "")
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.source_series_instance_uid
        ds.SOPInstanceUID = self.source_sop_instance_uid
        ds.SOPClassUID = self.source_sop_class_uid
        ds.Modality = self.modality
        ds.Rows, ds.Columns = int(rows), int(columns)
        ds.PatientOrientation = list(self.patient_orientation)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        if self.mode == "deidentified":
            ds.PatientIdentityRemoved = "YES"
        return ds


def result_study(source: pydicom.Dataset | Mapping[str, Any] | bytes | str | Path, mode: ScMode) -> ResultStudy:
    """The :class:`ResultStudy` of a film's results in ``mode`` (see :func:`secondary_captures`).

    Source values that break their VR (a StudyDate that is not a date) are left empty, not copied: a value
    a validator rejects would fail a strict PACS, and guessing a corrected value could misfile the result.
    """
    from highdicom import UID

    if mode not in ("pacs", "deidentified"):
        raise ExportError(f"mode must be 'pacs' or 'deidentified', got {mode!r}")
    src = _source_attributes(source)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not src.get(k)]
    if missing:
        raise ExportError(f"a DICOM result needs a DICOM source; missing {', '.join(missing)}")
    modality = src.get("Modality", "").strip().upper()
    sop_class = src.get("SOPClassUID") or _SOP_CLASS_BY_MODALITY.get(modality)
    if not sop_class:
        raise ExportError("a DICOM result needs the source SOPClassUID (or Modality CR/DX)")
    orientation = tuple(src.get("PatientOrientation", "").split("\\"))
    if len(orientation) != 2 or not all(orientation):
        orientation = ("L", "F")  # conventional display of a frontal chest film (patient's right on the left)
    modality = modality if modality in ("CR", "DX") else "OT"
    spacing = _spacing(src.get("PixelSpacing") or src.get("ImagerPixelSpacing") or "")
    if mode == "pacs":
        values = {k: (v if (v := src.get(k, "").strip()) and _valid_for_vr(k, v) else None)
                  for k in _PATIENT_AND_STUDY}
        return ResultStudy("pacs", values, src["StudyInstanceUID"], sop_class, src["SOPInstanceUID"],
                           src["SeriesInstanceUID"], modality, orientation, spacing)  # type: ignore[arg-type]
    return ResultStudy("deidentified", {"PatientID": f"ANON-{UID()[-12:]}"}, UID(), sop_class, UID(), UID(),
                       modality, orientation, spacing)  # type: ignore[arg-type]


def _spacing(text: str) -> tuple[float, float] | None:
    """"0.139\\0.139" -> (0.139, 0.139); None unless two positive finite numbers."""
    try:
        row, col = (float(v) for v in text.split("\\"))
    except ValueError:
        return None
    return (row, col) if all(np.isfinite(v) and v > 0 for v in (row, col)) else None


def secondary_captures(
    panels: Mapping[str, NDArray[np.uint8]],
    source: pydicom.Dataset | Mapping[str, Any] | bytes | str | Path,
    provenance: Provenance,
    *,
    mode: ScMode,
    series_number: int = 990,
    study: ResultStudy | None = None,
    readouts: Mapping[str, str] | None = None,
) -> list[bytes]:
    """One DICOM Secondary Capture per panel (``{method key: uint8 RGB at the film's resolution}``), all
    in one new series, as file bytes (RGB, Explicit VR Little Endian).

    Each image is the panel at its own resolution with a caption band burned in below it, whose first line
    names the method (the label); SeriesDescription, DerivationDescription and ImageComments name it too.

    ``mode``:

    * ``"pacs"`` — for the hospital's own PACS: the Patient module (name, ID, birth date, sex) and the
      Study module (Study Instance UID, date, time, accession number, study ID, referring physician) of
      the source, so the PACS files the images with the patient's study; a new series; the source image
      referenced. THE FILES CONTAIN PATIENT IDENTIFIERS (in the header, never burned into the pixels).
    * ``"deidentified"`` — new Study, Series and SOP Instance UIDs, a random pseudonymous patient ID, an
      empty patient name and study attributes, no reference to the source's UIDs,
      PatientIdentityRemoved = YES. Nothing links it back to the patient; a PACS files it as a new study.

    A real study is never joined with an anonymous patient (a PACS would misfile it), and an anonymous
    export never carries the real study's UIDs. Provenance (model + sha256, app version, method,
    settings, date, disclaimer) goes into SeriesDescription, ImageComments, DerivationDescription,
    ManufacturerModelName and SoftwareVersions.

    ``study`` (from :func:`result_study`) files the captures with the other results of the same film (the
    structured report and parametric maps of :mod:`xai.dicom_results`): one de-identified study for all.
    Source values that break their VR (a StudyDate that is not a date) are left empty, not copied.
    ``readouts`` (``{method key: sentence}``): where each map's evidence lies, a line of its caption band.
    """
    import pydicom
    from highdicom import UID
    from highdicom.sc import SCImage
    from pydicom.uid import ExplicitVRLittleEndian

    if not panels:
        raise ExportError("a Secondary Capture needs at least one panel")
    study = study or result_study(source, mode)
    if study.mode != mode:
        raise ExportError(f"the study was made for mode {study.mode!r}, not {mode!r}")
    pacs = mode == "pacs"
    series_uid = UID()
    out: list[bytes] = []
    for number, (method, rgb) in enumerate(panels.items(), start=1):
        label = replace(provenance, method=method, readout=(readouts or {}).get(method, provenance.readout))
        with quiet_highdicom():
            sc = SCImage(
                pixel_array=captioned_panel(rgb, label), photometric_interpretation="RGB", bits_allocated=8,
                coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
                sop_instance_uid=UID(), instance_number=number, manufacturer=APP_NAME,
                patient_orientation=study.patient_orientation, transfer_syntax_uid=ExplicitVRLittleEndian,
                series_description=f"{APP_NAME} saliency (not for diagnosis)"[:64],
                manufacturer_model_name=f"{provenance.model_name}"[:64],
                software_versions=f"{APP_NAME} {provenance.app_version}"[:64],
                content_date=provenance.created.date(),
                content_time=provenance.created.time().replace(microsecond=0),
                specific_character_set="ISO_IR 192",  # UTF-8: captions use an em dash, names may be non-ASCII
                **study.highdicom_identity(),
            )
        # General Series: Laterality (Type 2C) is required for a paired body part only; naming the body
        # part (the model reads chest films) is what tells a validator that none is needed.
        sc.BodyPartExamined = BODY_PART
        sc.BurnedInAnnotation = "NO"  # the caption band holds provenance only, never patient data
        sc.ImageComments = " | ".join(label.lines())[:10240]
        sc.DerivationDescription = (f"{method_title(method)} saliency overlay of the source image; "
                                    f"model {provenance.model_name} sha256 {provenance.model_sha256}; "
                                    f"{provenance.settings_text()}")[:1024]
        if pacs:
            sc.SourceImageSequence, sc.ReferencedSeriesSequence = study.source_references()
        else:
            sc.PatientIdentityRemoved = "YES"
            sc.DeidentificationMethod = f"{APP_NAME}: new UIDs, no patient or study attributes"[:64]
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, sc, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out

