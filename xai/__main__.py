"""``python -m xai``: the command line (see :mod:`xai.cli`)."""

# Guarded: decoder worker processes (xai.sandboxed_decoder's fork server) import the main module again.
if __name__ == "__main__":
    from xai.cli import main

    raise SystemExit(main())
