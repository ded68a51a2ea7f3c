"""The training run's log: one logger (``models.train``) for every stage, written to ``train.log`` and the
console."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("models.train")


def _setup_logging(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log.setLevel(logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in (logging.FileHandler(out / "train.log", mode="w", encoding="utf-8"), logging.StreamHandler()):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.propagate = False
