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
    spec = _report_spec(gray[::4, ::4], small, provenance, source)
    expected_report = PdfReader(io.BytesIO(export.report_pdf(spec))).pages[0].extract_text()

    def work(i: int) -> tuple[bytes, str]:
        png = export.overlay_png(small, provenance)
        pdf = export.report_pdf(spec)
        return png, PdfReader(io.BytesIO(pdf)).pages[0].extract_text()

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(8)))
    assert all(png == expected_png for png, _ in results)
    assert all(text == expected_report for _, text in results)


# --------------------------------------------------------------------------------------- report
def _report_spec(gray, panel, provenance, source, **changes) -> export.ReportSpec:
    return export.ReportSpec(**{
        "radiograph": gray,
        "panels": {"Grad-CAM++": panel, "Guided Grad-CAM": panel},
        "provenance": provenance,
        "class_names": ("non_covid", "covid19"),
        "probabilities": (0.28, 0.72),
        "threshold": 0.5,
        "threshold_class": "covid19",
        "predicted": "covid19",
        "notes": ("the map is flat for one method",),
        "ood": "Unlike the training data: Mahalanobis distance 41.2 (warning above 30.0).",
        "ood_warning": True,
        "patient": _patient(source),
        **changes,
    })


def test_report_pdf_one_page_with_provenance_ood_verdict_and_no_patient(gray, panel, provenance, source):
    data = export.report_pdf(_report_spec(gray, panel, provenance, source))
    assert data.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    for expected in ("chestcovnet", SHA, __version__, "features.denseblock4", "covid19", "not for diagnosis",
                     "0.720", "threshold 0.50", "812 ms", "Unlike the training data", "41.2"):
        assert expected in text, expected
    _assert_no_identifiers(text, "PDF text")
    _assert_no_identifiers(_inflated_streams(data), "PDF bytes")
    _assert_no_identifiers(str(dict(reader.metadata or {})), "PDF metadata")
    assert SHA in str(dict(reader.metadata))


def test_report_pdf_shows_patient_only_when_asked(gray, panel, provenance, source):
    data = export.report_pdf(_report_spec(gray, panel, provenance, source, include_patient=True))
    text = PdfReader(io.BytesIO(data)).pages[0].extract_text()
    assert "Testpatient^Jolanda" in text and "PID-8472-XQZ" in text  # the search above can find them
    assert "Examplary" not in text  # institution is never part of an export


def test_report_png_valid_and_clean(gray, panel, provenance, source):
    data = export.report_png(_report_spec(gray, panel, provenance, source), dpi=60)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.height > image.width  # A4 portrait
    assert SHA in _png_text(data)
    _assert_no_identifiers(_png_text(data), "report PNG chunks")
    _assert_no_identifiers(_png_all_bytes(data), "report PNG bytes")


def test_report_rejects_mismatched_probabilities_and_too_many_panels(gray, panel, provenance, source):
    with pytest.raises(export.ExportError, match="probabilities"):
        _report_spec(gray, panel, provenance, source, class_names=("a", "b", "c"))
    with pytest.raises(export.ExportError, match="at most 5"):
        _report_spec(gray, panel, provenance, source, panels={str(i): panel for i in range(6)})


@pytest.mark.parametrize("threshold", [0.001, 0.02, 0.5, 0.97])
def test_report_threshold_line_crosses_no_label(gray, panel, provenance, source, threshold):
    """The dashed threshold line used to run over the probability label (e.g. "0.001") of its bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    spec = _report_spec(gray[::8, ::8], panel[::8, ::8], provenance, source, threshold=threshold,
                        probabilities=(0.999, 0.001))
    fig = export.report_figure(spec)
    FigureCanvasAgg(fig).draw()
    bars = next(ax for ax in fig.axes if ax.get_title().startswith("Prediction"))
    (line,) = [ln for ln in bars.get_lines() if ln.get_linestyle() == "--"]
    assert line.get_xdata()[0] == threshold
    labels = [t for t in bars.texts if "  0." in t.get_text()]
    assert [t.get_text() for t in labels] == ["non_covid  0.999", "covid19  0.001"]
    line_box = line.get_window_extent()
    for label in labels:
        assert not line_box.overlaps(label.get_window_extent()), f"{label.get_text()} under the line"
    assert f"threshold {threshold:.2f} on P(covid19)" in bars.get_title()


# ----------------------------------------------------------------------------- secondary capture
PANELS_KEYS = ("gradcam", "guided_gradcam")


def _read_sc(data: bytes) -> pydicom.Dataset:
    """Read back and validate: pydicom parses it, highdicom accepts it as an image of its SOP class."""
    import highdicom

    ds = pydicom.dcmread(io.BytesIO(data))
    image = highdicom.Image.from_dataset(ds, copy=True)
    assert image.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID",
                    "SeriesInstanceUID", "SeriesNumber", "Modality", "ConversionType"):
        assert keyword in ds, f"{keyword} missing (type 1/2 attribute of the SC IOD)"
    return ds


def _film_panels(gray: np.ndarray) -> dict[str, np.ndarray]:
    """Two distinct overlays at the film's resolution (the source DICOM's full 1024 x 1024 grid)."""
    yy, xx = np.mgrid[: gray.shape[0], : gray.shape[1]]
    return {m: render.overlay(gray, np.exp(-((yy - 300 * (i + 1)) ** 2 + (xx - 500) ** 2) / (2 * 90.0**2)))
            for i, m in enumerate(PANELS_KEYS)}


@pytest.fixture(scope="module")
def film(source: pydicom.Dataset) -> np.ndarray:
    return source.pixel_array.astype(np.float32) / 255.0


def test_sc_for_our_pacs_joins_the_patients_study_in_a_new_series(film, provenance, source, source_bytes):
    panels = _film_panels(film)
    files = export.secondary_captures(panels, source_bytes, provenance, mode="pacs")
    assert len(files) == len(panels)
    read = [_read_sc(f) for f in files]
    assert len({sc.SeriesInstanceUID for sc in read}) == 1 and [sc.InstanceNumber for sc in read] == [1, 2]
    for sc, (method, rgb) in zip(read, panels.items(), strict=True):
        # Patient and Study modules of the source: a PACS files it with the patient's study.
        assert str(sc.PatientName) == IDENTIFIERS["PatientName"] and sc.PatientID == IDENTIFIERS["PatientID"]
        assert sc.PatientBirthDate == IDENTIFIERS["PatientBirthDate"] and sc.PatientSex == "F"
        assert sc.StudyDate == IDENTIFIERS["StudyDate"] and sc.AccessionNumber == IDENTIFIERS["AccessionNumber"]
        assert str(sc.ReferringPhysicianName) == IDENTIFIERS["ReferringPhysicianName"]
        assert sc.StudyInstanceUID == source.StudyInstanceUID
        assert sc.SeriesInstanceUID != source.SeriesInstanceUID and sc.SOPInstanceUID != source.SOPInstanceUID
        (ref,) = sc.SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sc.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        assert "PatientIdentityRemoved" not in sc and "InstitutionName" not in sc
        # The film's own resolution (1024 x 1024 here), the method's overlay untouched above its label band.
        pixels = sc.pixel_array
        assert pixels.shape[1] == film.shape[1] == source.Columns and pixels.shape[0] > film.shape[0]
        np.testing.assert_array_equal(pixels[: film.shape[0]], rgb)
        band = pixels[film.shape[0]:]
        assert (band > 200).any()  # the burned-in label
        assert sc.ImageComments.startswith(export.method_title(method))
        assert export.method_title(method) in sc.DerivationDescription and SHA in sc.DerivationDescription
        assert sc.BurnedInAnnotation == "NO"  # the label band holds provenance, never the patient's name
        _assert_no_identifiers(band.tobytes(), "SC label band")


def test_sc_deidentified_has_new_uids_throughout_and_no_identifiers(film, provenance, source, source_bytes):
    panels = _film_panels(film)
    files = export.secondary_captures(panels, source_bytes, provenance, mode="deidentified")
    again = export.secondary_captures(panels, source_bytes, provenance, mode="deidentified")
    read = [_read_sc(f) for f in files]
    source_uids = {source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID}
    for data, sc in zip(files, read, strict=True):
        _assert_no_identifiers(data, "de-identified SC bytes")
        assert not any(uid.encode() in data for uid in source_uids), "a source UID links it back"
        assert sc.StudyInstanceUID not in source_uids and sc.SeriesInstanceUID not in source_uids
        assert str(sc.PatientName) == "" and sc.PatientID.startswith("ANON-")
        assert not sc.PatientBirthDate and not sc.StudyDate and not sc.AccessionNumber and not sc.PatientSex
        assert sc.PatientIdentityRemoved == "YES" and "SourceImageSequence" not in sc
        assert sc.pixel_array.shape[1] == film.shape[1]
    assert len({sc.StudyInstanceUID for sc in read}) == 1  # one new study for the export…
    assert _read_sc(again[0]).StudyInstanceUID != read[0].StudyInstanceUID  # …and another one next time
    assert _read_sc(again[0]).PatientID != read[0].PatientID


def test_sc_from_mapping_and_from_modality(provenance, source, panel):
    mapping = _patient(source)
    del mapping["SOPClassUID"]
    mapping["Modality"] = "CR"
    (cr,) = export.secondary_captures({"gradcam": panel}, mapping, provenance, mode="pacs")
    assert _read_sc(cr).SourceImageSequence[0].ReferencedSOPClassUID == pydicom.uid.ComputedRadiographyImageStorage


def test_secondary_capture_needs_a_dicom_source_and_a_mode(panel, provenance, source):
    png = render.to_png_bytes(panel)
    with pytest.raises(export.ExportError, match="not a readable DICOM"):
        export.secondary_captures({"gradcam": panel}, png, provenance, mode="pacs")
    with pytest.raises(export.ExportError, match="StudyInstanceUID"):
        export.secondary_captures({"gradcam": panel}, {"PatientName": "x"}, provenance, mode="pacs")
    with pytest.raises(export.ExportError, match="SOPClassUID"):
        export.secondary_captures({"gradcam": panel}, {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3",
                                                       "SOPInstanceUID": "1.2.3.4"}, provenance, mode="pacs")
    with pytest.raises(export.ExportError, match="mode"):
        export.secondary_captures({"gradcam": panel}, source, provenance, mode="anon")  # type: ignore[arg-type]


# ------------------------------------------------ sources real files have: odd values, no preamble
def test_sc_for_our_pacs_leaves_a_value_that_breaks_its_vr_empty(dicom_dir, provenance, panel, recwarn):
    """A real DX file whose PatientBirthDate (a DA) is a hash: the capture is written, the date left empty,
    every valid Patient/Study value still copied; highdicom's name warnings (which quote the name) silenced."""
    data = (dicom_dir / "canon_dx_pa_mono1_inverse_j2k_lossless.dcm").read_bytes()
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    with pytest.raises(ValueError):
        pydicom.valuerep.DA(header.PatientBirthDate)  # the reason: not a date
    (sc,) = export.secondary_captures({"gradcam": panel}, data, provenance, mode="pacs")
    ds = _read_sc(sc)
    assert ds.PatientBirthDate == "" and ds.StudyInstanceUID == header.StudyInstanceUID
    assert str(ds.PatientName) == str(header.PatientName) and ds.PatientID == header.PatientID
    assert ds.BodyPartExamined == "CHEST" and "Laterality" not in ds
    assert not [w for w in recwarn.list if str(header.PatientName) in str(w.message)]


def test_sc_from_a_file_without_preamble_matches_the_one_with_it(provenance, panel, source_bytes):
    assert source_bytes[128:132] == b"DICM"
    bare = source_bytes[132:]
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(io.BytesIO(bare))  # what made the export fail: no preamble, no "DICM"
    (sc,) = export.secondary_captures({"gradcam": panel}, bare, provenance, mode="pacs")
    ds = _read_sc(sc)
    full = pydicom.dcmread(io.BytesIO(source_bytes))
    assert ds.StudyInstanceUID == full.StudyInstanceUID and ds.PatientID == full.PatientID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == full.SOPInstanceUID


def test_one_result_study_files_several_exports_together(provenance, panel, source_bytes, source):
    study = export.result_study(source_bytes, "deidentified")
    a = _read_sc(export.secondary_captures({"gradcam": panel}, source_bytes, provenance, mode="deidentified",
                                           study=study)[0])
    b = _read_sc(export.secondary_captures({"gradcam": panel}, source_bytes, provenance, mode="deidentified",
                                           study=study)[0])
    assert a.StudyInstanceUID == b.StudyInstanceUID == study.study_instance_uid != source.StudyInstanceUID
    assert a.PatientID == b.PatientID and a.SeriesInstanceUID != b.SeriesInstanceUID
    with pytest.raises(export.ExportError, match="mode"):
        export.secondary_captures({"gradcam": panel}, source_bytes, provenance, mode="pacs", study=study)
