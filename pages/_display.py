"""The session's display choices: the Explain page's Display widgets (their keys and defaults), read by every page
that draws a map, so the user's colormap, opacity and scale reach the Trust page's maps as they are.

One home for the keys: the Explain page draws the widgets with these keys; other pages read them only through
:func:`heat_look` and :func:`session_display`, never as strings of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

import streamlit as st

from pages._state import kept_value, page_store
from xai import display_scale, render
from xai.render import DisplaySettings

if TYPE_CHECKING:
    from pages._models import ActiveModel
    from xai.pipeline import PipelineResult

#: The scale choices: code -> what the picker says.
SCALES: Mapping[str, str] = MappingProxyType({
    "model": "the model's typical range (default)",
    "per_image": "per image (stretched)",
    "session": "fixed on the first image of this session",
})
#: The widgets that decide how the heat layers look, with their defaults (one home for both uses below).
HEAT_LOOK = DisplaySettings(show_heat=True, alpha=render.DEFAULT_ALPHA, cmap=render.DEFAULT_CMAP)
#: Every Display widget's key and default ("disp_per_row" is added per page: it depends on the panel count).
DISPLAY_DEFAULTS: Mapping[str, object] = MappingProxyType({
    "disp_overlay": HEAT_LOOK.show_heat, "disp_alpha": HEAT_LOOK.alpha, "disp_cmap": HEAT_LOOK.cmap,
    "disp_colorbar": True, "disp_contours": False, "disp_contour_level": 0.5, "disp_lungs": False, "disp_zones": False,
    "disp_scale": next(iter(SCALES)), "disp_side": "768 px (fast)", "disp_size": "Medium", "disp_zoom": 1.0,
    "disp_cx": 50, "disp_cy": 50,
})


def _kept(key: str) -> object:
    return kept_value(key, DISPLAY_DEFAULTS[key])


def heat_look() -> DisplaySettings:
    """Overlay on/off, opacity and colormap as the widgets hold them when this run starts (Streamlit updates
    a widget's state before the rerun it triggers; kept while the controls are closed), so a page can restyle
    the heat layers before drawing anything else. Other fields stay at their defaults."""
    return replace(HEAT_LOOK, show_heat=bool(_kept("disp_overlay")), alpha=float(_kept("disp_alpha")),  # type: ignore[arg-type]
                   cmap=str(_kept("disp_cmap")))


def overlay_style() -> render.OverlayStyle:
    """The session's colormap, opacity and overlay switch as :func:`xai.render.overlay`'s style, for pages that
    draw maps that are not an engine result on the film (Compare's common grid, How's model-input steps)."""
    look = heat_look()
    return {"cmap": look.cmap, "alpha": look.alpha, "show_heat": look.show_heat}


def scale_choice() -> str:
    """The scale picked in the Display controls (a key of :data:`SCALES`)."""
    return str(_kept("disp_scale"))


def fixed_maxima_store() -> dict[tuple[str, str], float]:
    """The session's fixed scale: ``{(model key, method): maximum}`` (set on the Explain page's first image)."""
    return page_store("display").setdefault("fixed_vmax", {})


def session_display(model: ActiveModel, result: PipelineResult, *, side: int) -> DisplaySettings:
    """The Display choices as this session last set them (scale, colormap, opacity, overlay, contours), at
    ``side`` pixels. The scale: the model's typical range by default (the card's calibration), the session's
    fixed maxima when chosen, per image when chosen or when the card has no calibration."""
    choice = scale_choice()
    vmax: tuple[tuple[str, float], ...] = ()
    if choice == "session":
        fixed = fixed_maxima_store()
        vmax = tuple((m, float(fixed[(model.key, m)])) for m in result.maps if (model.key, m) in fixed)
    if choice != "per_image" and len(vmax) != len(result.maps):
        cal = display_scale.from_card(model.card)
        vmax = tuple((m, cal.vmax[m]) for m in result.maps) if cal is not None and all(
            m in cal.vmax for m in result.maps) else ()
    look = heat_look()
    return replace(look, side=side, scale="fixed" if vmax else "per_image", vmax=vmax,
                   contour_level=float(_kept("disp_contour_level")) if _kept("disp_contours") else None)  # type: ignore[arg-type]


def light_theme() -> bool:
    """Whether the browser shows the light theme (chosen in the menu, or the system's): plotly draws panel
    titles and colour-bar ticks itself, so every figure of maps must be told."""
    theme = getattr(st.context, "theme", None)
    return getattr(theme, "type", None) == "light"
