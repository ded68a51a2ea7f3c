"""The per-film work of a report, the same for the local loop and for Ray workers.

:class:`FilmRunner` takes a chunk of :class:`FilmTask` s (``--batch-size`` films), decodes each one (in an
isolated worker process by default), explains the decoded films together in one forward/backward pass
(:func:`xai.pipeline.explain_radiographs`), writes each film's overlays and thumbnails into its own folder
and returns one small :class:`~xai.batch.report.ReportRow` per film — nothing else leaves the runner, so a
Ray worker sends back a few hundred bytes per film whatever its size.

A film's folder is complete when its ``row.json`` (written last, atomically) matches the task and every
file it lists exists; :class:`FilmRunner` with ``resume=True`` takes that row instead of recomputing it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xai.batch.boxes import Box, boxes_mask, draw_boxes
from xai.batch.inputs import InputItem, folder_of
from xai.batch.names import method_file, output_dir_for
from xai.batch.outputs import (
    COMPACT,
    Film,
    OverlayFormat,
    overlay_file,
    overlays,
    provenance,
    shrunk_film,
    thumbnail,
    write_atomic,
)
from xai.batch.records import ReportRow

if TYPE_CHECKING:
    from xai.engine import Explainer
    from xai.pipeline import PipelineResult
    from xai.protocols import LoadedModel
    from xai.radiograph import Radiograph
    from xai.trust.ood import OODStats

ROW_FILE = "row.json"
THUMBS = "thumbs"
ROW_VERSION = 2  # 2: the anatomical readout (anatomy, periphery)


@dataclass(frozen=True)
class BatchSpec:
    """What a batch run computes and writes (one object for the local and the Ray engines; not to be
    confused with :class:`xai.export.ReportSpec`, the content of one film's report page).

    ``target``: class name, index or ``"predicted"``; ``overlays``: the overlay files' format (compact
    JPEG by default, :data:`~xai.batch.outputs.FULL_RESOLUTION` for PNG on the film's grid);
    ``batch_size``: films per forward/backward pass; ``isolated``: decode each file in a worker process
    with time and memory limits (:mod:`xai.sandboxed_decoder`); ``lungs``: the share of each map inside the lung
    field and the film's map registered to its lungs for the cohort view (:mod:`xai.batch.lungs`).
    """

    methods: tuple[str, ...]
    target: str | int | None = "predicted"
    stability: bool = False
    overlays: OverlayFormat = COMPACT
    cmap: str = "inferno"
    max_pixels: int | None = None
    isolated: bool = True
    batch_size: int = 1
    lungs: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.methods:
            raise ValueError("a report needs at least one method")


@dataclass(frozen=True)
class Checks:
    """What the trust checks need besides the model, passed in (``xai`` never loads a bundle itself):
    the out-of-distribution statistics fitted for the model, and a second checkpoint for stability."""

    ood_stats: OODStats | None = None
    second_model: LoadedModel | None = None


@dataclass(frozen=True)
class FilmTask:
    """One film of a report: the input, its output folder's name, its finding boxes."""

    item: InputItem
    stem: str
    boxes: tuple[Box, ...] = ()

    def to_json(self) -> str:
        """A JSON text of the task (path inputs only: bytes stay in the process that has them)."""
        if isinstance(self.item.source, bytes):
            raise ValueError("only file paths can be sent to another process, not uploaded bytes")
        source = None if self.item.source is None else str(self.item.source)
        return json.dumps({"name": self.item.name, "source": source, "error": self.item.error,
                           "label": self.item.label, "stem": self.stem, "boxes": [asdict(b) for b in self.boxes]})

    @classmethod
    def from_json(cls, text: str) -> FilmTask:
        d = json.loads(text)
        source = None if d["source"] is None else Path(d["source"])
        return cls(InputItem(d["name"], source, d["error"], d["label"]), d["stem"],
                   tuple(Box(**b) for b in d["boxes"]))


#: ``on_result(task, result, row)``: called with each film explained in a run, once its files are written.
OnResult = Callable[[FilmTask, "PipelineResult", ReportRow], None]


@dataclass(frozen=True)
class Decoded:
    """One task after :meth:`FilmRunner.decode`: its finished or failed ``row``, else its ``radiograph``."""

    task: FilmTask
    row: ReportRow | None
    radiograph: Radiograph | None = None
    load_ms: float = 0.0


@dataclass
class FilmRunner:
    """Explains chunks of films and writes their outputs into ``out_dir/<stem>/`` (see the module doc).

    Built once per process (per Ray worker): the model, its explainer and the checks' inputs are kept.
    """

    model: LoadedModel
    spec: BatchSpec
    out_dir: Path
    checks: Checks = field(default_factory=Checks)
    explainer: Explainer | None = None
    resume: bool = False
    on_result: OnResult | None = None

    def __post_init__(self) -> None:
        from xai.pipeline import make_explainer, resolve_target

        resolve_target(self.spec.target, self.model.card.class_names)  # TargetError before any work
        self.out_dir = Path(self.out_dir)
        if self.explainer is None:
            self.explainer = make_explainer(self.model)

    def __call__(self, tasks: Sequence[FilmTask]) -> list[ReportRow]:
        """One row per task, in order; a film that cannot be read or explained gives a row with its error."""
        return self.finish(self.explain(self.decode(tasks)))

    def decode(self, tasks: Sequence[FilmTask]) -> list[Decoded]:
        """The first step: each task with its row when it is finished already (``resume``) or cannot be
        read, else with its radiograph. Runs no model: safe in a thread beside :meth:`explain`."""
        out: list[Decoded] = []
        for task in tasks:
            done = self.completed(task) if self.resume else None
            if done is not None:
                out.append(Decoded(task, done))
                continue
            radiograph, load_ms, error = self._load(task.item)
            out.append(Decoded(task, ReportRow(file=task.item.export_name, error=error)) if radiograph is None
                       else Decoded(task, None, radiograph, load_ms))
        return out

    def explain(self, decoded: Sequence[Decoded]) -> list[tuple[FilmTask, ReportRow | PipelineResult]]:
        """The second step: explain the decoded films (one pass for the chunk). Each task comes back with its
        result, or with its row when it was finished already or failed."""
        tasks = [d.task for d in decoded]
        out: list[tuple[FilmTask, ReportRow | PipelineResult]] = [
            (d.task, d.row if d.row is not None else ReportRow(file=d.task.item.export_name)) for d in decoded]
        loaded = [(i, d.radiograph, d.load_ms) for i, d in enumerate(decoded) if d.radiograph is not None]
        for i, result, error in self._explain(tasks, loaded):
            out[i] = (tasks[i], result if result is not None else ReportRow(file=tasks[i].item.export_name,
                                                                          error=error))
        return out

    def finish(self, explained: Sequence[tuple[FilmTask, ReportRow | PipelineResult]]) -> list[ReportRow]:
        """The last step: each explained film's files and figures (rows pass through). Thread-safe
        beside :meth:`explain` unless ``spec.stability`` (its checks run the model again)."""
        rows = []
        for task, outcome in explained:
            if isinstance(outcome, ReportRow):
                rows.append(outcome)
                continue
            try:
                row = self._write(task, outcome)
            except (OSError, ValueError, RuntimeError) as exc:
                rows.append(ReportRow(file=task.item.export_name, error=f"cannot write outputs: {exc}"))
                continue
            if self.on_result is not None:
                self.on_result(task, outcome, row)
            rows.append(row)
        return rows

    # -------------------------------------------------------------------------------- steps
    def _load(self, item: InputItem) -> tuple[Radiograph | None, float, str | None]:
        return load_item(item, isolated=self.spec.isolated, max_pixels=self.spec.max_pixels)

    def _explain(
        self, tasks: Sequence[FilmTask], loaded: Sequence[tuple[int, Radiograph, float]]
    ) -> Iterator[tuple[int, PipelineResult | None, str | None]]:
        """Explain the decoded films together; if the batch fails, one by one (each failure is its own)."""
        from xai.pipeline import explain_radiographs

        if not loaded:
            return
        spec = self.spec
        try:
            results = explain_radiographs(
                [r for _, r, _ in loaded], self.model, names=[tasks[i].item.export_name for i, _, _ in loaded],
                methods=spec.methods, target=spec.target, explainer=self.explainer,
                load_ms=[ms for _, _, ms in loaded],
            )
            yield from ((i, result, None) for (i, _, _), result in zip(loaded, results, strict=True))
        except (MemoryError, ValueError, RuntimeError) as exc:
            if len(loaded) == 1:
                yield loaded[0][0], None, f"{type(exc).__name__}: {exc}"
                return
            for one in loaded:
                yield from self._explain(tasks, [one])

    def _write(self, task: FilmTask, result: PipelineResult) -> ReportRow:
        """Overlays, thumbnails, OOD, agreement and stability of one film; ``row.json`` last."""
        spec = self.spec
        folder = output_dir_for(self.out_dir, task.stem)
        (folder / THUMBS).mkdir(parents=True, exist_ok=True)
        mask = boxes_mask(task.boxes, result.radiograph.shape) if task.boxes else None
        row = ReportRow(
            file=task.item.export_name, stem=task.stem, predicted=result.predicted, target=result.target,
            probabilities=dict(result.probabilities), n_boxes=len(task.boxes),
            box_fraction=float(mask.mean()) if mask is not None else None, notices=result.notices,
        )
        row.ood, notice = ood_record(result, self.model, self.checks.ood_stats)
        row.notices += notice
        film = shrunk_film(result, spec.overlays.max_side)
        original, drawn = overlays(film, spec.cmap)
        scale = original.shape[0] / result.radiograph.shape[0]
        boxes = [Box(b.x * scale, b.y * scale, b.w * scale, b.h * scale, b.label) for b in task.boxes]
        files = [self._thumb(folder, "original", draw_boxes(original, boxes))]
        for method in spec.methods:
            rgb = draw_boxes(drawn[method], boxes)
            name = f"{method_file(method)}{spec.overlays.suffix}"
            write_atomic(folder / name, overlay_file(rgb, provenance(result, self.model, method,
                                                                     {"colormap": spec.cmap}), spec.overlays))
            files += [name, self._thumb(folder, method, rgb)]
            if mask is not None and mask.any():
                row.agreement[method] = agreement(result.maps[method], mask)
        if spec.stability:
            row.stability, notice = stability_record(result, self.model, self.checks.second_model)
            row.notices += notice
        if spec.lungs:
            row.notices += lung_record(row, task, film, result.predicted, radiograph=result.radiograph)
        row.files = tuple(files)
        write_atomic(folder / ROW_FILE, json.dumps({"version": ROW_VERSION, "key": self.key(task),
                                                    "row": row.to_dict()}).encode("utf-8"))
        return row

    @staticmethod
    def _thumb(folder: Path, key: str, rgb: np.ndarray) -> str:
        name = f"{THUMBS}/{method_file(key)}.jpg"
        write_atomic(folder / name, thumbnail(rgb))
        return name

    # -------------------------------------------------------------------------------- resume
    def key(self, task: FilmTask) -> dict[str, Any]:
        """Everything a film's outputs depend on: a finished folder with another key is recomputed."""
        spec = self.spec
        return {
            "file": task.item.export_name, "model_sha256": str(self.model.card.sha256),
            "methods": list(spec.methods), "target": spec.target, "overlays": spec.overlays.key(),
            "cmap": spec.cmap, "stability": spec.stability, "max_pixels": spec.max_pixels, "lungs": spec.lungs,
            "boxes": [asdict(b) for b in task.boxes],
        }

    def completed(self, task: FilmTask) -> ReportRow | None:
        """The stored row of a film whose outputs are complete and were made the same way, else None."""
        folder = self.out_dir / task.stem
        try:
            stored = json.loads((folder / ROW_FILE).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("version") != ROW_VERSION or stored.get("key") != self.key(task):
            return None
        row = ReportRow.from_dict(stored["row"])
        if not all((folder / name).is_file() for name in row.files):
            return None
        return row


# ------------------------------------------------------------------------------------------ steps
def load_item(item: InputItem, *, isolated: bool, max_pixels: int | None) -> tuple[Radiograph | None, float, str | None]:
    """Decode one input: ``(radiograph, milliseconds, None)`` or ``(None, 0, reason)``.

    ``isolated`` decodes in a worker process with time and memory limits (:mod:`xai.sandboxed_decoder`), so a
    decoder that crashes or hangs on one file fails that file only.
    """
    from xai.radiograph import RadiographError, load_radiograph

    if item.error is not None or item.source is None:
        return None, 0.0, item.error or "no data"
    loader = load_radiograph
    if isolated:
        from xai.sandboxed_decoder import load_radiograph_isolated as loader
    kwargs: dict[str, Any] = {} if max_pixels is None else {"max_pixels": max_pixels}
    started = time.perf_counter()
    try:
        radiograph = loader(item.source, **kwargs)
    except RadiographError as exc:
        return None, 0.0, str(exc) or type(exc).__name__
    except (MemoryError, ValueError, RuntimeError, OSError) as exc:
        return None, 0.0, f"{type(exc).__name__}: {exc}"
    return radiograph, (time.perf_counter() - started) * 1e3, None


def agreement(heat: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Pointing hit, share of map energy inside, Otsu IoU (CheXlocalize conventions, :mod:`xai.trust.metrics`)."""
    from xai.trust.metrics import energy_inside, otsu_iou, pointing_game

    return {
        "hit": float(bool(pointing_game(heat, mask))),
        "energy_inside": float(energy_inside(heat, mask)),
        "iou_otsu": float(otsu_iou(heat, mask)),
    }


def ood_record(result: PipelineResult, model: LoadedModel, stats: OODStats | None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Out-of-distribution score and warnings (:func:`xai.trust.ood.score`) as a plain dict, and a notice
    when it could not be computed. Keys: ``score`` (Mahalanobis distance, None without statistics),
    ``percentile``, ``threshold``, ``is_ood``, ``warnings`` (sentences; never header values that identify)."""
    from xai.trust.ood import score

    try:
        verdict = score(model, result.input_tensor, stats, radiograph=result.radiograph,
                        features=result.explanation.features)
    except (ValueError, RuntimeError) as exc:
        return {}, (f"no out-of-distribution score: {exc}",)
    return _plain(asdict(verdict)), ()


def lung_record(row: ReportRow, task: FilmTask, film: Film, predicted: str, *,
                radiograph: Radiograph | None = None) -> tuple[str, ...]:
    """Fill ``row``'s lung figures, anatomical readout and cohort groups (:mod:`xai.batch.lungs`); the notices
    to add. ``radiograph``: the decoded film (laterality from its DICOM header, markers at full resolution)."""
    from xai.anatomy import LungModelError
    from xai.batch.lungs import NO_LUNG_NOTICE, lung_figures

    try:
        figures = lung_figures(film.pixels, film.maps, radiograph=radiograph)
    except (LungModelError, ValueError, RuntimeError) as exc:
        return (f"no lung figures: {exc}",)
    row.in_lungs = figures.in_lungs
    row.anatomy = figures.anatomy
    row.periphery = figures.periphery
    row.lung_area_fraction = figures.area_fraction
    row.registered = figures.registered()
    row.groups = {"predicted class": predicted}
    if task.item.label is None:  # folder names only where file names may be shown (a folder can name a patient)
        row.groups = {"folder": folder_of(task.item.name), **row.groups}
    elif task.item.site is not None:  # else their neutral names, "site 1", "site 2", …
        row.groups = {"folder": task.item.site, **row.groups}
    return () if figures.found else (f"{NO_LUNG_NOTICE} ({figures.reason})",)


def stability_record(
    result: PipelineResult, model: LoadedModel, second_model: LoadedModel | None
) -> tuple[dict[str, dict[str, float]], tuple[str, ...]]:
    """Mean and worst map agreement under small label-preserving changes (:mod:`xai.trust.stability`)."""
    from xai.trust.stability import stability_summary

    try:
        return _plain(stability_summary(model, result, second_model=second_model)), ()
    except (ValueError, RuntimeError) as exc:
        return {}, (f"no stability figures: {exc}",)


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and tuples turned into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def iter_explained(
    items: Sequence[InputItem],
    model: LoadedModel,
    *,
    methods: Sequence[str],
    target: str | int | None,
    max_pixels: int | None = None,
    explainer: Explainer | None = None,
    isolated: bool = True,
) -> Iterator[tuple[InputItem, PipelineResult | None, str | None]]:
    """Explain each item in turn (the ``explain`` command): ``(item, result, None)`` or ``(item, None,
    reason)`` for a bad one — the loader's reason, or the exception's type and message; the rest go on."""
    from xai.pipeline import explain_radiograph, make_explainer

    explainer = explainer if explainer is not None else make_explainer(model)
    for item in items:
        radiograph, load_ms, error = load_item(item, isolated=isolated, max_pixels=max_pixels)
        if radiograph is None:
            yield item, None, error
            continue
        try:
            result = explain_radiograph(radiograph, model, name=item.name, methods=methods, target=target,
                                        explainer=explainer, load_ms=load_ms)
        except (MemoryError, ValueError, RuntimeError) as exc:
            yield item, None, f"{type(exc).__name__}: {exc}"
        else:
            yield item, result, None
