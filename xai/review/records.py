"""What the review store hands back: a session's settings and what a save stored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ReviewSession", "SavedCase"]


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
