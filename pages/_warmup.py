"""Start-up warm-up: pay the result page's first-use costs when the server starts, not on the first upload."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from pages._explanations import explanation_service
from pages._ingest import SAMPLES_DIR, list_samples, load_bytes
from pages._lungs import warm_up_anatomy_worker
from xai.method_names import METHODS

if TYPE_CHECKING:
    from pages._models import ActiveModel

#: The methods the start-up warm-up explains (the Explain page's default: all of them).
METHODS_FOR_WARM_UP: tuple[str, ...] = METHODS


def warm_up_display(model: ActiveModel, blank: Any, features: Any) -> None:
    """Pay the first-use costs of the result page at start-up instead of on the first upload (~0.3 s).

    The colour tables (shipped data since they cost a matplotlib import), plotly's figure validators and the OOD
    statistics (read from the bundle) are each slow only the first time they are used in a process. ``features``:
    penultimate features from a warm-up explanation, so the OOD warm-up needs no forward pass (``blank``, an input
    of the model's shape, is not run).
    """
    import numpy as np

    import models
    from pages._panel import Panel, panel_figure
    from xai import render
    from xai.trust import ood

    tiny = np.zeros((8, 8), np.float32)
    rgb = render.overlay(tiny, tiny)
    panel_figure([Panel("", rgb), Panel("", rgb)], per_row=2, row_height=100, uirevision="warm-up",
                 colorscale=render.plotly_colorscale())
    with contextlib.suppress(ValueError, RuntimeError):  # statistics that do not fit: the page says so later
        ood.score(model.loaded, blank, models.ood_stats(model.loaded), features=features)


def warm_up_page(model: ActiveModel) -> Any:
    """The result page's whole path once on a bundled film at start-up (~0.4 s), so the first user's
    result is as fast as every later one: the film's decode (in-process: the decoders' fork server is starting
    beside this warm-up, see :func:`pages._models.default_model`), the engine on a real film,
    the mapping back, the lung model, every colour table, the screen layers and their images, the panel figure.
    Nothing is cached for users (the engine is called directly, not through the explanation cache).

    Returns the film's penultimate features (for the OOD warm-up), or None when no film could be explained.
    """
    from pages._panel import (
        GRAY_COLORSCALE,
        Panel,
        colormap_filters_js,
        panel_figure,
        screen_heat_uri,
        screen_image_uri,
    )
    from xai import render

    samples = list_samples()
    if not samples:
        return None
    try:
        image = load_bytes((SAMPLES_DIR / next(iter(samples.values()))).read_bytes(), "warm-up", source="sample")
        result = explanation_service().run_engine(image.radiograph, model, None, METHODS_FOR_WARM_UP, count=False)
    except Exception:  # noqa: BLE001 - best effort: a failing warm-up only makes the first result slower
        return None
    prepared = render.layers(image.radiograph, result, render.DisplaySettings())
    base = screen_image_uri(prepared.original)
    panels = [Panel("", prepared.original, source=base)] + [
        Panel("", prepared.original, source=base, heat=screen_heat_uri(index)) for index in prepared.heat.values()]
    with contextlib.suppress(Exception):  # the lung model and the readout: their first film is slow
        from xai.anatomy import anatomy_readout

        anatomy_readout(result.maps, warm_up_anatomy_worker(image.radiograph))
    colormap_filters_js()  # every colour table, once per process
    render.outlines(prepared, render.DisplaySettings(contour_level=0.5))
    panel_figure(panels, per_row=3, row_height=300, uirevision="warm-up", colorscale=GRAY_COLORSCALE).to_json()
    return result.explanation.features
