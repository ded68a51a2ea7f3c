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
import json
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from xai.method_names import METHODS
from xai.review import schema
from xai.review.blinding import method_order
from xai.review.database import default_url, shared_engine, writer_lock
from xai.review.errors import MissingRatings, ReviewError
from xai.review.owner_secret import hash_secret, secret_matches
from xai.review.pixels import decode_pixels, encode_pixels
from xai.review.questions import (
    CONFIDENCE_RANGE,
    DIAGNOSES,
    MAX_NOTE,
    PLAUSIBILITY_RANGE,
    QUESTIONS,
    REFERENCE_DIAGNOSES,
    clean_name,
    clip_box,
    int_in,
)
from xai.review.records import ReviewSession, SavedCase

__all__ = ["ReviewStore"]

DEFAULT_METHODS = METHODS


class Loader(Protocol):
    def __call__(self, source: Any) -> Any: ...


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------------------------- store
class ReviewStore:
    """Sessions, cases and ratings in the database at ``url`` (see the module docstring)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        try:
            self.engine = shared_engine(self.url)
            self._writer_lock = writer_lock(self.url) if self.engine.url.get_backend_name() == "sqlite" \
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

        name = clean_name(name, "session name")
        owner = clean_name(owner, "owner")
        model = clean_name(model, "model")
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
        if clean_name(by, "reader") != session.owner:
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
        reader = clean_name(reader, "reader")
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
            out["confidence"] = int_in(rating.get("confidence"), CONFIDENCE_RANGE, "confidence")
        plausibility = rating.get("plausibility") or {}
        if not isinstance(plausibility, Mapping):
            raise ReviewError("plausibility must map each method to a rating from 1 to 5")
        unknown = sorted(str(m) for m in plausibility if m not in session.methods)
        if unknown:
            raise ReviewError(f"plausibility for method(s) {unknown} not in this session ({', '.join(session.methods)})")
        out["plausibility"] = {m: int_in(v, PLAUSIBILITY_RANGE, f"plausibility of {m}") for m, v in plausibility.items()}
        note = rating.get("note") or ""
        if not isinstance(note, str):
            raise ReviewError(f"note must be text, got {type(note).__name__}")
        if len(note) > MAX_NOTE:
            raise ReviewError(f"note is {len(note)} characters long; at most {MAX_NOTE}")
        out["note"] = note
        box = clip_box(rating.get("box"), shape)
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
        reader = clean_name(reader, "reader")
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
        return self._rows(session.id, None if reader is None else clean_name(reader, "reader"), latest=True)

    def history(self, session_id: str, *, reader: str | None = None) -> list[dict[str, Any]]:
        """Every save, oldest first per (case, reader): the audit trail (same keys as :meth:`export`)."""
        session = self.session(session_id)
        return self._rows(session.id, None if reader is None else clean_name(reader, "reader"), latest=False)

    def progress(self, session_id: str, reader: str) -> dict[str, Any]:
        """``{done, total, next}``: the cases whose latest stored answer by ``reader`` is complete (the read
        and every map's rating, as the session asks: :meth:`missing_answers`), the worklist length, and
        the first case not complete (None when all are) — where a reader resumes."""
        session = self.session(session_id)
        ids = self.cases(session.id)
        latest = {row["case"]: row for row in self._rows(session.id, clean_name(reader, "reader"), latest=True)}
        pending = [i for i, case_id in enumerate(ids) if self.missing_answers(session, latest.get(case_id))]
        return {"done": len(ids) - len(pending), "total": len(ids), "next": pending[0] if pending else None}

    def dispose(self) -> None:
        """Close the pooled connections of this process's engine for the URL (e.g. before a fork)."""
        self.engine.dispose()
