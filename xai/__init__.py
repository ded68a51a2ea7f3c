"""ChestCOVNet XAI: explain where a chest X-ray classifier is looking.

A pure library (no UI imports): ``from xai import Explainer, METHODS``.
Submodules: ``xai.engine`` (the four methods), ``xai.radiograph`` (loading),
``xai.preprocessing`` (model input and the way back to the original grid).
Exports are resolved lazily so that ``import xai.radiograph`` does not pay for torch.

Start-up: ``xai.boot()`` applies the library's few process-wide settings once (idempotent, thread-safe;
what and why in :mod:`xai.startup`). Models come in as objects that satisfy :mod:`xai.protocols`; the
library never imports the ``models`` package (only the command line, :mod:`xai.cli`, does).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    "Explainer": "xai.engine",
    "Explanation": "xai.engine",
    "METHODS": "xai.engine",
    "boot": "xai.startup",
    "freeze_heap": "xai.startup",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'xai' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)


__all__ = ["METHODS", "Explainer", "Explanation", "__version__", "boot", "freeze_heap"]
