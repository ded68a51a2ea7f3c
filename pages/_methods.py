"""The explanation methods as the app names them, derived from the library's method table."""

from __future__ import annotations

from xai.method_names import METHOD_TITLES


def method_label(method: str) -> str:
    """A method's display title (its code name when the table has none)."""
    return METHOD_TITLES.get(method, method)
