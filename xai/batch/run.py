"""Running a report: the films planned once, then explained here (:func:`run_report`) or on Ray
(:func:`xai.batch.ray_engine.run_report_ray`) with the same :class:`~xai.batch.films.FilmRunner`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from xai.batch.boxes import Box
from xai.batch.films import Checks, FilmRunner, FilmTask, ReportSpec
from xai.batch.inputs import InputItem
from xai.batch.names import unique_stems
from xai.batch.report import Report, ReportMeta, ReportRow, ReportWriter

if TYPE_CHECKING:
    from xai.engine import Explainer
    from xai.protocols import LoadedModel

Progress = Callable[[int, int, ReportRow], None]
"""``progress(done, total, row)`` called after each film, in input order."""
T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")


def default_report_target(class_names: Sequence[str]) -> str:
    """``covid19`` (the model's abnormality evidence) when the model has that class, else ``predicted``."""
    return "covid19" if "covid19" in class_names else "predicted"


def plan_tasks(items: Sequence[InputItem], boxes: Mapping[str, Sequence[Box]] | None = None) -> list[FilmTask]:
    """One task per input: a unique output folder name (case-insensitive) and the boxes of its file name."""
    boxes = boxes or {}
    stems = unique_stems([item.stem for item in items])
    return [FilmTask(item, stem, tuple(boxes.get(item.file_name, ()))) for item, stem in zip(items, stems, strict=True)]


def report_meta(model: LoadedModel, spec: ReportSpec) -> ReportMeta:
    """The report's header facts: methods, classes, model identity and the explained class's name."""
    from xai.pipeline import model_identity, resolve_target

    class_names = tuple(model.card.class_names)
    index = resolve_target(spec.target, class_names)
    return ReportMeta(methods=spec.methods, class_names=class_names, model=model_identity(model),
                      target="predicted" if index is None else class_names[index], stability=spec.stability,
                      lungs=spec.lungs)


def chunked(values: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``values`` in consecutive slices of ``size``."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def run_report(
    items: Sequence[InputItem],
    model: LoadedModel,
    out_dir: Path,
    spec: ReportSpec,
    *,
    boxes: Mapping[str, Sequence[Box]] | None = None,
    checks: Checks | None = None,
    progress: Progress | None = None,
    explainer: Explainer | None = None,
    resume: bool = False,
) -> Report:
    """Explain every item here, ``spec.batch_size`` films per pass; write the films' folders,
    ``report.csv`` and ``index.html`` into ``out_dir``; return the figures.

    ``out_dir/<stem>/<method>.jpg`` (or ``.png``) are the overlays (finding boxes outlined in green);
    agreement figures are computed where ``boxes`` has the image's file name. ``resume`` keeps the films
    whose outputs are complete (see :class:`FilmRunner`).
    """
    out_dir = Path(out_dir)
    tasks = plan_tasks(items, boxes)
    runner = FilmRunner(model, spec, out_dir, checks or Checks(), explainer, resume)
    with ReportWriter(out_dir, report_meta(model, spec)) as writer:

        def write(rows: Sequence[ReportRow]) -> None:
            for row in rows:
                writer.add(row)
                if progress is not None:
                    progress(writer.report.total, len(tasks), row)

        if spec.stability:  # its checks run the model again: no second thread beside the explanations
            for chunk in chunked(tasks, spec.batch_size):
                write(runner(chunk))
        else:
            overlapped(chunked(tasks, spec.batch_size), runner.explain, runner.finish, write)
    return writer.report


def overlapped(chunks: Iterable[T], first: Callable[[T], U], second: Callable[[U], V],
               take: Callable[[V], None]) -> None:
    """``take(second(first(chunk)))`` for each chunk in order, ``second`` of one chunk running in a thread
    while ``first`` works on the next (at most two chunks in hand: memory stays bounded).

    For a report: the films' files (overlays, encoding, lung figures: OpenCV and NumPy, which release the
    GIL) are written while the next films are decoded and explained.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xai-report-finish") as pool:
        pending: Future[V] | None = None
        for chunk in chunks:
            done = first(chunk)
            if pending is not None:
                take(pending.result())
            pending = pool.submit(second, done)
        if pending is not None:
            take(pending.result())
