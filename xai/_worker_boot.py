"""Imported by the decoders' fork server only (``xai.isolation.PRELOAD``): workers skip the parent's ``__main__``.

``multiprocessing`` re-imports the parent's main script in every worker it starts (``spawn.prepare`` with
``init_main_from_path``) so that functions defined there unpickle. A Streamlit server replaces
``sys.modules["__main__"]`` with the page script it is running, and page scripts have no
``if __name__ == "__main__"`` guard: every upload's decoder re-ran the whole app in bare mode (about 0.4 s,
a model load and a nested fork server), and so did the fork server when ``"__main__"`` was preloaded.

The decoders run only top-level functions of importable modules (``xai.isolation._load_bytes``, test
seams), so the main script is never needed there. This module wraps ``multiprocessing.spawn.prepare``
to drop the main-module entries and keep the rest (``sys.path``, working directory, authkey).
The wrap is inert in any other process: ``prepare`` only runs inside a freshly started child, and a child
started by ``spawn`` is a new interpreter that does not import this module.
"""

from __future__ import annotations

from multiprocessing import spawn
from typing import Any

MAIN_MODULE_KEYS = ("init_main_from_path", "init_main_from_name")

_prepare_with_main = spawn.prepare


def prepare_without_main(data: dict[str, Any]) -> None:
    """``spawn.prepare`` minus the re-import of the parent's ``__main__``."""
    _prepare_with_main({key: value for key, value in data.items() if key not in MAIN_MODULE_KEYS})


if getattr(spawn.prepare, "__name__", "") != prepare_without_main.__name__:
    spawn.prepare = prepare_without_main
