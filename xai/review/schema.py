"""The review database's tables (SQLAlchemy Core). Alembic migrations in ``migrations/`` create them.

- ``review_sessions``: one named worklist with its settings (model, methods, blinding, anonymisation,
  questions, whether patient details are kept) and its owner; ``closed_at`` once the owner closes it;
  ``owner_secret``: a salted scrypt hash of the secret that proves ownership (never the secret itself).
- ``review_images``: de-identified pixels (16-bit grayscale PNG of the display pixels, no metadata),
  keyed by the SHA-256 of those pixels; shared by every session that holds the same film.
- ``review_cases``: the worklist, ``position`` gives its order; ``label`` (the uploaded file name) is
  NULL unless the session keeps patient details; ``reference``: the owner's reference diagnosis (teaching).
- ``review_ratings``: append-only: every save is a new row; the latest row (highest ``id``) of a
  (case, reader) pair is the answer, the earlier rows are the audit history.
- ``review_map_ratings``: one row per map a save rated (``rating_id``, method, score 1-5), written in the
  same transaction as its ``review_ratings`` row: a save is stored whole or not at all.
- ``review_predictions``: the model's prediction for a film (so results need no recomputation).

Times are ISO 8601 UTC strings (the same text on SQLite and PostgreSQL).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

sessions = sa.Table(
    "review_sessions", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("methods", sa.Text, nullable=False),  # JSON list
    sa.Column("questions", sa.Text, nullable=False),  # JSON list
    sa.Column("blinded", sa.Boolean, nullable=False),
    sa.Column("anonymised", sa.Boolean, nullable=False),
    sa.Column("patient_details", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("closed_at", sa.String(40), nullable=True),
    sa.Column("owner_secret", sa.String(200), nullable=True),
)

images = sa.Table(
    "review_images", metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("png", sa.LargeBinary, nullable=False),
)

cases = sa.Table(
    "review_cases", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("session_id", sa.String(32), sa.ForeignKey("review_sessions.id"), nullable=False, index=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("image_sha", sa.String(64), sa.ForeignKey("review_images.sha256"), nullable=False),
    sa.Column("label", sa.Text, nullable=True),
    sa.Column("reference", sa.String(16), nullable=True),
    sa.UniqueConstraint("session_id", "position", name="uq_review_cases_position"),
)

ratings = sa.Table(
    "review_ratings", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(32), sa.ForeignKey("review_sessions.id"), nullable=False),
    sa.Column("case_id", sa.String(32), sa.ForeignKey("review_cases.id"), nullable=False),
    sa.Column("reader", sa.String(200), nullable=False),
    sa.Column("diagnosis", sa.String(16), nullable=True),
    sa.Column("confidence", sa.SmallInteger, nullable=True),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("box_x", sa.Float, nullable=True),
    sa.Column("box_y", sa.Float, nullable=True),
    sa.Column("box_w", sa.Float, nullable=True),
    sa.Column("box_h", sa.Float, nullable=True),
    sa.Column("map_order", sa.Text, nullable=False),  # JSON list: the methods shown as Map A, B, ...
    sa.Column("seconds", sa.Float, nullable=True),  # time the reader spent on the case
    sa.Column("saved_at", sa.String(40), nullable=False),
    sa.Index("ix_review_ratings_session_case_reader", "session_id", "case_id", "reader"),
)

map_ratings = sa.Table(
    "review_map_ratings", metadata,
    sa.Column("rating_id", sa.Integer, sa.ForeignKey("review_ratings.id"), primary_key=True),
    sa.Column("method", sa.String(64), primary_key=True),
    sa.Column("score", sa.SmallInteger, nullable=False),
)

predictions = sa.Table(
    "review_predictions", metadata,
    sa.Column("image_sha", sa.String(64), sa.ForeignKey("review_images.sha256"), primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("predicted", sa.String(64), nullable=False),
    sa.Column("probabilities", sa.Text, nullable=False),  # JSON {class: p}
    sa.Column("computed_at", sa.String(40), nullable=False),
)
