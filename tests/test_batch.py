"""Batch core: safe output names, zip uploads, boxes, the report files."""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pages._state import Key
from xai.batch.archive import ArchiveError, ZipLimits, read_zip, zip_folder
from xai.batch.boxes import Box, BoxesError, boxes_mask, load_boxes, parse_boxes
from xai.batch.inputs import collect_inputs, items_from_uploads
from xai.batch.names import export_stem, file_stems, method_file, output_dir_for, safe_stem, unique_stems
from xai.batch.records import ReportMeta, ReportRow
from xai.batch.report import report_texts


# ------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chest.png", "chest"),
        ("No_findings__x.png", "No_findings__x"),  # the file's stem as it is: no collapsing of "__"
        ("data/Pneumonia-_x_.dcm", "Pneumonia-_x_"),
        ("../../x", "x"),
        ("../../etc/passwd.dcm", "passwd"),
        ("/abs/path/film.jpg", "film"),
        ("C:\\Users\\a\\film.dcm", "film"),
        (".bashrc", "bashrc"),
        ("..", "image"),
        ("...", "image"),
        ("", "image"),
        ("-rf.png", "rf"),
        ("a b;rm -rf~.png", "a_b_rm_-rf_"),
        ("x.tar.gz", "x.tar"),
        ("v1.2+final.png", "v1.2+final"),
        ("Röntgen_ßild.png", "Röntgen_ßild"),
        ("ｆｕｌｌ.png", "full"),  # NFKC folds full-width letters
        ("CON.png", "_CON"),
        ("nul", "_nul"),
        ("com1.tar.gz", "_com1.tar"),
        ("name\u202egnp.exe", "name_gnp"),  # a right-to-left override is not kept
        ("tab\there.png", "tab_here"),
        ("a:b*c?d|e<f>g\"h.png", "a_b_c_d_e_f_g_h"),
    ],
)
def test_safe_stem(name: str, expected: str) -> None:
    assert safe_stem(name) == expected


def test_safe_stem_is_bounded_in_bytes_and_never_a_path() -> None:
    stem = safe_stem("é" * 300 + ".png")
    assert len(stem.encode("utf-8")) <= 100
    assert stem == "é" * 50
    for hostile in ["../../x", "/", "a/../..", "..\\..\\y", "\x00.png", "./.", "-rf", "..hidden", "x."]:
        s = safe_stem(hostile)
        assert s and "/" not in s and "\\" not in s and not s.startswith((".", "-")) and "\x00" not in s
        assert not s.endswith(".")


def test_unique_stems_disambiguates_in_order_case_insensitively() -> None:
    names = ["a/img.png", "b/img.png", "img.dcm", "IMG.jpg", "img_2.png"]
    assert file_stems(names) == ["img", "img_2", "img_3", "IMG_4", "img_2_2"]
    assert unique_stems(["m_ab", "m_ab", "M_AB"]) == ["m_ab", "m_ab_2", "M_AB_3"]


def test_hashed_names_are_the_explain_pages_and_carry_no_file_name() -> None:
    sha = hashlib.sha256(b"pixels").hexdigest()
    assert export_stem("chestcovnet", sha) == f"chestcovnet_{sha[:10]}"
    assert export_stem("my model/v1.2", sha) == f"my_model_v1.2_{sha[:10]}"  # the card name made path-safe
    assert [method_file(m) for m in ("gradcam", "gradcam++", "guided_backprop", "guided_gradcam")] == [
        "gradcam", "gradcam++", "guided_backprop", "guided_gradcam"]


def test_output_dir_for_stays_inside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert output_dir_for(out, "film") == (out / "film").resolve()
    for bad in ["..", ".", "", "../x", "a/b"]:
        with pytest.raises(ValueError, match="leave the output folder"):
            output_dir_for(out, bad)
    # A planted symlink pointing outside is refused too.
    (out / "evil").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="leave the output folder"):
        output_dir_for(out, "evil")


def test_collect_inputs_walks_sorted_and_reports_missing(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for rel in ["d/b.png", "d/a.png", "d/sub/c.png", "d/.hidden.png", "d/notes.md", "d/meta.JSON", "d/noext"]:
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "d" / ".git").mkdir()
    (tmp_path / "d" / ".git" / "z.png").write_bytes(b"x")
    skipped: list[str] = []
    items = collect_inputs([tmp_path / "d", tmp_path / "missing.png", tmp_path / "d" / "notes.md"], skipped)
    names = [Path(i.name).relative_to(tmp_path).as_posix() for i in items]
    # Files without an extension are tried (DICOM often has none); side files only when named explicitly.
    assert names == ["d/a.png", "d/b.png", "d/noext", "d/sub/c.png", "missing.png", "d/notes.md"]
    assert sorted(Path(s).name for s in skipped) == ["meta.JSON", "notes.md"]
    assert items[-2].source is None and "no such file" in (items[-2].error or "")


# ------------------------------------------------------------------------------------------ zips
def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_read_zip_reads_files_and_skips_what_is_not_a_file() -> None:
    rng = np.random.default_rng(0)
    payload = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    data = _zip({"study/a.png": payload, "b.dcm": b"2" * 10, "__MACOSX/._a.png": b"junk", ".DS_Store": b"junk",
                 "study/.hidden/c.png": b"junk", "folder/": b""})
    files = read_zip(data)
    assert [name for name, _ in files] == ["study/a.png", "b.dcm"]
    assert files[0][1] == payload
    assert [name for name, _ in read_zip(data, only=lambda n: n.endswith(".dcm"))] == ["b.dcm"]


@pytest.mark.parametrize("evil", ["../../evil.png", "/etc/abs.dcm", "C:/win/x.png", "a/../../b.png", "..\\up.png"])
def test_read_zip_refuses_unsafe_paths_naming_them(evil: str) -> None:
    data = _zip({"ok.png": b"1" * 10, evil: b"2" * 10})
    with pytest.raises(ArchiveError, match="unsafe paths") as caught:
        read_zip(data)
    assert evil in str(caught.value)
    assert evil not in caught.value.anonymous  # the message exports may carry names no member


def test_read_zip_reads_a_path_and_refuses_one_over_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "set.zip"
    path.write_bytes(_zip({"a.png": b"A" * 100}))
    assert read_zip(path) == [("a.png", b"A" * 100)]
    with pytest.raises(ArchiveError, match="the limit is 50"):
        read_zip(path, ZipLimits(max_archive_bytes=50))
    with pytest.raises(ArchiveError, match="cannot read the archive"):
        read_zip(tmp_path / "missing.zip")


def test_read_zip_refuses_a_zip_bomb() -> None:
    bomb = _zip({"bomb.dcm": bytes(20 * 1024 * 1024)})  # 20 MiB of zeros deflates ~1000:1
    assert len(bomb) < 100_000
    with pytest.raises(ArchiveError, match="bomb.dcm: compression ratio over 100:1") as caught:
        read_zip(bomb)
    assert "bomb.dcm" not in caught.value.anonymous and "zip bomb" in caught.value.anonymous


def test_read_zip_refuses_oversized_archives_and_members() -> None:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ArchiveError, match="limit"):
        read_zip(_zip({"a.png": noise}), ZipLimits(max_archive_bytes=1000))
    with pytest.raises(ArchiveError, match="size limit"):
        read_zip(_zip({"a.png": noise}), ZipLimits(max_member_bytes=1000))
    with pytest.raises(ArchiveError, match="unpack to"):
        read_zip(_zip({"a.png": noise, "b.png": noise}), ZipLimits(max_total_bytes=6000))
    many = _zip({f"{i}.png": b"x" for i in range(6)})
    with pytest.raises(ArchiveError, match="6 files"):
        read_zip(many, ZipLimits(max_members=5))


def test_read_zip_refuses_non_zip_and_encrypted() -> None:
    with pytest.raises(ArchiveError, match="not a readable zip"):
        read_zip(b"PK\x03\x04 not really")
    data = bytearray(_zip({"a.png": b"abc"}, compression=zipfile.ZIP_STORED))
    # Set the "encrypted" flag bit in the local and central headers.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + offset
        data[at] |= 0x1
    with pytest.raises(ArchiveError, match="encrypted"):
        read_zip(bytes(data))


def test_model_bundles_are_read_by_the_same_reader(tmp_path: Path) -> None:
    """A bundle zip goes through the one safe reader: its refusals, with the bundle's name in front."""
    import models

    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(_zip({"card.json": b"{}", "model.safetensors": bytes(30 * 1024 * 1024)}))
    with pytest.raises(models.ModelError, match=r"bomb\.zip: model\.safetensors: compression ratio over 100:1"):
        models.load(bomb)
    evil = tmp_path / "evil.zip"
    evil.write_bytes(_zip({"card.json": b"{}", "/etc/model.safetensors": b"x"}))
    with pytest.raises(models.ModelError, match=r"evil\.zip: archive has unsafe paths.*/etc/model\.safetensors"):
        models.load(evil)
    many = tmp_path / "many.zip"
    many.write_bytes(_zip({f"{i}.txt": b"x" for i in range(80)}))
    with pytest.raises(models.ModelError, match="80 files; the limit is 64"):
        models.load(many)


# ------------------------------------------------------------------------------------------ boxes
def test_load_boxes_manifest_format_scales_from_1024(chestcovnet_dir: Path) -> None:
    boxes = load_boxes(chestcovnet_dir / "manifest.csv")
    assert len(boxes) == 44
    first = boxes["nih_00008727_009.jpg"]
    assert len(first) == 1 and first[0].label == "Pneumonia"
    assert first[0].x == pytest.approx(205.883597883598 * 512 / 1024)
    assert first[0].h == pytest.approx(215.635978835979 / 2)


def test_load_boxes_simple_format_and_errors(tmp_path: Path) -> None:
    simple = tmp_path / "boxes.csv"
    simple.write_text("file,x,y,w,h,label\ndir/a.png,1,2,3,4,Mass\na.png,0,0,2,2,\nb.dcm,5,5,1,1\n")
    boxes = load_boxes(simple)
    assert boxes["a.png"] == (Box(1, 2, 3, 4, "Mass"), Box(0, 0, 2, 2, ""))
    assert boxes["b.dcm"] == (Box(5, 5, 1, 1, ""),)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,x,y,w,h\na.png,1,2,-3,4\n")
    with pytest.raises(BoxesError, match="line 2"):
        load_boxes(bad)
    with pytest.raises(BoxesError, match="CSV"):
        parse_boxes("file,x,y,w,h\n" + "a" * 200_000 + ",1,2,3,4\n")  # over the csv module's field limit
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name,left\n")
    with pytest.raises(BoxesError, match="columns"):
        load_boxes(wrong)


def test_boxes_mask_union_and_clipping() -> None:
    mask = boxes_mask([Box(1, 1, 2, 2), Box(4, 0, 10, 1), Box(50, 50, 3, 3)], (5, 6))
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:3, 1:3] = True
    expected[0, 4:6] = True
    np.testing.assert_array_equal(mask, expected)


# ------------------------------------------------------------------------------------------ report files
META = ReportMeta(methods=("gradcam",), class_names=("non_covid", "covid19"),
                  model={"name": "m", "version": "1", "sha256": "ab" * 32}, target="covid19")


def _toy_rows() -> list[ReportRow]:
    ok = ReportRow(
        file="=HYPERLINK(\"http://x\")<script>.png",
        stem="x",
        predicted="covid19",
        target="covid19",
        probabilities={"non_covid": 0.25, "covid19": 0.75},
        n_boxes=1,
        box_fraction=0.1,
        agreement={"gradcam": {"hit": 1.0, "energy_inside": 0.5, "iou_otsu": 0.25}},
        files=("thumbs/gradcam.jpg",),
        thumbnails={"gradcam": b"\xff\xd8jpeg"},
    )
    ok2 = ReportRow(
        file="b.png",
        stem="b",
        predicted="non_covid",
        target="covid19",
        probabilities={"non_covid": 0.9, "covid19": 0.1},
        n_boxes=1,
        box_fraction=0.2,
        agreement={"gradcam": {"hit": 0.0, "energy_inside": 0.1, "iou_otsu": 0.05}},
    )
    bad = ReportRow(file="broken.png", error="not an image <b>")
    return [ok, ok2, bad]


def test_report_summary_csv_and_html() -> None:
    csv_text, page, report = report_texts(META, _toy_rows())
    summary = report.summary()["gradcam"]
    assert summary == {"n": 2, "hit_rate": 0.5, "mean_energy_inside": pytest.approx(0.3), "miou": pytest.approx(0.15)}
    assert "| gradcam | 2 | 0.500 | 0.300 | 0.150 |" in report.summary_markdown()
    assert report.chance_hit_rate() == pytest.approx(0.15)
    assert "| 0.150 | 0.150 |" in report.summary_markdown().splitlines()[-1]
    assert (report.total, report.done, report.failed) == (3, 2, [("broken.png", "not an image <b>")])

    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[0]["file"].startswith("'=")  # formula neutralised
    assert rows[0]["prediction"] == "covid19" and float(rows[0]["probability"]) == 0.75
    assert float(rows[0]["gradcam_iou_otsu"]) == 0.25 and rows[0]["gradcam_hit"] == "1"
    assert rows[2]["error"] == "not an image <b>" and rows[2]["gradcam_hit"] == ""

    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "not an image &lt;b&gt;" in page
    assert page.count("data:image/jpeg;base64,") == 1
    assert "http" not in page.replace("http://x", "").replace("http-equiv", "")  # nothing fetched from outside


def test_html_names_methods_plainly_and_keeps_the_modelers_details_folded() -> None:
    """Outside the <details> blocks a reader sees "Grad-CAM", never the key ``gradcam``, and no jargon
    (Mahalanobis, Otsu, pointing game); inside them the keys and conventions remain for modelers."""
    import re

    rows = _toy_rows()
    rows[0].ood = {"score": 12.34, "warnings": ()}
    _, page, _ = report_texts(META, rows)
    folded = re.findall(r"<details><summary>For modelers</summary>(.*?)</details>", page, flags=re.S)
    visible = re.sub(r"<details>.*?</details>", "", page, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", visible)
    assert "Grad-CAM" in text and "gradcam" not in re.sub(r"<[^>]+>", " ", visible.split("<h2>Images</h2>")[1])
    assert not re.search(r"\bgradcam\b", text.replace("<script>", ""))
    for jargon in ("Mahalanobis", "Otsu", "Pointing game", "pointing game", "IoU of"):
        assert jargon not in text, jargon
    assert any("<code>gradcam</code>" in f and "Otsu" in f for f in folded)
    assert any("Mahalanobis distance" in f and "12.3" in f for f in folded)
    assert "Grad-CAM — strongest point inside the box, 50% of the map inside" in page


def test_streamed_report_files_equal_the_in_memory_ones_and_read_thumbnails_from_disk(tmp_path: Path) -> None:
    from xai.batch.report import ReportWriter

    rows = _toy_rows()
    csv_text, page, _ = report_texts(META, rows)
    (tmp_path / "x" / "thumbs").mkdir(parents=True)
    (tmp_path / "x" / "thumbs" / "gradcam.jpg").write_bytes(b"\xff\xd8jpeg")
    with ReportWriter(tmp_path, META) as writer:
        for row in _toy_rows():
            row.thumbnails = {}  # as a worker's row arrives: the thumbnails are on disk only
            writer.add(row)
    assert (tmp_path / "report.csv").read_text("utf-8") == csv_text
    assert (tmp_path / "index.html").read_text("utf-8") == page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "report.csv", "x"]  # no temporary files


def test_an_interrupted_writer_leaves_no_half_report(tmp_path: Path) -> None:
    from xai.batch.report import ReportWriter

    with pytest.raises(KeyboardInterrupt), ReportWriter(tmp_path, META) as writer:
        writer.add(_toy_rows()[2])
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_items_from_uploads_expands_zips_and_keeps_going_after_a_bad_one() -> None:
    good = _zip({"x/a.png": b"A" * 10, "b.dcm": b"B" * 10})
    bomb = _zip({"bomb.png": bytes(5 * 1024 * 1024)})
    items = items_from_uploads([("one.png", b"\x89PNG..."), ("set.zip", good), ("evil.zip", bomb)])
    assert [i.name for i in items] == ["one.png", "set.zip/x/a.png", "set.zip/b.dcm", "evil.zip"]
    assert [i.export_name for i in items] == [i.name for i in items]
    assert [i.stem for i in items] == ["one", "a", "b", "evil"]
    assert items[1].source == b"A" * 10
    assert items[3].source is None and "bomb.png: compression ratio" in (items[3].error or "")
    with pytest.raises(ArchiveError, match="limit is 2"):
        items_from_uploads([("set.zip", good), ("c.png", b"c")], ZipLimits(max_members=2))


def test_hashed_upload_names_hide_file_names_in_names_and_errors() -> None:
    good = _zip({"Smith_John/a.png": b"A" * 10})
    bomb = _zip({"Doe_Jane.png": bytes(5 * 1024 * 1024)})

    def labeller(_name: str, data: bytes) -> str:
        return export_stem("m", hashlib.sha256(data).hexdigest())

    items = items_from_uploads([("Smith_John.zip", good), ("Doe_Jane.zip", bomb)], labeller=labeller)
    assert [i.export_name for i in items] == [export_stem("m", hashlib.sha256(b"A" * 10).hexdigest()),
                                              export_stem("m", hashlib.sha256(bomb).hexdigest())]
    assert [i.stem for i in items] == [i.export_name for i in items]
    assert items[1].error == "a file in the archive: compression ratio over 100:1 (a zip bomb?); refused"
    assert items[0].file_name == "a.png"  # boxes still match the uploaded file name


def test_zip_folder_round_trips_stores_images_and_filters(tmp_path: Path) -> None:
    (tmp_path / "a" / "thumbs").mkdir(parents=True)
    (tmp_path / "a" / "m.png").write_bytes(b"png")
    (tmp_path / "a" / "thumbs" / "m.jpg").write_bytes(b"jpg")
    (tmp_path / "report.csv").write_text("file\n" * 100)
    data = zip_folder(tmp_path)
    assert dict(read_zip(data)) == {"a/m.png": b"png", "a/thumbs/m.jpg": b"jpg", "report.csv": b"file\n" * 100}
    kinds = {i.filename: i.compress_type for i in zipfile.ZipFile(io.BytesIO(data)).infolist()}
    assert kinds == {"a/m.png": zipfile.ZIP_STORED, "a/thumbs/m.jpg": zipfile.ZIP_STORED,
                     "report.csv": zipfile.ZIP_DEFLATED}
    kept = zip_folder(tmp_path, keep=lambda p: "thumbs" not in p.parts)
    assert sorted(dict(read_zip(kept))) == ["a/m.png", "report.csv"]


def result_html(at: object) -> str:
    return at.session_state[Key.STORES]["batch"]["result"]["html"].decode("utf-8")  # type: ignore[attr-defined]


def test_batch_page_runs_a_zip_and_refuses_a_zip_bomb(chestcovnet_dir: Path, dicom_dir: Path) -> None:
    """The Streamlit page end to end (bundled model, one method to stay quick): a zip of two films, a zip
    bomb, and a DICOM whose header carries identifiers that must not reach any download. By default every
    download names the films by the Explain page's hashed names (no uploaded file name anywhere) and the zip
    is compact (JPEG overlays, no thumbnails or row records); with patient details on, the uploaded names
    and full-resolution PNGs. No temporary folder is left behind."""
    import json
    import tempfile

    import pydicom
    from PIL import Image
    from streamlit.testing.v1 import AppTest

    images = chestcovnet_dir / "images"
    film_a, film_b = (images / "nih_00008727_009.jpg").read_bytes(), (images / "mhh_b343e657.jpg").read_bytes()
    good = _zip({"films/a.jpg": film_a, "films/b.jpg": film_b}, compression=zipfile.ZIP_STORED)
    bomb = _zip({"bomb.dcm": bytes(20 * 1024 * 1024)})
    ds = pydicom.dcmread(dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm")
    phi = {"PatientName": "Qwzyx^Vbnmo", "PatientID": "MRN-5550199", "InstitutionName": "Grommet Infirmary",
           "StudyDate": "20190723", "PatientBirthDate": "19380511"}
    for keyword, value in phi.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    scan = buffer.getvalue()
    card = json.loads((Path(__file__).resolve().parents[1] / "models" / "bundles" / "chestcovnet" / "card.json").read_text())
    hashed = [export_stem(card["name"], hashlib.sha256(data).hexdigest()) for data in (film_a, film_b, bomb, scan)]
    before = set(Path(tempfile.gettempdir()).glob("xai-batch-*"))

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "batch.py"), default_timeout=300)
    at.run()
    assert not at.exception
    at.file_uploader(key="batch_uploads").set_value([("films.zip", good, "application/zip"),
                                                      ("bomb.zip", bomb, "application/zip"),
                                                      ("scan.dcm", scan, "application/dicom")])
    at.file_uploader(key="batch_boxes").set_value(("boxes.csv", b"file,x,y,w,h\na.jpg,100,200,150,150\n", "text/csv"))
    at.multiselect[0].set_value(["gradcam"])
    at.button[0].click()  # the form's submit button
    at.run()
    assert not at.exception, at.exception
    assert "3 of 4 image(s) explained" in at.success[0].value
    assert any("| gradcam | 1 |" in m.value for m in at.markdown)  # agreement for the one boxed film
    cohort = [m.value for m in at.markdown if "Where the model looks" in m.value]
    # per site too, but under neutral names: folders may name patients
    assert ["by site" in cohort[0], "by predicted class" in cohort[1]] == [True, True] and len(cohort) == 2
    cohort_view = {grouping: (groups, regions)
                   for grouping, groups, regions in at.session_state[Key.STORES]["batch"]["result"]["cohort"]}
    sites, site_regions = cohort_view["folder"]
    assert [(name, n) for name, n, _rgb in sites] == [("site 1", 2), ("site 2", 1)]  # films/, then scan.dcm
    # beside the mean maps: each group's mean share per anatomical region, as a stacked bar per group
    from xai.anatomy import REGIONS
    for shares in site_regions.values():
        # each film's shares are stored to 6 decimals: their means add up to 1 within 13 roundings
        assert set(shares) == set(REGIONS) and sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
    bars = [c for c in at.get("plotly_chart") if "cohort_regions" in str(c.proto.id)]
    assert len(bars) == 2  # by site and by predicted class
    assert "Where the model looks, relative to the lungs" in result_html(at)
    warning = at.warning[-1].value  # on screen: the hashed name and which upload it was
    assert hashed[2] in warning and "bomb.zip" in warning and "zip bomb" in warning
    assert len(at.get("download_button")) == 3
    result = at.session_state[Key.STORES]["batch"]["result"]
    files = dict(read_zip(result["zip"]))
    assert sorted(files) == sorted(["report.csv", "index.html", *(f"{h}/gradcam.jpg" for h in (hashed[0], hashed[1],
                                                                                                hashed[3]))])
    with Image.open(io.BytesIO(files[f"{hashed[3]}/gradcam.jpg"])) as overlay:
        assert overlay.format == "JPEG" and max(overlay.size) == 1024  # the DICOM's own 1024 px (compact: at most 1024)
    rows = list(csv.DictReader(io.StringIO(result["csv"].decode("utf-8"))))
    assert [(r["file"], r["status"]) for r in rows] == [(hashed[0], "ok"), (hashed[1], "ok"), (hashed[2], "failed"),
                                                        (hashed[3], "ok")]
    # On screen, one sortable row per explained film: its thumbnails, and the report's own figures.
    (films,) = [d.value for d in at.dataframe if "prediction" in d.value.columns]
    ok = [r for r in rows if r["status"] == "ok"]
    assert films["name"].tolist() == [r["file"] for r in ok]
    assert films["prediction"].tolist() == [r["prediction"] for r in ok]
    assert films["probability"].tolist() == pytest.approx([float(r[f"p_{r['target']}"]) for r in ok], abs=1e-6)
    in_lungs = [float(r["gradcam_in_lungs"]) if r["gradcam_in_lungs"] else float("nan") for r in ok]
    assert films["evidence in the lungs"].tolist() == pytest.approx(in_lungs, abs=1e-6, nan_ok=True)
    from xai.anatomy import REGIONS

    def top_two(r: dict[str, str]) -> str:  # the two largest regions, from the CSV's own columns
        shares = sorted(((float(r[f"gradcam_{k.replace(' ', '_')}"]), k) for k in REGIONS
                         if r[f"gradcam_{k.replace(' ', '_')}"]), reverse=True)[:2]
        return " · ".join(f"{v:.0%} {k}" for v, k in shares if v >= 0.005)

    for r, v, where in zip(ok, in_lungs, films["where the evidence lies"], strict=True):
        expected = top_two(r) or (f"{v:.0%} in the lungs" if v == v else "no lung field found")
        assert where.startswith(expected), (where, expected)
    assert any("·" in w for w in films["where the evidence lies"])  # the anatomical readout is there
    assert [w if w == "no warning" else "warned" for w in films["warning"]] == [
        "warned" if r["ood_warning"] else "no warning" for r in ok]
    for column in ("film", "map"):
        assert all(str(v).startswith("data:image/jpeg;base64,") for v in films[column])
    assert any("No warning” is not proof" in c.value for c in at.caption)
    assert rows[0]["n_boxes"] == "1"  # boxes still match the uploaded file name
    downloads = [result["zip"], result["csv"], result["html"], *files.values()]
    for secret in ["Qwzyx", "Vbnmo", "MRN-5550199", "Grommet", "20190723", "19380511", "films.zip", "films/", "a.jpg", "b.jpg", "bomb.zip",
                   "bomb.dcm", "scan"]:
        assert not any(secret.encode() in blob for blob in downloads), secret

    # Patient details on, full resolution: the uploaded names, PNG overlays on the film's grid.
    at.file_uploader(key="batch_uploads").set_value([("films.zip", good, "application/zip")])
    at.toggle(key="batch_show_patient").set_value(True)
    at.radio(key="batch_overlays").set_value(at.radio(key="batch_overlays").options[1])
    at.button[0].click()
    at.run()
    assert not at.exception, at.exception
    result = at.session_state[Key.STORES]["batch"]["result"]
    rows = list(csv.DictReader(io.StringIO(result["csv"].decode("utf-8"))))
    assert [r["file"] for r in rows] == ["films.zip/films/a.jpg", "films.zip/films/b.jpg"]
    assert any("by folder" in m.value for m in at.markdown)  # names shown: the folder grouping too
    cohort_view = {g: groups for g, groups, _regions in at.session_state[Key.STORES]["batch"]["result"]["cohort"]}
    assert [n for n, _count, _rgb in cohort_view["folder"]] == ["films"]
    (films,) = [d.value for d in at.dataframe if "prediction" in d.value.columns]
    assert films["name"].tolist() == ["films.zip/films/a.jpg", "films.zip/films/b.jpg"]
    files = dict(read_zip(result["zip"]))
    assert sorted(files) == ["a/gradcam.png", "b/gradcam.png", "index.html", "report.csv"]
    with Image.open(io.BytesIO(files["b/gradcam.png"])) as overlay, Image.open(images / "mhh_b343e657.jpg") as film:
        assert overlay.size == film.size and "model_sha256" in overlay.text["Description"]
    assert set(Path(tempfile.gettempdir()).glob("xai-batch-*")) == before
