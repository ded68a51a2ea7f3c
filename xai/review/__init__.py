"""Radiologist review sessions: a worklist of films, readers' ratings of each map, agreement statistics.

``from xai.review import ReviewStore`` — the database (SQLite by default, PostgreSQL via ``XAI_DB_URL``,
schema migrated with Alembic on open); :mod:`xai.review.stats` — the agreement statistics (pure);
:mod:`xai.review.report` — the session's CSV and HTML report. The store's parts, one job a module:
:mod:`~xai.review.questions` (what a session asks, the checks an answer passes), :mod:`~xai.review.blinding`
(the maps' order per reader), :mod:`~xai.review.owner_secret`, :mod:`~xai.review.pixels` (films as stored),
:mod:`~xai.review.records` and :mod:`~xai.review.errors` (what the store returns and raises),
:mod:`~xai.review.database` (engines, locks, migrations) and :mod:`~xai.review.schema` (the tables).
"""

from __future__ import annotations

from xai.review.blinding import map_letters, method_order
from xai.review.database import default_url
from xai.review.errors import MissingRatings, ReviewError
from xai.review.owner_secret import hash_secret, new_owner_secret, secret_matches
from xai.review.questions import (
    CONFIDENCE_RANGE,
    DIAGNOSES,
    PLAUSIBILITY_LABELS,
    PLAUSIBILITY_RANGE,
    QUESTIONS,
    REFERENCE_DIAGNOSES,
    read_labels_csv,
)
from xai.review.records import ReviewSession, SavedCase
from xai.review.store import ReviewStore

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
