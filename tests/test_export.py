"""xai.export: every export carries provenance and no patient identifiers unless asked.

A real radiograph (the bundled SIIM DICOM sample) gets known identifiers written into its header; every
export is searched for them as raw bytes, PNG text chunks, PDF text (read back with pypdf) and DICOM
attributes. ``include_patient=True`` is the positive control that shows the searches can find them.
"""

from __future__ import annotations

import contextlib
import io
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pypdf import PdfReader

from xai import __version__, export, render

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DICOM = REPO / "samples" / "cr_pa_siim.dcm"
SHA = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
IDENTIFIERS = {
    "PatientName": "Testpatient^Jolanda",
    "PatientID": "PID-8472-XQZ",
    "PatientBirthDate": "19510317",
    "StudyDate": "20200412",
    "AccessionNumber": "ACC99817Q",
    "InstitutionName": "Saint Examplary Hospital",
    "ReferringPhysicianName": "Drreferrer^Quentin",
}
SEARCH = ("Testpatient", "Jolanda", "PID-8472-XQZ", "19510317", "20200412", "ACC99817Q", "Examplary",
          "Drreferrer")


@pytest.fixture(scope="module")
def source() -> pydicom.Dataset:
    ds = pydicom.dcmread(SAMPLE_DICOM)
    for key, value in IDENTIFIERS.items():
        setattr(ds, key, value)
    ds.PatientSex = "F"
    return ds


@pytest.fixture(scope="module")
def source_bytes(source: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gray(source: pydicom.Dataset) -> np.ndarray:
    pixels = source.pixel_array.astype(np.float32)
    return pixels[::2, ::2] / 255.0  # 512 x 512: keeps the test fast


@pytest.fixture(scope="module")
def panel(gray: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[: gray.shape[0], : gray.shape[1]]
    heat = np.exp(-((yy - 200) ** 2 + (xx - 300) ** 2) / (2 * 60.0**2))
    return render.overlay(gray, heat, contour_level=0.5)


@pytest.fixture(scope="module")
def provenance() -> export.Provenance:
    return export.Provenance(
        model_name="chestcovnet",
        model_sha256=SHA,
        method="gradcam++",
        target_class="covid19",
        target_layer="features.denseblock4",
        settings={"colormap": "inferno", "opacity": 0.45, "contour": 0.5, "scale": "per_image"},
        timings_ms={"total": 812.25},
        created=datetime(2026, 11, 25, 18, 0, tzinfo=UTC),
    )


def _patient(ds: pydicom.Dataset) -> dict[str, str]:
    """Everything identifying in the header, as a caller would hold it (Radiograph.patient style)."""
    keys = (*export.PATIENT_FIELDS, "InstitutionName", "StudyInstanceUID", "SeriesInstanceUID",
            "SOPInstanceUID", "SOPClassUID")
    return {k: str(getattr(ds, k)) for k in keys if getattr(ds, k, None) not in (None, "")}


def _inflated_streams(data: bytes) -> bytes:
    """PDF bytes plus every Flate stream decompressed (so a compressed string cannot hide)."""
    out = [data]
    pos = 0
    while (start := data.find(b"stream", pos)) != -1:
        begin = start + len(b"stream")
        begin += 2 if data[begin : begin + 2] == b"\r\n" else 1
        end = data.find(b"endstream", begin)
        if end == -1:
            break
        with contextlib.suppress(zlib.error):
            out.append(zlib.decompress(data[begin:end]))
        pos = end
    return b"\n".join(out)


def _assert_no_identifiers(blob: bytes | str, where: str) -> None:
    text = blob.decode("latin-1") if isinstance(blob, bytes) else blob
    found = [s for s in SEARCH if s.lower() in text.lower()]
    assert not found, f"{where} leaks {found}"


def _png_text(data: bytes) -> str:
    image = Image.open(io.BytesIO(data))
    image.load()
    return "\n".join(f"{k}={v}" for k, v in image.text.items())


def _png_all_bytes(data: bytes) -> bytes:
    """PNG bytes plus its inflated IDAT/zTXt content."""
    out, pos = [data], 8
    idat = b""
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    out.append(zlib.decompress(idat))
    return b"".join(out)


# ------------------------------------------------------------------------------------- provenance
def test_provenance_lines_carry_model_version_method_settings_date_disclaimer(provenance):
    text = "\n".join(provenance.lines())
    for expected in ("Grad-CAM++", "covid19", "features.denseblock4", "chestcovnet", SHA[:12], __version__,
                     "inferno", "opacity 0.45", "2026-11-25", export.DISCLAIMER):
        assert expected in text
    record = provenance.to_dict()
    assert record["model_sha256"] == SHA and record["app_version"] == __version__
    assert export.method_title("gradcam,guided_gradcam") == "Grad-CAM, Guided Grad-CAM"


# ------------------------------------------------------------------------------------------ PNG
def test_overlay_png_has_caption_band_and_provenance_but_no_patient(panel, provenance, source):
    data = export.overlay_png(panel, provenance, patient=_patient(source))
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.width == panel.shape[1] and image.height > panel.shape[0] + 40
    pixels = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(pixels[: panel.shape[0]], panel)  # the panel itself is untouched
    band = pixels[panel.shape[0] :]
    assert (band > 200).any() and (band < 40).mean() > 0.5  # light text on a dark band
    text = _png_text(data)
    assert SHA in text and __version__ in text and export.DISCLAIMER in text and "gradcam++" in text
    _assert_no_identifiers(text, "PNG text chunks")
    _assert_no_identifiers(_png_all_bytes(data), "PNG bytes")


def test_overlay_png_with_patient_adds_a_caption_line_only(panel, provenance, source):
    plain = Image.open(io.BytesIO(export.overlay_png(panel, provenance, patient=_patient(source))))
    shown = Image.open(io.BytesIO(export.overlay_png(panel, provenance, patient=_patient(source),
                                                     include_patient=True)))
    assert shown.height > plain.height  # the burned-in patient line
    _assert_no_identifiers(_png_text(export.overlay_png(panel, provenance, patient=_patient(source),
                                                        include_patient=True)), "PNG chunks (asked)")
    assert export.patient_line(_patient(source)).startswith("Patient: PatientName Testpatient^Jolanda")
    assert export.patient_line({"PatientName": ""}) is None


def test_exports_are_identical_when_made_from_many_threads(panel, provenance, gray, source):
    """App sessions run in threads of one process: concurrent exports must not disturb each other."""
    from concurrent.futures import ThreadPoolExecutor

    small = panel[::4, ::4].copy()
    expected_png = export.overlay_png(small, provenance)
    args = _report_args(gray[::4, ::4], small, provenance, source)
    expected_report = PdfReader(io.BytesIO(export.report_pdf(**args))).pages[0].extract_text()

    def work(i: int) -> tuple[bytes, str]:
        png = export.overlay_png(small, provenance)
        pdf = export.report_pdf(**args)
        return png, PdfReader(io.BytesIO(pdf)).pages[0].extract_text()

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(8)))
    assert all(png == expected_png for png, _ in results)
    assert all(text == expected_report for _, text in results)


# --------------------------------------------------------------------------------------- report
def _report_args(gray, panel, provenance, source):
    return dict(
        radiograph=gray,
        panels={"Grad-CAM++": panel, "Guided Grad-CAM": panel},
        provenance=provenance,
        class_names=("non_covid", "covid19"),
        probabilities=(0.28, 0.72),
        threshold=0.5,
        threshold_class="covid19",
        predicted="covid19",
        notes=("the map is flat for one method",),
        patient=_patient(source),
    )


def test_report_pdf_one_page_with_provenance_and_no_patient(gray, panel, provenance, source):
    data = export.report_pdf(**_report_args(gray, panel, provenance, source))
    assert data.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    for expected in ("chestcovnet", SHA, __version__, "features.denseblock4", "covid19", "not for diagnosis",
                     "0.720", "threshold 0.50", "812 ms"):
        assert expected in text, expected
    _assert_no_identifiers(text, "PDF text")
    _assert_no_identifiers(_inflated_streams(data), "PDF bytes")
    _assert_no_identifiers(str(dict(reader.metadata or {})), "PDF metadata")
    assert SHA in str(dict(reader.metadata))


def test_report_pdf_shows_patient_only_when_asked(gray, panel, provenance, source):
    data = export.report_pdf(**_report_args(gray, panel, provenance, source), include_patient=True)
    text = PdfReader(io.BytesIO(data)).pages[0].extract_text()
    assert "Testpatient^Jolanda" in text and "PID-8472-XQZ" in text  # the search above can find them
    assert "Examplary" not in text  # institution is never part of an export


def test_report_png_valid_and_clean(gray, panel, provenance, source):
    data = export.report_png(**_report_args(gray, panel, provenance, source), dpi=60)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.height > image.width  # A4 portrait
    assert SHA in _png_text(data)
    _assert_no_identifiers(_png_text(data), "report PNG chunks")
    _assert_no_identifiers(_png_all_bytes(data), "report PNG bytes")


def test_report_rejects_mismatched_probabilities(gray, panel, provenance):
    with pytest.raises(export.ExportError, match="probabilities"):
        export.report_png(gray, {"x": panel}, provenance, class_names=("a", "b", "c"), probabilities=(0.5, 0.5))


# ----------------------------------------------------------------------------- secondary capture
def test_secondary_capture_references_source_study_and_is_anonymous(panel, provenance, source, source_bytes):
    data = export.secondary_capture(panel, source_bytes, provenance)
    _assert_no_identifiers(data, "SC bytes")
    sc = pydicom.dcmread(io.BytesIO(data))
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID and sc.SOPInstanceUID != source.SOPInstanceUID
    (ref,) = sc.SourceImageSequence
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID and ref.ReferencedSOPClassUID == source.SOPClassUID
    (series,) = sc.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert str(sc.PatientName) == "ANONYMOUS^" and sc.PatientID == "ANON" and sc.PatientIdentityRemoved == "YES"
    assert not sc.get("PatientBirthDate") and not sc.get("StudyDate") and not sc.get("AccessionNumber")
    assert "InstitutionName" not in sc and sc.BurnedInAnnotation == "NO"
    for expected in (SHA[:12], __version__, export.DISCLAIMER, "Grad-CAM++"):
        assert expected in sc.ImageComments
    assert SHA in sc.DerivationDescription
    pixels = sc.pixel_array
    assert sc.PhotometricInterpretation == "RGB" and pixels.shape[1] == panel.shape[1]
    np.testing.assert_array_equal(pixels[: panel.shape[0]], panel)


def test_secondary_capture_copies_patient_only_when_asked(panel, provenance, source):
    sc = pydicom.dcmread(io.BytesIO(export.secondary_capture(panel, source, provenance, include_patient=True)))
    assert str(sc.PatientName) == IDENTIFIERS["PatientName"] and sc.PatientID == IDENTIFIERS["PatientID"]
    assert sc.PatientBirthDate == IDENTIFIERS["PatientBirthDate"] and sc.PatientSex == "F"
    assert sc.StudyDate == IDENTIFIERS["StudyDate"] and sc.AccessionNumber == IDENTIFIERS["AccessionNumber"]
    assert "PatientIdentityRemoved" not in sc and "InstitutionName" not in sc
    assert sc.BurnedInAnnotation == "YES"


def test_secondary_capture_from_mapping_new_uids_each_time(panel, provenance, source):
    mapping = _patient(source)
    first = pydicom.dcmread(io.BytesIO(export.secondary_capture(panel, mapping, provenance)))
    second = pydicom.dcmread(io.BytesIO(export.secondary_capture(panel, mapping, provenance)))
    assert first.StudyInstanceUID == second.StudyInstanceUID == source.StudyInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID and first.SeriesInstanceUID != second.SeriesInstanceUID
    del mapping["SOPClassUID"]
    mapping["Modality"] = "CR"
    cr = pydicom.dcmread(io.BytesIO(export.secondary_capture(panel, mapping, provenance)))
    assert cr.SourceImageSequence[0].ReferencedSOPClassUID == pydicom.uid.ComputedRadiographyImageStorage


def test_secondary_capture_needs_a_dicom_source(panel, provenance):
    png = render.to_png_bytes(panel)
    with pytest.raises(export.ExportError, match="not a readable DICOM"):
        export.secondary_capture(panel, png, provenance)
    with pytest.raises(export.ExportError, match="StudyInstanceUID"):
        export.secondary_capture(panel, {"PatientName": "x"}, provenance)
    with pytest.raises(export.ExportError, match="SOPClassUID"):
        export.secondary_capture(panel, {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3",
                                         "SOPInstanceUID": "1.2.3.4"}, provenance)
