"""Whole-case saves, the owner's secret, reference diagnoses.

- ``review_map_ratings``: one row per rated map, written in the same transaction as its rating row (the
  per-map scores move out of the ``review_ratings.plausibility`` JSON column, which is dropped);
- ``review_sessions.owner_secret``: a salted scrypt hash proving ownership when no sign-in is configured;
- ``review_cases.reference``: an optional reference diagnosis per case (teaching).

Columns are added and dropped in place (``recreate="never"``: SQLite >= 3.35 drops a column natively); a
batch "move and copy" of a table that other tables reference would fail their foreign keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    scores = [
        {"rating_id": int(rating_id), "method": str(method), "score": int(score)}
        for rating_id, text in connection.execute(sa.text("SELECT id, plausibility FROM review_ratings")).all()
        for method, score in json.loads(text or "{}").items()
    ]
    with op.batch_alter_table("review_ratings", recreate="never") as batch:
        batch.drop_column("plausibility")
    with op.batch_alter_table("review_sessions", recreate="never") as batch:
        batch.add_column(sa.Column("owner_secret", sa.String(200), nullable=True))
    with op.batch_alter_table("review_cases", recreate="never") as batch:
        batch.add_column(sa.Column("reference", sa.String(16), nullable=True))
    table = op.create_table(
        "review_map_ratings",
        sa.Column("rating_id", sa.Integer, sa.ForeignKey("review_ratings.id"), primary_key=True),
        sa.Column("method", sa.String(64), primary_key=True),
        sa.Column("score", sa.SmallInteger, nullable=False),
    )
    if scores:
        op.bulk_insert(table, scores)


def downgrade() -> None:
    connection = op.get_bind()
    per_rating: dict[int, dict[str, int]] = {}
    for rating_id, method, score in connection.execute(
            sa.text("SELECT rating_id, method, score FROM review_map_ratings")).all():
        per_rating.setdefault(int(rating_id), {})[str(method)] = int(score)
    op.drop_table("review_map_ratings")
    with op.batch_alter_table("review_cases", recreate="never") as batch:
        batch.drop_column("reference")
    with op.batch_alter_table("review_sessions", recreate="never") as batch:
        batch.drop_column("owner_secret")
    with op.batch_alter_table("review_ratings", recreate="never") as batch:
        batch.add_column(sa.Column("plausibility", sa.Text, nullable=False, server_default="{}"))
    for rating_id, scores in per_rating.items():
        connection.execute(sa.text("UPDATE review_ratings SET plausibility = :p WHERE id = :i"),
                           {"p": json.dumps(scores, sort_keys=True), "i": rating_id})
