"""The Review page (``/review``) driven headless with ``streamlit.testing.v1.AppTest`` through ``app.py``.

Real radiographs, the bundled model, a real SQLite review database in a temporary folder (``XAI_DB_URL``).
Checks the blinded read (no model output, no map before the read is recorded), the anonymised maps
("Map A-D" in the stored per-reader order, no method name on screen), that answers land under the
right method, that a save leaving maps unrated asks first, that a reader sees only their own answers
(also one who types the owner's name without the owner's secret), the owner's results (for people:
rounded, units, no JSON) and exports, the teaching reveal and reader accuracy, session creation from
the page (a zip, a bundled sample, a labels CSV; the owner's secret shown once) and clear messages for
bad input.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import models
from xai.export import METHOD_TITLES
from xai.pipeline import explain_radiograph
from xai.review import ReviewStore, map_letters
from xai.trust.metrics import box_to_mask, energy_inside, pointing_game

APP = Path(__file__).resolve().parents[1] / "app.py"
TIMEOUT = 300
FILMS = ("cxnet_001.jpg", "mhh_a4318ac9.jpg")
SECRET = "olga's owner secret"
ALL_MAPS = ("gradcam", "gradcam++", "guided_backprop", "guided_gradcam")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ReviewStore:
    url = f"sqlite:///{tmp_path / 'review.sqlite3'}"
    monkeypatch.setenv("XAI_DB_URL", url)
    return ReviewStore(url)


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click()
    return run(at)


def open_review(name: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    run(at)
    run(at.switch_page("pages/review.py"))
    at.text_input(key="review_reader_name").input(name)
    return run(at)


def labels(at: AppTest, widget: str) -> list[str]:
    return [w.label for w in getattr(at, widget)]


def maps_chart(at: AppTest) -> dict | None:
    charts = [c for c in at.get("plotly_chart") if "review_maps" in c.proto.id]
    return json.loads(charts[0].proto.spec) if charts else None


def screen_text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [i.value for i in at.info] + [c.value for c in at.caption]
    parts += [a.value for a in at.success] + [a.value for a in at.warning] + [a.value for a in at.error]
    parts += labels(at, "radio") + labels(at, "button") + [t.value for t in at.text_area]
    parts += [d.value.to_csv() for d in at.dataframe]
    return "\n".join(str(p) for p in parts)


def open_results(at: AppTest) -> AppTest:
    control = at.get("segmented_control")[0]
    assert "Results" in str(control.proto)
    control.set_value("Results")
    return run(at)


def unlock(at: AppTest, sid: str, secret: str) -> AppTest:
    at.text_input(key=f"review_owner_secret_{sid}").input(secret)
    return click(at, "review_owner_unlock")


def test_blinded_anonymised_read_saves_under_the_right_methods(store, chestcovnet_dir):
    sid = store.create_session("study", [str(chestcovnet_dir / "images" / f) for f in FILMS], owner="olga")
    first, second = store.cases(sid)
    at = open_review("ann")
    # blinded: the film and the read, no model output and no map yet
    assert "Record my read" in labels(at, "button")
    assert maps_chart(at) is None and not [i for i in at.info if "Model (" in i.value]
    assert not any(title in screen_text(at) for title in METHOD_TITLES.values())
    at.radio(key=f"review_dx_{sid}_{first}").set_value("non_covid")
    at.radio(key=f"review_conf_{sid}_{first}").set_value(2)
    click(at, "review_record")
    (saved,) = store.history(sid)
    assert (saved["diagnosis"], saved["confidence"], saved["plausibility"]) == ("non_covid", 2, {})

    # revealed: the prediction and four maps titled Map A-D, no method name anywhere on screen
    assert any("Model (chestcovnet)" in i.value for i in at.info)
    chart = maps_chart(at)
    assert [a["text"] for a in chart["layout"]["annotations"]] == ["Map A", "Map B", "Map C", "Map D"]
    assert sum(t["type"] == "image" for t in chart["data"]) == 4
    assert not any(title in screen_text(at) for title in METHOD_TITLES.values())
    assert "Your read: **Not COVID-19**, confidence 2" in screen_text(at)  # locked after the reveal
    assert not [i for i in at.info if "Reference diagnosis" in i.value]  # no reference for this case
    letters = map_letters(store.map_order(sid, first, "ann"))
    for i, value in enumerate((5, 4, 2, 1)):
        assert at.radio(key=f"review_pl_{sid}_{first}_{i}").label == f"Map {'ABCD'[i]}"
        at.radio(key=f"review_pl_{sid}_{first}_{i}").set_value(value)
    at.text_area(key=f"review_note_{sid}_{first}").input("consolidation right lower zone")
    click(at, "review_save")
    (row,) = store.export(sid)
    assert row["plausibility"] == {method: v for v, method in zip((5, 4, 2, 1), letters.values(), strict=True)}
    assert (row["diagnosis"], row["confidence"], row["note"]) == ("non_covid", 2, "consolidation right lower zone")
    assert row["map_order"] == list(letters.values()) and row["seconds"] is not None
    assert len(store.history(sid)) == 2  # the read, then the full rating: both kept
    # saved and moved on to the next case, whose read is blinded again
    assert "Record my read" in labels(at, "button") and maps_chart(at) is None
    assert f"review_dx_{sid}_{second}" in [r.key for r in at.radio]
    assert store.predictions(sid, "chestcovnet")[first] in ("covid19", "non_covid")


def test_a_second_reader_resumes_sees_only_own_answers_and_the_owner_gets_results(store, chestcovnet_dir):
    sid = store.create_session("shared", [str(chestcovnet_dir / "images" / f) for f in FILMS], owner="olga",
                               blinded=False, owner_secret=SECRET)
    first, second = store.cases(sid)
    store.save_rating(sid, first, "ann", {"diagnosis": "covid19", "confidence": 5, "note": "ann's secret",
                                          "plausibility": {"gradcam": 5}, "box": [50, 60, 100, 120]})
    store.save_case(sid, first, "ben", {"diagnosis": "covid19", "confidence": 3,
                                        "plausibility": {m: 4 for m in ALL_MAPS}})
    at = open_review("ben")
    # ben resumes at his first unfinished case (the second) and the page has no Results view for him
    assert f"review_dx_{sid}_{second}" in [r.key for r in at.radio]
    assert not [s for s in at.get("segmented_control") if "Results" in str(s.proto)]
    assert "ann's secret" not in screen_text(at)
    click(at, "review_prev")  # back to the first case: his own answers, not ann's
    assert at.radio(key=f"review_dx_{sid}_{first}").value == "covid19"
    assert at.radio(key=f"review_conf_{sid}_{first}").value == 3
    assert at.text_area(key=f"review_note_{sid}_{first}").value == ""
    # not blinded: the maps are there at once
    assert maps_chart(at) is not None

    # someone typing the owner's name: her own (empty) answers, a secret to give, nobody's answers or notes
    impostor = open_review("olga")
    assert "ann's secret" not in screen_text(impostor) and "review_close" not in [b.key for b in impostor.button]
    open_results(impostor)
    assert not impostor.metric and not impostor.dataframe and not impostor.get("download_button")
    unlock(impostor, sid, "olga")
    assert any("not this session's owner secret" in e.value for e in impostor.error)
    assert "ann's secret" not in screen_text(impostor) and not impostor.dataframe

    owner = open_results(open_review("olga"))
    unlock(owner, sid, SECRET)
    metrics = {m.label: m.value for m in owner.metric}
    assert metrics["Readers"] == "2"
    assert metrics["Fleiss' kappa (read)"] == "–"  # one case, both said covid19: one category only (undefined)
    charts = [c for c in owner.get("plotly_chart") if "review_plausibility_chart" in c.proto.id]
    bars = json.loads(charts[0].proto.spec)["data"][0]
    assert bars["x"][0] == "Grad-CAM" and bars["y"][0] == 4.5
    ratings = owner.dataframe[-1].value
    assert list(ratings["Reader"]) == ["ann", "ben"] and "ann's secret" in list(ratings["Note"])
    assert list(ratings["Box (px)"]) == ["x 50, y 60, 100 × 120", "–"]
    assert all(t.endswith(" s") for t in ratings["Time on case"]) or set(ratings["Time on case"]) == {"–"}
    assert all(re.fullmatch(r"\d{1,2} [A-Z][a-z]{2} \d{4}, \d\d:\d\d UTC", t) for t in ratings["Saved"])
    assert not any("{" in str(v) for v in ratings.to_numpy().ravel())  # no JSON for people
    assert {b.proto.label for b in owner.get("download_button")} == {"Ratings (CSV)", "Session report (HTML)"}
    # the readers' boxes against the maps, computed by the engine on the stored film
    owner.toggle(key=f"review_score_boxes_{sid}").set_value(True)
    run(owner)
    table = owner.dataframe[0].value
    gradcam = table[table["Method"] == "Grad-CAM"].iloc[0]
    result = explain_radiograph(store.radiograph(sid, first), models.load("chestcovnet"), name="case",
                                methods=["gradcam"])
    mask = box_to_mask((50, 60, 100, 120), result.maps["gradcam"].shape)
    assert gradcam["Box hit rate"] == float(pointing_game(result.maps["gradcam"], mask))
    assert gradcam["Map energy in box"] == pytest.approx(energy_inside(result.maps["gradcam"], mask), abs=0.005)
    assert store.predictions(sid, "chestcovnet")[first] == result.predicted
    # the box's main anatomical region against the map's two largest (independently: xai.anatomy here)
    from pages._lungs import REGIONS_SIDE
    from xai.anatomy import anatomy_regions, evidence_by_region
    from xai.review.stats import box_regions

    film = store.radiograph(sid, first)
    regions = anatomy_regions(film, max_side=REGIONS_SIDE, markers_side=REGIONS_SIDE, ocr=False)
    covered = box_regions((50, 60, 100, 120), film.shape, regions)
    main = max(covered, key=covered.__getitem__)
    shares = evidence_by_region(result.maps["gradcam"], regions)
    zones = next(d.value for d in owner.dataframe if "reader's zone" in d.value.columns)
    row = zones[zones["method"] == "Grad-CAM"]
    assert list(row["reader's zone"]) == [main] and list(row["boxes"]) == [1]
    assert float(row["map agrees"].iloc[0]) == float(main in sorted(shares, key=shares.__getitem__)[-2:])
    click(owner, "review_close")
    assert store.session(sid).closed
    # closed: the reader gets the statistics and his own answers, still nothing of ann's
    again = open_results(open_review("ben"))
    assert {m.label: m.value for m in again.metric}["Readers"] == "2"
    assert list(again.dataframe[-1].value["Reader"]) == ["ben"]
    assert "ann's secret" not in screen_text(again) and not again.get("download_button")


def test_create_a_session_from_a_zip_and_a_sample_and_refuse_bad_input(store, chestcovnet_dir):
    at = open_review("olga")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.write(chestcovnet_dir / "images" / FILMS[0], "films/a.jpg")
        z.write(chestcovnet_dir / "images" / FILMS[1], "films/b.jpg")
    at.text_input(key="review_new_name").input("from the page")
    at.file_uploader(key="review_new_files").set_value(("films.zip", archive.getvalue(), "application/zip"))
    at.multiselect(key="review_new_samples").set_value([at.multiselect(key="review_new_samples").options[0]])
    at.file_uploader(key="review_new_labels").set_value(("labels.csv", b"file,diagnosis\nb.jpg,covid19\n", "text/csv"))
    click(at, "review_create")
    (session,) = store.sessions()
    assert (session.name, session.n_cases, session.owner, session.patient_details) == ("from the page", 3, "olga", False)
    assert all(store.case_info(session.id, c)["label"] is None for c in store.cases(session.id))
    assert [store.case_info(session.id, c)["reference"] for c in store.cases(session.id)] == [None, "covid19", None]
    assert at.selectbox(key="review_session_choice").value == "from the page"
    # the owner's secret, shown once: it verifies against the stored hash, and is gone once dismissed
    (shown,) = at.code
    assert session.has_owner_secret and store.verify_owner(session.id, shown.value)
    assert any("shown only now" in w.value for w in at.warning)
    click(at, "review_secret_done")
    assert not at.code

    at.text_input(key="review_new_name").input("from the page")  # duplicate name
    click(at, "review_create")
    assert any("exists already" in e.value for e in at.error)
    at.text_input(key="review_new_name").input("broken")
    at.file_uploader(key="review_new_files").set_value(("notes.png", b"not an image" * 40, "image/png"))
    at.multiselect(key="review_new_samples").set_value([])
    click(at, "review_create")
    assert any("notes.png" in e.value and "not created" in e.value for e in at.error), [e.value for e in at.error]
    assert [s.name for s in store.sessions()] == ["from the page"]


def test_a_save_with_unrated_maps_asks_first_and_says_what_was_stored(store, chestcovnet_dir):
    sid = store.create_session("partial", [str(chestcovnet_dir / "images" / f) for f in FILMS], owner="olga",
                               blinded=False)
    first, second = store.cases(sid)
    at = open_review("ann")
    at.radio(key=f"review_dx_{sid}_{first}").set_value("covid19")
    at.radio(key=f"review_conf_{sid}_{first}").set_value(3)
    at.radio(key=f"review_pl_{sid}_{first}_0").set_value(4)
    at.radio(key=f"review_pl_{sid}_{first}_2").set_value(2)
    click(at, "review_save")
    assert store.history(sid) == []  # nothing saved before the reader confirms
    (warning,) = [w.value for w in at.warning if "no rating for" in w.value]
    assert "Map B, Map D" in warning
    click(at, "review_confirm_save")
    (row,) = store.export(sid)
    order = store.map_order(sid, first, "ann")
    assert row["plausibility"] == {order[0]: 4, order[2]: 2}
    assert any("2 of 4 map ratings (not rated: Map B, Map D)" in m.value for m in at.success)
    assert store.progress(sid, "ann")["done"] == 0  # not complete: the progress does not count it
    assert "you have completed 0 of 2" in at.get("progress")[0].proto.text
    # rated whole: saved at once, the case counts
    click(at, "review_prev")
    for i in range(4):
        at.radio(key=f"review_pl_{sid}_{first}_{i}").set_value(5 - i)
    click(at, "review_save")
    assert store.export(sid)[0]["plausibility"] == {m: 5 - i for i, m in enumerate(order)}
    assert any("4 of 4 map ratings." in m.value for m in at.success)
    assert store.progress(sid, "ann") == {"done": 1, "total": 2, "next": 1}


def test_teaching_reveals_the_reference_after_the_read_and_the_owner_sees_accuracy(store, chestcovnet_dir):
    films = [str(chestcovnet_dir / "images" / f) for f in FILMS]
    sid = store.create_session("teaching", films, owner="olga", owner_secret=SECRET,
                               references={FILMS[0]: "covid19"})
    first, second = store.cases(sid)
    at = open_review("ann")
    assert "Reference diagnosis" not in screen_text(at)  # not before the read
    at.radio(key=f"review_dx_{sid}_{first}").set_value("non_covid")
    at.radio(key=f"review_conf_{sid}_{first}").set_value(4)
    click(at, "review_record")
    assert any("Reference diagnosis: **COVID-19** · your read: Not COVID-19 (differs)" in i.value for i in at.info)
    store.save_case(sid, second, "ann", {"diagnosis": "covid19", "confidence": 2,
                                         "plausibility": {m: 3 for m in ALL_MAPS}})
    store.save_case(sid, first, "ben", {"diagnosis": "covid19", "confidence": 2,
                                        "plausibility": {m: 3 for m in ALL_MAPS}})
    owner = unlock(open_results(open_review("olga")), sid, SECRET)
    table = next(d.value for d in owner.dataframe if "Decided reads" in d.value.columns)
    assert list(table["Reader"]) == ["ann", "ben"]
    assert list(table["Decided reads"]) == [1, 1] and list(table["Accuracy"]) == ["0%", "100%"]
    # the owner sets the second case's reference from the reading view
    control = owner.get("segmented_control")[0]
    control.set_value("Read")
    run(owner)
    click(owner, "review_next")
    owner.selectbox(key=f"review_ref_{sid}_{second}").set_value("non_covid")
    run(owner)
    assert store.case_info(sid, second)["reference"] == "non_covid"
