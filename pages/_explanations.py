"""The app's explanations: ONE :class:`ExplanationService` per server owns the engine calls, their caches, the
counters tests read and the background worker that explains a film's other classes.

Every map the app shows comes from :func:`xai.pipeline.explain_radiograph` (the same path as the CLI and the
batch report), called in ONE place, :meth:`ExplanationService.run_engine`, which counts its calls so a test can
prove that display-only changes (opacity, colormap, contours, zoom, window) compute nothing.

Sharing rules (Streamlit runs every session in its own thread of one process): explanations are cached by
image content hash + model identity + target + methods, with a bounded number of entries, so memory levels
off however many images are explained; the counters and the prefetch queue are guarded by locks.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import streamlit as st

from pages._lungs import film_anatomy, lung_outline, readouts, zone_boundaries
from xai.anatomy import AnatomyRegions

if TYPE_CHECKING:
    from pages._ingest import LoadedImage
    from pages._models import ActiveModel
    from xai.pipeline import PipelineResult
    from xai.radiograph import Radiograph
    from xai.render import DisplaySettings, Layers, ScreenFilm, View

#: Bounded caches: about 8 explained films (full-resolution maps) and their display versions.
EXPLANATION_CACHE_ENTRIES = 8
DISPLAY_CACHE_ENTRIES = 8
#: Films whose other classes' screen layers follow the display in use (each holds its classes' results).
SCREEN_FOLLOW_FILMS = 2
CACHE_TTL_S = 3600


class PrefetchSkipped(RuntimeError):
    """A prefetch that did not run because a user was waiting for the engine (the page computes it)."""


@dataclass(frozen=True)
class ScreenLayers:
    """:func:`xai.render.layers` on the screen grid, encoded for the browser: the radiograph (JPEG, no
    outline) and each map's heat index (gray PNG or, when speckled, JPEG q95; coloured and blended in the page)."""

    layers: Layers
    original_uri: str
    heat_uris: Mapping[str, str]


@dataclass(frozen=True)
class ResultKey:
    """What identifies an explained image: content hash, model identity, explained class, methods."""

    image: str
    model: str
    target: int
    methods: tuple[str, ...]

    @classmethod
    def of(cls, image: LoadedImage, model: ActiveModel, result: PipelineResult) -> ResultKey:
        return cls(image.sha256, model.key, int(result.target_index), tuple(result.methods))


def _explain_radiograph(radiograph: Radiograph, model: ActiveModel, target: int | None,
                        methods: tuple[str, ...]) -> PipelineResult:
    from xai.pipeline import PREDICTED, explain_radiograph

    return explain_radiograph(
        radiograph,
        model.loaded,
        name="image",  # never the upload's file name: it may carry identifiers
        methods=methods,
        target=PREDICTED if target is None else int(target),
        explainer=model.explainer,
    )


class ExplanationService:
    """The engine calls of every session, their caches, counters and the background prefetch worker.

    One instance per server (:func:`explanation_service`); tests read its counters:

    * ``engine_calls``: how many times :meth:`run_engine` ran for a user (what a page computed while a user
      waited);
    * ``prefetch_calls``: how many explanations the background worker computed;
    * ``foreground``: engine calls a user is waiting for, in flight now (a prefetch that finds one skips).

    The caches are ``st.cache_resource`` (not ``cache_data``) because results are immutable records of read-only
    arrays: no pickling on every rerun, and the bounded ``max_entries`` keeps memory flat.
    """

    def __init__(self, *, prefetch_max_classes: int | None = None, prefetch_delay_s: float | None = None) -> None:
        #: Prefetch only for models with at most this many classes (each class is one more engine pass);
        #: ``XAI_APP_PREFETCH=0`` turns prefetching off (benchmarks/bench_app.py compares both).
        self.prefetch_max_classes = (4 if os.environ.get("XAI_APP_PREFETCH", "1") != "0" else 0) \
            if prefetch_max_classes is None else prefetch_max_classes
        #: Seconds the background worker waits before its first class: the browser is still drawing the result
        #: the user waits for, on the same cores (``XAI_APP_PREFETCH_DELAY_S`` overrides it).
        self.prefetch_delay_s = float(os.environ.get("XAI_APP_PREFETCH_DELAY_S", "1.0")) \
            if prefetch_delay_s is None else prefetch_delay_s
        self.engine_calls = 0
        self.prefetch_calls = 0
        self.foreground = 0
        self._calls_lock = threading.Lock()
        # A single background worker explains the other classes of the film on screen while the user looks at
        # the first result, so switching the target class costs a cache lookup, not an engine pass.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xai-prefetch")
        # The panels' PNG/JPEG encodings, one per core: OpenCV encodes without the GIL, and a screen-size change
        # encodes up to four heat layers and five outline layers.
        self._encoder = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)),
                                           thread_name_prefix="xai-encode")
        self._prefetched: OrderedDict[tuple[Any, ...], Future[PipelineResult]] = OrderedDict()
        #: Films whose classes were prefetched (or explained), so a rerun does not prefetch them again.
        self._prefetch_seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        #: Per recent film: the layer settings its classes' screens were drawn for, and each class's result
        #: (the page's, done; the prefetched, as queued), so a display change redraws the other classes too.
        self._film_classes: OrderedDict[tuple[Any, ...],
                                        tuple[DisplaySettings | None, dict[int, Future[PipelineResult]]]] = OrderedDict()
        self._screen_jobs: list[Future[None]] = []
        self._prefetch_lock = threading.Lock()
        cache = st.cache_resource
        self.explain_cached = cache(max_entries=EXPLANATION_CACHE_ENTRIES, ttl=CACHE_TTL_S,
                                    show_spinner="Computing the explanations…")(self._explain_cached)
        # The screen's layers, each cached on its own key (xai.render.DisplaySettings.layer_key), so a display
        # change redraws only what it changes: the film shrunk to the screen (side), the radiograph (+ window),
        # the maps before scaling (side, fixed or not), their heat indices (+ vmax), the lungs, the outlines.
        self._screen_caches = []
        for name, make in (("screen_film_cache", self._screen_film), ("screen_gray_cache", self._screen_gray),
                           ("display_maps_cache", self._display_maps), ("screen_heat_cache", self._screen_heat),
                           ("screen_lungs_cache", self._screen_lungs), ("screen_zones_cache", self._screen_zones),
                           ("screen_outlines_cache", self._screen_outlines)):
            cached = cache(max_entries=DISPLAY_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)(make)
            setattr(self, name, cached)
            self._screen_caches.append(cached)

    # ------------------------------------------------------------------------------------------ the engine
    def run_engine(self, radiograph: Radiograph, model: ActiveModel, target: int | None, methods: tuple[str, ...],
                   *, count: bool = True) -> PipelineResult:
        """The only place the app computes maps: prepare -> explain -> maps on the original grid.

        ``count=False`` for work no user asked for (the start-up warm-up, background prefetches, which have
        their own counter), so ``engine_calls`` counts what a page computed while a user waited.
        """
        if count:
            with self._calls_lock:
                self.engine_calls += 1
        with self._in_foreground(count):
            return _explain_radiograph(radiograph, model, target, methods)

    @contextlib.contextmanager
    def _in_foreground(self, active: bool) -> Iterator[None]:
        if not active:
            yield
            return
        with self._calls_lock:
            self.foreground += 1
        try:
            yield
        finally:
            with self._calls_lock:
                self.foreground -= 1

    def _explain_cached(self, image_sha: str, model_id: str, target: int | None, methods: tuple[str, ...],
                        _image: LoadedImage, _model: ActiveModel) -> PipelineResult:
        """Cached :meth:`run_engine`, keyed by image hash + model identity + target + methods. A result computed
        in the background by :meth:`prefetch_targets` is taken from there (waiting for it if still running)."""
        pending = self._take_prefetched((image_sha, model_id, target, methods))
        if pending is not None:
            with contextlib.suppress(Exception):  # a failed prefetch: compute here, where the error is shown
                return pending.result()
        return self.run_engine(_image.radiograph, _model, target, methods)

    def explain(self, image: LoadedImage, model: ActiveModel, target: int | None,
                methods: tuple[str, ...]) -> PipelineResult:
        """The cached explanation of the page's image and model (every page calls this one)."""
        return self.explain_cached(image.sha256, model.key, target, methods, image, model)

    # ------------------------------------------------------------------------------------------ prefetch
    def _take_prefetched(self, key: tuple[Any, ...]) -> Future[PipelineResult] | None:
        with self._prefetch_lock:
            return self._prefetched.pop(key, None)

    def _prefetch_one(self, image: LoadedImage, model: ActiveModel, target: int, methods: tuple[str, ...],
                      settings: DisplaySettings | None, not_before: float) -> PipelineResult:
        """One other class: the explanation, then (best effort) what its page will need — the screen layers
        for the display settings in use and the anatomical readout — into the same caches the page reads."""
        # After the browser has drawn what the user is waiting for; classes queued behind one another wait for
        # the same moment (``not_before``, time.monotonic()), not a delay each.
        time.sleep(max(0.0, not_before - time.monotonic()))
        with self._calls_lock:
            if self.foreground:  # under load (many sessions) the background work would only slow everyone down
                raise PrefetchSkipped("a user is waiting for the engine")
            self.prefetch_calls += 1
        result = self.run_engine(image.radiograph, model, target, methods, count=False)
        key = ResultKey.of(image, model, result)
        with contextlib.suppress(Exception):  # the page computes whatever this could not
            if settings is not None:
                self._screen(key, settings, image.radiograph, result, outlines=True)
            regions = film_anatomy(image.sha256, image.radiograph)
            if isinstance(regions, AnatomyRegions):
                readouts(key, result.maps, regions)  # the Explain page's titles, chart and flags
        return result

    def prefetch_targets(self, image: LoadedImage, model: ActiveModel, result: PipelineResult,
                         settings: DisplaySettings | None = None) -> int:
        """Explain the film's other classes in the background (once per film, model and methods), with their
        screen layers for ``settings`` (the layer fields of the display in use) and their anatomical readout. Called
        again for a film already prefetched, with other layer settings (the page calls this on every redraw),
        it redraws those classes' screens for the new settings in the background (:meth:`_follow_display`).

        Bounded: at most ``prefetch_max_classes`` classes and :data:`EXPLANATION_CACHE_ENTRIES` results
        waiting; the oldest waiting result is dropped first. Returns how many explanations were queued.
        """
        if len(model.class_names) > self.prefetch_max_classes:
            return 0
        film = (image.sha256, model.key, result.methods)
        not_before = time.monotonic() + self.prefetch_delay_s
        layer_settings = None if settings is None else replace(settings.only("layers"),
                                                               contour_level=settings.contour_level)
        queued = 0
        shown: Future[PipelineResult] = Future()
        shown.set_result(result)
        with self._prefetch_lock:
            if film in self._prefetch_seen:
                self._follow_display(film, image, model, result.target_index, shown, layer_settings, not_before)
                return 0
            self._prefetch_seen[film] = None
            while len(self._prefetch_seen) > 4 * EXPLANATION_CACHE_ENTRIES:
                self._prefetch_seen.popitem(last=False)
            classes = {result.target_index: shown}
            for index in range(len(model.class_names)):
                if index == result.target_index:
                    continue
                key = (image.sha256, model.key, index, result.methods)
                classes[index] = self._prefetched[key] = self._pool.submit(
                    self._prefetch_one, image, model, index, result.methods, layer_settings, not_before)
                queued += 1
            while len(self._prefetched) > EXPLANATION_CACHE_ENTRIES:
                self._prefetched.popitem(last=False)[1].cancel()
            self._film_classes[film] = (layer_settings, classes)
            while len(self._film_classes) > SCREEN_FOLLOW_FILMS:
                self._film_classes.popitem(last=False)
        return queued

    def _follow_display(self, film: tuple[Any, ...], image: LoadedImage, model: ActiveModel, target: int,
                        shown: Future[PipelineResult], settings: DisplaySettings | None, not_before: float) -> None:
        """A film already prefetched (lock held): when its layer settings changed since its classes were drawn
        (a new screen size, window, scale, outline), queue the other classes' screens for the new settings, so a
        target switch after a display change finds its layers ready too."""
        known = self._film_classes.get(film)
        if known is None:
            return
        drawn_for, classes = known
        classes[target] = shown
        self._film_classes.move_to_end(film)
        if settings is None or settings == drawn_for:
            return
        self._film_classes[film] = (settings, classes)
        others = [future for index, future in classes.items() if index != target]
        self._screen_jobs = [job for job in self._screen_jobs if not job.done()]
        self._screen_jobs.append(self._pool.submit(self._screens_of, image, model, others, settings, not_before))

    def _screens_of(self, image: LoadedImage, model: ActiveModel, results: list[Future[PipelineResult]],
                    settings: DisplaySettings, not_before: float) -> None:
        """The screen layers of other classes' results for ``settings`` (background; best effort)."""
        time.sleep(max(0.0, not_before - time.monotonic()))
        for future in results:
            with self._calls_lock:
                if self.foreground:  # a user waits for the engine: the page draws what it needs itself
                    return
            with contextlib.suppress(Exception):  # a failed or cancelled prefetch: the page computes it
                result = future.result()
                self._screen(ResultKey.of(image, model, result), settings, image.radiograph, result, outlines=True)

    def clear_prefetches(self) -> None:
        """Forget every prefetch (with ``explain_cached.clear()``: a fresh start for tests)."""
        with self._prefetch_lock:
            for future in self._prefetched.values():
                future.cancel()
            self._prefetched.clear()
            self._prefetch_seen.clear()
            self._film_classes.clear()

    def wait_for_prefetches(self, timeout_s: float = 600) -> None:
        """Block until every queued prefetch has finished (tests and the benchmark)."""
        with self._prefetch_lock:
            pending: list[Future[Any]] = [*self._prefetched.values(), *self._screen_jobs]
        for future in pending:
            with contextlib.suppress(Exception):
                future.result(timeout=timeout_s)

    # ------------------------------------------------------------------------------------------ the screen
    def clear_screen_caches(self) -> None:
        """Forget every screen layer (tests: a fresh start)."""
        for cached in self._screen_caches:
            cached.clear()

    def _screen_film(self, image_sha: str, side: int | None, _radiograph: Radiograph) -> ScreenFilm:
        """:func:`xai.render.screen_film`: the film shrunk once per screen size (keyed by image hash and side)."""
        from xai import render

        return render.screen_film(_radiograph, side)

    def _screen_gray(self, image_sha: str, settings: DisplaySettings, _film: ScreenFilm) -> tuple[Any, str]:
        """The radiograph layer and its JPEG data URI (keyed by ``settings.layer_key("gray")``: side, window)."""
        from pages._panel import screen_image_uri
        from xai import render

        rgb = render.gray_layer(_film, settings)
        return rgb, screen_image_uri(rgb)

    def _display_maps(self, key: ResultKey, side: int | None, scale: str,
                      _result: PipelineResult) -> Mapping[str, Any]:
        """:func:`xai.render.display_maps` (keyed by the explanation, side and scale mode, not by ``vmax``)."""
        from xai import render

        return render.display_maps(_result, render.DisplaySettings(side=side, scale=scale))  # type: ignore[arg-type]

    def _screen_heat(self, key: ResultKey, settings: DisplaySettings,
                     _maps: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, str]]:
        """Each map's heat index and its data URI (keyed by ``settings.layer_key("heat")``)."""
        from pages._panel import screen_heat_uri
        from xai import render

        heat = render.heat_layers(_maps, settings)
        return heat, dict(zip(heat, self._encoder.map(screen_heat_uri, heat.values()), strict=True))

    def _screen_lungs(self, image_sha: str, side: int | None, _radiograph: Radiograph) -> Any:
        """:func:`xai.render.lung_layer` of the film's lung field (None without one)."""
        from xai import render

        return render.lung_layer(lung_outline(image_sha, _radiograph), side)

    def _screen_zones(self, image_sha: str, shape: tuple[int, ...], _radiograph: Radiograph) -> Any:
        """:func:`xai.render.zone_layer` of the film's lung zones' boundaries on the screen grid (None without)."""
        from xai import render

        return render.zone_layer(zone_boundaries(image_sha, _radiograph), shape)

    def _screen_outlines(self, key: ResultKey, settings: DisplaySettings,
                         _layers: Layers) -> Mapping[str, str | None]:
        """:func:`xai.render.outlines` as RGBA PNG data URIs (keyed by ``settings.layer_key("outlines")``), drawn
        on the screen grid."""
        from pages._panel import screen_png_uri
        from xai import render

        drawn = render.outlines(_layers, settings)
        # Panels sharing one outline array (no heat contour) share its encoding.
        distinct = list({id(rgba): rgba for rgba in drawn.values() if rgba is not None}.values())
        encoded = dict(zip((id(a) for a in distinct),
                           self._encoder.map(lambda rgba: screen_png_uri(rgba, row_filter=False), distinct), strict=True))
        return {panel: None if rgba is None else encoded[id(rgba)] for panel, rgba in drawn.items()}

    def _screen(self, key: ResultKey, settings: DisplaySettings, radiograph: Radiograph,
                result: PipelineResult, *, outlines: bool = False) -> tuple[ScreenLayers, Mapping[str, str | None]]:
        """The screen's layers for ``settings``, each from its own cache; the outlines' URIs when asked (else {})."""
        from xai import render

        film = self.screen_film_cache(key.image, settings.side, radiograph)
        original, original_uri = self.screen_gray_cache(key.image, settings.layer_key("gray"), film)
        maps = self.display_maps_cache(key, settings.side, settings.scale, result)
        heat, heat_uris = self.screen_heat_cache(key, settings.layer_key("heat"), maps)
        lungs = self.screen_lungs_cache(key.image, settings.side, radiograph) if settings.lungs else None
        zones = self.screen_zones_cache(key.image, original.shape[:2], radiograph) if settings.zones else None
        layers = render.Layers(original=original, heat=heat, lungs=lungs, zones=zones)
        drawn = self.screen_outlines_cache(key, settings.layer_key("outlines"), layers) if outlines else {}
        return ScreenLayers(layers, original_uri, heat_uris), drawn

    def screen_layers(self, image: LoadedImage, model: ActiveModel, result: PipelineResult,
                      settings: DisplaySettings) -> tuple[ScreenLayers, Mapping[str, str | None]]:
        """What the Explain panel draws, behind the app's display caches: the encoded radiograph, heat indices
        and outlines, each keyed by the explanation's own key and the settings that change it
        (:meth:`xai.render.DisplaySettings.layer_key`). Colour and opacity are in no key: the page blends them
        (``pages._panel``)."""
        return self._screen(ResultKey.of(image, model, result), settings, image.radiograph, result, outlines=True)

    def screen_view(self, image: LoadedImage, model: ActiveModel, result: PipelineResult,
                    settings: DisplaySettings) -> View:
        """The pure :func:`xai.render.view` of an explanation at screen size, from the cached layers (for pages
        that show composed pixels: Review, Trust, Compare, How)."""
        from xai import render

        screen, _ = self._screen(ResultKey.of(image, model, result), settings, image.radiograph, result)
        return render.compose(screen.layers, settings)


@st.cache_resource(show_spinner=False)
def explanation_service() -> ExplanationService:
    """The server's one :class:`ExplanationService` (shared by every session, like the bundled model)."""
    return ExplanationService()


def explain(image: LoadedImage, model: ActiveModel, target: int | None, methods: tuple[str, ...]) -> PipelineResult:
    """:meth:`ExplanationService.explain` on the server's service (what pages call)."""
    return explanation_service().explain(image, model, target, methods)


def screen_layers(image: LoadedImage, model: ActiveModel, result: PipelineResult,
                  settings: DisplaySettings) -> tuple[ScreenLayers, Mapping[str, str | None]]:
    """:meth:`ExplanationService.screen_layers` on the server's service."""
    return explanation_service().screen_layers(image, model, result, settings)


def screen_view(image: LoadedImage, model: ActiveModel, result: PipelineResult, settings: DisplaySettings) -> View:
    """:meth:`ExplanationService.screen_view` on the server's service."""
    return explanation_service().screen_view(image, model, result, settings)


def prefetch_targets(image: LoadedImage, model: ActiveModel, result: PipelineResult,
                     settings: DisplaySettings | None = None) -> int:
    """:meth:`ExplanationService.prefetch_targets` on the server's service."""
    return explanation_service().prefetch_targets(image, model, result, settings)
