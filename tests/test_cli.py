"""The command line: ``python -m xai explain`` and ``python -m xai report`` on real radiographs."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from test_pipeline import make_bundle  # the tiny seeded bundle built with the models helpers

from xai.cli import main

METHODS = ("gradcam", "gradcam++", "guided_backprop", "guided_gradcam")
RESULT_KEYS = {"file", "probabilities", "predicted", "target", "model", "target_layer", "timings_ms", "notices",
               "evidence_in_lungs", "lung_area_fraction", "anatomy", "periphery", "laterality_rule", "ood"}
REPO_ROOT = Path(__file__).resolve().parents[1]

# Identifiers planted in a DICOM header: none may appear in any output, message or log.
PHI = {
    "PatientName": "Zqxdoe^Jvmpane",
    "PatientID": "PID-7781234",
    "PatientBirthDate": "19450317",
    "StudyDate": "20200402",
    "InstitutionName": "St Elsewhere Kvothe Hospital",
    "AccessionNumber": "ACC99887766",
    "ReferringPhysicianName": "Hqouse^Gregorx",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.12345678901234567890",
}
PHI_STRINGS = ["Zqxdoe", "Jvmpane", "PID-7781234", "19450317", "20200402", "Kvothe", "ACC99887766", "Hqouse",
               "12345678901234567890"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_explain_writes_overlays_maps_and_json_on_the_original_grid(
    bundle: Path, chestcovnet_dir: Path, dicom_dir: Path, tmp_path: Path
) -> None:
    jpeg_square = chestcovnet_dir / "images" / "nih_00008727_009.jpg"
    jpeg_wide = chestcovnet_dir / "images" / "mhh_b343e657.jpg"
    dicom = dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm"
    out = tmp_path / "out"
    code, stdout, stderr = run(["explain", str(jpeg_square), str(jpeg_wide), str(dicom), "--model", str(bundle),
                                "--out", str(out)])
    assert code == 0, stderr
    assert "explained 3 of 3" in stdout
    assert "3/3" in stderr  # the progress bar (tqdm, on stderr) for several files
    expected_shapes = {
        "nih_00008727_009": Image.open(jpeg_square).size[::-1],
        "mhh_b343e657": Image.open(jpeg_wide).size[::-1],
        "siim_cr_pa_mono2_jpeg_baseline": (int(pydicom.dcmread(dicom).Rows), int(pydicom.dcmread(dicom).Columns)),
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(expected_shapes)
    for stem, shape in expected_shapes.items():
        folder = out / stem
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [f"{m}.png" for m in METHODS] + [f"{m}.npy" for m in METHODS] + ["result.json"]
        )
        for method in METHODS:
            heat = np.load(folder / f"{method}.npy", allow_pickle=False)
            assert heat.dtype == np.float32 and heat.shape == shape
            assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0 + 1e-6
            with Image.open(folder / f"{method}.png") as png:
                assert png.size[::-1] == shape and png.mode == "RGB"
                provenance = json.loads(png.text["Description"])  # the export carries what produced it
        record = json.loads((folder / "result.json").read_text("utf-8"))
        assert provenance["model_sha256"] == record["model"]["sha256"]
        assert provenance["method"] == METHODS[-1] and provenance["target_class"] == record["target"]
        assert "not for diagnosis" in provenance["disclaimer"]
        assert set(record) == RESULT_KEYS
        assert record["file"].endswith(stem + (".dcm" if "siim" in stem else ".jpg"))
        assert list(record["probabilities"]) == ["non_covid", "covid19"]
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert record["predicted"] in record["probabilities"] and record["target"] == record["predicted"]
        assert record["model"]["name"] == "tiny-test" and len(record["model"]["sha256"]) == 64
        assert record["target_layer"] == "layer4"
        assert record["timings_ms"]["total"] > 0


def test_explain_target_and_methods_options(bundle: Path, chestcovnet_dir: Path, tmp_path: Path) -> None:
    image = chestcovnet_dir / "images" / "nih_00008727_009.jpg"
    code, _, stderr = run(["explain", str(image), "--model", str(bundle), "--methods", "gradcam,gradcam++",
                           "--target", "0", "--out", str(tmp_path)])
    assert code == 0, stderr
    folder = tmp_path / "nih_00008727_009"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["gradcam.png", "gradcam.npy", "gradcam++.png", "gradcam++.npy", "result.json"]
    )
    assert json.loads((folder / "result.json").read_text())["target"] == "non_covid"


def test_a_bad_file_is_reported_and_skipped(bundle: Path, chestcovnet_dir: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(chestcovnet_dir / "images" / "nih_00008727_009.jpg", inputs / "a_good.jpg")
    (inputs / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, no image
    shutil.copy(chestcovnet_dir / "images" / "mhh_b343e657.jpg", inputs / "c_good.jpg")
    out = tmp_path / "out"
    code, stdout, stderr = run(["explain", str(inputs), str(tmp_path / "missing.dcm"), "--model", str(bundle),
                                "--methods", "gradcam", "--out", str(out)])
    assert code == 1
    assert "explained 2 of 4" in stdout
    lines = [line for line in stderr.splitlines() if line.startswith("xai: skipped")]
    assert len(lines) == 2
    assert "b_broken.png" in lines[0] and len(lines[0].split(": ", 2)[-1]) > 5  # a reason follows the name
    assert "missing.dcm" in lines[1] and "no such file" in lines[1]
    assert sorted(p.name for p in out.iterdir()) == ["a_good", "c_good"]


def test_output_names_never_leave_the_output_folder(bundle: Path, chestcovnet_dir: Path, tmp_path: Path) -> None:
    source = chestcovnet_dir / "images" / "nih_00008727_009.jpg"
    inputs = tmp_path / "in"
    names = ["a/img.jpg", "b/img.jpg", "c/IMG.png", "d/...jpg", "d/.hidden.jpg", "d/CON.jpg", "d/über röntgen.jpg",
             "d/semi;colon$(x).jpg", "d/No_findings__x.png", "d/-dash.jpg"]
    for name in names:
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, inputs / name)
    out = tmp_path / "out"
    # Given explicitly, in an order that puts the duplicates first; .hidden.jpg is named, so it runs too.
    argv = ["explain", *[str(inputs / n) for n in names], "--model", str(bundle), "--methods", "gradcam",
            "--out", str(out), "--no-progress"]
    code, _, stderr = run(argv)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["img", "img_2", "IMG_3", "jpg", "hidden", "_CON", "über_röntgen", "semi_colon__x_", "No_findings__x", "dash"]
    )
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
    # Nothing was written next to the inputs or the output folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    # The JSON names the file as given; the folder name is only derived from it.
    assert json.loads((out / "img_2" / "result.json").read_text())["file"] == str(inputs / "b/img.jpg")


def test_usage_errors_exit_2_with_a_clear_message(bundle: Path, chestcovnet_dir: Path, tmp_path: Path) -> None:
    image = str(chestcovnet_dir / "images" / "nih_00008727_009.jpg")
    code, _, stderr = run(["explain", image, "--model", str(tmp_path / "no_such_bundle"), "--out", str(tmp_path)])
    assert code == 2 and "cannot load model" in stderr and "no_such_bundle" in stderr
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundle, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"garbage")
    code, _, stderr = run(["explain", image, "--model", str(corrupt), "--out", str(tmp_path)])
    assert code == 2 and "cannot load model" in stderr and "sha256" in stderr
    code, _, stderr = run(["explain", image, "--model", str(bundle), "--methods", "gradcam,lime",
                           "--out", str(tmp_path)])
    assert code == 2 and "unknown method(s) lime" in stderr
    code, _, stderr = run(["explain", image, "--model", str(bundle), "--target", "pneumonia", "--out", str(tmp_path)])
    assert code == 2 and "unknown target 'pneumonia'" in stderr
    code, _, stderr = run(["report", image, "--model", str(bundle)])  # --out is required for a report
    assert code == 2 and "--out" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt"]  # nothing written by the failed runs


def _phi_dicom(dicom_dir: Path, path: Path) -> Path:
    ds = pydicom.dcmread(dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm")
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def test_no_patient_identifiers_in_outputs_messages_or_logs(
    bundle: Path, chestcovnet_dir: Path, dicom_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    scan = _phi_dicom(dicom_dir, inputs / "scan.dcm")
    assert all(s.encode() in scan.read_bytes() for s in PHI_STRINGS)  # the identifiers are really there
    (inputs / "z_bad.dcm").write_bytes(scan.read_bytes()[:3000])  # truncated copy: its error message too
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x,y,w,h\nscan.dcm,100,200,300,300\n")
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    code1, out1, err1 = run(["explain", str(inputs), "--model", str(bundle), "--out", str(tmp_path / "explain"),
                             "--methods", "gradcam,guided_gradcam"])
    code2, out2, err2 = run(["report", str(inputs), "--model", str(bundle), "--out", str(tmp_path / "report"),
                             "--boxes", str(boxes)])
    assert (code1, code2) == (1, 1)  # the truncated copy fails, the scan is done
    assert (tmp_path / "explain" / "scan" / "result.json").is_file()
    assert (tmp_path / "report" / "scan" / "gradcam.jpg").is_file()
    worker_out, worker_err = capfd.readouterr()  # anything the decoder worker processes printed
    texts += [out1, err1, out2, err2, caplog.text, worker_out, worker_err]
    produced = [p for p in (tmp_path / "explain").rglob("*") if p.is_file()]
    produced += [p for p in (tmp_path / "report").rglob("*") if p.is_file()]
    assert len(produced) > 10
    for text in texts:
        for secret in PHI_STRINGS:
            assert secret not in text
    for path in produced:
        data = path.read_bytes()
        for secret in PHI_STRINGS:
            assert secret.encode() not in data, f"{secret} leaked into {path.name}"
        assert not any(secret in path.name for secret in PHI_STRINGS)


def test_report_with_manifest_boxes(bundle: Path, chestcovnet_dir: Path, tmp_path: Path) -> None:
    from xai.pipeline import explain_source
    from xai.trust.metrics import energy_inside, otsu_iou, pointing_game

    inputs = tmp_path / "in"
    inputs.mkdir()
    boxed = ["nih_00008727_009.jpg", "nih_00010120_010.jpg"]
    for name in [*boxed, "mhh_b343e657.jpg"]:
        shutil.copy(chestcovnet_dir / "images" / name, inputs / name)
    (inputs / "zz_text.dcm").write_text("not a dicom")
    out = tmp_path / "report"
    code, stdout, stderr = run(["report", str(inputs), "--out", str(out), "--model", str(bundle),
                                "--boxes", str(chestcovnet_dir / "manifest.csv"), "--methods", "gradcam,gradcam++"])
    assert code == 1
    assert "zz_text.dcm" in stderr
    assert "| gradcam | 2 |" in stdout and "| gradcam++ | 2 |" in stdout

    rows = list(csv.DictReader((out / "report.csv").open(encoding="utf-8")))
    assert [Path(r["file"]).name for r in rows] == ["mhh_b343e657.jpg", *boxed, "zz_text.dcm"]  # sorted walk
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    assert rows[3]["error"] and rows[3]["prediction"] == ""
    assert rows[0]["n_boxes"] == "0" and rows[0]["gradcam_hit"] == ""
    assert all(r["target"] == "covid19" for r in rows[:3])

    # Agreement figures: recomputed here from the pipeline's map and the manifest box scaled by 512/1024.
    manifest = {r["file"]: r for r in csv.DictReader((chestcovnet_dir / "manifest.csv").open())}
    for row, name in zip(rows[1:3], boxed, strict=True):
        result = explain_source(inputs / name, __import__("models").load(bundle), target="covid19",
                                methods=["gradcam"])
        mask = np.zeros(result.radiograph.pixels.shape, dtype=bool)
        for part in manifest[name]["nih_boxes_1024"].split(";"):
            _, x, y, w, h = (float(v) if i else v for i, v in enumerate(part.split("|")))
            s = int(manifest[name]["width"]) / 1024
            cols = (np.arange(mask.shape[1]) + 0.5 >= x * s) & (np.arange(mask.shape[1]) + 0.5 < (x + w) * s)
            rws = (np.arange(mask.shape[0]) + 0.5 >= y * s) & (np.arange(mask.shape[0]) + 0.5 < (y + h) * s)
            mask |= np.outer(rws, cols)
        heat = result.maps["gradcam"]
        assert float(row["box_fraction"]) == pytest.approx(float(mask.mean()), rel=1e-4)
        assert float(row["gradcam_hit"]) == float(bool(pointing_game(heat, mask)))
        assert float(row["gradcam_energy_inside"]) == pytest.approx(energy_inside(heat, mask), rel=1e-4, abs=1e-6)
        assert float(row["gradcam_iou_otsu"]) == pytest.approx(otsu_iou(heat, mask), rel=1e-4, abs=1e-6)
        assert float(row["probability"]) == pytest.approx(result.probabilities[row["prediction"]], rel=1e-4)

    page = (out / "index.html").read_text("utf-8")
    cards = page.split("<h2>Images</h2>", 1)[1]
    assert cards.count("data:image/jpeg;base64,") == 3 * 3  # original + two overlays for each good image
    assert "zz_text.dcm" in page and "Files not processed" in page
    assert "<script" not in page and "src='http" not in page
    for stem in ("nih_00008727_009", "nih_00010120_010", "mhh_b343e657"):
        assert sorted(p.name for p in (out / stem).iterdir()) == ["gradcam++.jpg", "gradcam.jpg", "row.json", "thumbs"]
        assert sorted(p.name for p in (out / stem / "thumbs").iterdir()) == ["gradcam++.jpg", "gradcam.jpg",
                                                                              "original.jpg"]
        with Image.open(out / stem / "gradcam.jpg") as overlay, Image.open(inputs / f"{stem}.jpg") as film:
            assert overlay.size == film.size  # compact keeps films up to 1024 px at their own size
            assert json.loads(overlay.info["comment"])["Description"]  # the provenance travels in a comment

    # --only-boxed keeps the images the boxes file names (the bad file is not one of them).
    code, _, stderr = run(["report", str(inputs), "--out", str(tmp_path / "only"), "--model", str(bundle),
                           "--boxes", str(chestcovnet_dir / "manifest.csv"), "--methods", "gradcam", "--only-boxed"])
    assert code == 0, stderr
    rows = list(csv.DictReader((tmp_path / "only" / "report.csv").open(encoding="utf-8")))
    assert [Path(r["file"]).name for r in rows] == boxed


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "xai", "explain", "x.png", "--model", str(tmp_path / "none"), "--out", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "cannot load model" in done.stderr


def test_report_stability_and_ood_columns(bundle: Path, chestcovnet_dir: Path, tmp_path: Path) -> None:
    image = chestcovnet_dir / "images" / "nih_00008727_009.jpg"
    out = tmp_path / "report"
    code, _, stderr = run(["report", str(image), "--out", str(out), "--model", str(bundle), "--methods", "gradcam",
                           "--stability"])
    assert code == 0, stderr
    (row,) = list(csv.DictReader((out / "report.csv").open(encoding="utf-8")))
    for stat in ("spearman", "ssim", "iou_top10"):
        mean, worst = float(row[f"gradcam_stability_{stat}_mean"]), float(row[f"gradcam_stability_{stat}_worst"])
        assert -1.0 <= worst <= mean <= 1.0
    # The tiny test bundle has no fitted OOD statistics: no score, and no flag without header hints.
    assert row["ood_score"] == "" and row["ood_flag"] == "0"
    assert "stability under small changes: rank correlation" in (out / "index.html").read_text("utf-8")


def _segments(stderr: str) -> list[str]:
    """What a terminal would show as separate writes: lines split at newlines and carriage returns."""
    return [s for s in re.split(r"[\r\n]", stderr) if s.strip()]


def test_progress_bar_and_messages_do_not_overwrite_each_other(
    bundle: Path, chestcovnet_dir: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.jpg", "c.jpg"):
        shutil.copy(chestcovnet_dir / "images" / "nih_00008727_009.jpg", inputs / name)
    (inputs / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    for command in ("explain", "report"):
        code, _, stderr = run([command, str(inputs), "--model", str(bundle), "--methods", "gradcam",
                               "--out", str(tmp_path / command)])
        assert code == 1
        assert "0/3 [" in stderr  # the bar ran
        messages = [s for s in _segments(stderr) if "xai: skipped" in s]
        # The message was written on a line of its own above the bar (tqdm.write), not into the bar's line.
        assert len(messages) == 1 and messages[0].startswith("xai: skipped") and "b.png" in messages[0], stderr


def _report(bundle: Path, inputs: Path, out: Path, *extra: str) -> tuple[int, str]:
    code, _, stderr = run(["report", str(inputs), "--model", str(bundle), "--methods", "gradcam,guided_gradcam",
                           "--out", str(out), "--no-progress", *extra])
    return code, stderr


def _three_films(chestcovnet_dir: Path, folder: Path) -> Path:
    folder.mkdir()
    for name in ("nih_00008727_009.jpg", "mhh_b343e657.jpg", "nih_00010120_010.jpg"):
        shutil.copy(chestcovnet_dir / "images" / name, folder / name)
    return folder


def test_resume_recomputes_only_incomplete_films(bundle: Path, chestcovnet_dir: Path, tmp_path: Path) -> None:
    inputs = _three_films(chestcovnet_dir, tmp_path / "in")
    out = tmp_path / "out"
    code, stderr = _report(bundle, inputs, out)
    assert code == 0, stderr
    first_csv = (out / "report.csv").read_text("utf-8")
    first_html = (out / "index.html").read_text("utf-8")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    (out / "mhh_b343e657" / "guided_gradcam.jpg").unlink()  # as if the run had been killed while writing it
    (out / "nih_00010120_010" / "row.json").unlink()  # ...or before its record was written
    code, stderr = _report(bundle, inputs, out, "--resume")
    assert code == 0, stderr
    changed = {p.relative_to(out).as_posix() for p, t in stamps.items() if not p.exists() or p.stat().st_mtime_ns != t}
    assert {c.split("/")[0] for c in changed} == {"mhh_b343e657", "nih_00010120_010", "report.csv", "index.html"}
    assert (out / "mhh_b343e657" / "guided_gradcam.jpg").is_file()
    assert (out / "report.csv").read_text("utf-8") == first_csv
    assert (out / "index.html").read_text("utf-8") == first_html
    # A different question (another method list) is not taken for a finished one.
    code, stderr = _report(bundle, inputs, out, "--resume", "--methods", "gradcam")
    assert code == 0, stderr
    assert all(json.loads((out / s / "row.json").read_text())["key"]["methods"] == ["gradcam"]
               for s in ("mhh_b343e657", "nih_00008727_009", "nih_00010120_010"))
    assert not list(out.rglob(".*.tmp"))  # no temporary file is left behind


def test_batch_size_and_full_resolution(bundle: Path, chestcovnet_dir: Path, tmp_path: Path) -> None:
    inputs = _three_films(chestcovnet_dir, tmp_path / "in")
    (inputs / "zz_bad.dcm").write_text("not a dicom")
    code, stderr = _report(bundle, inputs, tmp_path / "one")
    assert code == 1, stderr
    code, stderr = _report(bundle, inputs, tmp_path / "three", "--batch-size", "3", "--full-resolution")
    assert code == 1, stderr
    one = list(csv.DictReader((tmp_path / "one" / "report.csv").open(encoding="utf-8")))
    three = list(csv.DictReader((tmp_path / "three" / "report.csv").open(encoding="utf-8")))
    assert [r["file"] for r in one] == [r["file"] for r in three] and three[-1]["status"] == "failed"
    for a, b in zip(one, three, strict=True):  # several films in one pass: the same numbers as one by one
        for key, value in a.items():
            if key.startswith(("p_", "probability", "gradcam", "guided", "ood_score")) and value:
                assert float(b[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-5), key
            else:
                assert b[key] == value, key
    folder = tmp_path / "three" / "mhh_b343e657"
    with Image.open(folder / "gradcam.png") as png, Image.open(inputs / "mhh_b343e657.jpg") as film:
        assert png.size == film.size and png.format == "PNG"
        assert json.loads(png.text["Description"])["method"] == "gradcam"
    code, _, stderr = run(["report", str(inputs), "--model", str(bundle), "--out", str(tmp_path / "x"),
                           "--batch-size", "0"])
    assert code == 2 and "must be at least 1" in stderr


def _text_page(path: Path) -> Path:
    """A scanned-document look-alike: black text on white, nothing like a chest."""
    import cv2

    page = np.full((600, 450), 255, np.uint8)
    for i in range(14):
        cv2.putText(page, f"Line {i}: lorem ipsum dolor", (20, 40 + 40 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 0, 2)
    cv2.imwrite(str(path), page)
    return path


def test_explain_json_has_the_evidence_inside_the_lungs(bundle: Path, chestcovnet_dir: Path, tmp_path: Path) -> None:
    from xai.anatomy import (
        REGIONS,
        anatomy_regions,
        evidence_by_region,
        evidence_in_lungs,
        evidence_periphery,
        find_lungs,
    )
    from xai.radiograph import load_radiograph

    film = chestcovnet_dir / "images" / "nlm_CHNCXR_0001_0.jpg"
    page = _text_page(tmp_path / "page.png")
    out = tmp_path / "out"
    code, _, stderr = run(["explain", str(film), str(page), "--model", str(bundle), "--out", str(out)])
    assert code == 0, stderr
    record = json.loads((out / "nlm_CHNCXR_0001_0" / "result.json").read_text("utf-8"))
    lungs = find_lungs(load_radiograph(film))  # the anatomy module's own answer on the film's own grid
    assert lungs.found and record["lung_area_fraction"] == pytest.approx(lungs.area_fraction, abs=1e-6)
    assert set(record["evidence_in_lungs"]) == set(METHODS)
    for method in METHODS:
        heat = np.load(out / "nlm_CHNCXR_0001_0" / f"{method}.npy")
        assert record["evidence_in_lungs"][method] == pytest.approx(evidence_in_lungs(heat, lungs.mask), abs=1e-5)
    # The anatomical readout: each map's share per region, recomputed here from the film's own regions.
    regions = anatomy_regions(load_radiograph(film))
    assert record["laterality_rule"] == "display convention"
    for method in METHODS:
        heat = np.load(out / "nlm_CHNCXR_0001_0" / f"{method}.npy")
        shares, periphery = record["anatomy"][method], record["periphery"][method]
        assert list(shares) == list(REGIONS) and sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
        for region, share in evidence_by_region(heat, regions).items():
            assert shares[region] == pytest.approx(share, abs=1e-5), (method, region)
        assert periphery == pytest.approx(evidence_periphery(heat, regions), abs=1e-5)
    # A document has no lung field: no shares, an area of 0 and a warning that names the file.
    record = json.loads((out / "page" / "result.json").read_text("utf-8"))
    assert record["lung_area_fraction"] == 0 and set(record["evidence_in_lungs"].values()) == {None}
    assert {v for shares in record["anatomy"].values() for v in shares.values()} == {None}
    assert any("page.png" in s and "no lung field found" in s for s in _segments(stderr))


def test_report_lung_columns_and_cohort_view(bundle: Path, chestcovnet_dir: Path, tmp_path: Path) -> None:
    import base64

    from xai.anatomy import REGIONS, find_lungs, lung_box
    from xai.radiograph import load_radiograph

    inputs = tmp_path / "in"
    (inputs / "site_a").mkdir(parents=True)
    (inputs / "site_b").mkdir()
    for name in ("nih_00008727_009.jpg", "nlm_CHNCXR_0001_0.jpg"):
        shutil.copy(chestcovnet_dir / "images" / name, inputs / "site_a" / name)
    shutil.copy(chestcovnet_dir / "images" / "mhh_b343e657.jpg", inputs / "site_b" / "mhh_b343e657.jpg")
    _text_page(inputs / "site_b" / "zz_page.png")
    out = tmp_path / "report"
    code, stderr = _report(bundle, inputs, out, "--batch-size", "2")
    assert code == 0, stderr
    rows = {Path(r["file"]).name: r for r in csv.DictReader((out / "report.csv").open(encoding="utf-8"))}
    page = rows.pop("zz_page.png")
    assert page["lung_area_fraction"] == "0" and page["gradcam_in_lungs"] == ""
    region_columns = [f"gradcam_{r.replace(' ', '_')}" for r in REGIONS]
    assert "gradcam_right_upper_zone" in region_columns and all(page[c] == "" for c in region_columns)
    for row in rows.values():  # one share per region for Grad-CAM, adding up to 1
        assert sum(float(row[c]) for c in region_columns) == pytest.approx(1.0, abs=1e-4)
    registered = {}
    for name, row in rows.items():
        film = inputs / ("site_b" if name.startswith("mhh") else "site_a") / name
        assert 0.1 < float(row["lung_area_fraction"]) < 0.6
        assert 0 <= float(row["gradcam_in_lungs"]) <= 1 and 0 <= float(row["guided_gradcam_in_lungs"]) <= 1
        stored = json.loads((out / Path(name).stem / "row.json").read_text("utf-8"))["row"]
        heat = np.frombuffer(base64.b64decode(stored["registered"]["map"]), np.uint8).reshape(64, 64)
        registered[name] = heat
        # The registered map is the film's map in its lungs' box: its peak sits where the film's peak sits
        # relative to the box (the film's own map, recomputed here by the pipeline).
        from xai.pipeline import explain_source

        result = explain_source(film, __import__("models").load(bundle), methods=["gradcam"], target="covid19")
        x0, y0, x1, y1 = lung_box(find_lungs(load_radiograph(film)).mask)
        box = result.maps["gradcam"][y0:y1, x0:x1]
        py, px = np.unravel_index(np.argmax(box), box.shape)
        ry, rx = np.unravel_index(np.argmax(heat), heat.shape)
        assert abs(ry - py * 64 / box.shape[0]) <= 3 and abs(rx - px * 64 / box.shape[1]) <= 3, name
    html_page = (out / "index.html").read_text("utf-8")
    assert "Where the model looks, relative to the lungs" in html_page
    assert "site_a — 2 films" in html_page and "site_b — 1 film" in html_page  # the document is left out
    assert "no lung field found" in html_page
    # The cohort view's stacked bars: one per group with a readout, with the group's mean shares.
    predicted = {row["prediction"] for row in rows.values()}  # the document has no lung field: in no group
    assert html_page.count("<div class='bar'>") == 2 + len(predicted)  # site_a, site_b and each predicted class
    site_a = [rows[n] for n in ("nih_00008727_009.jpg", "nlm_CHNCXR_0001_0.jpg")]
    mean = {r: np.mean([float(row[f"gradcam_{r.replace(' ', '_')}"]) for row in site_a]) for r in REGIONS}
    from xai.anatomy import readout_sentence

    assert f"site_a — 2 films<br>{readout_sentence(mean)}" in html_page
    from xai.batch.records import Report, ReportMeta, ReportRow

    tally = Report(ReportMeta(("gradcam",), ("non_covid", "covid19"), {}, "covid19"))
    for name in ("nih_00008727_009.jpg", "nlm_CHNCXR_0001_0.jpg"):
        stored = json.loads((out / Path(name).stem / "row.json").read_text("utf-8"))["row"]
        tally.add(ReportRow.from_dict(stored))
    (group, n, mean, _), *_ = tally.cohort.means("folder")
    assert (group, n) == ("site_a", 2)
    np.testing.assert_allclose(mean, (registered["nih_00008727_009.jpg"] / 255.0
                                      + registered["nlm_CHNCXR_0001_0.jpg"] / 255.0) / 2)


def test_compact_overlays_start_from_maps_resampled_from_the_model_grid(bundle: Path, chestcovnet_dir: Path,
                                                                        tmp_path: Path) -> None:
    """A large film's compact overlays use maps resampled straight from the model grid to the small grid:
    the same maps as the full-resolution ones shrunk by area averaging, within a few thousandths."""
    import cv2

    import models
    from xai.batch.outputs import shrunk_film
    from xai.pipeline import explain_source
    from xai.render import downsample_for_display

    big = tmp_path / "big.png"
    film = cv2.imread(str(chestcovnet_dir / "images" / "mhh_b343e657.jpg"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(big), cv2.resize(film, (film.shape[1] * 5, film.shape[0] * 5), interpolation=cv2.INTER_CUBIC))
    result = explain_source(big, models.load(bundle), target="covid19")
    small = shrunk_film(result, 1000)
    assert max(small.pixels.shape) == 1000
    np.testing.assert_allclose(small.pixels, downsample_for_display(result.radiograph.pixels, 1000))
    for method, heat in small.maps.items():
        reference = downsample_for_display(result.maps[method], 1000)
        assert heat.shape == reference.shape == small.pixels.shape
        assert float(np.abs(heat - reference).mean()) < 2e-3 and float(np.abs(heat - reference).max()) < 0.1
    assert shrunk_film(result, 10_000).maps["gradcam"] is result.maps["gradcam"]  # small enough: as it is
