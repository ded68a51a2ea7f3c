"""Every DICOM object the project writes passes David Clunie's validator (``dciodvfy -new``) with no error.

Sources: every DICOM file in ``../shared/data/dicom`` and ``samples/``, plus a real file with its 128-byte
preamble and "DICM" prefix stripped (which the app loads and explains). Objects: the Secondary Captures
(``xai.export``), the TID 1500 structured report and the parametric maps (``xai.dicom_results``), in both
modes (filed with the source's study, and de-identified). Each is also read back by pydicom and parsed by
highdicom as its own SOP class. The warnings that stay are listed in README.md with their reasons.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import highdicom
import numpy as np
import pydicom
import pytest

from xai import dicom_results, export, render
from xai.radiograph import load_radiograph

REPO = Path(__file__).resolve().parents[1]
MODES = ("pacs", "deidentified")


def _sources(dicom_dir: Path, tmp: Path) -> dict[str, Path]:
    files = {p.name: p for p in [*sorted(dicom_dir.glob("*.dcm")), *sorted((REPO / "samples").glob("*.dcm"))]}
    real = (REPO / "samples" / "cr_pa_siim.dcm").read_bytes()
    assert real[128:132] == b"DICM"
    bare = tmp / "no_preamble.dcm"
    bare.write_bytes(real[132:])  # the data set alone: no preamble, no "DICM", no file meta
    files[bare.name] = bare
    assert len(files) >= 5
    return files


def dciodvfy(data: bytes, tmp: Path, name: str) -> list[str]:
    """The validator's ``Error -`` and ``Warning -`` lines for one object."""
    path = tmp / name
    path.write_bytes(data)
    run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, errors="replace", timeout=300)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error -", "Warning -"))]


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("Error -")]


@pytest.fixture(scope="module")
def validator() -> str:
    path = shutil.which("dciodvfy")
    assert path, "dciodvfy missing: `make dicom3tools` installs it (Debian package dicom3tools)"
    return path


@pytest.fixture(scope="module")
def provenance() -> export.Provenance:
    return export.Provenance(model_name="chestcovnet", model_sha256="5e" * 32, method="gradcam",
                             target_class="covid19", target_layer="features.denseblock4",
                             settings={"colormap": "inferno"}, created=datetime(2026, 12, 1, 9, 30, tzinfo=UTC))


@pytest.fixture(scope="module")
def films(dicom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, np.ndarray]]:
    """name -> (file bytes, the film's display pixels as the app loads them)."""
    tmp = tmp_path_factory.mktemp("sources")
    return {name: (path.read_bytes(), load_radiograph(path.read_bytes()).pixels)
            for name, path in _sources(dicom_dir, tmp).items()}


def test_the_validator_finds_an_error_it_should(validator, films, provenance, tmp_path):
    """Positive control: the same check flags a capture with a Type 1 attribute removed."""
    data, pixels = films["cr_pa_siim.dcm"]
    (sc,) = export.secondary_captures({"gradcam": render.overlay(pixels[::8, ::8], pixels[::8, ::8])}, data,
                                      provenance, mode="pacs")
    ds = pydicom.dcmread(io.BytesIO(sc))
    del ds.ConversionType
    broken = io.BytesIO()
    ds.save_as(broken, enforce_file_format=True)
    assert any("ConversionType" in line for line in errors(dciodvfy(broken.getvalue(), tmp_path, "broken.dcm")))


@pytest.mark.parametrize("mode", MODES)
def test_secondary_captures_validate_from_every_source(validator, films, provenance, tmp_path, mode):
    for name, (data, pixels) in films.items():
        small = pixels[::4, ::4]  # the IOD does not depend on the size; keeps the validator quick
        files = export.secondary_captures({"gradcam": render.overlay(small, small)}, data, provenance, mode=mode)
        for i, sc in enumerate(files):
            found = dciodvfy(sc, tmp_path, f"{name}.{mode}.sc{i}.dcm")
            assert not errors(found), f"{name} ({mode}): {errors(found)}"
            image = highdicom.Image.from_dataset(pydicom.dcmread(io.BytesIO(sc)), copy=False)
            assert image.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage


# ------------------------------------------------------------------ structured report and parametric maps
REGIONS = {"right lower zone": 0.375, "left lower zone": 0.25, "heart and mediastinum": 0.125,
           "film border": float("nan")}


def _findings(ood: bool | None = True) -> dicom_results.Findings:
    return dicom_results.Findings(
        probabilities={"covid19": 0.8125, "normal": 0.1875}, positive_class="covid19", threshold=0.42,
        model_version="3.1.0", ood_warning=ood, ood_text="outside the training data",
        evidence_by_region={"gradcam": REGIONS, "guided_backprop": {"right lower zone": 0.5}})


def _map(pixels: np.ndarray) -> np.ndarray:
    """A map on the film's grid made from the film itself (a real, uneven field), scaled to max 1."""
    heat = np.asarray(pixels, dtype=np.float32) ** 2
    return heat / heat.max()


@pytest.mark.parametrize("mode", MODES)
def test_structured_reports_and_parametric_maps_validate_from_every_source(validator, films, provenance,
                                                                           tmp_path, mode):
    for name, (data, pixels) in films.items():
        study = export.result_study(data, mode)
        sr = dicom_results.structured_report(_findings(), study, provenance, film_shape=pixels.shape)
        found = dciodvfy(sr, tmp_path, f"{name}.{mode}.sr.dcm")
        assert not errors(found), f"SR from {name} ({mode}): {errors(found)}"
        assert isinstance(highdicom.sr.srread(io.BytesIO(sr)), highdicom.sr.Comprehensive3DSR)
        heat = _map(pixels)
        (pm,) = dicom_results.parametric_maps({"gradcam": heat}, study, provenance)
        found = dciodvfy(pm, tmp_path, f"{name}.{mode}.pm.dcm")
        assert not errors(found), f"PM from {name} ({mode}): {errors(found)}"
        parsed = highdicom.pm.ParametricMap.from_dataset(pydicom.dcmread(io.BytesIO(pm)))
        assert parsed.pixel_array.shape == pixels.shape  # the film's own grid
        np.testing.assert_array_equal(parsed.pixel_array, heat)  # float32 values, unchanged


def _text_items(items) -> list[tuple[str, str]]:
    """(concept name, text/code/number) of every content item, depth first: read with pydicom only."""
    out: list[tuple[str, str]] = []
    for item in items:
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if "TextValue" in item:
            out.append((name, item.TextValue))
        elif "ConceptCodeSequence" in item:
            out.append((name, item.ConceptCodeSequence[0].CodeMeaning))
        elif "MeasuredValueSequence" in item:
            out.append((name, str(item.MeasuredValueSequence[0].NumericValue)))
        out += _text_items(item.get("ContentSequence", []))
    return out


@pytest.mark.parametrize("ood", [True, False, None])
def test_structured_report_states_model_probabilities_decision_ood_and_regions(films, provenance, ood):
    data, pixels = films["cr_pa_siim.dcm"]
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    study = export.result_study(data, "pacs")
    sr = highdicom.sr.srread(io.BytesIO(dicom_results.structured_report(_findings(ood), study, provenance,
                                                                         film_shape=pixels.shape)))
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesDescription == dicom_results.SR_SERIES_DESCRIPTION
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 3  # the classification, then one per method with regions
    for group in groups:  # every group references the film
        assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
    classification = groups[0]
    assert {m.name.meaning: m.value for m in classification.get_measurements()} == {
        "Probability of covid19": pytest.approx(0.8125), "Probability of normal": pytest.approx(0.1875)}
    evaluations = {q.name.meaning: q.value.meaning for q in classification.get_qualitative_evaluations()}
    assert evaluations["Disease caused by SARS-CoV-2"] == "Present"  # 0.8125 >= threshold 0.42
    ood_name = "Input outside the model's training distribution"
    assert evaluations.get(ood_name) == {True: "Present", False: "Absent", None: None}[ood]
    items = _text_items(sr.ContentSequence)
    assert ("Algorithm Name", "chestcovnet") in items and ("Algorithm Version", "3.1.0") in items
    assert ("Algorithm Parameters", f"sha256 {provenance.model_sha256}") in items
    assert ("Algorithm Parameters", "threshold 0.42 on P(covid19)") in items
    gradcam = groups[1]
    assert gradcam.tracking_identifier == "Grad-CAM evidence by region"
    shares = {m.finding_sites[0].value.meaning: m.value for m in gradcam.get_measurements()}
    assert shares == {k: pytest.approx(v) for k, v in REGIONS.items() if np.isfinite(v)}  # nan left out
    assert ("Algorithm Parameters", "method Guided Backprop") in _text_items(groups[2])


def test_structured_report_decision_follows_the_threshold(films, provenance):
    data, pixels = films["cr_pa_siim.dcm"]
    study = export.result_study(data, "pacs")
    below = dicom_results.Findings({"covid19": 0.41, "normal": 0.59}, "covid19", 0.42, "3.1.0")
    sr = highdicom.sr.srread(io.BytesIO(dicom_results.structured_report(below, study, provenance,
                                                                         film_shape=pixels.shape)))
    (group,) = sr.content.get_image_measurement_groups()
    assert {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()} == {
        "Disease caused by SARS-CoV-2": "Absent"}
    with pytest.raises(export.ExportError, match="positive class"):
        dicom_results.Findings({"normal": 1.0}, "covid19", 0.5, "1")


def test_deidentified_report_and_maps_share_one_new_study_and_carry_no_source_uid(films, provenance):
    data, pixels = films["cr_pa_siim.dcm"]
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    study = export.result_study(data, "deidentified")
    sr = dicom_results.structured_report(_findings(), study, provenance, film_shape=pixels.shape)
    (pm,) = dicom_results.parametric_maps({"gradcam": _map(pixels)}, study, provenance)
    (sc,) = export.secondary_captures({"gradcam": render.overlay(pixels[::4, ::4], pixels[::4, ::4])}, data,
                                      provenance, mode="deidentified", study=study)
    source_uids = [str(source[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    for blob in (sr, pm, sc):
        ds = pydicom.dcmread(io.BytesIO(blob))
        assert ds.StudyInstanceUID == study.study_instance_uid and ds.PatientID == study.patient_and_study["PatientID"]
        assert ds.PatientIdentityRemoved == "YES"
        assert not any(uid.encode() in blob for uid in source_uids)
    # The report and the maps reference the same (pseudonymous) film.
    report = highdicom.sr.srread(io.BytesIO(sr))
    parsed = highdicom.pm.ParametricMap.from_dataset(pydicom.dcmread(io.BytesIO(pm)))
    ref = parsed.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == study.source_sop_instance_uid
    assert report.content.get_image_measurement_groups()[0].source_images[0].referenced_sop_instance_uid == \
        study.source_sop_instance_uid
