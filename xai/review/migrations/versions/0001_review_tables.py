"""Review sessions: sessions, de-identified images, cases, append-only ratings, model predictions.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("methods", sa.Text, nullable=False),
        sa.Column("questions", sa.Text, nullable=False),
        sa.Column("blinded", sa.Boolean, nullable=False),
        sa.Column("anonymised", sa.Boolean, nullable=False),
        sa.Column("patient_details", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("closed_at", sa.String(40), nullable=True),
    )
    op.create_table(
        "review_images",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("png", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "review_cases",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("session_id", sa.String(32), sa.ForeignKey("review_sessions.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("image_sha", sa.String(64), sa.ForeignKey("review_images.sha256"), nullable=False),
        sa.Column("label", sa.Text, nullable=True),
        sa.UniqueConstraint("session_id", "position", name="uq_review_cases_position"),
    )
    op.create_index("ix_review_cases_session_id", "review_cases", ["session_id"])
    op.create_table(
        "review_ratings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(32), sa.ForeignKey("review_sessions.id"), nullable=False),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("review_cases.id"), nullable=False),
        sa.Column("reader", sa.String(200), nullable=False),
        sa.Column("diagnosis", sa.String(16), nullable=True),
        sa.Column("confidence", sa.SmallInteger, nullable=True),
        sa.Column("plausibility", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("box_x", sa.Float, nullable=True),
        sa.Column("box_y", sa.Float, nullable=True),
        sa.Column("box_w", sa.Float, nullable=True),
        sa.Column("box_h", sa.Float, nullable=True),
        sa.Column("map_order", sa.Text, nullable=False),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("saved_at", sa.String(40), nullable=False),
    )
    op.create_index("ix_review_ratings_session_case_reader", "review_ratings", ["session_id", "case_id", "reader"])
    op.create_table(
        "review_predictions",
        sa.Column("image_sha", sa.String(64), sa.ForeignKey("review_images.sha256"), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("predicted", sa.String(64), nullable=False),
        sa.Column("probabilities", sa.Text, nullable=False),
        sa.Column("computed_at", sa.String(40), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("review_predictions")
    op.drop_index("ix_review_ratings_session_case_reader", "review_ratings")
    op.drop_table("review_ratings")
    op.drop_index("ix_review_cases_session_id", "review_cases")
    op.drop_table("review_cases")
    op.drop_table("review_images")
    op.drop_table("review_sessions")
