"""Command line: ``python -m xai explain ...``, ``python -m xai report ...`` and ``python -m xai review ...``
(console script ``xai``; ``review``: see :mod:`xai.review.cli`).

Exit status: 0 all inputs done; 1 some inputs failed (each named on stderr with its reason, the others
done); 2 a usage problem (unknown method or target, a model that cannot be loaded, an unreadable boxes
file, Ray missing or failing, a PACS that cannot be reached or refuses the sign-in). Nothing printed or written
carries DICOM header fields: outputs are named from file names (each output folder keeps its file's stem,
:func:`xai.batch.names.safe_stem`); films from ``--study`` are named ``study<k>_<n>.dcm``. The one exception is
asked for by name: ``--send --send-mode pacs`` files DICOM results in the patient's own study (``xai.pacs``).

The progress bar (tqdm, on stderr) and messages never overwrite each other: while the bar runs, messages,
warnings and log records go through ``tqdm.write``.

The command line is the one place in ``xai`` that loads bundles (``models``); the library takes objects.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from models import LoadedModel
    from xai.batch.films import Checks
    from xai.batch.inputs import InputItem

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_MODEL = "chestcovnet"


class UsageError(Exception):
    """A problem with the command as a whole (exit status 2)."""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xai", description="Explain chest X-ray classifiers: Grad-CAM, Grad-CAM++, Guided Backprop, Guided Grad-CAM."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, target_default: str | None) -> None:
        p.add_argument("inputs", nargs="*", metavar="FILE_OR_DIR", help="images (PNG, JPEG, DICOM...) or folders")
        p.add_argument("--pacs", metavar="URL", default=None,
                       help="DICOMweb base URL of the PACS to read --study from (default: XAI_PACS_URL)")
        p.add_argument("--study", action="append", default=[], metavar="UID",
                       help="Study Instance UID to explain from the PACS (repeatable); its image instances are "
                            "downloaded to a temporary folder and explained like files")
        p.add_argument("--model", default=DEFAULT_MODEL, help="bundle name or path (default: %(default)s)")
        p.add_argument("--methods", default=None, help="comma-separated methods (default: all four)")
        p.add_argument(
            "--target", default=target_default,
            help="class name, index or 'predicted' (default: " + (target_default or "covid19 when the model has "
                 "that class, else predicted") + ")",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
        p.add_argument("--no-isolation", action="store_true",
                       help="decode in this process (by default each file is decoded in a worker process with "
                            "time and memory limits, so a crashing decoder fails that file only)")
        p.add_argument("--send", metavar="KINDS", default=None,
                       help="DICOM results of each DICOM film to write in <out>/<film>/dicom and send to the PACS "
                            "with STOW-RS: comma-separated sc (Secondary Captures), sr (structured report), pm "
                            "(parametric maps)")
        p.add_argument("--send-mode", choices=("pacs", "deidentified"), default="pacs",
                       help="pacs: filed in the film's own study (carries its patient identifiers); "
                            "deidentified: a new anonymous study (default: %(default)s)")

    explain = sub.add_parser("explain", help="maps, overlays and a result.json per image")
    common(explain, target_default="predicted")
    explain.add_argument("--out", type=Path, default=Path("explanations"), help="output folder (default: %(default)s)")

    report = sub.add_parser("report", help="a batch report: overlays, report.csv and a self-contained index.html")
    common(report, target_default=None)
    report.add_argument("--out", type=Path, required=True, help="output folder")
    report.add_argument("--boxes", type=Path, default=None, help="finding boxes CSV (manifest or file,x,y,w,h[,label])")
    report.add_argument("--only-boxed", action="store_true",
                        help="keep only the inputs whose file name has a box in --boxes")
    report.add_argument("--stability", action="store_true", help="also compute map stability (slow)")
    report.add_argument("--full-resolution", action="store_true",
                        help="overlays as PNG on each film's own pixel grid (default: compact JPEG, longest side "
                             "1024 px)")
    report.add_argument("--batch-size", type=_positive, default=1,
                        help="films per forward/backward pass (default: %(default)s)")
    report.add_argument("--resume", action="store_true",
                        help="keep the films whose outputs in --out are complete from an earlier run")
    report.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="run here, or as a Ray Data pipeline (a local Ray started for the run, or the "
                             "cluster at RAY_ADDRESS) (default: %(default)s)")
    report.add_argument("--workers", type=_positive, default=2,
                        help="Ray workers, each with its own copy of the model (default: %(default)s)")
    from xai.review.cli import add_review_parser  # light: argparse only

    add_review_parser(sub)
    return parser


def _parse_methods(text: str | None) -> tuple[str, ...]:
    from xai.engine import METHODS

    if not text:
        return tuple(METHODS)
    methods = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    return methods


def _load_model(name_or_path: str) -> LoadedModel:
    import models

    try:
        return models.load(name_or_path)
    except models.ModelError as exc:
        raise UsageError(f"cannot load model {name_or_path!r}: {exc}") from None


def _checks(model: LoadedModel, stability: bool) -> Checks:
    """What the report's trust checks need of the bundle: its OOD statistics, its second checkpoint."""
    import models
    from xai.batch.films import Checks

    return Checks(ood_stats=models.ood_stats(model),
                  second_model=models.second_checkpoint(model.card) if stability else None)


def worker_setup(name_or_path: str, stability: bool) -> tuple[LoadedModel, Checks]:
    """The model and the checks' inputs, loaded in a Ray worker (picklable by reference)."""
    import models

    model = models.load(name_or_path)
    return model, _checks(model, stability)


@contextlib.contextmanager
def _progress_bar(total: int, disabled: bool, stderr: TextIO) -> Iterator[Any]:
    """A tqdm bar on stderr; while it runs, warnings and log records are written above it (tqdm.write)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(total=total, unit="image", file=stderr, disable=disabled or total < 2, leave=False) as bar:

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            _message(f"xai: warning: {category.__name__}: {message}", stderr, bar)

        with logging_redirect_tqdm(), warnings.catch_warnings():
            warnings.showwarning = show
            yield bar


def _message(text: str, stderr: TextIO, bar: Any = None) -> None:
    """One line on stderr, above the progress bar when one is running (never through it)."""
    if bar is not None and not getattr(bar, "disable", True):
        bar.write(text, file=stderr)
    else:
        print(text, file=stderr)


def _report_failure(name: str, reason: str | None, stderr: TextIO, bar: Any = None) -> None:
    _message(f"xai: skipped {name}: {reason}", stderr, bar)


#: How the outputs name a film downloaded from the PACS: this prefix and its file name (``study1_0001.dcm``),
#: never the temporary folder it was saved in.
PACS_NAME_PREFIX = "pacs/"


def _collect(inputs: Sequence[str], stderr: TextIO, pacs_folder: Path | None = None) -> list[InputItem]:
    """The input items; films saved from the PACS into ``pacs_folder`` are named ``pacs/<file name>``."""
    import dataclasses

    from xai.batch.inputs import collect_inputs

    skipped: list[str] = []
    items = collect_inputs(inputs, skipped)
    if pacs_folder is not None:
        items = [dataclasses.replace(item, name=PACS_NAME_PREFIX + item.source.name)
                 if isinstance(item.source, Path) and item.source.parent == pacs_folder else item for item in items]
    if skipped:
        print(f"xai: ignored {len(skipped)} side file(s) in the folders (.md, .json, .csv ...)", file=stderr)
    return items


def _run_explain(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from xai.batch.films import iter_explained
    from xai.batch.names import file_stems, output_dir_for
    from xai.batch.outputs import write_explain_outputs
    from xai.pipeline import resolve_target

    methods = _parse_methods(args.methods)
    model = _load_model(args.model)
    resolve_target(args.target, model.card.class_names)  # TargetError -> usage error before any work
    items = _collect(args.inputs, stderr, args.pacs_folder)
    stems = file_stems([item.name for item in items])
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    with _progress_bar(len(items), args.no_progress, stderr) as bar:
        explained = iter_explained(items, model, methods=methods, target=args.target,
                                   isolated=not args.no_isolation)
        for stem, (item, result, error) in zip(stems, explained, strict=True):
            if result is None:
                failed += 1
                _report_failure(item.name, error, stderr, bar)
            else:
                try:
                    record = _lung_record(result, stderr, bar)
                    record["ood"] = _ood_fields(result, model)
                    write_explain_outputs(result, model, output_dir_for(out_dir, stem), extra=record)
                    if args.send:
                        failed += _send_dicom(args, item, result, model, record.get("anatomy") or {},
                                              output_dir_for(out_dir, stem), stderr, bar)
                except (OSError, ValueError) as exc:
                    failed += 1
                    _report_failure(item.name, f"cannot write outputs: {exc}", stderr, bar)
            bar.update(1)
    done = len(items) - failed
    print(f"xai: explained {done} of {len(items)} image(s) into {out_dir}", file=stdout)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _lung_record(result: Any, stderr: TextIO, bar: Any) -> dict[str, Any]:
    """``evidence_in_lungs`` ({method: share}), ``lung_area_fraction``, ``anatomy`` ({method: {region: share}}),
    ``periphery`` ({method: {"peripheral": x, "central": y}}) and ``laterality_rule`` for ``result.json``; a warning
    when the film has no lung field (it may not be a frontal chest radiograph)."""
    from xai.anatomy import LungModelError
    from xai.batch.lungs import NO_LUNG_NOTICE, lung_figures

    try:
        figures = lung_figures(result.radiograph.pixels, result.maps, radiograph=result.radiograph)
    except (LungModelError, ValueError, RuntimeError) as exc:
        _message(f"xai: warning: {result.file}: no lung figures: {exc}", stderr, bar)
        return {}
    if not figures.found:
        _message(f"xai: warning: {result.file}: {NO_LUNG_NOTICE} ({figures.reason})", stderr, bar)
    return figures.record()


def _run_report(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from xai.batch.boxes import BoxesError, load_boxes
    from xai.batch.films import BatchSpec
    from xai.batch.names import output_dir_for
    from xai.batch.outputs import COMPACT, FULL_RESOLUTION
    from xai.batch.run import default_report_target, report_meta, run_report

    methods = _parse_methods(args.methods)
    try:
        boxes = load_boxes(args.boxes) if args.boxes is not None else None
    except BoxesError as exc:
        raise UsageError(f"boxes file {args.boxes}: {exc}") from None
    if args.only_boxed and boxes is None:
        raise UsageError("--only-boxed needs --boxes")
    model = _load_model(args.model)
    target = args.target if args.target is not None else default_report_target(model.card.class_names)
    spec = BatchSpec(methods=methods, target=target, stability=args.stability,
                      overlays=FULL_RESOLUTION if args.full_resolution else COMPACT,
                      isolated=not args.no_isolation, batch_size=args.batch_size)
    meta = report_meta(model, spec)  # TargetError -> usage error before any work
    if args.send and args.engine == "ray":
        raise UsageError("--send runs with --engine local: the Ray workers keep each film's results to themselves")
    items = _collect(args.inputs, stderr, args.pacs_folder)
    if args.only_boxed and boxes is not None:  # --only-boxed without --boxes was refused above
        items = [item for item in items if item.file_name in boxes]
    not_sent = 0
    with _progress_bar(len(items), args.no_progress, stderr) as bar:

        def progress(done: int, total: int, row: Any) -> None:
            if row.error is not None:
                _report_failure(row.file, row.error, stderr, bar)
            bar.update(1)

        def send(task: Any, result: Any, row: Any) -> None:  # --send: each film's DICOM results, once written
            nonlocal not_sent
            not_sent += _send_dicom(args, task.item, result, model, row.anatomy,
                                    output_dir_for(args.out, task.stem), stderr, bar)

        if args.engine == "ray":
            report = _run_on_ray(args, items, meta, spec, boxes, progress)
        else:
            report = run_report(items, model, args.out, spec, boxes=boxes, checks=_checks(model, args.stability),
                                progress=progress, resume=args.resume, on_result=send if args.send else None)
    print(f"xai: report on {report.done} of {report.total} image(s): "
          f"{args.out / 'index.html'}, {args.out / 'report.csv'}", file=stdout)
    if boxes is not None:
        print(f"\nAgreement with the boxes (explained class: {report.target})\n", file=stdout)
        print(report.summary_markdown(), file=stdout)
    return EXIT_SOME_FAILED if report.failed or not_sent else EXIT_OK


def _run_on_ray(args: argparse.Namespace, items: Sequence[InputItem], meta: Any, spec: Any, boxes: Any,
                progress: Any) -> Any:
    try:
        from xai.batch.ray_engine import run_report_ray
    except ImportError as exc:
        raise UsageError(f"--engine ray needs Ray Data (pip install 'ray[data]'): {exc}") from None
    import ray.exceptions

    setup = functools.partial(worker_setup, args.model, args.stability)
    try:
        return run_report_ray(items, meta, args.out, spec, setup, workers=args.workers, boxes=boxes,
                              progress=progress, resume=args.resume)
    except (ray.exceptions.RayError, ConnectionError) as exc:
        raise UsageError(f"the Ray run failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    from xai.startup import boot

    boot()  # the library's process-wide settings, once per process, before torch loads (xai/startup.py)
    from xai.pipeline import TargetError

    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = _build_parser()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its usage message (or --help)
        return int(exc.code or 0)
    try:
        with _pacs_inputs(args, stderr):
            return _dispatch(args, stdout, stderr)
    except (UsageError, TargetError) as exc:
        print(f"xai: error: {exc}", file=stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("xai: interrupted", file=stderr)
        return 130


def _dispatch(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    if args.command == "explain":
        return _run_explain(args, stdout, stderr)
    if args.command == "review":
        from xai.review.cli import run_review

        return run_review(args, stdout, stderr)
    return _run_report(args, stdout, stderr)


@contextlib.contextmanager
def _pacs_inputs(args: argparse.Namespace, stderr: TextIO) -> Iterator[None]:
    """For ``--study``: the studies' image instances downloaded from the PACS into a temporary folder, added
    to ``args.inputs`` (removed afterwards: the files carry patient data); ``args.pacs_client`` is the client
    (also used by ``--send``). Checks that explain/report got some input."""
    args.pacs_client = None
    args.pacs_folder = None
    if args.command not in ("explain", "report"):
        yield
        return
    import tempfile

    from xai.pacs import PacsClient, PacsError, download_studies, pacs_config

    if not args.inputs and not args.study:
        raise UsageError("give files or folders to explain, or --study UID with a PACS (--pacs URL or XAI_PACS_URL)")
    send = getattr(args, "send", None)
    if send:
        from xai.dicom_results import parse_kinds
        from xai.export import ExportError

        try:
            args.send = parse_kinds(send)
        except ExportError as exc:
            raise UsageError(f"--send: {exc}") from None
    if not args.study and not send:
        yield
        return
    try:
        config = pacs_config(args.pacs)
    except PacsError as exc:
        raise UsageError(str(exc)) from None
    if config is None:
        raise UsageError("--study and --send need a PACS: --pacs URL or XAI_PACS_URL")
    with PacsClient(config) as client, tempfile.TemporaryDirectory(prefix="xai-pacs-") as folder:
        args.pacs_client = client
        args.pacs_folder = Path(folder)
        if args.study:
            try:
                files = download_studies(client, args.study, Path(folder),
                                         warn=lambda m: print(f"xai: warning: {m}", file=stderr))
            except PacsError as exc:
                raise UsageError(str(exc)) from None
            print(f"xai: {len(files)} image(s) from {len(args.study)} PACS stud(y/ies)", file=stderr)
            args.inputs = [*args.inputs, *(str(f) for f in files)]
            if not args.inputs:
                raise UsageError("nothing to explain: the studies hold no image the PACS returned")
        yield


def _send_dicom(args: argparse.Namespace, item: Any, result: Any, model: Any,
                anatomy: dict[str, dict[str, float | None]], folder: Path, stderr: TextIO, bar: Any) -> int:
    """``--send``: the film's DICOM results written to ``folder/dicom`` and sent with STOW-RS; 1 when they could
    not be made or sent (the message says why; written files stay), else 0. ``anatomy``: result.json's
    {method: {region: share}} (the structured report's evidence by region)."""
    from xai.dicom_results import film_results
    from xai.export import ExportError
    from xai.pacs import PacsError

    source = item.source.read_bytes() if isinstance(item.source, Path) else item.source
    if not source or result.radiograph.format != "dicom":
        _message(f"xai: warning: {item.name}: not a DICOM film, no DICOM results to send", stderr, bar)
        return 0
    try:
        objects = film_results(result, model, source, mode=args.send_mode, kinds=args.send,
                               ood=_ood_for_report(result, model),
                               evidence_by_region={m: {r: float("nan") if v is None else float(v)
                                                       for r, v in shares.items()} for m, shares in anatomy.items()})
    except (ExportError, ValueError) as exc:
        _report_failure(item.name, f"cannot make DICOM results: {exc}", stderr, bar)
        return 1
    dicom_dir = folder / "dicom"
    dicom_dir.mkdir(parents=True, exist_ok=True)
    files = [data for kind in objects for data in objects[kind]]
    for kind, blobs in objects.items():
        for i, data in enumerate(blobs, start=1):
            (dicom_dir / f"{kind}{i}.dcm").write_bytes(data)
    try:
        args.pacs_client.store(files)
    except PacsError as exc:
        _report_failure(item.name, f"results not sent: {exc} (kept in {dicom_dir})", stderr, bar)
        return 1
    return 0


def _ood_fields(result: Any, model: Any) -> dict[str, Any]:
    """``result.json``'s ``"ood"``: score, warning, reason (:func:`xai.batch.html.ood_fields`)."""
    import models
    from xai.batch.films import ood_record
    from xai.batch.html import ood_fields

    return ood_fields(*ood_record(result, model, models.ood_stats(model)))


def _ood_for_report(result: Any, model: Any) -> dict[str, Any] | None:
    import models
    from xai.batch.films import ood_record

    record, _ = ood_record(result, model, models.ood_stats(model))
    return record or None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
