"""One path from an image file to explanation maps on the original pixel grid.

file or bytes -> :class:`~xai.radiograph.Radiograph` -> :func:`~xai.preprocessing.prepare` ->
:meth:`~xai.engine.Explainer.explain` -> :meth:`Geometry.to_original` for every map.

The app, the ``explain`` command line and the batch report all call :func:`explain_source`, so a map
shown on screen, written by the CLI and scored in a report is the same map. Nothing here prints, logs or
returns patient identifiers: the record carries the name the caller gave, never DICOM header fields.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import numpy as np

from xai.scores import DecisionRule

if TYPE_CHECKING:  # heavy imports (torch) only when a pipeline actually runs
    import torch

    from xai.engine import Explainer, Explanation
    from xai.preprocessing import Geometry
    from xai.protocols import LoadedModel
    from xai.radiograph import Radiograph

PREDICTED = "predicted"
"""Target spec meaning "explain the class the model predicts"."""

Source = str | Path | bytes | BinaryIO


class Loader(Protocol):
    """``load_radiograph`` or a drop-in (e.g. :func:`xai.sandboxed_decoder.load_radiograph_isolated`)."""

    def __call__(self, source: Source, *, max_pixels: int = ...) -> Radiograph: ...


class TargetError(ValueError):
    """A target spec that names no class of the model."""


def resolve_target(spec: str | int | None, class_names: Sequence[str]) -> int | None:
    """Turn a target spec into a class index, or ``None`` for the predicted class.

    Accepts a class name (case-insensitive), an index (int or digit string, negative counts from the
    end) or ``"predicted"``/``None``.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == PREDICTED:
            return None
        lowered = [name.lower() for name in class_names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        try:
            spec = int(text)
        except ValueError:
            raise TargetError(
                f"unknown target {text!r}: expected one of {', '.join(class_names)}, an index "
                f"0..{len(class_names) - 1} or {PREDICTED!r}"
            ) from None
    index = int(spec)
    if not -len(class_names) <= index < len(class_names):
        raise TargetError(f"target index {index} out of range for {len(class_names)} classes")
    return index % len(class_names)


class FilmMaps(Mapping[str, np.ndarray]):
    """Each method's map on the film's pixel grid, made on first use (``maps[method]``: float32 (H, W) in [0, 1]).

    The engine's maps live on the model's grid (e.g. 7² or 224²); bringing one back to a film's grid
    (:meth:`xai.preprocessing.Geometry.to_original`, bilinear) costs ~17 ms per map on a 2.7 MP film and is
    needed only by what uses the film's resolution (exports, full-size views). A screen or an anatomical readout
    on a smaller grid takes :meth:`on_grid` instead, which maps and shrinks by area in one step
    (:meth:`~xai.preprocessing.Geometry.to_display`, equal up to float rounding) without the film-sized map.
    Thread-safe (a result is shared by the app's sessions); each film-sized map is made once. Pickles as a plain
    dict of the film-sized maps.
    """

    def __init__(self, model_grid: Mapping[str, np.ndarray], geometry: Geometry) -> None:
        self._model_grid = dict(model_grid)
        self._geometry = geometry
        self._made: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getitem__(self, method: str) -> np.ndarray:
        made = self._made.get(method)
        if made is not None:
            return made
        if method not in self._model_grid:
            raise KeyError(method)
        with self._lock:
            if method not in self._made:
                self._made[method] = np.asarray(self._geometry.to_original(self._model_grid[method]), dtype=np.float32)
            return self._made[method]

    def __iter__(self) -> Iterator[str]:
        return iter(self._model_grid)

    def __len__(self) -> int:
        return len(self._model_grid)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self.items()),))

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the film's grid (every map's shape), known without making a map."""
        h, w = self._geometry.original_size
        return (int(h), int(w))

    def made(self, method: str) -> bool:
        """Whether the film-sized map of ``method`` has been made (tests, benchmarks)."""
        return method in self._made

    def on_grid(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """Every map shrunk by area onto ``shape`` (h, w), a grid of the film's aspect ratio no larger than it:
        from the model's grid in one step while the film-sized map has not been made, from that map otherwise
        (the same values up to float rounding); the film's own shape gives the film-sized maps."""
        import cv2

        h, w = (int(v) for v in shape)
        if (h, w) == self.shape:
            return dict(self.items())
        out = {}
        for method, small in self._model_grid.items():
            made = self._made.get(method)
            out[method] = (cv2.resize(made, (w, h), interpolation=cv2.INTER_AREA) if made is not None
                           else np.asarray(self._geometry.to_display(small, (h, w)), dtype=np.float32))
        return out


@dataclass(frozen=True)
class PipelineResult:
    """One explained image, with every map on the original pixel grid.

    ``maps[method]`` is float32 (H, W) in [0, 1], the same shape as ``radiograph.pixels`` (a :class:`FilmMaps`:
    each made on first use; :meth:`FilmMaps.on_grid` for a smaller grid).
    ``explanation`` keeps the engine's record (model-grid maps, raw maps, logits) for trust checks;
    ``input_tensor`` and ``geometry`` are what the model saw and the way back from it.
    """

    file: str
    radiograph: Radiograph
    input_tensor: torch.Tensor
    geometry: Geometry
    explanation: Explanation
    class_names: tuple[str, ...]
    probabilities: Mapping[str, float]
    predicted: str
    target: str
    target_index: int
    maps: Mapping[str, np.ndarray]
    timings_ms: Mapping[str, float]
    notices: tuple[str, ...]

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.maps)


def make_explainer(model: LoadedModel) -> Explainer:
    """An explainer on the card's target layer (one per model; reusable across images)."""
    from xai.engine import Explainer

    return Explainer(model.module, target_layer=model.card.target_layer)


def explain_radiograph(
    radiograph: Radiograph,
    model: LoadedModel,
    *,
    name: str,
    methods: Sequence[str] | None = None,
    target: str | int | None = PREDICTED,
    explainer: Explainer | None = None,
    load_ms: float = 0.0,
) -> PipelineResult:
    """Explain a loaded radiograph with ``model`` and map every result back to its pixel grid.

    ``target`` is a class name, an index or ``"predicted"`` (the card's decision rule, see
    :class:`xai.scores.DecisionRule`). Raises :class:`TargetError` for a target the model does not have.
    """
    (result,) = explain_radiographs(
        [radiograph], model, names=[name], methods=methods, target=target, explainer=explainer, load_ms=[load_ms]
    )
    return result


def explain_radiographs(
    radiographs: Sequence[Radiograph],
    model: LoadedModel,
    *,
    names: Sequence[str],
    methods: Sequence[str] | None = None,
    target: str | int | None = PREDICTED,
    explainer: Explainer | None = None,
    load_ms: Sequence[float] | None = None,
) -> list[PipelineResult]:
    """:func:`explain_radiograph` for several films with one forward/backward pass for all of them.

    Every film is prepared to the model's fixed input size, so the films stack into one batch (the
    model is in eval mode: each film's logits and maps are the same as alone, within float rounding).
    With the ``"predicted"`` target each film is explained for the card's decision (its threshold, not the
    arg-max), chosen between the engine's forward and backward pass. Stage timings are the batch's
    divided by the number of films.
    """
    import torch

    import xai.anatomy  # noqa: F401 - registers the "lungs" crop a card may name (xai.preprocessing.crop_box)
    from xai.engine import METHODS
    from xai.preprocessing import prepare

    n = len(radiographs)
    if n == 0:
        return []
    methods = tuple(methods) if methods else tuple(METHODS)
    class_names = tuple(model.card.class_names)
    target_index = resolve_target(target, class_names)
    explainer = explainer if explainer is not None else make_explainer(model)
    load_ms = list(load_ms) if load_ms is not None else [0.0] * n

    started = time.perf_counter()
    prepared_films = [prepare(radiograph, model.card.preprocessing) for radiograph in radiographs]
    batch = torch.cat([tensor for tensor, _ in prepared_films])
    prepared = time.perf_counter()
    rule = DecisionRule.of(model.card)

    def decide(batch_probabilities: np.ndarray) -> list[int]:
        return [rule.decide(p) for p in batch_probabilities]

    # The card's decision is taken from the forward pass, before the backward pass: a film whose decision
    # is not the arg-max (ChestCOVNet's threshold on P(covid19) is far below 0.5) needs no second pass.
    explanation = explainer.explain(batch, target=decide if target_index is None else target_index,
                                    methods=methods)
    decided = decide(np.asarray(explanation.probabilities, dtype=np.float64))
    explanations = [_image_of(explanation, i) for i in range(n)]
    explained = time.perf_counter()
    # The film-sized maps are made when first used (FilmMaps): a screen or a readout needs none of them.
    maps = [FilmMaps({m: e.maps[m][0] for m in methods}, geometry)
            for (_, geometry), e in zip(prepared_films, explanations, strict=True)]
    mapped = time.perf_counter()

    shares = {"prepare": (prepared - started) * 1e3 / n, "explain": (explained - prepared) * 1e3 / n,
              "to_original": (mapped - explained) * 1e3 / n}
    return [
        _result(radiographs[i], model, names[i], prepared_films[i], explanations[i], decided[i], maps[i],
                load_ms[i], shares, n)
        for i in range(n)
    ]


def _image_of(explanation: Explanation, i: int) -> Explanation:
    """Film ``i`` of a batch explanation, as the explanation of a batch of one (read-only views)."""
    from dataclasses import replace

    def one(array: np.ndarray) -> np.ndarray:
        return array[i:i + 1]

    def each(mapping: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: one(v) for k, v in mapping.items()}

    return replace(
        explanation, logits=one(explanation.logits), probabilities=one(explanation.probabilities),
        target=one(explanation.target), maps=each(explanation.maps), raw=each(explanation.raw),
        flat=each(explanation.flat), features=None if explanation.features is None else one(explanation.features),
        details=None if explanation.details is None else each(explanation.details),
    )


def _result(
    radiograph: Radiograph, model: LoadedModel, name: str, prepared: tuple[torch.Tensor, Geometry],
    explanation: Explanation, predicted: int, maps: FilmMaps, load_ms: float,
    shares: Mapping[str, float], n: int,
) -> PipelineResult:
    """The :class:`PipelineResult` of one film (``shares``: the batch's stage times per film)."""
    class_names = tuple(model.card.class_names)
    probs = np.asarray(explanation.probabilities[0], dtype=np.float64)
    from xai.export import method_title  # the methods' display names have one home

    final_target = int(explanation.target[0])
    notices = list(radiograph.notices) + list(explanation.notes)
    notices += [
        f"{method_title(m)}: the map is flat (no evidence for {class_names[final_target]} at this layer)."
        for m in maps
        if bool(np.asarray(explanation.flat.get(m, False)).reshape(-1)[0])
    ]
    timings = {
        "load": round(load_ms, 3),
        "prepare": round(shares["prepare"], 3),
        **{f"explain.{k}": round(float(v) / n, 3) for k, v in explanation.timings.items()},
        "explain": round(shares["explain"], 3),
        "to_original": round(shares["to_original"], 3),
    }
    timings["total"] = round(load_ms + sum(shares.values()), 3)
    tensor, geometry = prepared
    return PipelineResult(
        file=name,
        radiograph=radiograph,
        input_tensor=tensor,
        geometry=geometry,
        explanation=explanation,
        class_names=class_names,
        probabilities=MappingProxyType({c: float(p) for c, p in zip(class_names, probs, strict=True)}),
        predicted=class_names[predicted],
        target=class_names[final_target],
        target_index=final_target,
        maps=maps,
        timings_ms=MappingProxyType(timings),
        notices=tuple(dict.fromkeys(notices)),
    )


def explain_source(
    source: Source,
    model: LoadedModel,
    *,
    name: str | None = None,
    methods: Sequence[str] | None = None,
    target: str | int | None = PREDICTED,
    explainer: Explainer | None = None,
    max_pixels: int | None = None,
    loader: Loader | None = None,
) -> PipelineResult:
    """Load ``source`` (path, bytes or binary file) and explain it; see :func:`explain_radiograph`.

    ``name`` is what the record calls the image (default: the path as given; "upload" for bytes).
    ``loader`` decodes the file (default :func:`~xai.radiograph.load_radiograph`; pass
    :func:`~xai.sandboxed_decoder.load_radiograph_isolated` for untrusted files).
    Raises :class:`~xai.radiograph.RadiographError` for a file that is not a usable radiograph.
    """
    if loader is None:
        from xai.radiograph import load_radiograph

        loader = load_radiograph
    if name is None:
        name = str(source) if isinstance(source, str | Path) else "upload"
    kwargs: dict[str, Any] = {} if max_pixels is None else {"max_pixels": max_pixels}
    started = time.perf_counter()
    radiograph = loader(source, **kwargs)
    load_ms = (time.perf_counter() - started) * 1e3
    return explain_radiograph(
        radiograph, model, name=name, methods=methods, target=target, explainer=explainer, load_ms=load_ms
    )


def model_identity(model: LoadedModel) -> dict[str, str]:
    """``{name, version, sha256}`` of the model that produced a result (for audit trails)."""
    card = model.card
    return {"name": str(card.name), "version": str(card.version), "sha256": str(card.sha256)}


def result_record(result: PipelineResult, model: LoadedModel) -> dict[str, Any]:
    """The JSON-serialisable record of one result (``result.json`` of the CLI).

    Keys: file, probabilities, predicted, target, model, target_layer, timings_ms, notices.
    """
    return {
        "file": result.file,
        "probabilities": dict(result.probabilities),
        "predicted": result.predicted,
        "target": result.target,
        "model": model_identity(model),
        "target_layer": result.explanation.target_layer,
        "timings_ms": dict(result.timings_ms),
        "notices": list(result.notices),
    }
