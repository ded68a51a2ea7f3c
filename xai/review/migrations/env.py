"""Alembic environment: run on the connection :func:`xai.review.database.migrate` passes in ``attributes``."""

from __future__ import annotations

from alembic import context

from xai.review.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
