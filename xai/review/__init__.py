"""Radiologist review sessions: a worklist of films, readers' ratings of each map, agreement statistics.

``from xai.review import ReviewStore`` — the database (SQLite by default, PostgreSQL via ``XAI_DB_URL``,
schema migrated with Alembic on open); :mod:`xai.review.stats` — the agreement statistics (pure);
:mod:`xai.review.report` — the session's CSV and HTML report.
"""

from __future__ import annotations

from xai.review.store import *  # noqa: F403 - the store's public names are the package's
from xai.review.store import __all__ as __all__  # noqa: PLC0414
