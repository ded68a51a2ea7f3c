"""xai.dicom through load_radiograph: every display branch, on the real files and on DICOMs built here."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from xai.radiograph import (
    CodecMissingError,
    CorruptImageError,
    ImageTooLargeError,
    NoPixelDataError,
    NotARadiographError,
    apply_window,
    load_radiograph,
)

PHI = {"PatientName": "Doe^Jane", "PatientID": "MRN-0042", "PatientBirthDate": "19610203",
       "StudyDate": "20240101", "InstitutionName": "St Example Hospital", "AccessionNumber": "ACC9"}


def _ramp(h: int = 40, w: int = 50, lo: int = 0, hi: int = 4095) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (lo + (xx * w + yy) * (hi - lo) // (w * w + h)).astype(np.uint16)


def make_dicom(arr: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
               modality: str = "DX", preamble: bool = True, file_meta: bool = True,
               transfer_syntax: str = ExplicitVRLittleEndian, **attrs) -> bytes:
    """A minimal DICOM image built with pydicom; ``attrs`` are extra DICOM keywords."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    if arr.ndim == 3 and arr.shape[-1] == 3 and photometric == "RGB":
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        frames_shape = arr.shape[:2]
    else:
        ds.SamplesPerPixel = 1
        frames_shape = arr.shape[-2:]
        if arr.ndim == 3:
            ds.NumberOfFrames = arr.shape[0]
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = frames_shape
    ds.BitsAllocated = 8 if arr.dtype.itemsize == 1 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    if file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
    buf = io.BytesIO()
    ds.preamble = b"\x00" * 128 if preamble else None
    pydicom.dcmwrite(buf, ds, implicit_vr=not file_meta, little_endian=True, enforce_file_format=False)
    data = buf.getvalue()
    assert (data[128:132] == b"DICM") == preamble
    return data


# ------------------------------------------------------------------------------------------ real files
def _lung_vs_mediastinum(pixels: np.ndarray) -> tuple[float, float]:
    h, w = pixels.shape
    band = pixels[h // 3: 2 * h // 3]
    mediastinum = float(band[:, int(0.45 * w):int(0.55 * w)].mean())
    lungs = float(np.r_[band[:, int(0.2 * w):int(0.35 * w)].ravel(), band[:, int(0.65 * w):int(0.8 * w)].ravel()].mean())
    return lungs, mediastinum


@pytest.mark.parametrize(
    ("name", "photometric", "inverted", "spacing", "bits", "syntax"),
    [
        ("siim_cr_pa_mono2_jpeg_baseline.dcm", "MONOCHROME2", False, (0.168, 0.168), 8, "JPEG Baseline"),
        ("philips_cr_pa_mono1_j2k_lossy.dcm", "MONOCHROME1", True, None, 15, "JPEG 2000"),
        ("canon_dx_pa_mono1_inverse_j2k_lossless.dcm", "MONOCHROME1", True, (0.16, 0.16), 12, "JPEG 2000"),
    ],
)
def test_real_dicoms_bone_white_air_black(dicom_dir: Path, name, photometric, inverted, spacing, bits, syntax):
    path = dicom_dir / name
    header = pydicom.dcmread(path, stop_before_pixels=True)
    r = load_radiograph(path)
    assert r.format == "dicom" and r.photometric == photometric and r.inverted is inverted
    assert r.shape == (header.Rows, header.Columns)
    assert r.bits_stored == bits and r.pixel_spacing == spacing  # Philips stores 0\0: None
    assert syntax in r.metadata["transfer_syntax"]
    assert r.metadata["modality"] == header.Modality and r.metadata["body_part"] == "CHEST"
    lungs, mediastinum = _lung_vs_mediastinum(r.pixels)
    assert mediastinum > lungs + 0.1, (lungs, mediastinum)  # bone/soft tissue white, air-filled lungs dark
    assert r.pixels.min() >= 0.0 and r.pixels.max() <= 1.0
    if r.window is not None:  # the UI's re-windowing reproduces the display exactly
        np.testing.assert_allclose(r.rewindow(*r.window), r.pixels, atol=1e-6)
    # identifying attributes are kept apart and never in repr or metadata
    assert "PatientID" in r.patient and "StudyInstanceUID" in r.patient
    assert str(header.PatientID) not in repr(r)
    assert not set(r.patient) & set(r.metadata)


def test_canon_mono1_inverse_is_inverted_exactly_once(dicom_dir: Path):
    r = load_radiograph(dicom_dir / "canon_dx_pa_mono1_inverse_j2k_lossless.dcm")
    assert r.window == (2048.0, 4096.0)
    expected = 1.0 - apply_window(r.modality_values, 2048.0, 4096.0)
    np.testing.assert_allclose(r.pixels, expected, atol=1e-6)


# -------------------------------------------------------------------------------------- built DICOMs
def _window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """Independent DICOM LINEAR window, written out piecewise as in PS3.3 C.11.2.1.2.1."""
    x = x.astype(np.float64)
    y = (x - (c - 0.5)) / (w - 1) + 0.5
    y[x <= c - 0.5 - (w - 1) / 2] = 0.0
    y[x > c - 0.5 + (w - 1) / 2] = 1.0
    return y


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [("MONOCHROME2", "", False), ("MONOCHROME1", "", True), ("MONOCHROME2", "INVERSE", True),
     ("MONOCHROME1", "INVERSE", True), ("MONOCHROME1", "IDENTITY", True)],
)
def test_window_and_inversion(photometric, shape, inverted):
    arr = _ramp()
    attrs = {"WindowCenter": 2000, "WindowWidth": 1000}
    if shape:
        attrs["PresentationLUTShape"] = shape
    r = load_radiograph(make_dicom(arr, photometric=photometric, **attrs))
    expected = _window(arr, 2000, 1000)
    if inverted:
        expected = 1.0 - expected
    assert r.inverted is inverted and r.window == (2000.0, 1000.0)
    np.testing.assert_allclose(r.pixels, expected, atol=1e-5)
    np.testing.assert_array_equal(r.modality_values, arr.astype(np.float32))  # before VOI and inversion


def test_rescale_slope_intercept_then_window_in_modality_units():
    arr = _ramp(hi=2000)
    r = load_radiograph(make_dicom(arr, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=500, WindowWidth=2000))
    values = arr * 2.0 - 1024
    np.testing.assert_allclose(r.modality_values, values, atol=1e-3)
    np.testing.assert_allclose(r.pixels, _window(values, 500, 2000), atol=1e-5)


def test_signed_pixels_with_intercept():
    arr = (_ramp(hi=2000).astype(np.int32) - 1000).astype(np.int16)
    r = load_radiograph(make_dicom(arr, RescaleSlope=1, RescaleIntercept=100))
    np.testing.assert_allclose(r.modality_values, arr + 100.0)
    assert r.pixels.min() == 0 and r.pixels.max() == 1


def test_no_window_uses_the_stored_range():
    arr = _ramp(lo=300, hi=3300)
    r = load_radiograph(make_dicom(arr))
    lo, hi = float(arr.min()), float(arr.max())
    np.testing.assert_allclose(r.pixels, (arr - lo) / (hi - lo), atol=1e-5)


def test_voi_lut_sequence_takes_precedence_over_window():
    arr = _ramp(hi=1023, h=32, w=40)
    item = Dataset()
    first = 100
    table = (np.sqrt(np.arange(512)) * 100).astype(np.uint16)  # a non-linear table over 100..611
    item.LUTDescriptor = [len(table), first, 16]
    item.LUTData = table.astype("<u2").tobytes()
    r = load_radiograph(make_dicom(arr, bits_stored=10, VOILUTSequence=Sequence([item]),
                                   WindowCenter=10, WindowWidth=5))
    idx = np.clip(arr.astype(np.int64) - first, 0, len(table) - 1)
    expected = (table[idx] - table.min()) / (table.max() - table.min())
    assert r.window is None and r.voi_function == "LINEAR"
    assert any("VOI LUT" in n for n in r.notices)
    np.testing.assert_allclose(r.pixels, expected, atol=1e-5)
    assert r.rewindow(600, 400).shape == arr.shape  # a viewer can still re-window it


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_function(function):
    arr = _ramp()
    r = load_radiograph(make_dicom(arr, WindowCenter=2000, WindowWidth=1000, VOILUTFunction=function))
    assert r.voi_function == function
    np.testing.assert_allclose(r.pixels, apply_window(arr, 2000, 1000, function=function), atol=1e-6)


def test_8bit_and_16bit_stored():
    arr8 = (_ramp(hi=255)).astype(np.uint8)
    r = load_radiograph(make_dicom(arr8, bits_stored=8, WindowCenter=128, WindowWidth=256))
    assert r.bits_stored == 8
    np.testing.assert_allclose(r.pixels, arr8 / 255.0, atol=1e-6)  # the full 8-bit window is v / 255
    arr16 = _ramp(hi=65535)
    r = load_radiograph(make_dicom(arr16, bits_stored=16, WindowCenter=32768, WindowWidth=65536))
    assert r.bits_stored == 16
    np.testing.assert_allclose(r.pixels, _window(arr16, 32768, 65536), atol=1e-5)


def test_rgb_dicom_becomes_luminance_with_notice():
    g = _ramp(hi=255).astype(np.uint8)
    rgb = np.stack([g, g // 2, 255 - g], axis=-1).astype(np.uint8)
    r = load_radiograph(make_dicom(rgb, photometric="RGB", bits_stored=8, modality="OT"))
    lum = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(r.modality_values, lum, atol=1e-3)
    assert any("grayscale" in n for n in r.notices)


@pytest.mark.parametrize(("preamble", "file_meta"), [(False, True), (False, False), (True, True)])
def test_with_and_without_preamble_and_file_meta(preamble, file_meta):
    arr = _ramp()
    r = load_radiograph(make_dicom(arr, preamble=preamble, file_meta=file_meta, WindowCenter=2000, WindowWidth=1000))
    assert r.format == "dicom"
    np.testing.assert_allclose(r.pixels, _window(arr, 2000, 1000), atol=1e-5)


def test_multiframe_shows_the_first_frame():
    frames = np.stack([_ramp(), 4095 - _ramp(), _ramp() // 2])
    r = load_radiograph(make_dicom(frames, modality="XA"))
    assert r.frames == 3 and any("first of 3" in n for n in r.notices)
    np.testing.assert_array_equal(r.modality_values, frames[0].astype(np.float32))


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [({"PixelSpacing": [0, 0]}, None), ({"PixelSpacing": [0.2, 0.25]}, (0.2, 0.25)),
     ({"ImagerPixelSpacing": [0.14, 0.14]}, (0.14, 0.14)), ({}, None),
     ({"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.1, 0.1]}, (0.1, 0.1))],
)
def test_pixel_spacing(attrs, expected):
    assert load_radiograph(make_dicom(_ramp(), **attrs)).pixel_spacing == expected


def test_metadata_and_patient_split_and_burned_in_notice():
    r = load_radiograph(make_dicom(_ramp(), ViewPosition="PA", BodyPartExamined="CHEST", Manufacturer="Acme",
                                   BurnedInAnnotation="YES", StudyInstanceUID=generate_uid(), **PHI))
    assert r.metadata["view_position"] == "PA" and r.metadata["manufacturer"] == "Acme"
    for key, value in PHI.items():
        assert r.patient[key] == value
        assert value not in repr(r) and value not in str(r.metadata)
    assert "StudyInstanceUID" in r.patient and "SOPInstanceUID" in r.patient
    assert any("burned-in" in n for n in r.notices)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_are_lossless(syntax):
    arr = _ramp()
    r = load_radiograph(make_dicom(arr, transfer_syntax=syntax))
    np.testing.assert_array_equal(r.modality_values, arr.astype(np.float32))


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("modality", ["CT", "MR", "US", "PT", "NM"])
def test_non_radiograph_modalities_are_refused(modality):
    with pytest.raises(NotARadiographError, match=modality):
        load_radiograph(make_dicom(_ramp(), modality=modality))


def test_ct_volume_is_refused():
    with pytest.raises(NotARadiographError, match="not a radiograph"):
        load_radiograph(make_dicom(np.stack([_ramp()] * 4), modality="CT"))


def test_no_pixel_data():
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.preamble = b"\x00" * 128
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    with pytest.raises(NoPixelDataError, match="no pixel data"):
        load_radiograph(buf.getvalue())


def test_header_claiming_a_huge_image_is_refused_before_decoding():
    data = make_dicom(_ramp(), Rows=60000, Columns=60000)
    with pytest.raises(ImageTooLargeError, match="megapixel"):
        load_radiograph(data)
    frames = make_dicom(_ramp(), NumberOfFrames=100000)
    with pytest.raises(ImageTooLargeError, match="frames"):
        load_radiograph(frames)


def test_truncated_pixel_data_is_corrupt():
    data = make_dicom(_ramp(200, 200))
    with pytest.raises(CorruptImageError):
        load_radiograph(data[:-5000])


def test_unknown_transfer_syntax_names_the_codec():
    ds = pydicom.dcmread(io.BytesIO(make_dicom(_ramp(), transfer_syntax=RLELossless)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no decoder exists
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    with pytest.raises(CodecMissingError, match="MPEG2") as info:
        load_radiograph(buf.getvalue())
    assert "MPEG2" in info.value.codec


def test_missing_plugin_is_reported_as_codec_missing(monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(CodecMissingError, match="JPEG-LS"):
        load_radiograph(make_dicom(_ramp(), transfer_syntax=JPEGLSLossless))


def test_secondary_capture_and_implicit_little_endian_constants_are_sane():
    # guards the test helper itself: an implicit-VR file without meta is still recognised as DICOM
    data = make_dicom(_ramp(), preamble=False, file_meta=False, SOPClassUID=SecondaryCaptureImageStorage,
                      modality="OT")
    assert data[:2] == b"\x08\x00"
    assert load_radiograph(data).metadata["transfer_syntax"] == ImplicitVRLittleEndian.name


def test_malformed_identifiers_are_not_echoed_to_warnings_or_logs(caplog):
    import warnings

    secret_uid, secret_name = "1.2.3.SECRETSTUDY", "Secret^Patient" * 6  # invalid UI, over-long PN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's writer validates too
        data = make_dicom(_ramp(), StudyInstanceUID=secret_uid, PatientName=secret_name)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("DEBUG"):
        warnings.simplefilter("always")
        r = load_radiograph(data)
    assert r.patient["StudyInstanceUID"] == secret_uid and r.patient["PatientName"] == secret_name
    emitted = " ".join(str(w.message) for w in caught) + caplog.text
    assert "SECRET" not in emitted.upper()
