"""``python -m models.train``: the training command (:func:`models.train.cli.main`)."""

from __future__ import annotations

from models.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
