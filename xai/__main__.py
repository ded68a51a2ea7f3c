"""``python -m xai``: the command line (see :mod:`xai.cli`)."""

from xai.cli import main

raise SystemExit(main())
