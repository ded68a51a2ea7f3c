"""xai.pacs and the command line's ``--pacs/--study/--send`` against a REAL Orthanc with its DICOMweb plugin.

Each Orthanc is a throw-away process (``tests/pacs_server.py``: configuration and storage in a temporary folder,
loopback only, free ports), killed at teardown. Results are read back with Orthanc's own REST API or plain
WADO-RS and parsed with highdicom, independently of the code under test. The failures a hospital network has
are real too: a stopped Orthanc (down), Orthanc with basic authentication (401), a full Orthanc that refuses a
new patient (STOW refused), a 500-instance study, a structured report among the films (not an image), and a
tiny local HTTP server that answers late (timeout) or with 403.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom
import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests.pacs_server import OrthancServer
from xai import dicom_results, export, pacs
from xai.cli import main
from xai.radiograph import load_radiograph

REPO = Path(__file__).resolve().parents[1]
FILM = REPO / "samples" / "cr_pa_siim.dcm"
# Unique strings in every identifying attribute of the source: none may appear in a de-identified output.
CANARY = {
    "PatientName": "Canaryqx^Wilhelmina",
    "PatientID": "CANARY-PID-77316",
    "PatientBirthDate": "19380227",
    "PatientAddress": "Canaryqx Lane 5",
    "OtherPatientIDs": "CANARY-OPID-4417",
    "InstitutionName": "Canaryqx Memorial Institute",
    "ReferringPhysicianName": "Canaryref^Plokta",
    "AccessionNumber": "CANACC44178",
    "StudyID": "CSTID8812",
    "StudyDescription": "Canaryqx chest study",
    "StudyDate": "20200412",
}


def _film(**attributes: str) -> tuple[bytes, pydicom.Dataset]:
    """The real SIIM film with new study/series/instance UIDs (a distinct study) and the given attributes."""
    ds = pydicom.dcmread(FILM)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for key, value in attributes.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def client(orthanc: OrthancServer) -> Iterator[pacs.PacsClient]:
    with pacs.PacsClient(pacs.PacsConfig(orthanc.dicomweb_url, timeout_s=20)) as c:
        yield c


def _orthanc_series(server: OrthancServer, study_uid: str) -> dict[str, list[bytes]]:
    """{SeriesDescription: [file bytes]} of a study, read with Orthanc's REST API (not the code under test)."""
    found = requests.post(f"{server.base}/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}},
                          timeout=30).json()
    out: dict[str, list[bytes]] = {}
    for study in found:
        for series in requests.get(f"{server.base}/studies/{study}/series", timeout=30).json():
            name = series["MainDicomTags"].get("SeriesDescription", "")
            out[name] = [requests.get(f"{server.base}/instances/{i}/file", timeout=30).content
                         for i in series["Instances"]]
    return out


def _all_files(server: OrthancServer) -> list[bytes]:
    return [requests.get(f"{server.base}/instances/{i}/file", timeout=30).content
            for i in requests.get(f"{server.base}/instances", timeout=30).json()]


# ------------------------------------------------------------------------------------------ configuration
def test_config_from_environment_and_secrets_never_shows_credentials(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[pacs]\nurl = "https://pacs.example.org/dicom-web"\nusername = "reader"\n'
                       'password = "s3cret-Canary-pw"\n')
    config = pacs.pacs_config(env={}, secrets_path=secrets)
    assert config is not None and config.url == "https://pacs.example.org/dicom-web"
    assert (config.username, config.password, config.auth_kind) == ("reader", "s3cret-Canary-pw", "basic")
    assert "s3cret" not in repr(config) and "s3cret" not in repr(pacs.PacsClient(config))
    env = {"XAI_PACS_URL": "http://127.0.0.1:1/dicom-web", "XAI_PACS_TOKEN": "tok-Canary-9", "XAI_PACS_TIMEOUT": "2"}
    from_env = pacs.pacs_config(env=env, secrets_path=secrets)
    assert from_env.url == env["XAI_PACS_URL"] and from_env.token == "tok-Canary-9" and from_env.timeout_s == 2
    assert from_env.auth_kind == "bearer token" and "tok-Canary" not in repr(from_env)
    assert pacs.pacs_config(env={}, secrets_path=tmp_path / "none.toml") is None
    with pytest.raises(pacs.PacsError, match="not in the URL") as caught:
        pacs.PacsConfig("https://reader:s3cret-Canary-pw@pacs.example.org/dicom-web")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(pacs.PacsError, match="http"):
        pacs.PacsConfig("ftp://pacs.example.org")


# -------------------------------------------------------------------------------------------- search, open
def test_search_finds_the_film_and_opens_it_like_an_upload(orthanc, client):
    data, ds = _film(AccessionNumber="ACC-SEARCH-1", PatientID="PID-SEARCH-1", StudyDate="20210305")
    orthanc.upload(data)
    by_accession = client.search_studies(accession_number="ACC-SEARCH-1")
    assert [s.study_uid for s in by_accession.items] == [ds.StudyInstanceUID]
    assert "PID-SEARCH-1" not in repr(by_accession.items[0])  # patient attributes stay out of repr
    assert by_accession.items[0].patient_id == "PID-SEARCH-1" and by_accession.items[0].modalities == ("CR",)
    assert [s.study_uid for s in client.search_studies(patient_id="PID-SEARCH-1").items] == [ds.StudyInstanceUID]
    in_range = client.search_studies(date_from="2021-03-01", date_to="2021-03-31", accession_number="ACC-SEARCH-1")
    assert len(in_range.items) == 1
    assert not client.search_studies(date_from="2021-04-01", accession_number="ACC-SEARCH-1").items
    assert not client.search_studies(modalities=("DX",), accession_number="ACC-SEARCH-1").items
    (series,) = client.series(ds.StudyInstanceUID)
    assert series.series_uid == ds.SeriesInstanceUID and series.modality == "CR"
    (instance,) = client.instances(ds.StudyInstanceUID).items
    assert instance.sop_uid == ds.SOPInstanceUID and instance.is_image
    opened = client.retrieve(instance)
    from_pacs, uploaded = load_radiograph(opened), load_radiograph(data)
    np.testing.assert_array_equal(from_pacs.pixels, uploaded.pixels)  # the same film, same loader
    thumb = client.thumbnail(instance, side=128)
    from PIL import Image

    image = Image.open(io.BytesIO(thumb))
    assert image.format == "JPEG" and max(image.size) == 128


def test_a_non_image_instance_is_skipped_with_a_message(orthanc, client, tmp_path):
    data, ds = _film()
    orthanc.upload(data)
    study = export.result_study(data, "pacs")
    provenance = export.Provenance("chestcovnet", "ab" * 32, "gradcam", "covid19", "features")
    findings = dicom_results.Findings({"covid19": 0.7, "normal": 0.3}, "covid19", 0.5, "1.0")
    orthanc.upload(dicom_results.structured_report(findings, study, provenance, film_shape=(1024, 1024)))
    items = list(client.iter_instances(ds.StudyInstanceUID))
    assert sorted(i.is_image for i in items) == [False, True]
    report = next(i for i in items if not i.is_image)
    with pytest.raises(pacs.NotAnImageError, match="not an image"):
        client.retrieve(report)
    messages: list[str] = []
    files = pacs.download_studies(client, [ds.StudyInstanceUID], tmp_path / "films", warn=messages.append)
    assert len(files) == 1 and files[0].read_bytes() and load_radiograph(files[0].read_bytes()).format == "dicom"
    assert len(messages) == 1 and "not an image: skipped" in messages[0] and "Comprehensive 3D SR" in messages[0]


def test_a_study_with_500_instances_is_listed_page_by_page(orthanc, client):
    study_uid, series_uid = generate_uid(), generate_uid()
    base = pydicom.dcmread(FILM)
    with requests.Session() as http:
        for n in range(1, 501):
            ds = base.copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study_uid, series_uid, n
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
            ds.Rows = ds.Columns = 8
            ds.PixelData = np.full((8, 8), n % 256, dtype=np.uint8).tobytes()
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            http.post(f"{orthanc.base}/instances", data=buffer.getvalue(), timeout=30).raise_for_status()
    first = client.instances(study_uid, limit=100)
    assert len(first.items) == 100 and first.more
    last = client.instances(study_uid, limit=100, offset=400)
    assert len(last.items) == 100 and not last.more
    every = list(client.iter_instances(study_uid, page_size=100))
    assert len({i.sop_uid for i in every}) == 500
    assert len(list(client.iter_instances(study_uid, max_instances=30))) == 30
    (study,) = [s for s in client.search_studies(modalities=(), limit=1000).items if s.study_uid == study_uid]
    assert study.n_instances == 500


# ------------------------------------------------------------------------------- round trip with the CLI
def _explain_from_pacs(url: str, studies: list[str], out: Path, *extra: str) -> tuple[int, str]:
    err = io.StringIO()
    argv = ["explain", "--pacs", url, "--out", str(out), "--methods", "gradcam,gradcam++", "--no-progress",
            "--no-isolation"]
    for uid in studies:
        argv += ["--study", uid]
    code = main([*argv, *extra], stdout=io.StringIO(), stderr=err)
    return code, err.getvalue()


def test_round_trip_explain_from_the_pacs_and_send_the_results_to_the_study(orthanc, tmp_path):
    data, ds = _film(PatientID="PID-ROUND-1", AccessionNumber="ACC-ROUND-1")
    orthanc.upload(data)
    code, err = _explain_from_pacs(orthanc.dicomweb_url, [ds.StudyInstanceUID], tmp_path / "out", "--send", "sc,sr,pm")
    assert code == 0, err
    series = _orthanc_series(orthanc, ds.StudyInstanceUID)  # all filed in the film's own study
    assert set(series) == {str(ds.SeriesDescription), export.APP_NAME + " saliency (not for diagnosis)",
                           dicom_results.SR_SERIES_DESCRIPTION, dicom_results.PM_SERIES_DESCRIPTION}
    captures = [pydicom.dcmread(io.BytesIO(b)) for b in series[export.APP_NAME + " saliency (not for diagnosis)"]]
    assert sorted(c.InstanceNumber for c in captures) == [1, 2]
    for sc in captures:
        assert sc.StudyInstanceUID == ds.StudyInstanceUID and sc.PatientID == "PID-ROUND-1"
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert sc.Columns == ds.Columns  # the film's resolution
    (sr_bytes,) = series[dicom_results.SR_SERIES_DESCRIPTION]
    sr = highdicom.sr.srread(io.BytesIO(sr_bytes))
    assert sr.StudyInstanceUID == ds.StudyInstanceUID
    groups = sr.content.get_image_measurement_groups()
    assert all(g.source_images[0].referenced_sop_instance_uid == ds.SOPInstanceUID for g in groups)
    card = json.loads((REPO / "models" / "bundles" / "chestcovnet" / "card.json").read_text())
    assert {m.name.meaning for m in groups[0].get_measurements()} == {f"Probability of {c}" for c in card["class_names"]}
    maps = [highdicom.pm.ParametricMap.from_dataset(pydicom.dcmread(io.BytesIO(b)))
            for b in series[dicom_results.PM_SERIES_DESCRIPTION]]
    assert len(maps) == 2
    for pm in maps:
        ref = pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert pm.pixel_array.shape == (ds.Rows, ds.Columns)
    # The maps sent are the maps written locally by the same run.
    (folder,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    local = {np.load(folder / f"{m}.npy").astype(np.float32).tobytes() for m in ("gradcam", "gradcam++")}
    assert {pm.pixel_array.astype(np.float32).tobytes() for pm in maps} == local
    assert sorted(p.name for p in (folder / "dicom").iterdir()) == ["pm1.dcm", "pm2.dcm", "sc1.dcm", "sc2.dcm", "sr1.dcm"]
    # The report's evidence by region is the anatomical readout the same run wrote to result.json.
    anatomy = json.loads((folder / "result.json").read_text())["anatomy"]
    assert [g.tracking_identifier for g in groups[1:]] == ["Grad-CAM evidence by region",
                                                           "Grad-CAM++ evidence by region"]
    for group, method in zip(groups[1:], ("gradcam", "gradcam++"), strict=True):
        sent_shares = {m.finding_sites[0].value.meaning: m.value for m in group.get_measurements()}
        written = {region: share for region, share in anatomy[method].items() if share is not None}
        assert sent_shares == pytest.approx(written) and sum(written.values()) == pytest.approx(1.0, abs=1e-3)


def test_deidentified_results_carry_no_source_identifier_or_uid(orthanc, tmp_path):
    """PHI canary: unique strings in every identifying attribute of the source; every byte of every object
    the run sent (read back from the PACS) and wrote (its local DICOM copies) is searched for them and for
    the source's UIDs."""
    data, ds = _film(**CANARY)
    before = set(requests.get(f"{orthanc.base}/instances", timeout=30).json())
    orthanc.upload(data)
    code, err = _explain_from_pacs(orthanc.dicomweb_url, [ds.StudyInstanceUID], tmp_path / "out", "--send",
                                   "sc,sr,pm", "--send-mode", "deidentified")
    assert code == 0, err
    new = set(requests.get(f"{orthanc.base}/instances", timeout=30).json()) - before
    sent = [requests.get(f"{orthanc.base}/instances/{i}/file", timeout=30).content for i in new]
    sent = [b for b in sent if pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID != ds.SOPInstanceUID]
    assert len(sent) == 5  # 2 captures, 1 report, 2 maps
    local = [p.read_bytes() for p in (tmp_path / "out").rglob("*.dcm")]
    assert len(local) == 5
    needles = [v.encode() for v in CANARY.values()] + [v.split("^")[0].encode() for v in CANARY.values()]
    needles += [str(ds[k].value).encode() for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    for blob in sent + local:
        found = [n for n in needles if n in blob]
        assert not found, f"an output carries {found}"
        out = pydicom.dcmread(io.BytesIO(blob))
        assert out.PatientIdentityRemoved == "YES" and out.StudyInstanceUID != ds.StudyInstanceUID
    assert len({pydicom.dcmread(io.BytesIO(b)).StudyInstanceUID for b in sent}) == 1  # one new study
    # Positive control: the same search finds the canaries in the source.
    assert all(v.encode() in data for v in CANARY.values())
    assert not [line for line in err.splitlines() if any(v in line for v in CANARY.values())]


# ------------------------------------------------------------------------------------------------ failures
def test_a_stopped_pacs_gives_a_clear_message(tmp_path):
    server = OrthancServer(tmp_path / "gone").start()
    url = server.dicomweb_url
    server.stop()
    with pacs.PacsClient(pacs.PacsConfig(url, timeout_s=5)) as down, \
            pytest.raises(pacs.PacsUnavailableError, match="no PACS answers at http://127.0.0.1"):
        down.search_studies()
    code, err = _explain_from_pacs(url, ["1.2.3"], tmp_path / "out")
    assert code == 2 and "no PACS answers" in err and "Traceback" not in err


def test_wrong_credentials_get_a_401_message_and_right_ones_work(tmp_path):
    with OrthancServer(tmp_path / "auth", users={"reader": "Right-pw-4417"}) as server:
        data, ds = _film()
        server.upload(data)
        wrong = pacs.PacsConfig(server.dicomweb_url, username="reader", password="Wrong-pw-9931", timeout_s=5)
        with pacs.PacsClient(wrong) as c, pytest.raises(pacs.PacsAuthError, match="HTTP 401") as caught:
            c.search_studies()
        assert "Wrong-pw" not in str(caught.value) and "Right-pw" not in str(caught.value)
        right = pacs.PacsConfig(server.dicomweb_url, username="reader", password="Right-pw-4417", timeout_s=5)
        with pacs.PacsClient(right) as c:
            assert ds.StudyInstanceUID in {s.study_uid for s in c.search_studies().items}


class _Slow(http.server.BaseHTTPRequestHandler):
    delay_s = 5.0
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        time.sleep(self.delay_s)
        body = b"[]"
        self.send_response(self.status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def http_server(request) -> Iterator[str]:
    handler = type("Handler", (_Slow,), dict(request.param))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("http_server", [{"delay_s": 5.0}], indirect=True)
def test_a_slow_pacs_times_out_instead_of_hanging(http_server):
    with pacs.PacsClient(pacs.PacsConfig(http_server, timeout_s=0.5)) as slow:
        start = time.monotonic()
        with pytest.raises(pacs.PacsTimeoutError, match=r"did not answer within 0.5 s"):
            slow.search_studies()
        assert time.monotonic() - start < 5.0  # gave up before the server would have answered


@pytest.mark.parametrize("http_server", [{"delay_s": 0.0, "status": 403}], indirect=True)
def test_a_forbidden_answer_gets_a_403_message(http_server):
    with pacs.PacsClient(pacs.PacsConfig(http_server, timeout_s=5)) as c, \
            pytest.raises(pacs.PacsAuthError, match="HTTP 403"):
        c.search_studies()


def test_a_refused_stow_keeps_the_results_locally(tmp_path):
    """A full Orthanc (one patient allowed, that one protected) refuses the de-identified results (a new
    patient): the run says so, exits 1, and the objects stay in the output folder, valid."""
    with OrthancServer(tmp_path / "full", settings={"MaximumPatientCount": 1}) as server:
        data, ds = _film()
        server.upload(data)
        server.protect_all_patients()
        code, err = _explain_from_pacs(server.dicomweb_url, [ds.StudyInstanceUID], tmp_path / "out", "--send",
                                       "sr,pm", "--send-mode", "deidentified")
        assert code == 1 and "results not sent" in err and "refused" in err and "kept in" in err
        assert len(_all_files(server)) == 1  # only the film: nothing was stored
    kept = sorted((tmp_path / "out").rglob("*.dcm"))
    assert [p.name for p in kept] == ["pm1.dcm", "pm2.dcm", "sr1.dcm"]
    assert isinstance(highdicom.sr.srread(kept[-1]), highdicom.sr.Comprehensive3DSR)


def test_report_reads_a_study_from_the_pacs(orthanc, tmp_path):
    data, ds = _film()
    orthanc.upload(data)
    err = io.StringIO()
    code = main(["report", "--pacs", orthanc.dicomweb_url, "--study", ds.StudyInstanceUID, "--out",
                 str(tmp_path / "report"), "--methods", "gradcam", "--no-progress", "--no-isolation"],
                stdout=io.StringIO(), stderr=err)
    assert code == 0, err.getvalue()
    import csv

    with (tmp_path / "report" / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["file"] == "pacs/study1_0001.dcm" and rows[0]["status"] == "ok"
    written = (tmp_path / "report" / "report.csv").read_text()
    assert ds.StudyInstanceUID not in written and "xai-pacs-" not in written  # no temporary path either


def test_report_sends_each_films_results_to_its_study(orthanc, tmp_path):
    """``report --send``: the batch report's films get their DICOM results too, filed in each film's own study;
    the structured report carries the report's anatomical readout of the film."""
    data, ds = _film(PatientID="PID-REPORT-1", AccessionNumber="ACC-REPORT-1")
    orthanc.upload(data)
    err = io.StringIO()
    code = main(["report", "--pacs", orthanc.dicomweb_url, "--study", ds.StudyInstanceUID, "--out",
                 str(tmp_path / "report"), "--methods", "gradcam", "--no-progress", "--no-isolation",
                 "--send", "sc,sr"], stdout=io.StringIO(), stderr=err)
    assert code == 0, err.getvalue()
    series = _orthanc_series(orthanc, ds.StudyInstanceUID)
    assert set(series) == {str(ds.SeriesDescription), export.APP_NAME + " saliency (not for diagnosis)",
                           dicom_results.SR_SERIES_DESCRIPTION}
    (sc_bytes,) = series[export.APP_NAME + " saliency (not for diagnosis)"]
    sc = pydicom.dcmread(io.BytesIO(sc_bytes))
    assert sc.StudyInstanceUID == ds.StudyInstanceUID and sc.PatientID == "PID-REPORT-1"
    (sr_bytes,) = series[dicom_results.SR_SERIES_DESCRIPTION]
    sr = highdicom.sr.srread(io.BytesIO(sr_bytes))
    assert sr.StudyInstanceUID == ds.StudyInstanceUID
    groups = sr.content.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups[1:]] == ["Grad-CAM evidence by region"]
    folder = tmp_path / "report" / "study1_0001"
    anatomy = json.loads((folder / "row.json").read_text())["row"]["anatomy"]["gradcam"]  # what the report wrote
    sent_shares = {m.finding_sites[0].value.meaning: m.value for m in groups[1].get_measurements()}
    written = {region: share for region, share in anatomy.items() if share is not None}
    assert sent_shares == pytest.approx(written) and sum(written.values()) == pytest.approx(1.0, abs=1e-3)
    assert sorted(p.name for p in (folder / "dicom").iterdir()) == ["sc1.dcm", "sr1.dcm"]  # kept locally too
    # Ray keeps the films' results in its workers: refused before any work.
    err = io.StringIO()
    code = main(["report", "--pacs", orthanc.dicomweb_url, "--study", ds.StudyInstanceUID, "--out",
                 str(tmp_path / "ray"), "--engine", "ray", "--send", "sc", "--no-progress"],
                stdout=io.StringIO(), stderr=err)
    assert code == 2 and "--engine local" in err.getvalue()
