"""Reports over whole archives on Ray Data: the same per-film code as the local run, on many workers.

``ray.data.from_items(tasks).map_batches(RayFilms, concurrency=k, batch_size=b)``: each of the ``k``
workers loads the model once (in ``__init__``, through the caller's ``setup`` function) and runs
:class:`~xai.batch.films.FilmRunner` on ``b`` films at a time — decoding, one forward/backward pass for
the ``b`` films, and writing their overlays and thumbnails straight into the output folder. Only the
small rows (prediction, probabilities, figures: a few hundred bytes a film) come back to the driver,
in input order, and stream into ``report.csv`` and ``index.html`` with the same writer as the local run.
Memory stays bounded: Ray Data streams blocks with back-pressure, nothing holds all films or maps.

Where it runs: without ``RAY_ADDRESS`` a local Ray is started for the run (``num_cpus`` = workers) and
stopped after it; with ``RAY_ADDRESS`` (e.g. ``ray://head:10001`` or ``auto``) the run joins that cluster,
ships the ``xai`` and ``models`` packages to the workers (``runtime_env`` ``py_modules``), and the input
files, the model bundle and the output folder must be on storage every node sees at the same path.
A Ray session that is already running in this process (``ray.is_initialized()``) is used as it is.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xai.batch.boxes import Box
from xai.batch.films import BatchSpec, Checks, FilmRunner, FilmTask
from xai.batch.inputs import InputItem
from xai.batch.records import Report, ReportMeta, ReportRow
from xai.batch.report import ReportWriter
from xai.batch.run import Progress, plan_tasks

if TYPE_CHECKING:
    from xai.protocols import LoadedModel

Setup = Callable[[], "tuple[LoadedModel, Checks]"]
"""Loads the model and the checks' inputs in a worker (a picklable top-level function or ``partial``)."""

ROOT = Path(__file__).resolve().parents[2]
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
"""Object store of a local Ray started for a run: rows are small, films never travel through it."""


class RayFilms:
    """The Ray Data callable class: a :class:`FilmRunner` per worker, built once in ``__init__``."""

    def __init__(self, setup: Setup, spec: BatchSpec, out_dir: str, resume: bool, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        model, checks = setup()
        self.runner = FilmRunner(model, spec, Path(out_dir), checks, resume=resume)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[str]]:
        tasks = [FilmTask.from_json(text) for text in batch["task"]]
        return {"row": [json.dumps(row.to_dict()) for row in self.runner(tasks)]}


def start_local_ray(num_cpus: int) -> None:
    """A local Ray for this process: ``num_cpus`` CPUs, no dashboard, a small object store, and this
    checkout on the workers' ``PYTHONPATH`` (they import ``xai`` and ``models``)."""
    import ray

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with _quiet_ray():  # no start-up notices on the terminal
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, runtime_env={"env_vars": {"PYTHONPATH": path}})


@contextmanager
def ray_session(workers: int) -> Iterator[None]:
    """Ray for one run: the running session, the cluster at ``RAY_ADDRESS``, or a local one (then stopped)."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False,
                 runtime_env={"py_modules": [str(ROOT / "xai"), str(ROOT / "models")]})
    else:
        start_local_ray(workers)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _quiet_ray() -> Iterator[None]:
    """Only Ray's errors on the terminal while a run lasts (the command line has its own progress bar)."""
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _data_context() -> None:
    """Rows in input order (the same files as a local run), no Ray Data progress bars."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.execution_options.preserve_order = True


def _pipeline(tasks: list[str], spec: BatchSpec, setup: Setup, out_dir: Path, resume: bool, workers: int) -> Any:
    """The Ray Data pipeline: tasks -> ``workers`` actors of :class:`RayFilms`, ``spec.batch_size`` films a call.

    Each actor has at most two batches in flight (the next one is waiting when it finishes one, and no more
    films queue behind a slow worker) and is not restarted: a film that kills its worker stops the run with
    Ray's message (decoder crashes are contained per file by :mod:`xai.sandboxed_decoder` before that).
    """
    import ray.data

    with warnings.catch_warnings():  # max_restarts is the documented way to turn restarts off
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ray.data.from_items([{"task": task} for task in tasks]).map_batches(
            RayFilms,
            fn_constructor_kwargs={"setup": setup, "spec": spec, "out_dir": str(out_dir), "resume": resume},
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2),
            batch_size=spec.batch_size, num_cpus=1, batch_format="numpy", max_restarts=0,
        )


def run_report_ray(
    items: Sequence[InputItem],
    meta: ReportMeta,
    out_dir: Path,
    spec: BatchSpec,
    setup: Setup,
    *,
    workers: int = 2,
    boxes: Mapping[str, Sequence[Box]] | None = None,
    progress: Progress | None = None,
    resume: bool = False,
) -> Report:
    """:func:`xai.batch.run.run_report` on Ray Data with ``workers`` workers (see the module docstring).

    ``meta`` comes from the driver's own copy of the model (:func:`xai.batch.run.report_meta`); ``setup``
    loads the model in each worker. Inputs must be files (uploaded bytes stay local).
    """
    import ray.data  # noqa: F401 - configures Ray Data's loggers: before :func:`_quiet_ray` sets their levels

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out_dir = Path(out_dir).resolve()
    tasks = plan_tasks(items, boxes)
    if not tasks:
        with ReportWriter(out_dir, meta) as writer:
            pass
        return writer.report
    with _quiet_ray(), ray_session(workers), ReportWriter(out_dir, meta) as writer:
        _data_context()
        dataset = _pipeline([task.to_json() for task in tasks], spec, setup, out_dir, resume, workers)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["row"]:
                row = ReportRow.from_dict(json.loads(str(text)))
                writer.add(row)
                if progress is not None:
                    progress(writer.report.total, len(tasks), row)
    return writer.report
