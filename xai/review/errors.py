"""The errors of the review package: a request refused, and a save that leaves maps unrated."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MissingRatings", "ReviewError"]


class ReviewError(ValueError):
    """A request the store refuses (unknown session, invalid rating, closed session...); says why."""


class MissingRatings(ReviewError):
    """A save that leaves maps unrated without ``allow_missing``; ``methods`` are the unrated ones.
    Nothing was stored."""

    def __init__(self, methods: Sequence[str]) -> None:
        self.methods = tuple(methods)
        super().__init__(f"no rating for {len(self.methods)} map(s): {', '.join(self.methods)}; nothing was saved")
