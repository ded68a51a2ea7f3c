"""Blinding the maps: the order in which a reader sees a case's maps, and their letters ("Map A"...)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

__all__ = ["map_letters", "method_order"]


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
