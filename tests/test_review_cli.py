"""``python -m xai review``: a session from a folder, the list, the CSV and HTML exports, clear refusals."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from xai.cli import main
from xai.review import ReviewStore


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()


def test_create_list_export_from_a_folder(chestcovnet_dir: Path, dicom_dir: Path, tmp_path: Path):
    films = tmp_path / "films"
    films.mkdir()
    for name in ("cxnet_001.jpg", "cxnet_002.jpg"):
        shutil.copy(chestcovnet_dir / "images" / name, films / name)
    shutil.copy(dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm", films / "scan.dcm")
    (films / "README.md").write_text("side file, skipped")
    db = f"sqlite:///{tmp_path / 'review.sqlite3'}"
    labels = tmp_path / "labels.csv"
    labels.write_text("file,diagnosis\ncxnet_002.jpg,non_covid\n", encoding="utf-8")
    code, out, err = run("review", "--db", db, "create", "CLI study", str(films), "--owner", "olga",
                         "--methods", "gradcam,guided_backprop", "--named-maps", "--labels", str(labels))
    assert code == 0, err
    assert "created with 3 case(s)" in out and "scan.dcm" not in out + err
    secret = out.split("owner secret (shown once; it opens the results on the Review page): ")[1].strip()
    store = ReviewStore(db)
    (session,) = store.sessions()
    assert store.verify_owner(session.id, secret) and not store.verify_owner(session.id, secret[:-1])
    assert [store.case_info(session.id, c)["reference"] for c in store.cases(session.id)] == [
        None, "non_covid", None]  # sorted: cxnet_001, cxnet_002, scan.dcm
    assert (session.owner, session.methods, session.anonymised, session.blinded) == (
        "olga", ("gradcam", "guided_backprop"), False, True)
    first = store.cases(session.id)[0]
    store.save_rating(session.id, first, "ann", {"diagnosis": "covid19", "confidence": 3,
                                                 "plausibility": {"gradcam": 4}, "note": "=HYPERLINK(1)"})
    code, out, _ = run("review", "--db", db, "list")
    assert code == 0 and out.startswith("CLI study\t3 cases\towner olga\topen")
    code, out, _ = run("review", "--db", db, "export", "CLI study", "--out", str(tmp_path / "r.csv"))
    assert code == 0 and "1 rating(s)" in out
    (row,) = list(csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8")))
    assert (row["case"], row["reader"], row["plausibility_gradcam"], row["plausibility_guided_backprop"]) == (
        first, "ann", "4", "")
    assert row["note"] == "'=HYPERLINK(1)"  # a formula is quoted, never run by a spreadsheet
    code, _, _ = run("review", "--db", db, "export", "CLI study", "--html", "--out", str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert code == 0 and "Review session “CLI study”" in html and "<script" not in html


def test_refusals_exit_2_with_the_reason(tmp_path: Path, chestcovnet_dir: Path):
    db = f"sqlite:///{tmp_path / 'review.sqlite3'}"
    film = str(chestcovnet_dir / "images" / "cxnet_001.jpg")
    assert run("review", "--db", db, "create", "s", film)[0] == 0
    code, _, err = run("review", "--db", db, "create", "s", film)
    assert code == 2 and "exists already" in err
    code, _, err = run("review", "--db", db, "create", "t", str(tmp_path / "missing"))
    assert code == 2 and "no such file" in err
    code, _, err = run("review", "--db", db, "create", "u", film, "--methods", "lime")
    assert code == 2 and "unknown method" in err
    bad_labels = tmp_path / "bad.csv"
    bad_labels.write_text("file,diagnosis\ncxnet_001.jpg,maybe\n", encoding="utf-8")
    code, _, err = run("review", "--db", db, "create", "v", film, "--labels", str(bad_labels))
    assert code == 2 and "labels line 2: diagnosis must be one of covid19, non_covid" in err
    code, _, err = run("review", "--db", db, "export", "nope", "--out", str(tmp_path / "x.csv"))
    assert code == 2 and "no session named 'nope'" in err
    code, _, err = run("review", "--db", "postgresql+psycopg://u:secret@/db?host=/nonexistent", "list")
    assert code == 2 and "cannot open the review database" in err and "secret" not in err
