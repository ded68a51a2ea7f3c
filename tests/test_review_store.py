"""The review store on SQLite AND PostgreSQL: the same tests run against both databases.

PostgreSQL: a throw-away cluster (``initdb`` + ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``) listening on
a unix socket in a temporary folder only (no TCP), started once per test session, run as the ``postgres``
user when the tests run as root. A missing server FAILS the tests (``make test`` installs it), never skips.
Each test gets a fresh database (a fresh URL, hence a fresh engine and a fresh Alembic migration).
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import sqlalchemy as sa

from xai.radiograph import load_radiograph
from xai.review import (
    MissingRatings,
    ReviewError,
    ReviewStore,
    hash_secret,
    map_letters,
    method_order,
    read_labels_csv,
    secret_matches,
)
from xai.review.pixels import decode_pixels, encode_pixels

REPO = Path(__file__).resolve().parents[1]
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
FILMS = ("mhh_a4318ac9.jpg", "cxnet_001.jpg", "cxnet_002.jpg")
CANARIES = ("CANARY^PATIENT^QZX", "CANARYID9731", "CANARY GENERAL HOSPITAL QX", "19010203", "19020304",
            "CANARYACC5521", "CANARY_FILENAME_77")


# ----------------------------------------------------------------------------------- PostgreSQL
def pg_bin() -> Path:
    found = sorted(glob.glob(PG_BIN_GLOB))
    assert found, (f"no PostgreSQL server binaries in {PG_BIN_GLOB}: install them (`make test` runs "
                   "apt-get install postgresql as root). The PostgreSQL tests never skip.")
    return Path(found[-1])


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresCluster:
    """``initdb`` a cluster in a fresh temporary folder and serve it on a unix socket there (``fsync`` off
    for the tests, on for the benchmark)."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="xai-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(_as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                                     "--auth=trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        options = (f"-k {self.root} -c listen_addresses='' -c fsync={'on' if fsync else 'off'} "
                   "-c max_connections=60")
        started = subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                               "-o", options, "-w", "-t", "60", "start"]),
                                 capture_output=True, text=True, timeout=90)
        assert started.returncode == 0, f"pg_ctl start failed: {started.stderr}\n{self.log.read_text()[-2000:]}"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.root}"

    def new_database(self) -> str:
        name = "review_" + uuid.uuid4().hex[:10]
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.sqlite3'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(scope="module")
def films(chestcovnet_dir: Path) -> list[Path]:
    return [chestcovnet_dir / "images" / name for name in FILMS]


def rating(diagnosis: str = "covid19", confidence: int = 4, **extra: object) -> dict:
    return {"diagnosis": diagnosis, "confidence": confidence, **extra}


# ------------------------------------------------------------------------------------ the suite
def test_session_round_trip_worklist_order_and_deidentified_pixels(db_url, films):
    store = ReviewStore(db_url)
    sid = store.create_session("study 1", [str(p) for p in films], owner="owner", methods=["gradcam", "gradcam++"])
    session = store.session(sid)
    assert (session.name, session.owner, session.methods, session.n_cases) == ("study 1", "owner",
                                                                               ("gradcam", "gradcam++"), 3)
    assert session.blinded and session.anonymised and not session.patient_details and not session.closed
    ids = store.cases(sid)
    assert len(ids) == 3 == len(set(ids))
    for position, (case_id, path) in enumerate(zip(ids, films, strict=True)):
        info = store.case_info(sid, case_id)
        assert info["position"] == position and info["label"] is None  # no file name without patient details
        expected = load_radiograph(path).pixels
        stored = store.pixels(sid, case_id)
        assert stored.shape == expected.shape == (info["height"], info["width"])
        assert np.abs(stored - expected).max() <= 0.5 / 65535 + 1e-7  # 16-bit quantisation only
    assert [s.name for s in store.sessions()] == ["study 1"]
    # a second store on the same URL sees the same data (and the same migrated schema)
    assert ReviewStore(db_url).cases(sid) == ids


def test_later_save_replaces_in_export_and_history_keeps_both(db_url, films):
    store = ReviewStore(db_url)
    sid = store.create_session("s", [str(films[0]), str(films[1])], owner="olga")
    first, second = store.cases(sid)
    store.save_rating(sid, first, "ann", rating("covid19", 5, plausibility={"gradcam": 2}, note="GGO left",
                                                box=[10, 20, 30, 40]))
    store.save_rating(sid, first, "ann", rating("non_covid", 2, plausibility={"gradcam": 4, "gradcam++": 1}))
    store.save_rating(sid, first, "ben", rating("uncertain", 3, seconds=12.5))
    store.save_rating(sid, second, "ann", rating("covid19", 1, box=[-5, -5, 50, 60]))
    rows = store.export(sid)
    assert [(r["position"], r["reader"]) for r in rows] == [(1, "ann"), (1, "ben"), (2, "ann")]
    ann1, ben1, ann2 = rows
    assert (ann1["diagnosis"], ann1["confidence"], ann1["note"], ann1["box"]) == ("non_covid", 2, "", None)
    assert ann1["plausibility"] == {"gradcam": 4, "gradcam++": 1}
    assert ann1["map_order"] == list(method_order(sid, first, "ann", store.session(sid).methods))
    assert ben1["seconds"] == 12.5 and ben1["case"] == first
    assert ann2["box"] == [0.0, 0.0, 45.0, 55.0]  # clipped to the film
    assert all(r["saved_at"].endswith("+00:00") for r in rows)
    history = store.history(sid, reader="ann")
    assert [(h["case"], h["diagnosis"]) for h in history] == [(first, "covid19"), (first, "non_covid"),
                                                             (second, "covid19")]
    assert history[0]["box"] == [10.0, 20.0, 30.0, 40.0] and history[0]["note"] == "GGO left"
    # done = the read AND every map rated: no case of ann's is complete (first: 2 of 4 maps, second: none)
    assert store.progress(sid, "ann") == {"done": 0, "total": 2, "next": 0}
    all_maps = {m: 3 for m in store.session(sid).methods}
    store.save_case(sid, second, "ann", rating("covid19", 1, plausibility=all_maps))
    assert store.progress(sid, "ann") == {"done": 1, "total": 2, "next": 0}
    store.save_case(sid, first, "ann", rating("covid19", 1, plausibility=all_maps))
    assert store.progress(sid, "ann") == {"done": 2, "total": 2, "next": None}
    assert store.progress(sid, "ben") == {"done": 0, "total": 2, "next": 0}
    assert store.progress(sid, "cyd") == {"done": 0, "total": 2, "next": 0}


def test_a_reader_sees_only_their_answers_before_and_after_the_owner_closes(db_url, films):
    store = ReviewStore(db_url)
    sid = store.create_session("blind", [str(films[0])], owner="olga")
    (case,) = store.cases(sid)
    store.save_rating(sid, case, "ann", rating("covid19"))
    store.save_rating(sid, case, "ben", rating("non_covid"))
    assert [r["reader"] for r in store.export(sid, reader="ann")] == ["ann"]
    assert [r["reader"] for r in store.export(sid, reader="ben")] == ["ben"]
    # typing the owner's name proves nothing: the name's own answers only (none); all needs reader=None
    assert store.export(sid, reader="olga") == []
    assert [r["reader"] for r in store.export(sid)] == ["ann", "ben"]
    with pytest.raises(ReviewError, match="only the session's owner"):
        store.close_session(sid, by="ann")
    store.close_session(sid, by="olga")
    assert store.session(sid).closed
    assert [r["reader"] for r in store.export(sid, reader="ann")] == ["ann"]
    assert store.export(sid, reader="olga") == []
    with pytest.raises(ReviewError, match="closed"):
        store.save_rating(sid, case, "ann", rating("uncertain"))
    assert len(store.history(sid)) == 2


@pytest.mark.parametrize(("bad", "message"), [
    ({"diagnosis": "pneumonia", "confidence": 3}, "diagnosis must be one of covid19, non_covid, uncertain"),
    ({"diagnosis": "covid19", "confidence": 6}, "confidence must be from 1 to 5, got 6"),
    ({"diagnosis": "covid19", "confidence": 2.5}, "confidence must be a whole number"),
    ({"diagnosis": "covid19"}, "confidence must be a whole number"),
    ({"diagnosis": "covid19", "confidence": True}, "confidence must be a whole number"),
    ({"diagnosis": "covid19", "confidence": 3, "plausibility": {"lime": 3}}, r"method\(s\) \['lime'\]"),
    ({"diagnosis": "covid19", "confidence": 3, "plausibility": {"gradcam": 0}}, "plausibility of gradcam must be from 1 to 5"),
    ({"diagnosis": "covid19", "confidence": 3, "box": [1, 2, 3]}, r"box must be \[x, y, w, h\]"),
    ({"diagnosis": "covid19", "confidence": 3, "box": [1, 2, 0, 5]}, "positive finite width"),
    ({"diagnosis": "covid19", "confidence": 3, "box": [9000, 9000, 5, 5]}, "lies outside"),
    ({"diagnosis": "covid19", "confidence": 3, "note": 5}, "note must be text"),
    ({"diagnosis": "covid19", "confidence": 3, "mood": "tired"}, r"unknown rating field\(s\) \['mood'\]"),
    ({"diagnosis": "covid19", "confidence": 3, "seconds": -1}, "seconds must be a non-negative number"),
])
def test_invalid_ratings_are_refused_with_a_clear_message(db_url, films, bad, message):
    store = ReviewStore(db_url)
    sid = store.create_session("v", [str(films[0])], owner="o")
    (case,) = store.cases(sid)
    with pytest.raises(ReviewError, match=message):
        store.save_rating(sid, case, "ann", bad)
    with pytest.raises(ReviewError, match="reader must not be empty"):
        store.save_rating(sid, case, "  ", rating())
    with pytest.raises(ReviewError, match="is not in session"):
        store.save_rating(sid, "nope", "ann", rating())
    assert store.history(sid) == []


def test_questions_not_asked_are_refused_and_not_required(db_url, films):
    store = ReviewStore(db_url)
    sid = store.create_session("q", [str(films[0])], owner="o", questions=["plausibility", "note"])
    (case,) = store.cases(sid)
    store.save_rating(sid, case, "ann", {"plausibility": {"gradcam": 5}, "note": "fine"})
    with pytest.raises(ReviewError, match=r"does not ask for \['diagnosis'\]"):
        store.save_rating(sid, case, "ann", {"diagnosis": "covid19"})
    (row,) = store.export(sid)
    assert (row["diagnosis"], row["confidence"], row["plausibility"]) == (None, None, {"gradcam": 5})


def test_bad_sessions_are_refused_and_store_nothing(db_url, films, tmp_path):
    store = ReviewStore(db_url)
    text = tmp_path / "notes.png"
    text.write_bytes(b"not an image at all" * 20)
    with pytest.raises(ReviewError, match=r"notes\.png: "):
        store.create_session("bad file", [str(films[0]), str(text)])
    with pytest.raises(ReviewError, match="no such file"):
        store.create_session("missing", [str(tmp_path / "gone.png")])
    with pytest.raises(ReviewError, match="worklist is empty"):
        store.create_session("empty", [])
    with pytest.raises(ReviewError, match=r"unknown method\(s\)"):
        store.create_session("m", [str(films[0])], methods=["lime"])
    with pytest.raises(ReviewError, match="session name must not be empty"):
        store.create_session(" ", [str(films[0])])
    assert store.sessions() == []
    store.create_session("dup", [str(films[0])])
    with pytest.raises(ReviewError, match="exists already"):
        store.create_session("dup", [str(films[1])])
    assert [s.name for s in store.sessions()] == ["dup"]
    with pytest.raises(ReviewError, match="no review session"):
        store.cases("0" * 32)


def test_anonymised_order_is_per_case_and_reader_deterministic_and_recorded(db_url, films):
    store = ReviewStore(db_url)
    sid = store.create_session("order", [str(p) for p in films], owner="o")
    methods = store.session(sid).methods
    orders = {(c, r): store.map_order(sid, c, r) for c in store.cases(sid) for r in ("ann", "ben", "cyd", "dan")}
    assert all(sorted(o) == sorted(methods) for o in orders.values())
    assert len(set(orders.values())) > 3  # 12 (case, reader) pairs over 24 orders: not all alike
    assert store.map_order(sid, store.cases(sid)[0], "ann") == orders[(store.cases(sid)[0], "ann")]
    assert map_letters(("b", "a")) == {"Map A": "b", "Map B": "a"}
    plain = store.create_session("plain", [str(films[0])], owner="o", anonymised=False)
    assert store.map_order(plain, store.cases(plain)[0], "ann") == methods
    # the order is seeded by (session, case, reader) — a textbook check of the seed, independent of the store
    import hashlib
    import random
    case = store.cases(sid)[1]
    seed = int.from_bytes(hashlib.sha256(f"{sid}\x1f{case}\x1fben".encode()).digest()[:8], "big")
    expected = list(methods)
    random.Random(seed).shuffle(expected)
    assert orders[(case, "ben")] == tuple(expected)


def test_patient_details_keep_the_file_name_only_when_asked(db_url, films):
    store = ReviewStore(db_url)
    sid = store.create_session("named", [str(films[0])], owner="o", patient_details=True)
    (case,) = store.cases(sid)
    assert store.case_info(sid, case)["label"] == films[0].name
    store.save_rating(sid, case, "ann", rating())
    assert store.export(sid)[0]["file"] == films[0].name


def test_predictions_are_recorded_once_per_film_and_model(db_url, films):
    store = ReviewStore(db_url)
    sid = store.create_session("p", [str(films[0]), str(films[1])], owner="o")
    first, second = store.cases(sid)
    sha = store.case_info(sid, first)["image_sha"]
    store.save_prediction(sha, "m1", "covid19", {"covid19": 0.9, "non_covid": 0.1})
    store.save_prediction(sha, "m1", "non_covid", {"covid19": 0.1, "non_covid": 0.9})  # first one wins
    assert store.predictions(sid, "m1") == {first: "covid19"}
    assert store.predictions(sid, "m2") == {}


# ---------------------------------------------------------------------------------- concurrency
def _save_many(url: str, sid: str, cases: list[str], reader: str, n: int, start: object) -> None:
    store = ReviewStore(url)
    start.wait()  # type: ignore[attr-defined]
    for i in range(n):
        case = cases[i % len(cases)]
        store.save_rating(sid, case, reader, {"diagnosis": "covid19", "confidence": 1 + i % 5,
                                              "note": f"{reader}:{i}", "plausibility": {"gradcam": 1 + (i * 3) % 5}})


def test_eight_processes_saving_at_once_lose_nothing(db_url, films):
    store = ReviewStore(db_url)
    sid = store.create_session("busy", [str(p) for p in films], owner="o")
    cases = store.cases(sid)
    store.dispose()
    n_procs, n_saves = 8, 30
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_save_many, args=(db_url, sid, cases, f"reader{p}", n_saves, start))
             for p in range(n_procs)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0] * n_procs
    history = store.history(sid)
    assert len(history) == n_procs * n_saves
    assert len({h["rating_id"] for h in history}) == n_procs * n_saves
    for p in range(n_procs):
        notes = sorted(int(h["note"].split(":")[1]) for h in history if h["reader"] == f"reader{p}")
        assert notes == list(range(n_saves))
    latest = {(r["case"], r["reader"]): r["note"] for r in store.export(sid)}
    assert len(latest) == n_procs * len(cases)
    for p in range(n_procs):  # the last save of each (case, reader) wins
        for k, case in enumerate(cases):
            last = max(i for i in range(n_saves) if i % len(cases) == k)
            assert latest[(case, f"reader{p}")] == f"reader{p}:{last}"


# --------------------------------------------------------------------------------- PHI canary
def canary_dicom(dicom_dir: Path, out_dir: Path) -> Path:
    ds = pydicom.dcmread(dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm")
    ds.PatientName = CANARIES[0]
    ds.PatientID = CANARIES[1]
    ds.InstitutionName = CANARIES[2]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = CANARIES[3]
    ds.PatientBirthDate = CANARIES[4]
    ds.AccessionNumber = CANARIES[5]
    path = out_dir / f"{CANARIES[6]}.dcm"
    ds.save_as(path)
    raw = path.read_bytes()
    assert all(c.encode() in raw for c in CANARIES[:6])  # the canaries really are in the file
    return path


def all_text(url: str) -> str:
    """Every text value stored, read back through SQL (all tables, all string columns)."""
    engine = sa.create_engine(url)
    chunks = []
    with engine.connect() as c:
        inspector = sa.inspect(c)
        for table in inspector.get_table_names():
            for column in inspector.get_columns(table):
                if isinstance(column["type"], sa.String | sa.Text):
                    chunks += [str(v) for v in c.execute(sa.text(f'SELECT "{column["name"]}" FROM "{table}"')).scalars()]
    engine.dispose()
    return "\n".join(chunks)


def test_phi_canary_dicom_leaves_nothing_identifying(db_url, dicom_dir, tmp_path):
    path = canary_dicom(dicom_dir, tmp_path)
    store = ReviewStore(db_url)
    sid = store.create_session("canary", [str(path)], owner="o")
    (case,) = store.cases(sid)
    store.save_rating(sid, case, "ann", rating(note="right lower zone", box=[5, 5, 50, 50]))
    exported = json.dumps(store.export(sid)) + json.dumps(store.history(sid))
    text = all_text(db_url)
    assert "right lower zone" in text  # the check reads real stored text
    if db_url.startswith("sqlite"):
        db_file = Path(sa.make_url(db_url).database)
        store.dispose()
        text += "".join(p.read_bytes().decode("latin-1") for p in db_file.parent.glob(db_file.name + "*"))
    for canary in CANARIES:
        assert canary not in text and canary not in exported, canary
    # the positive control: with patient details on, the file name is kept (so the check can fail)
    named = ReviewStore(db_url).create_session("canary named", [str(path)], owner="o", patient_details=True)
    assert CANARIES[6] in all_text(db_url)
    assert all(c not in all_text(db_url) for c in CANARIES[:6])  # header fields never, even then
    assert ReviewStore(db_url).case_info(named, ReviewStore(db_url).cases(named)[0])["label"] == path.name


# ------------------------------------------------------------------------------------ internals
def test_pixels_round_trip_and_hash_identifies_pixels_not_files():
    rng = np.random.default_rng(0)
    pixels = rng.random((37, 53)).astype(np.float32)
    png, sha = encode_pixels(pixels)
    back = decode_pixels(png)
    assert back.shape == (37, 53) and not back.flags.writeable
    np.testing.assert_allclose(back, pixels, atol=0.5 / 65535 + 1e-7)
    assert encode_pixels(back)[1] == sha  # the same pixels, the same key
    assert encode_pixels(pixels[::-1])[1] != sha
    assert b"tEXt" not in png and b"iTXt" not in png and b"zTXt" not in png  # no metadata chunks


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    store = ReviewStore(f"sqlite:///{tmp_path / 'w.sqlite3'}")
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert ReviewStore(f"sqlite:///{tmp_path / 'w.sqlite3'}").engine is store.engine  # one engine per URL


def test_default_url_uses_the_data_dir_and_xai_db_url(monkeypatch, tmp_path):
    from xai.review import default_url

    monkeypatch.delenv("XAI_DB_URL", raising=False)
    monkeypatch.setenv("XAI_DATA_DIR", str(tmp_path / "d"))
    assert default_url() == f"sqlite:///{tmp_path / 'd' / 'review.sqlite3'}"
    store = ReviewStore()
    assert (tmp_path / "d" / "review.sqlite3").is_file() and store.sessions() == []
    monkeypatch.setenv("XAI_DB_URL", "postgresql+psycopg://u@/db?host=/x")
    assert default_url() == "postgresql+psycopg://u@/db?host=/x"


def test_alembic_records_the_head_revision_and_downgrade_removes_the_tables(tmp_path):
    from alembic.script import ScriptDirectory

    from xai.review.database import alembic_config, migrate

    store = ReviewStore(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head == "0002"
    with store.engine.connect() as c:
        assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == head
    migrate(store.engine, "base", downgrade=True)
    assert sa.inspect(store.engine).get_table_names() == ["alembic_version"]
    migrate(store.engine)
    assert {"review_sessions", "review_cases", "review_ratings", "review_images", "review_predictions",
            "review_map_ratings"} <= set(sa.inspect(store.engine).get_table_names())


# ------------------------------------------------------------------------------ whole-case saves
FAIL_SQLITE = """CREATE TRIGGER fail_third_map BEFORE INSERT ON review_map_ratings
WHEN NEW.method = 'guided_backprop' BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END"""
FAIL_PG = ["""CREATE FUNCTION fail_third_map() RETURNS trigger AS $$
BEGIN IF NEW.method = 'guided_backprop' THEN RAISE EXCEPTION 'simulated disk failure'; END IF; RETURN NEW; END
$$ LANGUAGE plpgsql""", """CREATE TRIGGER fail_third_map BEFORE INSERT ON review_map_ratings
FOR EACH ROW EXECUTE FUNCTION fail_third_map()"""]


def count_rows(store: ReviewStore, table: str) -> int:
    with store.engine.connect() as c:
        return int(c.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def test_a_database_failure_mid_save_stores_nothing_of_the_case(db_url, films):
    """The database itself aborts the third map's INSERT (a trigger), after the rating row and two map rows
    were written in the transaction: nothing of that save may remain."""
    store = ReviewStore(db_url)
    sid = store.create_session("atomic", [str(films[0])], owner="olga")
    (case,) = store.cases(sid)
    methods = store.session(sid).methods
    assert methods.index("guided_backprop") == 2  # two map rows go in before the failing one
    with store.engine.begin() as c:
        for statement in (FAIL_SQLITE,) if db_url.startswith("sqlite") else FAIL_PG:
            c.exec_driver_sql(statement)
    answer = rating("covid19", 4, plausibility={m: 4 for m in methods}, note="GGO", box=[5, 5, 40, 40])
    with pytest.raises(ReviewError, match="nothing was saved.*simulated disk failure"):
        store.save_case(sid, case, "ann", answer)
    assert count_rows(store, "review_ratings") == 0 and count_rows(store, "review_map_ratings") == 0
    assert store.history(sid) == [] and store.progress(sid, "ann")["done"] == 0
    with store.engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER fail_third_map" + ("" if db_url.startswith("sqlite") else " ON review_map_ratings"))
    saved = store.save_case(sid, case, "ann", answer)
    assert saved.complete and dict(saved.stored) == {m: 4 for m in methods}
    assert count_rows(store, "review_map_ratings") == 4 and store.progress(sid, "ann") == {"done": 1, "total": 1, "next": None}


def test_unrated_maps_are_refused_unless_confirmed_and_reported(db_url, films):
    store = ReviewStore(db_url)
    sid = store.create_session("missing", [str(films[0])], owner="olga")
    (case,) = store.cases(sid)
    with pytest.raises(MissingRatings) as refused:
        store.save_case(sid, case, "ann", rating(plausibility={"gradcam": 4, "guided_gradcam": 1}))
    assert refused.value.methods == ("gradcam++", "guided_backprop")
    assert store.history(sid) == []
    saved = store.save_case(sid, case, "ann", rating(plausibility={"gradcam": 4, "guided_gradcam": 1}),
                            allow_missing=True)
    assert not saved.complete and saved.missing == ("gradcam++", "guided_backprop")
    assert dict(saved.stored) == {"gradcam": 4, "guided_gradcam": 1}
    (row,) = store.export(sid)
    assert row["plausibility"] == {"gradcam": 4, "guided_gradcam": 1}
    assert store.missing_answers(store.session(sid), row) == ("gradcam++", "guided_backprop")
    assert store.progress(sid, "ann") == {"done": 0, "total": 1, "next": 0}  # not done until every map is rated


# ------------------------------------------------------------------------------ owner's secret
def test_owner_secret_is_stored_as_a_salted_scrypt_hash_and_verified(db_url, films):
    store = ReviewStore(db_url)
    secret = "correct horse battery"
    sid = store.create_session("owned", [str(films[0])], owner="olga", owner_secret=secret)
    other = store.create_session("owned too", [str(films[0])], owner="olga", owner_secret=secret)
    assert store.session(sid).has_owner_secret
    assert store.verify_owner(sid, secret) and store.verify_owner(other, secret)
    assert not store.verify_owner(sid, "correct horse batterx") and not store.verify_owner(sid, "")
    text = all_text(db_url)
    assert secret not in text
    with store.engine.connect() as c:
        hashes = [c.execute(sa.text("SELECT owner_secret FROM review_sessions WHERE id = :i"), {"i": i}).scalar_one()
                  for i in (sid, other)]
    assert hashes[0] != hashes[1]  # salted: the same secret hashes differently
    # the stored hash is RFC 7914 scrypt of the secret with the stored salt (recomputed independently)
    kind, n, r, p, salt, digest = hashes[0].split("$")
    assert kind == "scrypt" and int(n) >= 2**14 and len(bytes.fromhex(salt)) == 16
    import hashlib
    assert hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                          dklen=len(bytes.fromhex(digest))).hex() == digest
    plain = store.create_session("no secret", [str(films[0])], owner="olga")
    assert not store.session(plain).has_owner_secret and not store.verify_owner(plain, secret)
    with pytest.raises(ReviewError, match="at least 8 characters"):
        store.create_session("short", [str(films[0])], owner="olga", owner_secret="abc")


def test_secret_matches_rejects_malformed_hashes():
    stored = hash_secret("a long enough secret")
    assert secret_matches("a long enough secret", stored)
    assert not secret_matches("a long enough secret", None)
    assert not secret_matches("a long enough secret", "plain text")
    assert not secret_matches("a long enough secret", stored.replace("scrypt", "md5"))
    assert not secret_matches("a long enough secret", stored[:-2] + "zz")


# ------------------------------------------------------------------------------ reference diagnoses
def test_reference_diagnoses_from_a_labels_csv_and_set_by_the_owner(db_url, films):
    labels = read_labels_csv(f"file,diagnosis\nsome/dir/{films[0].name},covid19\n{films[1].name},non_covid\n".encode())
    assert labels == {films[0].name: "covid19", films[1].name: "non_covid"}
    store = ReviewStore(db_url)
    sid = store.create_session("teach", [str(p) for p in films], owner="olga", references=labels)
    first, second, third = store.cases(sid)
    assert [store.case_info(sid, c)["reference"] for c in (first, second, third)] == ["covid19", "non_covid", None]
    assert all(store.case_info(sid, c)["label"] is None for c in (first, second))  # names not kept for it
    store.set_reference(sid, third, "non_covid")
    store.set_reference(sid, first, None)
    assert [store.case_info(sid, c)["reference"] for c in (first, second, third)] == [None, "non_covid", "non_covid"]
    store.save_rating(sid, second, "ann", rating("non_covid"))
    assert store.export(sid)[0]["reference"] == "non_covid"
    with pytest.raises(ReviewError, match="must be one of covid19, non_covid"):
        store.set_reference(sid, first, "uncertain")
    with pytest.raises(ReviewError, match="not in the worklist: nope.png"):
        store.create_session("teach 2", [str(films[0])], references={"nope.png": "covid19"})


@pytest.mark.parametrize(("text", "message"), [
    ("name,label\na.png,covid19\n", "needs a header with 'file' and 'diagnosis'"),
    ("file,diagnosis\na.png,pneumonia\n", "line 2: diagnosis must be one of covid19, non_covid"),
    ("file,diagnosis\n,covid19\n", "line 2: the file name is empty"),
    ("file,diagnosis\na.png,covid19\na.png,non_covid\n", "line 3: a.png is labelled twice"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
])
def test_bad_labels_csv_is_refused_naming_the_line(text, message):
    with pytest.raises(ReviewError, match=message):
        read_labels_csv(text)


def test_migration_0002_moves_map_scores_into_rows_and_back(db_url, films):
    """A database at revision 0001 holding a rating with JSON scores: upgrading keeps every score (as rows),
    downgrading restores the JSON."""
    from xai.review.database import migrate

    store = ReviewStore(db_url)
    sid = store.create_session("old", [str(films[0])], owner="olga")
    (case,) = store.cases(sid)
    store.save_rating(sid, case, "ann", rating(plausibility={"gradcam": 5, "guided_gradcam": 2}))
    migrate(store.engine, "0001", downgrade=True)
    with store.engine.connect() as c:
        assert json.loads(c.exec_driver_sql("SELECT plausibility FROM review_ratings").scalar_one()) == {
            "gradcam": 5, "guided_gradcam": 2}
        assert "review_map_ratings" not in sa.inspect(c).get_table_names()
    migrate(store.engine)
    (row,) = store.export(sid)
    assert row["plausibility"] == {"gradcam": 5, "guided_gradcam": 2} and row["diagnosis"] == "covid19"
