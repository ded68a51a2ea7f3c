"""DICOM Secondary Captures of the overlays (``highdicom.sc.SCImage``), filed in the source's study or
de-identified (:class:`ResultStudy`)."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from xai.export.panels import captioned_panel
from xai.export.provenance import APP_NAME, BODY_PART, PATIENT_FIELDS, ExportError, Provenance, method_title

if TYPE_CHECKING:
    import pydicom

# SOP classes for a source reference when the caller has only the modality (CR / DX radiographs).
_SOP_CLASS_BY_MODALITY = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
}
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
