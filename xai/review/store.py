"""The review store: sessions, worklists and readers' ratings in a real database (SQLAlchemy 2.x).

``ReviewStore(url=None)`` opens (and creates or migrates, with Alembic) the database at ``url``, else
``$XAI_DB_URL``, else the SQLite file ``review.sqlite3`` in ``$XAI_DATA_DIR`` (default ``./data``).

Guarantees:

* every write is one short transaction; a crash or a restart loses nothing that was committed. SQLite
  runs in WAL mode with ``synchronous=FULL`` and a busy timeout, and write transactions start with
  ``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing mid-transaction;
* ratings are append-only: a later save by the same reader for the same case wins in :meth:`export`,
  every earlier save stays in :meth:`history`; concurrent readers never overwrite each other;
* a case is saved whole (:meth:`ReviewStore.save_case`): the read, the note, the box and every map's score
  go in one transaction, read back before it commits, so a save is stored entirely or not at all;
* the owner's secret is kept only as a salted scrypt hash (:func:`hash_secret`) and compared in constant
  time; a reader's export holds only that reader's answers;
* films are stored as de-identified pixels only (a 16-bit PNG without metadata, keyed by the SHA-256 of
  the pixels): no DICOM header, no patient identifier, and no file name unless the session was created
  with ``patient_details=True``;
* one engine per process per URL (engines are shared by every ``ReviewStore`` on that URL).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import hmac
import io
import json
import math
import os
import random
import secrets
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from xai.method_names import METHODS
from xai.review import schema

__all__ = [
    "CONFIDENCE_RANGE",
    "DIAGNOSES",
    "REFERENCE_DIAGNOSES",
    "MissingRatings",
    "PLAUSIBILITY_LABELS",
    "PLAUSIBILITY_RANGE",
    "QUESTIONS",
    "ReviewError",
    "ReviewSession",
    "ReviewStore",
    "SavedCase",
    "default_url",
    "hash_secret",
    "new_owner_secret",
    "read_labels_csv",
    "secret_matches",
    "map_letters",
    "method_order",
]

DIAGNOSES = ("covid19", "non_covid", "uncertain")
#: What a reference diagnosis can be (a reader may be uncertain; a reference is not).
REFERENCE_DIAGNOSES = ("covid19", "non_covid")
CONFIDENCE_RANGE = (1, 5)
PLAUSIBILITY_RANGE = (1, 5)
#: The plausibility scale: higher is more plausible (the mean per method reads "higher is better").
PLAUSIBILITY_LABELS = {
    5: "on the finding",
    4: "mostly on the finding",
    3: "partly on the finding",
    2: "in the lungs, off the finding",
    1: "artefact / outside the lungs",
}
#: The questions a session can ask; a session asks all of them unless created with fewer.
QUESTIONS = ("diagnosis", "confidence", "plausibility", "note", "box")
DEFAULT_METHODS = METHODS
BUSY_TIMEOUT_MS = 30_000
MAX_NAME = 200
MAX_NOTE = 10_000
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class ReviewError(ValueError):
    """A request the store refuses (unknown session, invalid rating, closed session...); says why."""


class MissingRatings(ReviewError):
    """A save that leaves maps unrated without ``allow_missing``; ``methods`` are the unrated ones.
    Nothing was stored."""

    def __init__(self, methods: Sequence[str]) -> None:
        self.methods = tuple(methods)
        super().__init__(f"no rating for {len(self.methods)} map(s): {', '.join(self.methods)}; nothing was saved")


@dataclass(frozen=True)
class SavedCase:
    """What :meth:`ReviewStore.save_case` stored: the new row's id, the maps it scored (read back from the
    database before the commit) and the maps left unrated; ``complete`` when nothing asked is missing."""

    rating_id: int
    stored: Mapping[str, int]
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.missing


class Loader(Protocol):
    def __call__(self, source: Any) -> Any: ...


@dataclass(frozen=True)
class ReviewSession:
    """A session's settings as stored (``methods`` and ``questions`` in the order given at creation)."""

    id: str
    name: str
    owner: str
    model: str
    methods: tuple[str, ...]
    questions: tuple[str, ...]
    blinded: bool
    anonymised: bool
    patient_details: bool
    created_at: str
    closed_at: str | None
    n_cases: int
    has_owner_secret: bool = False

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


# ------------------------------------------------------------------------------------------ helpers
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def default_url() -> str:
    """``$XAI_DB_URL``, else ``sqlite:///<$XAI_DATA_DIR or ./data>/review.sqlite3``."""
    url = os.environ.get("XAI_DB_URL")
    if url:
        return url
    data_dir = Path(os.environ.get("XAI_DATA_DIR") or Path.cwd() / "data")
    return f"sqlite:///{(data_dir / 'review.sqlite3').resolve()}"


def method_order(session_id: str, case_id: str, reader: str, methods: Sequence[str]) -> tuple[str, ...]:
    """The order in which ``reader`` sees the maps of ``case_id`` ("Map A", "Map B"...).

    A Fisher-Yates shuffle (:meth:`random.Random.shuffle`) seeded with the first 8 bytes of
    SHA-256(session id, case id, reader): different per case and reader, the same every time it is asked
    (so it survives reloads and restarts and can be recovered for the audit), and stored with each save.
    """
    digest = hashlib.sha256("\x1f".join((session_id, case_id, reader)).encode("utf-8")).digest()
    order = list(methods)
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return tuple(order)


def map_letters(order: Sequence[str]) -> dict[str, str]:
    """``{"Map A": method, ...}`` for an order from :func:`method_order`."""
    return {f"Map {chr(ord('A') + i)}": m for i, m in enumerate(order)}


#: scrypt cost (RFC 7914): N = 2^14, r = 8, p = 1 needs 16 MiB and ~50 ms per check, the interactive-login
#: setting of the scrypt paper (Percival 2009); a stolen database then costs a guesser that much per guess.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32


def new_owner_secret() -> str:
    """A fresh owner secret: 16 random bytes (:func:`secrets.token_urlsafe`), 22 characters to copy."""
    return secrets.token_urlsafe(16)


def hash_secret(secret: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (hex) of ``secret`` with a fresh 16-byte salt (:func:`hashlib.scrypt`).

    Only this is stored: a database copy does not reveal the secret, and the salt makes equal secrets
    hash differently."""
    secret = str(secret)
    if len(secret) < 8:
        raise ReviewError("the owner's secret must be at least 8 characters long")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_LEN)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def secret_matches(secret: str, stored: str | None) -> bool:
    """Whether ``secret`` hashes to ``stored`` (from :func:`hash_secret`); compared with
    :func:`hmac.compare_digest` (no timing hint). False for no stored hash or a malformed one."""
    try:
        kind, n, r, p, salt, digest = str(stored).split("$")
        if kind != "scrypt":
            return False
        expected = bytes.fromhex(digest)
        given = hashlib.scrypt(str(secret).encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                               p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(given, expected)


def read_labels_csv(text: str | bytes) -> dict[str, str]:
    """``{file name: reference diagnosis}`` from a CSV with a header naming a ``file`` column and a
    ``diagnosis`` column (``covid19`` or ``non_covid``); :class:`ReviewError` naming the bad line."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ReviewError("the labels file is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "file" not in fields or "diagnosis" not in fields:
        raise ReviewError(f"the labels CSV needs a header with 'file' and 'diagnosis' columns, got {fields or 'none'}")
    out: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        name, diagnosis = Path(row["file"]).name, row["diagnosis"]
        if not name:
            raise ReviewError(f"labels line {line}: the file name is empty")
        if diagnosis not in REFERENCE_DIAGNOSES:
            raise ReviewError(f"labels line {line}: diagnosis must be one of {', '.join(REFERENCE_DIAGNOSES)}, "
                              f"got {diagnosis!r}")
        if out.get(name, diagnosis) != diagnosis:
            raise ReviewError(f"labels line {line}: {name} is labelled twice, differently")
        out[name] = diagnosis
    return out


def _clean_name(value: Any, what: str) -> str:
    text = str(value if value is not None else "").strip()
    if not text:
        raise ReviewError(f"{what} must not be empty")
    if len(text) > MAX_NAME:
        raise ReviewError(f"{what} is {len(text)} characters long; at most {MAX_NAME}")
    if any(ord(c) < 32 for c in text):
        raise ReviewError(f"{what} must not contain control characters")
    return text


def _int_in(value: Any, bounds: tuple[int, int], what: str) -> int:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise ReviewError(f"{what} must be a whole number from {lo} to {hi}, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ReviewError(f"{what} must be from {lo} to {hi}, got {int(value)}")
    return int(value)


def _box(value: Any, shape: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """A box ``[x, y, w, h]`` in pixels of the film (``shape`` = (H, W)), clipped to it; None for none."""
    if value is None:
        return None
    try:
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ReviewError(f"box must be [x, y, w, h] (four numbers), got {value!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ReviewError(f"box must have positive finite width and height, got {[x, y, w, h]}")
    height, width = shape
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if x1 <= x0 or y1 <= y0:
        raise ReviewError(f"box {[x, y, w, h]} lies outside the {width}x{height} film")
    return (x0, y0, x1 - x0, y1 - y0)


def encode_pixels(pixels: np.ndarray) -> tuple[bytes, str]:
    """Display pixels in [0, 1] -> (16-bit grayscale PNG without metadata, SHA-256 of the 16-bit pixels)."""
    values = np.asarray(pixels, dtype=np.float64)
    if values.ndim != 2:
        raise ReviewError(f"a film must be a 2-D image, got shape {values.shape}")
    u16 = np.ascontiguousarray(np.round(np.clip(values, 0.0, 1.0) * 65535.0).astype(np.uint16))
    digest = hashlib.sha256(f"{u16.shape[0]}x{u16.shape[1]}:".encode() + u16.tobytes()).hexdigest()
    ok, buffer = cv2.imencode(".png", u16, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ReviewError("could not encode the film's pixels")
    return buffer.tobytes(), digest


def decode_pixels(png: bytes) -> np.ndarray:
    """The stored PNG back to float32 display pixels in [0, 1] (read-only)."""
    u16 = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if u16 is None or u16.ndim != 2:
        raise ReviewError("a stored film could not be decoded")
    pixels = (u16.astype(np.float32) / 65535.0)
    pixels.setflags(write=False)
    return pixels


# ------------------------------------------------------------------------------------------ engines
_ENGINES: dict[str, tuple[int, Engine]] = {}
_ENGINES_LOCK = threading.Lock()


def _sqlite_setup(engine: Engine) -> None:
    """WAL, FULL sync, busy timeout, foreign keys; BEGIN (IMMEDIATE for writes) issued by us."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN handling off: see _on_begin
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _engine(url: str) -> Engine:
    """The process's engine for ``url``, created (and the schema migrated) on first use.

    A forked child does not reuse its parent's engine: the inherited pool is dropped without closing the
    parent's connections (``dispose(close=False)``, as SQLAlchemy prescribes after ``fork``)."""
    with _ENGINES_LOCK:
        pid, engine = _ENGINES.get(url, (None, None))
        if engine is not None and pid != os.getpid():
            engine.dispose(close=False)
            engine = None
        if engine is None:
            parsed = sa.make_url(url)
            if parsed.get_backend_name() == "sqlite":
                database = parsed.database
                if database and database != ":memory:":
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
                _sqlite_setup(engine)
            else:
                engine = sa.create_engine(url, pool_pre_ping=True)
            migrate(engine)
            _ENGINES[url] = (os.getpid(), engine)
        return engine


_WRITER_LOCKS: dict[str, threading.Lock] = {}


def _writer_lock(url: str) -> threading.Lock:
    with _ENGINES_LOCK:
        return _WRITER_LOCKS.setdefault(url, threading.Lock())


@contextlib.contextmanager
def _migration_lock(engine: Engine, connection: Connection) -> Iterator[None]:
    """One migrator at a time across processes: a file lock beside a SQLite file, an advisory lock on
    PostgreSQL (other back ends rely on their own DDL locking)."""
    backend = engine.url.get_backend_name()
    database = engine.url.database
    if backend == "sqlite" and database and database != ":memory:":
        with open(f"{database}.migrate.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif backend == "postgresql":
        key = 0x5845_4149_5245_56  # "XAIREV"
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
        connection.commit()
        try:
            yield
        finally:
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
            connection.commit()
    else:
        yield


def alembic_config() -> Any:
    """An Alembic ``Config`` built in code for the migrations shipped in this package (no alembic.ini)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def migrate(engine: Engine, revision: str = "head", *, downgrade: bool = False) -> None:
    """Upgrade (or, with ``downgrade=True``, downgrade) the schema to ``revision`` under the migration lock."""
    from alembic import command

    config = alembic_config()
    with engine.connect() as connection, _migration_lock(engine, connection):
        config.attributes["connection"] = connection
        (command.downgrade if downgrade else command.upgrade)(config, revision)
        connection.commit()


# --------------------------------------------------------------------------------------------- store
class ReviewStore:
    """Sessions, cases and ratings in the database at ``url`` (see the module docstring)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        try:
            self.engine = _engine(self.url)
            self._writer_lock = _writer_lock(self.url) if self.engine.url.get_backend_name() == "sqlite" \
                else contextlib.nullcontext()
        except (sa.exc.SQLAlchemyError, ImportError, OSError) as exc:
            shown = self.url
            with contextlib.suppress(sa.exc.ArgumentError):
                shown = sa.make_url(self.url).render_as_string(hide_password=True)
            raise ReviewError(f"cannot open the review database {shown}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None

    # ------------------------------------------------------------------ transactions
    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction. On SQLite the threads of a process queue on a lock first: SQLite's own
        busy handler sleeps in growing steps (up to 100 ms) while it waits, a lock hands over at once;
        processes still meet at ``BEGIN IMMEDIATE`` (the busy timeout)."""
        with self._writer_lock, self.engine.connect() as connection:
            connection = connection.execution_options(sqlite_begin="IMMEDIATE")
            with connection.begin():
                yield connection

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as connection, connection.begin():
            yield connection

    # ------------------------------------------------------------------ sessions
    def create_session(
        self,
        name: str,
        files: Iterable[str | Path | tuple[str, bytes]],
        *,
        model: str = "chestcovnet",
        methods: Sequence[str] = DEFAULT_METHODS,
        blinded: bool = True,
        anonymised: bool = True,
        questions: Sequence[str] = QUESTIONS,
        owner: str = "owner",
        patient_details: bool = False,
        loader: Loader | None = None,
        owner_secret: str | None = None,
        references: Mapping[str, str] | None = None,
    ) -> str:
        """Decode every film and store the session; returns its id.

        ``files``: paths (PNG, JPEG, DICOM..., detected by content; folders are walked in sorted order)
        or ``(name, bytes)`` pairs (uploads). ``loader`` decodes one source (default
        :func:`xai.radiograph.load_radiograph`; the app passes the isolated decoder for uploads).
        ``owner_secret``: what proves ownership where no sign-in is configured (stored only as a salted
        scrypt hash, :func:`hash_secret`). ``references``: ``{file name: covid19 | non_covid}`` (e.g. from
        :func:`read_labels_csv`), each case's reference diagnosis for teaching; names not in the
        worklist are refused (a typo would silently drop a label).
        Raises :class:`ReviewError` naming the first file that cannot be read, an empty worklist, a
        duplicate name or an unknown method / question; nothing is stored then.
        """
        from xai.batch.inputs import collect_inputs
        from xai.engine import METHODS
        from xai.radiograph import RadiographError, load_radiograph

        name = _clean_name(name, "session name")
        owner = _clean_name(owner, "owner")
        model = _clean_name(model, "model")
        methods = tuple(dict.fromkeys(methods))
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ReviewError(f"unknown method(s) {unknown or '(none)'}; choose from {', '.join(METHODS)}")
        questions = tuple(dict.fromkeys(questions))
        bad = [q for q in questions if q not in QUESTIONS]
        if bad or not questions:
            raise ReviewError(f"unknown question(s) {bad or '(none)'}; choose from {', '.join(QUESTIONS)}")
        load = loader or load_radiograph
        secret_hash = None if owner_secret is None else hash_secret(owner_secret)
        references = dict(references or {})
        bad_refs = sorted(f"{k}={v!r}" for k, v in references.items() if v not in REFERENCE_DIAGNOSES)
        if bad_refs:
            raise ReviewError(f"reference diagnoses must be {' or '.join(REFERENCE_DIAGNOSES)}: {', '.join(bad_refs)}")

        sources: list[tuple[str, Any]] = []
        for item in files:
            if isinstance(item, tuple):
                sources.append((str(item[0]), bytes(item[1])))
            else:
                for found in collect_inputs([item]):
                    if found.error:
                        raise ReviewError(f"{found.name}: {found.error}")
                    sources.append((found.name, found.source))
        if not sources:
            raise ReviewError("the worklist is empty: give at least one film")

        films: list[tuple[str, str, bytes, tuple[int, int]]] = []  # (label, sha, png, shape)
        for label, source in sources:
            try:
                radiograph = load(source)
            except RadiographError as exc:
                raise ReviewError(f"{Path(label).name}: {exc}") from None
            png, sha = encode_pixels(radiograph.pixels)
            films.append((Path(label).name, sha, png, radiograph.shape))
        unknown_refs = sorted(set(references) - {Path(label).name for label, _ in sources})
        if unknown_refs:
            raise ReviewError(f"labels for file(s) not in the worklist: {', '.join(unknown_refs[:5])}")

        session_id = uuid.uuid4().hex
        with self._write() as c:
            if c.execute(sa.select(schema.sessions.c.id).where(schema.sessions.c.name == name)).first():
                raise ReviewError(f"a session named {name!r} exists already; choose another name")
            c.execute(schema.sessions.insert().values(
                id=session_id, name=name, owner=owner, model=model, methods=json.dumps(list(methods)),
                questions=json.dumps(list(questions)), blinded=bool(blinded), anonymised=bool(anonymised),
                patient_details=bool(patient_details), created_at=_now(), closed_at=None,
                owner_secret=secret_hash,
            ))
            for position, (label, sha, png, shape) in enumerate(films):
                if not c.execute(sa.select(schema.images.c.sha256).where(schema.images.c.sha256 == sha)).first():
                    c.execute(schema.images.insert().values(sha256=sha, height=shape[0], width=shape[1], png=png))
                c.execute(schema.cases.insert().values(
                    id=uuid.uuid4().hex[:16], session_id=session_id, position=position, image_sha=sha,
                    label=label if patient_details else None, reference=references.get(label),
                ))
        return session_id

    def sessions(self) -> list[ReviewSession]:
        """Every session, by name."""
        with self._read() as c:
            counts: dict[str, int] = dict(c.execute(
                sa.select(schema.cases.c.session_id, sa.func.count()).group_by(schema.cases.c.session_id)
            ).all())
            rows = c.execute(sa.select(schema.sessions).order_by(schema.sessions.c.name)).mappings().all()
        return [self._session_record(row, int(counts.get(row["id"], 0))) for row in rows]

    def session(self, session_id: str) -> ReviewSession:
        """One session's settings; :class:`ReviewError` when there is no such session."""
        with self._read() as c:
            row = c.execute(sa.select(schema.sessions).where(schema.sessions.c.id == str(session_id))).mappings().first()
            if row is None:
                raise ReviewError(f"no review session with id {session_id!r}")
            n = c.execute(sa.select(sa.func.count()).where(schema.cases.c.session_id == row["id"])).scalar_one()
        return self._session_record(row, int(n))

    @staticmethod
    def _session_record(row: RowMapping, n_cases: int) -> ReviewSession:
        return ReviewSession(
            id=row["id"], name=row["name"], owner=row["owner"], model=row["model"],
            methods=tuple(json.loads(row["methods"])), questions=tuple(json.loads(row["questions"])),
            blinded=bool(row["blinded"]), anonymised=bool(row["anonymised"]),
            patient_details=bool(row["patient_details"]), created_at=row["created_at"],
            closed_at=row["closed_at"], n_cases=n_cases, has_owner_secret=row["owner_secret"] is not None,
        )

    def verify_owner(self, session_id: str, secret: str) -> bool:
        """Whether ``secret`` is the session's owner secret (False when the session has none)."""
        with self._read() as c:
            stored = c.execute(sa.select(schema.sessions.c.owner_secret)
                               .where(schema.sessions.c.id == str(session_id))).scalar_one_or_none()
        return stored is not None and secret_matches(secret, stored)

    def close_session(self, session_id: str, by: str) -> None:
        """Close the session (no more saves; every reader may then see the results). Owner only."""
        session = self.session(session_id)
        if _clean_name(by, "reader") != session.owner:
            raise ReviewError(f"only the session's owner ({session.owner}) can close it")
        if session.closed:
            return
        with self._write() as c:
            c.execute(schema.sessions.update().where(schema.sessions.c.id == session.id).values(closed_at=_now()))

    # ------------------------------------------------------------------ cases
    def cases(self, session_id: str) -> list[str]:
        """The session's case ids in worklist order."""
        self.session(session_id)
        with self._read() as c:
            return list(c.execute(
                sa.select(schema.cases.c.id).where(schema.cases.c.session_id == str(session_id))
                .order_by(schema.cases.c.position)
            ).scalars())

    def _case(self, c: Connection, session_id: str, case_id: str) -> RowMapping:
        row = c.execute(
            sa.select(schema.cases, schema.images.c.height, schema.images.c.width)
            .join(schema.images, schema.images.c.sha256 == schema.cases.c.image_sha)
            .where(schema.cases.c.id == str(case_id), schema.cases.c.session_id == str(session_id))
        ).mappings().first()
        if row is None:
            raise ReviewError(f"case {case_id!r} is not in session {session_id!r}")
        return row

    def case_info(self, session_id: str, case_id: str) -> dict[str, Any]:
        """``{id, position, image_sha, height, width, label, reference}`` (label None without patient
        details; reference None when the owner gave none)."""
        with self._read() as c:
            row = self._case(c, session_id, case_id)
        return {k: row[k] for k in ("id", "position", "image_sha", "height", "width", "label", "reference")}

    def set_reference(self, session_id: str, case_id: str, diagnosis: str | None) -> None:
        """Set (or, with None, clear) a case's reference diagnosis. The caller checks it is the owner."""
        if diagnosis is not None and diagnosis not in REFERENCE_DIAGNOSES:
            raise ReviewError(f"a reference diagnosis must be one of {', '.join(REFERENCE_DIAGNOSES)}, got {diagnosis!r}")
        with self._write() as c:
            self._case(c, session_id, case_id)
            c.execute(schema.cases.update().where(schema.cases.c.id == str(case_id))
                      .values(reference=diagnosis))

    def pixels(self, session_id: str, case_id: str) -> np.ndarray:
        """The case's de-identified film, float32 (H, W) in [0, 1], bone white."""
        with self._read() as c:
            sha = self._case(c, session_id, case_id)["image_sha"]
            png = c.execute(sa.select(schema.images.c.png).where(schema.images.c.sha256 == sha)).scalar_one()
        return decode_pixels(png)

    def radiograph(self, session_id: str, case_id: str) -> Any:
        """The stored film as an :class:`xai.radiograph.Radiograph` for the engine (no metadata at all)."""
        from xai.radiograph import Radiograph

        pixels = self.pixels(session_id, case_id)
        return Radiograph(pixels=pixels, modality_values=pixels, window=None, format="png", bits_stored=16,
                          photometric="MONOCHROME2")

    def map_order(self, session_id: str, case_id: str, reader: str) -> tuple[str, ...]:
        """The methods in the order ``reader`` sees them for this case (see :func:`method_order`);
        the session's own order when it is not anonymised."""
        session = self.session(session_id)
        reader = _clean_name(reader, "reader")
        if not session.anonymised:
            return session.methods
        return method_order(session.id, str(case_id), reader, session.methods)

    # ------------------------------------------------------------------ predictions
    def save_prediction(self, image_sha: str, model: str, predicted: str, probabilities: Mapping[str, float]) -> None:
        """Record the model's prediction for a film (first one wins; the same model gives the same)."""
        with self._write() as c:
            exists = c.execute(sa.select(schema.predictions.c.predicted).where(
                schema.predictions.c.image_sha == image_sha, schema.predictions.c.model == model)).first()
            if not exists:
                c.execute(schema.predictions.insert().values(
                    image_sha=image_sha, model=model, predicted=str(predicted),
                    probabilities=json.dumps({str(k): float(v) for k, v in probabilities.items()}),
                    computed_at=_now(),
                ))

    def predictions(self, session_id: str, model: str) -> dict[str, str]:
        """``{case_id: predicted class}`` for the cases whose prediction by ``model`` is recorded."""
        with self._read() as c:
            rows = c.execute(
                sa.select(schema.cases.c.id, schema.predictions.c.predicted)
                .join(schema.predictions, schema.predictions.c.image_sha == schema.cases.c.image_sha)
                .where(schema.cases.c.session_id == str(session_id), schema.predictions.c.model == model)
            ).all()
        return {case_id: predicted for case_id, predicted in rows}

    # ------------------------------------------------------------------ ratings
    def validate_rating(self, session: ReviewSession, shape: tuple[int, int], rating: Mapping[str, Any]) -> dict[str, Any]:
        """The rating checked and normalised to the columns it is stored in; :class:`ReviewError` if not."""
        if not isinstance(rating, Mapping):
            raise ReviewError(f"a rating must be a mapping, got {type(rating).__name__}")
        known = {"diagnosis", "confidence", "plausibility", "note", "box", "seconds"}
        extra = sorted(set(rating) - known)
        if extra:
            raise ReviewError(f"unknown rating field(s) {extra}; the fields are {sorted(known)}")
        asked = set(session.questions)
        given = {k for k, v in rating.items() if v not in (None, "", {}) and k != "seconds"}
        not_asked = sorted(given - asked)
        if not_asked:
            raise ReviewError(f"this session does not ask for {not_asked}")
        out: dict[str, Any] = {"diagnosis": None, "confidence": None}
        if "diagnosis" in asked:
            diagnosis = rating.get("diagnosis")
            if diagnosis not in DIAGNOSES:
                raise ReviewError(f"diagnosis must be one of {', '.join(DIAGNOSES)}, got {diagnosis!r}")
            out["diagnosis"] = diagnosis
        if "confidence" in asked:
            out["confidence"] = _int_in(rating.get("confidence"), CONFIDENCE_RANGE, "confidence")
        plausibility = rating.get("plausibility") or {}
        if not isinstance(plausibility, Mapping):
            raise ReviewError("plausibility must map each method to a rating from 1 to 5")
        unknown = sorted(str(m) for m in plausibility if m not in session.methods)
        if unknown:
            raise ReviewError(f"plausibility for method(s) {unknown} not in this session ({', '.join(session.methods)})")
        out["plausibility"] = {m: _int_in(v, PLAUSIBILITY_RANGE, f"plausibility of {m}") for m, v in plausibility.items()}
        note = rating.get("note") or ""
        if not isinstance(note, str):
            raise ReviewError(f"note must be text, got {type(note).__name__}")
        if len(note) > MAX_NOTE:
            raise ReviewError(f"note is {len(note)} characters long; at most {MAX_NOTE}")
        out["note"] = note
        box = _box(rating.get("box"), shape)
        out.update(zip(("box_x", "box_y", "box_w", "box_h"), box or (None,) * 4, strict=True))
        seconds = rating.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                                    or not math.isfinite(seconds) or seconds < 0):
            raise ReviewError(f"seconds must be a non-negative number, got {seconds!r}")
        out["seconds"] = None if seconds is None else float(seconds)
        return out

    def missing_answers(self, session: ReviewSession, row: Mapping[str, Any] | None) -> tuple[str, ...]:
        """What ``row`` (an :meth:`export` row, or None for no save) leaves unanswered of what the session
        asks: ``diagnosis``, ``confidence`` and each unrated map's method, in the session's order."""
        row = row or {}
        asked = set(session.questions)
        missing: list[str] = [q for q in ("diagnosis", "confidence") if q in asked and row.get(q) is None]
        if "plausibility" in asked:
            given = row.get("plausibility") or {}
            missing += [m for m in session.methods if m not in given]
        return tuple(missing)

    def save_case(self, session_id: str, case_id: str, reader: str, rating: Mapping[str, Any], *,
                  allow_missing: bool = False) -> SavedCase:
        """Save ``reader``'s whole answer for ``case_id`` in ONE transaction: the read, the note, the box and
        every map's score, read back before the commit; returns what was stored.

        ``rating``: ``{"diagnosis": "covid19" | "non_covid" | "uncertain", "confidence": 1-5,
        "plausibility": {method: 1-5}, "note": str, "box": [x, y, w, h] (film pixels) or None,
        "seconds": time spent (optional)}``. A map left unrated raises :class:`MissingRatings` (nothing
        stored) unless ``allow_missing`` (the reader confirmed). Raises :class:`ReviewError` for a closed
        session, an unknown case, or a field out of range (the message names it).
        """
        reader = _clean_name(reader, "reader")
        try:
            rating_id, session, values, stored = self._insert_case(session_id, case_id, reader, rating, allow_missing)
        except sa.exc.SQLAlchemyError as exc:  # rolled back: nothing of this answer is in the database
            first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise ReviewError(f"nothing was saved: the database refused the answer ({first})") from None
        missing = self.missing_answers(session, {**values, "plausibility": stored})
        return SavedCase(rating_id=rating_id, stored=stored, missing=missing)

    def _insert_case(self, session_id: str, case_id: str, reader: str, rating: Mapping[str, Any],
                     allow_missing: bool) -> tuple[int, ReviewSession, dict[str, Any], dict[str, int]]:
        with self._write() as c:  # one transaction: the session's state, the case, the rating and its maps
            row = c.execute(sa.select(schema.sessions).where(schema.sessions.c.id == str(session_id))).mappings().first()
            if row is None:
                raise ReviewError(f"no review session with id {session_id!r}")
            session = self._session_record(row, 0)
            if session.closed:
                raise ReviewError(f"session {session.name!r} is closed; no more ratings can be saved")
            case = self._case(c, session.id, case_id)
            values = self.validate_rating(session, (case["height"], case["width"]), rating)
            scores = values.pop("plausibility")
            unrated = [m for m in session.methods if m not in scores] if "plausibility" in session.questions else []
            if unrated and not allow_missing:
                raise MissingRatings(unrated)
            order = method_order(session.id, case["id"], reader, session.methods) if session.anonymised \
                else session.methods
            result = c.execute(schema.ratings.insert().values(
                session_id=session.id, case_id=case["id"], reader=reader, map_order=json.dumps(list(order)),
                saved_at=_now(), **values,
            ))
            key = result.inserted_primary_key  # always set after a single-row INSERT; None only for other statements
            if key is None:
                raise ReviewError("the database returned no id for the rating; nothing was saved")
            rating_id = int(key[0])
            for method, score in scores.items():
                c.execute(schema.map_ratings.insert().values(rating_id=rating_id, method=method, score=score))
            stored = dict(c.execute(sa.select(schema.map_ratings.c.method, schema.map_ratings.c.score)
                                    .where(schema.map_ratings.c.rating_id == rating_id)).all())
            if stored != scores:  # cannot happen with a working database: refuse rather than half-store
                raise ReviewError(f"the database kept {stored} of {scores}; nothing was saved")
        return rating_id, session, values, stored

    def save_rating(self, session_id: str, case_id: str, reader: str, rating: Mapping[str, Any]) -> int:
        """Append ``reader``'s rating of ``case_id`` (maps may be left unrated, e.g. a blinded read
        recorded before the maps are shown); returns the saved row's id. See :meth:`save_case`."""
        return self.save_case(session_id, case_id, reader, rating, allow_missing=True).rating_id

    def _rows(self, session_id: str, reader: str | None, latest: bool) -> list[dict[str, Any]]:
        r, k = schema.ratings, schema.cases
        query = (
            sa.select(r, k.c.position, k.c.label, k.c.reference)
            .join(k, k.c.id == r.c.case_id)
            .where(r.c.session_id == str(session_id))
        )
        if reader is not None:
            query = query.where(r.c.reader == reader)
        if latest:
            newest = (sa.select(sa.func.max(r.c.id)).where(r.c.session_id == str(session_id))
                      .group_by(r.c.case_id, r.c.reader))
            query = query.where(r.c.id.in_(newest))
        query = query.order_by(k.c.position, r.c.reader, r.c.id)
        m = schema.map_ratings
        with self._read() as c:
            rows = c.execute(query).mappings().all()
            scores: dict[int, dict[str, int]] = {}
            ids = [int(row["id"]) for row in rows]
            for start in range(0, len(ids), 500):  # bounded IN lists
                for rating_id, method, score in c.execute(
                        sa.select(m.c.rating_id, m.c.method, m.c.score).where(m.c.rating_id.in_(ids[start:start + 500]))):
                    scores.setdefault(int(rating_id), {})[method] = int(score)
        return [self._export_row(row, scores.get(int(row["id"]), {})) for row in rows]

    @staticmethod
    def _export_row(row: RowMapping, plausibility: Mapping[str, int]) -> dict[str, Any]:
        box = [row["box_x"], row["box_y"], row["box_w"], row["box_h"]]
        out = {
            "case": row["case_id"], "position": int(row["position"]) + 1, "reader": row["reader"],
            "diagnosis": row["diagnosis"], "confidence": row["confidence"], "note": row["note"],
            "saved_at": row["saved_at"], "box": None if box[0] is None else [float(v) for v in box],
            "plausibility": dict(sorted(plausibility.items())), "map_order": json.loads(row["map_order"]),
            "seconds": row["seconds"], "rating_id": int(row["id"]), "reference": row["reference"],
        }
        if row["label"] is not None:
            out["file"] = row["label"]
        return out

    def export(self, session_id: str, *, reader: str | None = None) -> list[dict[str, Any]]:
        """One dict per (case, reader): the latest rating, in worklist order then by reader.

        Keys: case, position (1-based), reader, diagnosis, confidence, note, saved_at, box ([x, y, w, h] or
        None), plausibility ({method: 1-5}), map_order (the methods as shown, Map A first), seconds,
        rating_id, reference (the case's reference diagnosis or None), and file only when the session
        keeps patient details.
        ``reader``: only that reader's answers, whatever their name and whether the session is open or
        closed (readers never see each other's answers and notes); ``None``: everyone's, for the owner
        once the page has checked the owner's secret or sign-in, or for an analyst with the database.
        """
        session = self.session(session_id)
        return self._rows(session.id, None if reader is None else _clean_name(reader, "reader"), latest=True)

    def history(self, session_id: str, *, reader: str | None = None) -> list[dict[str, Any]]:
        """Every save, oldest first per (case, reader): the audit trail (same keys as :meth:`export`)."""
        session = self.session(session_id)
        return self._rows(session.id, None if reader is None else _clean_name(reader, "reader"), latest=False)

    def progress(self, session_id: str, reader: str) -> dict[str, Any]:
        """``{done, total, next}``: the cases whose latest stored answer by ``reader`` is complete (the read
        and every map's rating, as the session asks: :meth:`missing_answers`), the worklist length, and
        the first case not complete (None when all are) — where a reader resumes."""
        session = self.session(session_id)
        ids = self.cases(session.id)
        latest = {row["case"]: row for row in self._rows(session.id, _clean_name(reader, "reader"), latest=True)}
        pending = [i for i, case_id in enumerate(ids) if self.missing_answers(session, latest.get(case_id))]
        return {"done": len(ids) - len(pending), "total": len(ids), "next": pending[0] if pending else None}

    def dispose(self) -> None:
        """Close the pooled connections of this process's engine for the URL (e.g. before a fork)."""
        self.engine.dispose()
