"""Running a report: the films planned once, then explained here (:func:`run_report`) or on Ray
(:func:`xai.batch.ray_engine.run_report_ray`) with the same :class:`~xai.batch.films.FilmRunner`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from xai.batch.boxes import Box
from xai.batch.films import BatchSpec, Checks, FilmRunner, FilmTask, OnResult
from xai.batch.inputs import InputItem
from xai.batch.names import unique_stems
from xai.batch.records import Report, ReportMeta, ReportRow
from xai.batch.report import ReportWriter

if TYPE_CHECKING:
    from xai.engine import Explainer
    from xai.protocols import LoadedModel

Progress = Callable[[int, int, ReportRow], None]
"""``progress(done, total, row)`` called after each film, in input order."""
T = TypeVar("T")


def default_report_target(class_names: Sequence[str]) -> str:
    """``covid19`` (the model's abnormality evidence) when the model has that class, else ``predicted``."""
    return "covid19" if "covid19" in class_names else "predicted"


def plan_tasks(items: Sequence[InputItem], boxes: Mapping[str, Sequence[Box]] | None = None) -> list[FilmTask]:
    """One task per input: a unique output folder name (case-insensitive) and the boxes of its file name."""
    boxes = boxes or {}
    stems = unique_stems([item.stem for item in items])
    return [FilmTask(item, stem, tuple(boxes.get(item.file_name, ()))) for item, stem in zip(items, stems, strict=True)]


def report_meta(model: LoadedModel, spec: BatchSpec) -> ReportMeta:
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
    spec: BatchSpec,
    *,
    boxes: Mapping[str, Sequence[Box]] | None = None,
    checks: Checks | None = None,
    progress: Progress | None = None,
    explainer: Explainer | None = None,
    resume: bool = False,
    on_result: OnResult | None = None,
) -> Report:
    """Explain every item here, ``spec.batch_size`` films per pass; write the films' folders,
    ``report.csv`` and ``index.html`` into ``out_dir``; return the figures.

    ``out_dir/<stem>/<method>.jpg`` (or ``.png``) are the overlays (finding boxes outlined in green);
    agreement figures are computed where ``boxes`` has the image's file name. ``resume`` keeps the films
    whose outputs are complete (see :class:`FilmRunner`). ``on_result(task, result, row)`` is called with each
    film explained in this run, once its files are written (e.g. the CLI's ``--send``; films kept by ``resume``
    are not explained again, so not passed).
    """
    out_dir = Path(out_dir)
    tasks = plan_tasks(items, boxes)
    runner = FilmRunner(model, spec, out_dir, checks or Checks(), explainer, resume, on_result)
    with ReportWriter(out_dir, report_meta(model, spec)) as writer:

        def write(rows: Sequence[ReportRow]) -> None:
            for row in rows:
                writer.add(row)
                if progress is not None:
                    progress(writer.report.total, len(tasks), row)

        chunks = chunked(tasks, spec.batch_size)
        if spec.stability:  # its checks run the model again: no thread explains beside them
            pipelined(chunks, (runner.decode, lambda d: runner.finish(runner.explain(d))), write)
        else:
            pipelined(chunks, (runner.decode, runner.explain, runner.finish), write)
    return writer.report


def pipelined(chunks: Iterable[Any], stages: Sequence[Callable[[Any], Any]], take: Callable[[Any], None]) -> None:
    """``take(stages[-1](...stages[0](chunk)))`` for each chunk in order, every stage in its own thread
    working on the next chunk while the following stage works on this one (a chunk at most in hand and one
    waiting per stage: memory stays bounded whatever the number of chunks).

    For a report: the next films are decoded (in decoder processes, or OpenCV / pydicom, which release the
    GIL) while this chunk is explained, and its files are written (encoders, NumPy) while the next is
    explained. An exception in any stage reaches the caller; the stages still running finish their chunk.
    """
    with ThreadPoolExecutor(max_workers=len(stages), thread_name_prefix="xai-report") as pool:
        flow: Iterator[Any] = iter(chunks)
        for stage in stages:
            flow = _ahead(flow, stage, pool)
        for done in flow:
            take(done)


def _ahead(items: Iterator[Any], stage: Callable[[Any], Any], pool: ThreadPoolExecutor) -> Iterator[Any]:
    """``stage(item)`` for each item in order, the next one submitted before the current result is handed
    on (one stage call at a time: ``stage`` need not be thread-safe with itself). When an earlier stage
    fails, the chunk already in this stage is still handed on first, so every chunk before the failing one
    reaches the end."""
    pending: Future[Any] | None = None
    while True:
        try:
            item = next(items)
        except StopIteration:
            break
        except BaseException:
            if pending is not None:
                yield pending.result()
            raise
        result = pending.result() if pending is not None else None
        submitted = pool.submit(stage, item)
        if pending is not None:
            yield result
        pending = submitted
    if pending is not None:
        yield pending.result()
