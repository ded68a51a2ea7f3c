"""The Explain page with a PACS configured (``XAI_PACS_URL``): "From PACS" opens a film from a REAL Orthanc
through the upload loader, "Send to PACS" stores the results there (read back with Orthanc's REST API and
parsed with highdicom). Without ``XAI_PACS_URL`` nothing of it is drawn."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import highdicom
import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid
from streamlit.testing.v1 import AppTest

from tests.pacs_server import OrthancServer
from xai import dicom_results
from xai.export import METHOD_TITLES
from xai.radiograph import load_radiograph

APP = Path(__file__).resolve().parents[1] / "app.py"
FILM = Path(__file__).resolve().parents[1] / "samples" / "cr_pa_siim.dcm"
TIMEOUT = 300


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("orthanc-page")) as server:
        yield server


def test_without_a_pacs_the_page_draws_no_pacs_widget(monkeypatch):
    monkeypatch.delenv("XAI_PACS_URL", raising=False)
    at = run(AppTest.from_file(str(APP), default_timeout=TIMEOUT))
    assert not [w for w in at.text_input if w.key == "pacs_accession"]


def test_open_a_film_from_the_pacs_and_send_the_results_back(orthanc, monkeypatch):
    ds = pydicom.dcmread(FILM)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.AccessionNumber = "ACC-PAGE-7"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    orthanc.upload(buffer.getvalue())
    monkeypatch.setenv("XAI_PACS_URL", orthanc.dicomweb_url)

    at = run(AppTest.from_file(str(APP), default_timeout=TIMEOUT))
    assert not [w for w in at.text_input if w.key == "pacs_patient_id"]  # asked only with patient details on
    at.text_input(key="pacs_accession").set_value("ACC-PAGE-7")
    at.button(key="pacs_search").click()
    run(at)
    assert len(at.selectbox(key="pacs_study").options) == 1
    at.button(key="pacs_open").click()
    run(at)
    image = at.session_state["image"]
    assert image.label == "PACS image 1" and image.source == "upload"
    np.testing.assert_array_equal(image.radiograph.pixels, load_radiograph(buffer.getvalue()).pixels)

    before = set(requests.get(f"{orthanc.base}/instances", timeout=30).json())
    at.multiselect(key="pacs_send_kinds").set_value(["sr", "pm"])
    at.button(key="pacs_send").click()
    run(at)
    assert any("Sent" in s.value for s in at.success), [e.value for e in at.error]
    new = set(requests.get(f"{orthanc.base}/instances", timeout=30).json()) - before
    sent = [pydicom.dcmread(io.BytesIO(requests.get(f"{orthanc.base}/instances/{i}/file", timeout=30).content))
            for i in new]
    reports = [d for d in sent if d.SeriesDescription == dicom_results.SR_SERIES_DESCRIPTION]
    maps = [d for d in sent if d.SeriesDescription == dicom_results.PM_SERIES_DESCRIPTION]
    assert len(reports) == 1 and len(maps) == len(sent) - 1 >= 1
    report = highdicom.sr.Comprehensive3DSR.from_dataset(reports[0])
    groups = report.content.get_image_measurement_groups()
    # The classification with the page's OOD verdict, then one group of regions per method shown.
    evaluations = {q.name.meaning for q in groups[0].get_qualitative_evaluations()}
    assert "Input outside the model's training distribution" in evaluations
    assert [g.tracking_identifier for g in groups[1:]] == [f"{t} evidence by region" for t in METHOD_TITLES.values()]
    for obj in sent:  # de-identified by default: a new study, no source UID
        assert obj.StudyInstanceUID != ds.StudyInstanceUID and obj.PatientIdentityRemoved == "YES"
    parsed = highdicom.pm.ParametricMap.from_dataset(maps[0])
    assert parsed.pixel_array.shape == (ds.Rows, ds.Columns)


def test_review_session_from_accession_numbers(orthanc, monkeypatch, tmp_path):
    from xai.review import ReviewStore

    url = f"sqlite:///{tmp_path / 'review.sqlite3'}"
    monkeypatch.setenv("XAI_DB_URL", url)
    monkeypatch.setenv("XAI_PACS_URL", orthanc.dicomweb_url)
    for accession in ("ACC-REV-1", "ACC-REV-2"):
        ds = pydicom.dcmread(FILM)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.AccessionNumber = accession
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        orthanc.upload(buffer.getvalue())
    at = run(AppTest.from_file(str(APP), default_timeout=TIMEOUT))
    run(at.switch_page("pages/review.py"))
    at.text_input(key="review_reader_name").input("olga")
    run(at)
    at.text_input(key="review_new_name").input("from the PACS")
    at.text_area(key="review_new_accessions").input("ACC-REV-1\nACC-REV-2\n")
    at.button(key="review_create").click()
    run(at)
    (session,) = ReviewStore(url).sessions()
    assert (session.name, session.n_cases) == ("from the PACS", 2)
    at.text_input(key="review_new_name").input("unknown accession")
    at.text_area(key="review_new_accessions").input("ACC-NOPE-9")
    at.button(key="review_create").click()
    run(at)
    assert any("ACC-NOPE-9" in e.value and "not created" in e.value for e in at.error), [e.value for e in at.error]
    assert len(ReviewStore(url).sessions()) == 1
