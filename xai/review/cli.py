"""``python -m xai review ...``: create a review session from a folder, list sessions, export ratings.

``xai review create NAME DIR_OR_FILES... [--owner O] [--model M] [--methods a,b] [--not-blinded]
[--named-maps] [--patient-details] [--labels FILE.csv]`` (prints the owner's secret once: it proves
ownership on the Review page where no sign-in is configured), ``xai review list``, ``xai review export NAME --out FILE.csv``
(``--html`` for the report instead). ``--db URL`` (else ``$XAI_DB_URL``, else the SQLite file in
``$XAI_DATA_DIR``). Exit status 0 done, 2 refused (the message says why). Nothing printed carries
patient identifiers: cases are counted, never named by their files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

EXIT_OK, EXIT_USAGE = 0, 2


def add_review_parser(sub: Any) -> None:
    """Add the ``review`` command to the main parser's subcommands."""
    review = sub.add_parser("review", help="radiologist review sessions (create, list, export)")
    review.add_argument("--db", default=None, help="SQLAlchemy URL (default: $XAI_DB_URL, else data/review.sqlite3)")
    actions = review.add_subparsers(dest="review_command", required=True)
    create = actions.add_parser("create", help="a new session from films or folders")
    create.add_argument("name", help="session name (unique)")
    create.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="radiographs (PNG, JPEG, DICOM...) or folders")
    create.add_argument("--owner", default="owner", help="who may close the session and see every answer")
    create.add_argument("--model", default="chestcovnet", help="bundle name of the model (default: %(default)s)")
    create.add_argument("--methods", default=None, help="comma-separated methods (default: all four)")
    create.add_argument("--not-blinded", action="store_true", help="show the model's prediction from the start")
    create.add_argument("--named-maps", action="store_true", help="show method names, in a fixed order")
    create.add_argument("--patient-details", action="store_true", help="keep the file names (off by default)")
    create.add_argument("--labels", type=Path, default=None,
                        help="CSV with 'file' and 'diagnosis' (covid19 / non_covid) columns: reference diagnoses")
    actions.add_parser("list", help="the sessions, by name")
    export = actions.add_parser("export", help="the latest rating per (case, reader) as CSV, or the HTML report")
    export.add_argument("name", help="session name")
    export.add_argument("--out", type=Path, required=True, help="output file")
    export.add_argument("--html", action="store_true", help="write the HTML session report instead of the CSV")


def _session_by_name(store: Any, name: str) -> Any:
    from xai.review import ReviewError

    for session in store.sessions():
        if session.name == name:
            return session
    raise ReviewError(f"no session named {name!r} (see `xai review list`)")


def run_review(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Run ``xai review ...``; :class:`~xai.review.ReviewError` becomes a message and exit status 2."""
    from xai.review import ReviewError, ReviewStore, new_owner_secret, read_labels_csv

    try:
        store = ReviewStore(args.db)
        if args.review_command == "create":
            methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
            extra: dict[str, Any] = {"methods": methods} if methods else {}
            references = read_labels_csv(args.labels.read_bytes()) if args.labels else None
            secret = new_owner_secret()
            sid = store.create_session(
                args.name, args.inputs, owner=args.owner, model=args.model, blinded=not args.not_blinded,
                anonymised=not args.named_maps, patient_details=args.patient_details, owner_secret=secret,
                references=references, **extra,
            )
            print(f"xai: session {args.name!r} created with {len(store.cases(sid))} case(s) (id {sid})", file=stdout)
            print(f"xai: owner secret (shown once; it opens the results on the Review page): {secret}", file=stdout)
        elif args.review_command == "list":
            for s in store.sessions():
                state = "closed" if s.closed else "open"
                print(f"{s.name}\t{s.n_cases} cases\towner {s.owner}\t{state}\t{s.id}", file=stdout)
        else:
            from xai.review.report import ratings_csv, report_html
            from xai.review.stats import session_summary

            session = _session_by_name(store, args.name)
            rows = store.export(session.id)
            predictions = store.predictions(session.id, session.model)
            if args.html:
                text = report_html(session, session_summary(rows, session.methods, predictions=predictions), rows)
            else:
                text = ratings_csv(rows, session.methods, predictions)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text, encoding="utf-8")
            print(f"xai: {len(rows)} rating(s) of {session.name!r} written to {args.out}", file=stdout)
    except (ReviewError, OSError) as exc:
        print(f"xai: error: {exc}", file=stderr)
        return EXIT_USAGE
    return EXIT_OK
