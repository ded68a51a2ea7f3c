"""DICOM radiographs: header checks, decoding, Modality LUT -> VOI -> inversion, metadata split.

Display pipeline (DICOM PS3.3 C.11; GUIDE §2), in this order and never otherwise:

1. **Modality LUT**: Modality LUT Sequence if present, else ``x * RescaleSlope + RescaleIntercept``
   -> ``Radiograph.modality_values``.
2. **VOI**: the first VOI LUT Sequence item (output scaled by the table's own min/max), else the first
   Window Center/Width with VOI LUT Function LINEAR / LINEAR_EXACT / SIGMOID, else the stored min/max
   of the modality values (a LINEAR window that maps min -> 0 and max -> 1).
3. **Inversion, once**: when Photometric Interpretation is MONOCHROME1 and/or Presentation LUT Shape
   is INVERSE. In the DX/CR IODs, INVERSE is how a MONOCHROME1 file *declares* that its values must be
   inverted for display (PS3.3 C.8.11.6.1.1: MONOCHROME1 requires INVERSE), so the two together mean one
   inversion, not two that cancel. (The Canon DX file in ``shared/data/dicom`` shows bone black if the
   two are XOR-ed.)

pydicom's reading validation is switched off process-wide by :func:`xai.startup.boot` (which every read
makes sure has run): its warnings and log lines quote attribute values, i.e. patient identifiers.

Refused: CT, MR and other non-projection modalities ("not a radiograph"), files without pixel data,
float pixel data, headers declaring more than ``max_pixels`` (checked before decoding). Multi-frame ->
first frame + notice; colour -> luminance + notice; burned-in annotation -> notice.
"""

from __future__ import annotations

import io
import math
import struct
from typing import Any

import numpy as np

from xai.radiograph_core import (
    CodecMissingError,
    CorruptImageError,
    NoPixelDataError,
    NotARadiographError,
    Radiograph,
    apply_window,
    check_plausible,
    check_size,
    stored_range_window,
    to_luminance,
)
from xai.startup import boot

# Projection X-ray modalities (PS3.3 C.7.3.1.1.1) plus OT (other / secondary capture) and a missing value.
RADIOGRAPH_MODALITIES = frozenset({"", "CR", "DX", "DR", "RG", "RF", "XA", "MG", "PX", "IO", "OT", "DF", "DS"})

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
PIXEL_DATA_TAG_BE = b"\x7f\xe0\x00\x10"

# Non-identifying attributes shown in the app: metadata key -> DICOM keyword.
METADATA_KEYWORDS = {
    "modality": "Modality",
    "view_position": "ViewPosition",
    "body_part": "BodyPartExamined",
    "laterality": "ImageLaterality",
    "patient_orientation": "PatientOrientation",  # row, column directions: says when a film is shown flipped
    "manufacturer": "Manufacturer",
    "manufacturer_model": "ManufacturerModelName",
    "photometric_interpretation": "PhotometricInterpretation",
    "presentation_lut_shape": "PresentationLUTShape",
    "sop_class_uid": "SOPClassUID",  # what kind of object the file is (a Secondary Capture references it)
}

# Identifying or quasi-identifying attributes: kept in Radiograph.patient, never shown or logged by default.
PATIENT_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate", "PatientBirthTime",
    "PatientSex", "PatientAge", "PatientAddress", "PatientTelephoneNumbers", "IssuerOfPatientID",
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "AcquisitionDateTime", "InstanceCreationDate",
    "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
    "RequestingPhysician", "AccessionNumber", "StudyID", "DeviceSerialNumber",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "StudyDescription", "SeriesDescription", "RequestedProcedureDescription",
)


def _get(ds: Any, keyword: str, default: Any = None) -> Any:
    """Read one attribute; a malformed value reads as missing instead of raising."""
    try:
        value = ds.get(keyword, default)
    except Exception:  # noqa: BLE001 - pydicom raises many types on malformed values
        return default
    return default if value is None else value


def _first(value: Any) -> Any:
    try:
        from pydicom.multival import MultiValue

        if isinstance(value, MultiValue | list | tuple):
            return value[0] if len(value) else None
    except Exception:  # noqa: BLE001
        return None
    return value


def _as_float(value: Any) -> float | None:
    try:
        v = float(_first(value))
    except (TypeError, ValueError, IndexError):
        return None
    return v if math.isfinite(v) else None


def _as_int(value: Any, default: int) -> int:
    try:
        return int(_first(value))
    except (TypeError, ValueError, IndexError):
        return default


def _text(value: Any) -> str:
    try:
        return str(value).strip()
    except Exception:  # noqa: BLE001
        return ""


def _pixel_spacing(ds: Any) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; None when missing or <= 0."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _get(ds, keyword)
        if value is None:
            continue
        try:
            row, col = (float(v) for v in list(value)[:2])
        except (TypeError, ValueError):
            continue
        if math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0:
            return (row, col), keyword
    return None, ""


def _read_dataset(data: bytes) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    boot()  # pydicom's reading validation off before the first read (it logs values: identifiers)
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except InvalidDicomError:
        raise CorruptImageError("the DICOM file's header is damaged") from None
    except (EOFError, ValueError, OSError, KeyError, TypeError, struct.error) as exc:
        raise CorruptImageError(f"the DICOM file is truncated or damaged ({type(exc).__name__})") from None


def _ensure_transfer_syntax(ds: Any) -> str:
    """Transfer syntax UID; for a data set without file meta, infer it from how it was parsed."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    uid = _get(meta, "TransferSyntaxUID") if meta is not None else None
    if uid:
        return str(uid)
    try:
        encapsulated = ds["PixelData"].is_undefined_length
    except Exception:  # noqa: BLE001
        encapsulated = False
    if encapsulated:
        raise CorruptImageError("the DICOM file has compressed pixel data but no transfer syntax to decode it")
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        implicit, little = True, True
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    return str(uid)


def _check_codec(tsyntax: str) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(tsyntax)
    name = uid.name if uid.is_valid else tsyntax
    try:
        decoder = get_decoder(uid)
    except Exception:  # noqa: BLE001 - pydicom raises NotImplementedError for unknown syntaxes
        decoder = None
    if decoder is None:
        raise CodecMissingError(f"no decoder exists for this DICOM transfer syntax ({name})", codec=name)
    if not decoder.is_available:
        missing = "; ".join(getattr(decoder, "missing_dependencies", []) or [])
        raise CodecMissingError(
            f"the decoder for {name} is not installed" + (f" (needs {missing})" if missing else ""), codec=name)


def decode_dicom(data: bytes, *, max_pixels: int) -> Radiograph:
    """Decode a DICOM radiograph (see module docstring for the display pipeline)."""
    ds = _read_dataset(data)
    notices: list[str] = []
    modality = _text(_get(ds, "Modality", "")).upper()
    if modality not in RADIOGRAPH_MODALITIES:
        raise NotARadiographError(
            f"this DICOM file is a {modality} image, not a radiograph (expected CR, DX or another X-ray projection)")
    if any(k in ds for k in ("FloatPixelData", "DoubleFloatPixelData")):
        raise NotARadiographError("this DICOM file holds floating-point data (a parametric map), not a radiograph")
    if "PixelData" not in ds:
        if PIXEL_DATA_TAG in data or PIXEL_DATA_TAG_BE in data:
            raise CorruptImageError("the DICOM file is truncated: its pixel data element is cut off")
        raise NoPixelDataError("this DICOM file has no pixel data (it is not an image, e.g. a report)")

    rows = _as_int(_get(ds, "Rows"), -1)
    cols = _as_int(_get(ds, "Columns"), -1)
    frames = max(1, _as_int(_get(ds, "NumberOfFrames", 1), 1))
    samples = _as_int(_get(ds, "SamplesPerPixel", 1), 1)
    if rows <= 0 or cols <= 0:
        raise CorruptImageError("the DICOM header does not give the image size (Rows/Columns)")
    if samples not in (1, 3):
        raise CorruptImageError(f"the DICOM header declares {samples} samples per pixel (expected 1 or 3)")
    check_size(cols, rows, frames, max_pixels)
    if frames > 1:
        notices.append(f"multi-frame: first of {frames} frames shown")

    tsyntax = _ensure_transfer_syntax(ds)
    _check_codec(tsyntax)
    photometric = _text(_get(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() or "MONOCHROME2"
    arr = _decode_first_frame(ds, tsyntax)
    if arr.ndim == 3 and arr.shape[0] == rows and arr.shape[1] == cols and photometric in ("MONOCHROME1", "MONOCHROME2"):
        arr = arr[..., 0]  # a mislabelled grayscale file; keep the first sample
    bits_stored = _as_int(_get(ds, "BitsStored"), _as_int(_get(ds, "BitsAllocated"), 16))

    if arr.ndim == 3 or photometric in ("RGB", "PALETTE COLOR") or photometric.startswith("YBR"):
        return _colour(ds, arr, photometric, bits_stored, frames, notices)
    if arr.ndim != 2:
        raise CorruptImageError(f"the DICOM pixel data has an unexpected shape {arr.shape}")

    values = _modality_lut(ds, arr, notices)
    check_plausible(values)
    pixels, window, function = _voi(ds, values, notices)
    presentation = _text(_get(ds, "PresentationLUTShape", "")).upper()
    invert = photometric == "MONOCHROME1" or presentation == "INVERSE"
    if invert:
        pixels = np.float32(1.0) - pixels
    return _record(ds, pixels, values, window, bits_stored, photometric, frames, notices, invert, function)


def _decode_first_frame(ds: Any, tsyntax: str) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(ds, index=0)
    except (MemoryError, RecursionError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - plugins raise anything on damaged data (pyo3: PanicException)
        raise CorruptImageError(f"the DICOM pixel data could not be decoded; it looks truncated or damaged "
                                f"({type(exc).__name__})") from None
    return np.asarray(arr)


def _modality_lut(ds: Any, arr: np.ndarray, notices: list[str]) -> np.ndarray:
    """Modality LUT Sequence, else Rescale Slope/Intercept, as float32."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        try:
            return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        except Exception:  # noqa: BLE001
            notices.append("Modality LUT unreadable: stored values used")
            return arr.astype(np.float32)
    slope = _as_float(_get(ds, "RescaleSlope"))
    intercept = _as_float(_get(ds, "RescaleIntercept"))
    values = arr.astype(np.float32)
    if slope is not None and slope != 0 and slope != 1:
        values *= np.float32(slope)
    if intercept:
        values += np.float32(intercept)
    return values


def _voi(ds: Any, values: np.ndarray, notices: list[str]) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """(pixels in [0, 1] before inversion, window or None, VOI function)."""
    if "VOILUTSequence" in ds:
        try:
            from pydicom.pixels import apply_voi

            n, first = (int(v) for v in list(ds.VOILUTSequence[0].LUTDescriptor)[:2])
            n = n or 65536  # PS3.3 C.11.2.1.1: 0 entries means 2**16
            # the table as pydicom reads it (8/16-bit entries, OW or US encodings), for its output range
            table = np.asarray(apply_voi(np.arange(first, first + n, dtype=np.float64), ds, index=0))
            out = np.asarray(apply_voi(values, ds, index=0), dtype=np.float32)
            lo, hi = float(table.min()), float(table.max())
            if hi > lo:
                # window None says "a table, not a window"; re-windowing in a viewer then uses LINEAR
                notices.append("displayed through the file's VOI LUT table")
                return (out - np.float32(lo)) * np.float32(1.0 / (hi - lo)), None, "LINEAR"
        except Exception:  # noqa: BLE001 - fall back to the window below
            pass
        notices.append("VOI LUT in the file is unreadable: window used instead")
    center = _as_float(_get(ds, "WindowCenter"))
    width = _as_float(_get(ds, "WindowWidth"))
    function = _text(_get(ds, "VOILUTFunction", "LINEAR")).upper() or "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        notices.append(f"unknown VOI LUT function {function[:16]}: LINEAR used")
        function = "LINEAR"
    if center is not None and width is not None:
        try:
            return apply_window(values, center, width, function=function), (center, width), function
        except ValueError:
            notices.append("the window in the file is invalid: full range shown")
    window = stored_range_window(values)
    return apply_window(values, *window), window, "LINEAR"


def _colour(ds: Any, arr: np.ndarray, photometric: str, bits: int, frames: int, notices: list[str]) -> Radiograph:
    if photometric == "PALETTE COLOR" and arr.ndim == 2:
        from pydicom.pixels import apply_color_lut

        arr = np.asarray(apply_color_lut(arr, ds))
        bits = 16 if arr.dtype.itemsize > 1 else 8
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise CorruptImageError(f"the DICOM colour pixel data has an unexpected shape {arr.shape}")
    values, coloured = to_luminance(arr)
    if coloured:
        notices.append("colour DICOM: converted to grayscale (luminance)")
    check_plausible(values)
    if bits <= 8:
        pixels, window = values * np.float32(1.0 / 255.0), None
    else:
        window = stored_range_window(values)
        pixels = apply_window(values, *window)
    return _record(ds, pixels, values, window, bits, photometric, frames, notices, False, "LINEAR")


def _record(ds: Any, pixels: np.ndarray, values: np.ndarray, window: tuple[float, float] | None, bits: int,
            photometric: str, frames: int, notices: list[str], invert: bool, function: str) -> Radiograph:
    if _text(_get(ds, "BurnedInAnnotation", "")).upper() == "YES":
        notices.append("burned-in annotation: the image may show patient data")
    spacing, spacing_source = _pixel_spacing(ds)
    metadata = {key: _text(_get(ds, kw, "")) for key, kw in METADATA_KEYWORDS.items()}
    metadata = {k: v for k, v in metadata.items() if v}
    try:
        from pydicom.uid import UID

        ts = UID(str(ds.file_meta.TransferSyntaxUID))
        metadata["transfer_syntax"] = ts.name if ts.is_valid else str(ts)
    except Exception:  # noqa: BLE001
        pass
    if spacing_source:
        metadata["pixel_spacing_source"] = spacing_source
    patient = {kw: _text(_get(ds, kw, "")) for kw in PATIENT_KEYWORDS}
    patient = {k: v for k, v in patient.items() if v}
    return Radiograph(
        pixels=np.clip(pixels, 0.0, 1.0),
        modality_values=values,
        window=window,
        format="dicom",
        bits_stored=bits,
        photometric=photometric,
        pixel_spacing=spacing,
        frames=frames,
        notices=tuple(notices),
        metadata=metadata,
        patient=patient,
        inverted=invert,
        voi_function=function,
    )
