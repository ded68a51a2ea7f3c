"""Colormaps, overlays and images for showing saliency maps on radiographs.

Pure numpy / OpenCV / matplotlib (colormap tables only): no UI imports, so the app, the CLI and the
report exporters draw exactly the same pixels.

Conventions
-----------
* A radiograph ``gray`` is float (H, W) in [0, 1], bone white, air black (``Radiograph.pixels``).
* A heat map ``heat`` is float (H, W) in [0, 1] on the same pixel grid (``Geometry.to_original`` of an
  ``Explanation.maps`` entry, then :func:`scale_map`).
* Images returned for display are ``uint8`` RGB (H, W, 3).

Colormaps
---------
The default is ``inferno``; ``viridis``, ``magma`` and ``cividis`` are the other perceptually uniform
choices (lightness rises monotonically with the value, so equal steps in the map look like equal steps;
``cividis`` is also readable with colour-vision deficiency). ``jet`` is offered only for familiarity:
rainbow maps have non-monotonic lightness, create false boundaries (bright yellow/cyan bands) and lowered
diagnostic accuracy in a reader study (Borkin et al., IEEE TVCG 2011), so it is never the default.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypedDict, Unpack, cast

import cv2
import numpy as np
from numpy.typing import NDArray

from xai.arrays import read_only

__all__ = [
    "COLORMAPS",
    "CONTOUR_COLOR",
    "DEFAULT_ALPHA",
    "DEFAULT_CMAP",
    "DEFAULT_SIDE",
    "LUNG_COLOR",
    "PERCEPTUALLY_UNIFORM",
    "DisplaySettings",
    "Layers",
    "ScreenFilm",
    "OverlayStyle",
    "ScaleMode",
    "View",
    "blend",
    "colorbar",
    "colorbar_values",
    "colorize",
    "compose",
    "display_maps",
    "downsample_for_display",
    "gray_layer",
    "gray_to_rgb",
    "heat_index",
    "heat_layers",
    "layers",
    "lung_layer",
    "lut",
    "outlines",
    "overlay",
    "plotly_colorscale",
    "raw_magnitude",
    "robust_max",
    "scale_map",
    "screen_film",
    "to_png_bytes",
    "view",
    "WINDOW_PRESETS",
    "nice_step",
    "window_preset",
]

#: Colormaps offered to users, default first. ``jet`` is last on purpose (see module docstring).
COLORMAPS: tuple[str, ...] = ("inferno", "viridis", "magma", "cividis", "jet")
PERCEPTUALLY_UNIFORM: frozenset[str] = frozenset({"inferno", "viridis", "magma", "cividis"})
DEFAULT_CMAP = "inferno"
DEFAULT_ALPHA = 0.45
#: Contour colour: saturated cyan stands out on a gray radiograph and on every offered colormap's warm end.
CONTOUR_COLOR: tuple[int, int, int] = (0, 255, 255)

ScaleMode = Literal["per_image", "fixed"]

_FLAT_EPS = 1e-12


# --------------------------------------------------------------------------------------------- helpers
def _check_cmap(cmap: str) -> str:
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown colormap {cmap!r}; choose one of {', '.join(COLORMAPS)}")
    return cmap


@lru_cache(maxsize=len(COLORMAPS))
def _lut(cmap: str) -> NDArray[np.uint8]:
    """256-entry RGB lookup table of a matplotlib colormap (read-only, cached: tables are tiny), from the
    shipped copy in :mod:`xai.colormap_tables` (no matplotlib import on the drawing path)."""
    from xai.colormap_tables import TABLES

    lut = np.frombuffer(bytes.fromhex(TABLES[_check_cmap(cmap)]), dtype=np.uint8).reshape(256, 3).copy()
    lut.setflags(write=False)
    return lut


def lut(cmap: str = DEFAULT_CMAP) -> NDArray[np.uint8]:
    """The colormap's 256-entry uint8 RGB table (read-only): index ``i`` of a :func:`heat_index` map is drawn
    as ``lut(cmap)[i]`` everywhere (overlays, colour bars, the browser's colour filter in the app)."""
    return _lut(_check_cmap(cmap))


def _as_unit_2d(name: str, array: NDArray, *, clip: bool = True) -> NDArray[np.float32]:
    """A finite float32 (H, W) array; NaN/inf become 0 and values are clipped to [0, 1]."""
    a = np.asarray(array)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    out = a.astype(np.float32, copy=True)
    if not np.isfinite(out).all():  # one cheap pass; the repair only for the rare map that needs it
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _to_uint8(unit: NDArray[np.float32]) -> NDArray[np.uint8]:
    """[0, 1] float -> uint8 with rounding (``cv2.convertScaleAbs`` rounds and saturates, much faster).

    Callers pass values already clipped to [0, 1] (convertScaleAbs would fold negatives to positive).
    """
    return np.asarray(cv2.convertScaleAbs(np.ascontiguousarray(unit, dtype=np.float32), alpha=255.0), np.uint8)


# --------------------------------------------------------------------------------------------- public
def gray_to_rgb(gray: NDArray) -> NDArray[np.uint8]:
    """Radiograph float (H, W) in [0, 1] -> uint8 RGB (H, W, 3) (values outside [0, 1] are clipped)."""
    return cast(NDArray[np.uint8], cv2.cvtColor(_to_uint8(_as_unit_2d("gray", gray)), cv2.COLOR_GRAY2RGB))


def colorize(heat: NDArray, cmap: str = DEFAULT_CMAP) -> NDArray[np.uint8]:
    """Map a heat map (H, W) in [0, 1] to uint8 RGB through a 256-level colormap table.

    ``rgb[i, j] = LUT[round(255 * clip(heat[i, j], 0, 1))]``; NaN and inf count as 0.
    """
    return _colorize_index(heat_index(heat), cmap)


def heat_index(heat: NDArray) -> NDArray[np.uint8]:
    """A heat map (H, W) in [0, 1] as the uint8 colour-table index ``round(255 * clip(heat, 0, 1))``.

    The quantised form :func:`blend` takes; NaN and inf count as 0. Computing it once per map lets an
    interactive view re-blend (opacity, colormap) without re-scanning the float map.
    """
    return _to_uint8(_as_unit_2d("heat", heat))


def _colorize_index(index: NDArray[np.uint8], cmap: str) -> NDArray[np.uint8]:
    """LUT lookup of uint8 indices with ``cv2.LUT`` (several times faster than numpy fancy indexing)."""
    lut = _lut(_check_cmap(cmap))
    return cast(NDArray[np.uint8], cv2.LUT(cv2.merge([index, index, index]), np.ascontiguousarray(lut.reshape(256, 1, 3))))


class OverlayStyle(TypedDict, total=False):
    """How :func:`overlay` and :func:`blend` draw (every key optional; the defaults are :func:`blend`'s)."""

    cmap: str
    alpha: float
    contour_level: float | None
    show_heat: bool
    contour_color: tuple[int, int, int]
    contour_thickness: int | None


def overlay(gray: NDArray, heat: NDArray, **style: Unpack[OverlayStyle]) -> NDArray[np.uint8]:
    """Blend a colorized heat map onto a radiograph and optionally draw iso-contours.

    ``out = (1 - alpha) * gray_rgb + alpha * colorize(heat)`` (constant alpha, as in the Grad-CAM paper's
    figures and pytorch-grad-cam's ``show_cam_on_image``); ``alpha = 0`` or ``show_heat=False`` shows the
    radiograph alone. With ``contour_level`` (in (0, 1]) the outline of ``heat >= contour_level`` (on the
    256-level map the colours use) is drawn with OpenCV (``findContours`` / anti-aliased ``drawContours``)
    in ``contour_color`` on top, with or without the heat colours (contour plus heat map read best in a
    reader study; see GUIDE §4). ``style``: see :class:`OverlayStyle` and :func:`blend`.

    ``gray`` and ``heat`` must share a pixel grid (map the heat map back with ``Geometry.to_original``);
    mismatched shapes raise ``ValueError`` rather than silently misplacing the map.
    """
    g = _as_unit_2d("gray", gray)
    h = _as_unit_2d("heat", heat)
    if g.shape != h.shape:
        raise ValueError(f"gray {g.shape} and heat {h.shape} must have the same (H, W) shape")
    return blend(cast(NDArray[np.uint8], cv2.cvtColor(_to_uint8(g), cv2.COLOR_GRAY2RGB)), _to_uint8(h), **style)


def blend(
    gray_rgb: NDArray[np.uint8],
    index: NDArray[np.uint8],
    *,
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
    contour_level: float | None = None,
    show_heat: bool = True,
    contour_color: tuple[int, int, int] = CONTOUR_COLOR,
    contour_thickness: int | None = None,
) -> NDArray[np.uint8]:
    """:func:`overlay` on prepared pixels: ``gray_rgb`` from :func:`gray_to_rgb`, ``index`` from
    :func:`heat_index`. Returns a new array; the inputs are not modified.

    ``out = round((1 - alpha) * gray_rgb + alpha * LUT[index])``; contours outline ``index >=
    round(255 * contour_level)``. For views that redraw often (an opacity slider): the radiograph's RGB and
    each map's index are made once, and a redraw is one table lookup and one weighted sum.
    """
    if gray_rgb.dtype != np.uint8 or gray_rgb.ndim != 3 or gray_rgb.shape[2] != 3:
        raise ValueError(f"gray_rgb must be uint8 (H, W, 3), got {gray_rgb.dtype} {gray_rgb.shape}")
    if index.dtype != np.uint8 or index.shape != gray_rgb.shape[:2]:
        raise ValueError(f"index must be uint8 {gray_rgb.shape[:2]}, got {index.dtype} {index.shape}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_cmap(cmap)
    out = gray_rgb.copy()
    if show_heat and alpha > 0:
        color = _colorize_index(np.ascontiguousarray(index), cmap)
        # uint8 blend with OpenCV (rounds, saturates): a 1024 px panel in a few ms, so display changes stay fast.
        out = cast(NDArray[np.uint8], cv2.addWeighted(out, 1.0 - float(alpha), color, float(alpha), 0.0))
    if contour_level is not None:
        level = float(contour_level)
        if not 0.0 < level <= 1.0:
            raise ValueError(f"contour_level must be in (0, 1], got {level}")
        _draw_contours(out, index, max(1, round(255.0 * level)), contour_color, contour_thickness)
    return out


def _draw_contours(
    rgb: NDArray[np.uint8],
    index: NDArray[np.uint8],
    level: int,
    color: tuple[int, ...],
    thickness: int | None,
) -> None:
    """Draw the outline of ``index >= level`` (a :func:`heat_index` map, level in 1..255) on ``rgb`` in place.

    Regions smaller than ``(max(H, W) / 256)**2`` pixels (16 px on a 1024 px image) are not outlined:
    guided maps are speckled at pixel scale, and thousands of dot-sized rings hide the anatomy (and cost
    ~100 ms per panel to draw) without telling the reader anything.
    """
    mask = (index >= level).astype(np.uint8)
    if not mask.any():
        return
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    min_area = (max(rgb.shape[:2]) / 256.0) ** 2
    contours = [c for c in contours if len(c) > 2 and cv2.contourArea(c) >= min_area]
    if thickness is None:  # about 2 px on a 1000 px image, never below 1
        thickness = max(1, round(max(rgb.shape[:2]) / 500))
    cv2.drawContours(rgb, contours, -1, tuple(int(c) for c in color), int(thickness), lineType=cv2.LINE_AA)


def scale_map(
    raw_map: NDArray,
    mode: ScaleMode = "per_image",
    vmax: float | None = None,
) -> NDArray[np.float32]:
    """Scale a saliency map (already on the display grid) into [0, 1] for colouring.

    * ``"per_image"``: min-max, ``(m - min) / (max - min)``; a flat map (max == min) stays all zero
      (there is nothing to show, and inventing contrast would mislead).
    * ``"fixed"``: ``clip(m / vmax, 0, 1)`` with the same ``vmax`` for every image, so colours mean the
      same value across images (e.g. ``vmax`` from :func:`robust_max` over the compared maps, or 1.0
      for maps that are already in [0, 1]). ``vmax=None`` means 1.0.

    NaN/inf values count as 0. Returns float32 (H, W).
    """
    m = _as_unit_2d("map", raw_map, clip=False)
    if mode == "per_image":
        lo, hi = float(m.min()), float(m.max())
        if hi - lo <= _FLAT_EPS * max(1.0, abs(hi)):
            return np.zeros_like(m)
        return ((m - lo) / (hi - lo)).astype(np.float32)
    if mode == "fixed":
        top = 1.0 if vmax is None else float(vmax)
        if not np.isfinite(top) or top <= 0:
            raise ValueError(f"vmax must be a positive finite number, got {vmax}")
        return np.clip(m / top, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"mode must be 'per_image' or 'fixed', got {mode!r}")


def robust_max(maps: NDArray | list[NDArray], percentile: float = 99.5) -> float:
    """A shared ``vmax`` for ``scale_map(mode="fixed")``: the given percentile of all finite values.

    Returns 1.0 when the maps hold no positive value (so the fixed scale never divides by zero).
    """
    arrays = [np.asarray(m, dtype=np.float64).ravel() for m in (maps if isinstance(maps, list) else [maps])]
    values = np.concatenate(arrays) if arrays else np.zeros(0)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 1.0
    top = float(np.percentile(values, percentile))
    return top if top > 0 else 1.0


def colorbar_values(cmap: str = DEFAULT_CMAP, n: int = 256) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
    """``(values (n,), rgb (n, 3) uint8)``: the colormap sampled at ``n`` evenly spaced values in [0, 1]."""
    if n < 2:
        raise ValueError("n must be at least 2")
    values = np.linspace(0.0, 1.0, n, dtype=np.float32)
    return values, _lut(_check_cmap(cmap))[_to_uint8(values)]


def plotly_colorscale(cmap: str = DEFAULT_CMAP, n: int = 11) -> list[list[float | str]]:
    """The colormap as a plotly ``colorscale`` (``[[position, "rgb(r,g,b)"], ...]``), same table as here."""
    values, rgb = colorbar_values(cmap, n)
    return [[float(v), f"rgb({r},{g},{b})"] for v, (r, g, b) in zip(values, rgb.tolist(), strict=True)]


def colorbar(
    cmap: str = DEFAULT_CMAP,
    *,
    height: int = 256,
    width: int = 20,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> NDArray[np.uint8]:
    """A vertical colour bar image uint8 RGB (height, width, 3), high values at the top.

    Tick labels are not burned in (they depend on the caller's layout); label ``vmax`` at the top and
    ``vmin`` at the bottom. ``vmin``/``vmax`` are validated only so that callers cannot pass a reversed scale.
    """
    if height < 2 or width < 1:
        raise ValueError("colorbar needs height >= 2 and width >= 1")
    if not vmax > vmin:
        raise ValueError(f"vmax ({vmax}) must be greater than vmin ({vmin})")
    _, rgb = colorbar_values(cmap, height)
    return np.ascontiguousarray(np.repeat(rgb[::-1, None, :], width, axis=1))


def downsample_for_display(img: NDArray, max_side: int = 1024) -> NDArray:
    """Shrink an image so its longest side is at most ``max_side`` (area interpolation), same dtype.

    Works for (H, W) maps and (H, W, C) images; an image already small enough is returned unchanged
    (not copied). Only for display: maps are computed and exported at full resolution.
    """
    a = np.asarray(img)
    if a.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {a.shape}")
    if max_side < 1:
        raise ValueError("max_side must be positive")
    shrunk = _display_size(a.shape[:2], max_side)
    if shrunk is None:
        return a
    size = (shrunk[1], shrunk[0])  # OpenCV wants (width, height)
    work = a.astype(np.float32) if a.dtype in (np.bool_, np.float16) else a
    out = cv2.resize(work, size, interpolation=cv2.INTER_AREA)
    if a.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel axis
        out = out[:, :, None]
    return out.astype(a.dtype, copy=False)


def _display_size(shape: tuple[int, ...], max_side: int) -> tuple[int, int] | None:
    """(h, w) that :func:`downsample_for_display` shrinks an image of ``shape`` to; None if it stays."""
    h, w = int(shape[0]), int(shape[1])
    if max(h, w) <= max_side:
        return None
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def to_png_bytes(image: NDArray, text: Mapping[str, str] | None = None, *, compression: int = 6,
                 row_filter: bool = True) -> bytes:
    """The one PNG encoder: uint8 gray (H, W), RGB (H, W, 3) or RGBA (H, W, 4) as PNG (OpenCV's libpng).

    Float images in [0, 1] are converted (clipped) to uint8. Nothing but pixels is written unless ``text``
    is given: no time or EXIF chunks that could carry identifiers; ``text`` goes into ``iTXt`` chunks (UTF-8,
    uncompressed) right after the header (provenance of an export). ``compression``: zlib level 0-9 (1 for
    previews re-encoded on every change; 6, Pillow's default, for files). ``row_filter=False`` writes every
    row unfiltered (PNG filter type 0): for mostly transparent layers (outlines) the adaptive filter choice
    costs most of the encoding (~4x) and gains nothing on empty rows.
    """
    a = np.asarray(image)
    if np.issubdtype(a.dtype, np.floating):
        a = _to_uint8(np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0))
    if a.dtype != np.uint8:
        raise ValueError(f"image must be uint8 or float in [0, 1], got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR if a.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    if not row_filter:
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(a), params)
    if not ok:
        raise ValueError(f"could not encode a {a.shape} image as PNG")
    data = buffer.tobytes()
    if not text:
        return data
    chunks = b"".join(
        _png_chunk(b"iTXt", key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode("utf-8"))
        for key, value in text.items()
    )
    header_end = 8 + 25  # signature + IHDR chunk (4 length + 4 type + 13 data + 4 CRC)
    return data[:header_end] + chunks + data[header_end:]


# ------------------------------------------------------------------------------------------- the view
#: Which pixels a display setting changes: ``"layers"`` (the radiograph's and maps' screen grid and
#: scaling: expensive, cached by the app), ``"blend"`` (colours and outlines: one table lookup and one
#: weighted sum per panel) or ``"layout"`` (where the panels go: no pixel changes at all).
Stage = Literal["layers", "blend", "layout"]
#: The separately cached layers of a view, each redrawn only when a setting it depends on changes: the
#: radiograph (``"gray"``: side, window), the maps' colour indices (``"heat"``: side, scale, vmax) and the
#: outlines drawn over them (``"outlines"``: the heat fields, the lung outline and the contour level).
Layer = Literal["gray", "heat", "outlines"]
#: Longest side of the on-screen images by default (px); ``None`` means the film's own resolution.
DEFAULT_SIDE = 768


def _setting(default: object, stage: Stage, feeds: tuple[Layer, ...] | None = None) -> Any:
    """A settings field: its stage and (``feeds``) the layers it changes; a ``"layers"`` field without
    ``feeds`` changes every layer (the safe default for a new field)."""
    return field(default=default, metadata={"stage": stage, "feeds": feeds})


@dataclass(frozen=True)
class DisplaySettings:
    """Everything that decides how an explanation is drawn; frozen and hashable, so it is a cache key as is.

    Layers: ``side`` (longest side of the images, None = the film's resolution), ``window`` ((centre,
    width) applied to the modality values, None = the file's own display), ``scale`` (see
    :func:`scale_map`; ``"fixed"`` divides each method's raw magnitude by ``vmax[method]``) and ``vmax``
    (``((method, value), …)``), ``lungs`` (outline the lung fields given to :func:`layers`), ``zones`` (draw
    the zone boundaries given to :func:`layers`, thin). Blend: ``show_heat``, ``alpha``, ``cmap``, ``contour_level`` (see
    :func:`blend`). Layout: ``colorbar``, ``per_row``, ``size`` (row height factor) and ``zoom``
    (``(factor, centre_x, centre_y)``, centre as fractions of the image).
    """

    side: int | None = _setting(DEFAULT_SIDE, "layers", ("gray", "heat", "outlines"))
    window: tuple[float, float] | None = _setting(None, "layers", ("gray",))
    scale: ScaleMode = _setting("per_image", "layers", ("heat", "outlines"))
    vmax: tuple[tuple[str, float], ...] = _setting((), "layers", ("heat", "outlines"))
    lungs: bool = _setting(False, "layers", ("outlines",))
    zones: bool = _setting(False, "layers", ("outlines",))
    show_heat: bool = _setting(True, "blend")
    alpha: float = _setting(DEFAULT_ALPHA, "blend")
    cmap: str = _setting(DEFAULT_CMAP, "blend")
    contour_level: float | None = _setting(None, "blend", ("outlines",))
    colorbar: bool = _setting(True, "layout")
    per_row: int = _setting(3, "layout")
    size: float = _setting(1.0, "layout")
    zoom: tuple[float, float, float] = _setting((1.0, 0.5, 0.5), "layout")

    def __post_init__(self) -> None:
        _check_cmap(self.cmap)
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.contour_level is not None and not 0.0 < float(self.contour_level) <= 1.0:
            raise ValueError(f"contour_level must be in (0, 1], got {self.contour_level}")
        if self.scale not in ("per_image", "fixed"):
            raise ValueError(f"scale must be 'per_image' or 'fixed', got {self.scale!r}")
        if self.side is not None and self.side < 1:
            raise ValueError(f"side must be positive or None, got {self.side}")
        if self.window is not None and not float(self.window[1]) > 0:
            raise ValueError(f"window width must be positive, got {self.window[1]}")

    def only(self, *stages: Stage) -> DisplaySettings:
        """These settings with every field outside ``stages`` back at its default: the key of what
        depends on those stages only (e.g. ``only("layers")`` keys the prepared layers)."""
        reset: dict[str, Any] = {f.name: f.default for f in fields(self) if f.metadata["stage"] not in stages}
        return replace(self, **reset)

    def layer_key(self, layer: Layer) -> DisplaySettings:
        """These settings with every field that does not change ``layer`` back at its default: the cache key
        of that layer alone, so a window change redraws the radiograph only and a lung-outline toggle the
        outlines only (a ``"layers"`` field that names no layer counts for all of them)."""
        def feeds(f: Any) -> bool:
            named = f.metadata.get("feeds")
            return layer in named if named is not None else f.metadata["stage"] == "layers"

        reset: dict[str, Any] = {f.name: f.default for f in fields(self) if not feeds(f)}
        return replace(self, **reset)

    @property
    def limits(self) -> dict[str, float]:
        """``vmax`` as a dict, method -> maximum of the fixed scale."""
        return dict(self.vmax)

    def describe(self) -> dict[str, str | float]:
        """Short, human-readable record of the settings that change the pixels (for export provenance)."""
        out: dict[str, str | float] = {
            "colormap": self.cmap,
            "opacity": self.alpha if self.show_heat else 0.0,
            "contour": self.contour_level if self.contour_level is not None else "off",
            "scale": "per image" if self.scale == "per_image" else "fixed (" + ", ".join(
                f"{m} {v:.3g}" for m, v in self.vmax) + ")",
        }
        if self.window is not None:
            out["window"] = f"{self.window[0]:.0f}/{self.window[1]:.0f}"
        return out


class _Film(Protocol):
    """What the view needs of a film (an ``xai.radiograph.Radiograph``, a :class:`ScreenFilm`, a batch
    report's shrunk film): ``modality_values`` may be None when the film is only drawn unwindowed
    (``settings.window is None``). Read-only members, so frozen dataclasses qualify."""

    @property
    def pixels(self) -> NDArray: ...
    @property
    def modality_values(self) -> NDArray | None: ...
    @property
    def inverted(self) -> bool: ...
    @property
    def voi_function(self) -> str: ...


class _Radiograph(_Film, Protocol):
    """What windowing needs of an ``xai.radiograph.Radiograph``: a film with its modality values."""

    @property
    def modality_values(self) -> NDArray: ...


class _Result(Protocol):
    """What the view needs of an ``xai.pipeline.PipelineResult`` (read-only members)."""

    @property
    def maps(self) -> Mapping[str, NDArray]: ...
    @property
    def explanation(self) -> Any: ...
    @property
    def geometry(self) -> Any: ...


#: Colour of the lung-field outline: light green, apart from the heat contours' cyan and every colormap.
LUNG_COLOR: tuple[int, int, int] = (140, 255, 120)
#: Zone boundaries: thin near-white lines at :data:`ZONE_OPACITY`, marking the zones without hiding the map.
ZONE_COLOR: tuple[int, int, int] = (235, 235, 235)
ZONE_OPACITY = 0.7


@dataclass(frozen=True)
class Layers:
    """The expensive, colour-independent part of a view: the radiograph as uint8 RGB, each map as a
    :func:`heat_index`, the lung fields (255 inside, or None) and the zone boundaries (:func:`zone_layer`, or
    None), on one pixel grid (read-only arrays)."""

    original: NDArray[np.uint8]
    heat: Mapping[str, NDArray[np.uint8]]
    lungs: NDArray[np.uint8] | None = None
    zones: NDArray[np.uint8] | None = None


@dataclass(frozen=True)
class View:
    """What is drawn: the radiograph and one overlay per method (uint8 RGB, read-only, one pixel grid)."""

    original: NDArray[np.uint8]
    overlays: Mapping[str, NDArray[np.uint8]]


def raw_magnitude(explanation: Any, method: str, index: int = 0) -> NDArray[np.float32]:
    """A method's unnormalised map on the model grid, in the same units for every image.

    CAMs: the raw ReLU'd map at feature resolution. Guided maps: ``max_c |raw|`` at input resolution —
    the magnitude the engine's display map is made of, before its per-image percentile scaling.
    """
    raw = np.asarray(explanation.raw[method][index], dtype=np.float32)
    return raw if raw.ndim == 2 else np.abs(raw).max(axis=0)


def _shrink(a: NDArray, side: int | None) -> NDArray:
    return a if side is None else downsample_for_display(a, side)


def _gray(radiograph: _Film, settings: DisplaySettings) -> NDArray[np.float32]:
    if settings.window is None:
        return _shrink(radiograph.pixels, settings.side)
    from xai.radiograph import apply_window  # windowing has one home

    if radiograph.modality_values is None:
        raise ValueError("a window needs the film's modality values; this film has none (draw it with window=None)")
    centre, width = settings.window
    return apply_window(_shrink(radiograph.modality_values, settings.side), centre, width,
                        invert=radiograph.inverted, function=radiograph.voi_function)


@dataclass(frozen=True)
class ScreenFilm:
    """A radiograph's display values and modality values shrunk once to a view's grid (read-only), with
    what windowing needs. A view of it draws the same pixels as a view of the film at that ``side``
    (:func:`downsample_for_display` leaves an image already small enough as it is), so a window change
    costs one :func:`~xai.radiograph.apply_window` on the screen grid, not a pass over a 12 MP film."""

    pixels: NDArray
    modality_values: NDArray
    inverted: bool
    voi_function: str


def screen_film(radiograph: _Radiograph, side: int | None) -> ScreenFilm:
    """The film's arrays shrunk to longest side ``side`` (area interpolation; None keeps the film's grid)."""
    return ScreenFilm(read_only(_shrink(radiograph.pixels, side)), read_only(_shrink(radiograph.modality_values, side)),
                      bool(radiograph.inverted), radiograph.voi_function)


def gray_layer(radiograph: _Film, settings: DisplaySettings) -> NDArray[np.uint8]:
    """The radiograph as uint8 RGB on the view's grid, windowed as set (the ``"gray"`` layer: side, window)."""
    return read_only(gray_to_rgb(_gray(radiograph, settings)))


#: :func:`display_maps` maps a fixed-scale magnitude straight to the screen from this film/screen pixel ratio.
_TO_DISPLAY_MIN_SHRINK = 4


def display_maps(result: _Result, settings: DisplaySettings) -> Mapping[str, NDArray[np.float32]]:
    """Each method's map on the view's grid before scaling: the display map (per-image scale) or the raw
    magnitude in the model's units (fixed scale), mapped to the film's grid and then shrunk by area.

    Scaling comes after shrinking (as on screen since the start), so changing ``vmax`` rescales these
    arrays and never re-reads the full-resolution maps. Depends on ``side`` and whether the scale is fixed.
    The raw magnitude goes to a screen with at most 1/4 of the film's pixels through ``geometry.to_display``
    when the geometry has it (mapping back and shrinking in one step, equal up to float rounding: no
    film-sized map per method; ~5x faster on a 12 MP film, slower than the two steps on a 1 MP one).
    """
    out: dict[str, NDArray[np.float32]] = {}
    if not result.maps:
        return MappingProxyType(out)
    known = getattr(result.maps, "shape", None)  # a FilmMaps knows every map's shape without making one
    film_shape = tuple(int(v) for v in (known if known is not None else np.shape(next(iter(result.maps.values())))))
    size = None if settings.side is None else _display_size(film_shape, settings.side)
    on_grid = getattr(result.maps, "on_grid", None)  # xai.pipeline.FilmMaps: no film-sized map for a screen
    if settings.scale == "per_image" and size is not None and on_grid is not None:
        return MappingProxyType({m: read_only(a) for m, a in on_grid(size).items()})
    for method in result.maps:
        if settings.scale == "per_image":
            out[method] = read_only(_shrink(result.maps[method], settings.side))
            continue
        magnitude = raw_magnitude(result.explanation, method)
        to_display = getattr(result.geometry, "to_display", None)
        if (size is not None and to_display is not None
                and film_shape[0] * film_shape[1] >= _TO_DISPLAY_MIN_SHRINK * size[0] * size[1]):
            out[method] = read_only(to_display(magnitude, size))
        else:
            out[method] = read_only(_shrink(result.geometry.to_original(magnitude), settings.side))
    return MappingProxyType(out)


def heat_layers(maps: Mapping[str, NDArray], settings: DisplaySettings) -> Mapping[str, NDArray[np.uint8]]:
    """Each :func:`display_maps` entry scaled as set (:func:`scale_map`) as a :func:`heat_index` (the
    ``"heat"`` layer: side, scale, vmax)."""
    out: dict[str, NDArray[np.uint8]] = {}
    for method, shrunk in maps.items():
        if settings.scale == "per_image":
            out[method] = read_only(heat_index(scale_map(shrunk, "per_image")))
            continue
        vmax = settings.limits.get(method)
        if vmax is None:
            raise ValueError(f"the fixed scale has no maximum for {method!r}")
        out[method] = read_only(heat_index(scale_map(shrunk, "fixed", vmax)))
    return MappingProxyType(out)


def lung_layer(lungs: NDArray | None, side: int | None) -> NDArray[np.uint8] | None:
    """The lung fields (bool, the film's grid) on the view's grid: 255 where at least half of a screen
    pixel is lung (area interpolation), else 0; None without a lung field."""
    if lungs is None or not np.any(lungs):
        return None
    shrunk = _shrink(np.asarray(lungs, np.float32), side)
    return read_only(np.where(shrunk >= 0.5, 255, 0).astype(np.uint8))


def zone_layer(zones: NDArray | None, shape: tuple[int, ...]) -> NDArray[np.uint8] | None:
    """Zone boundaries (a thin bool line mask on a grid of the film's aspect ratio, e.g.
    :func:`xai.anatomy.zone_outlines`) on a view's grid ``shape``: the line's coverage, 255 *
    :data:`ZONE_OPACITY` where the bilinearly resampled mask reaches 0.2 on a smaller grid (a shrunk line
    stays unbroken) or 0.5 on a larger one (an enlarged line widens only by the scale), else 0; None
    without boundaries."""
    if zones is None or not np.any(zones):
        return None
    import cv2

    h, w = int(shape[0]), int(shape[1])
    z = np.asarray(zones, np.float32)
    level = 0.2 if h <= z.shape[0] else 0.5
    if z.shape != (h, w):
        z = cast(NDArray[np.float32], cv2.resize(z, (w, h), interpolation=cv2.INTER_LINEAR))
    return read_only(np.where(z >= level, round(255 * ZONE_OPACITY), 0).astype(np.uint8))


def layers(radiograph: _Film, result: _Result, settings: DisplaySettings,
           lungs: NDArray | None = None, zones: NDArray | None = None) -> Layers:
    """The radiograph (windowed as set) and each map (scaled as set) on the view's pixel grid:
    :func:`gray_layer`, :func:`heat_layers` of :func:`display_maps` and :func:`lung_layer`.

    Depends only on the ``"layers"`` fields of ``settings`` (and ``lungs``: a bool mask on the radiograph's
    grid, outlined when ``settings.lungs``). Maps are shrunk after scaling is decided on the full-resolution
    values' units, so the screen and an export at the film's resolution agree. The app caches the three
    parts apart (:meth:`DisplaySettings.layer_key`); this is their one-call form.
    """
    outline = lung_layer(lungs, settings.side) if settings.lungs else None
    gray = gray_layer(radiograph, settings)
    lines = zone_layer(zones, gray.shape) if settings.zones else None
    return Layers(original=gray, heat=heat_layers(display_maps(result, settings), settings), lungs=outline,
                  zones=lines)


def compose(prepared: Layers, settings: DisplaySettings) -> View:
    """The overlays from prepared layers: one :func:`blend` per map (the ``"blend"`` fields), then the
    lung outline (if the layers have one) on every panel."""
    style: OverlayStyle = {"cmap": settings.cmap, "alpha": settings.alpha, "contour_level": settings.contour_level,
             "show_heat": settings.show_heat}
    overlays = {m: blend(prepared.original, index, **style) for m, index in prepared.heat.items()}
    original = prepared.original
    if prepared.lungs is not None or prepared.zones is not None:
        original = original.copy()
        for rgb in (original, *overlays.values()):
            if prepared.zones is not None:  # over the blend (and its heat contour), under the lung outline
                a = prepared.zones[..., None].astype(np.float32) / 255.0
                rgb[:] = np.round(rgb * (1.0 - a) + np.asarray(ZONE_COLOR, np.float32) * a).astype(np.uint8)
            if prepared.lungs is not None:
                _draw_contours(rgb, prepared.lungs, 128, LUNG_COLOR, None)
    return View(original=read_only(original), overlays=MappingProxyType({m: read_only(o) for m, o in overlays.items()}))


def outlines(prepared: Layers, settings: DisplaySettings) -> Mapping[str, NDArray[np.uint8] | None]:
    """What :func:`compose` draws over the blend, as straight-alpha RGBA (H, W, 4) layers: each map's heat
    contour (if ``settings.contour_level``) and the lung outline (if the layers have one), per panel; key
    ``""`` is the radiograph's own panel. None for a panel with nothing to outline.

    For a viewer that blends in the display (the app's panels: radiograph, then ``lut(cmap)[index]`` at
    opacity ``alpha``, then this layer on top, so opacity and colormap changes redraw nothing):
    ``(1 - a) * (blend) + a * rgb`` with ``a = alpha_channel / 255`` gives :func:`compose`'s pixels within
    rounding. The outlines are anti-aliased coverage (OpenCV ``LINE_AA``) in the alpha channel over a flat
    colour, so edges blend exactly as ``compose`` draws them onto the blend.
    """
    level = None if settings.contour_level is None else max(1, round(255.0 * float(settings.contour_level)))
    lungs = _coverage(prepared.lungs, 128) if prepared.lungs is not None else None
    zones = [] if prepared.zones is None else [(ZONE_COLOR, prepared.zones)]  # over the heat contour, as in compose()
    plain = _rgba_over(zones + ([] if lungs is None else [(LUNG_COLOR, lungs)])) if zones or lungs is not None else None
    out: dict[str, NDArray[np.uint8] | None] = {"": plain}
    for method, index in prepared.heat.items():
        if level is None:  # no heat contour: every panel shows the radiograph's outlines (one array, shared)
            out[method] = plain
            continue
        drawn = [(CONTOUR_COLOR, _coverage(index, level))] + zones
        if lungs is not None:
            drawn.append((LUNG_COLOR, lungs))
        out[method] = _rgba_over(drawn) if drawn else None
    return MappingProxyType({k: None if v is None else read_only(v) for k, v in out.items()})


def _coverage(index: NDArray[np.uint8], level: int) -> NDArray[np.uint8]:
    """The anti-aliased outline of ``index >= level`` as coverage 0..255 (:func:`_draw_contours`'s rule)."""
    canvas = np.zeros(index.shape, np.uint8)
    _draw_contours(canvas, index, level, (255,), None)
    return canvas


def _rgba_over(layers: list[tuple[tuple[int, int, int], NDArray[np.uint8]]]) -> NDArray[np.uint8]:
    """Flat-colour coverage layers stacked bottom to top ("over" in straight alpha) as uint8 RGBA.

    Computed on the covered pixels only (outlines cover a few percent of a panel; elsewhere the result is
    transparent black, as the formula gives for zero coverage everywhere).
    """
    h, w = layers[0][1].shape
    out = np.zeros((h, w, 4), np.uint8)
    any_cover = layers[0][1] > 0
    for _, coverage in layers[1:]:
        any_cover |= coverage > 0
    covered = np.flatnonzero(any_cover)
    if covered.size == 0:
        return out
    rgb, alpha = np.zeros((covered.size, 3), np.float32), np.zeros(covered.size, np.float32)
    for color, coverage in layers:
        a = coverage.ravel()[covered].astype(np.float32) / 255.0
        new_alpha = a + alpha * (1.0 - a)
        weight = np.divide(a, new_alpha, out=np.zeros_like(a), where=new_alpha > 0)
        rgb = rgb * (1.0 - weight)[..., None] + np.asarray(color, np.float32) * weight[..., None]
        alpha = new_alpha
    out.reshape(-1, 4)[covered] = np.column_stack([np.round(rgb), np.round(alpha * 255.0)]).astype(np.uint8)
    return out


def view(radiograph: _Film, result: _Result, settings: DisplaySettings, lungs: NDArray | None = None,
         zones: NDArray | None = None) -> View:
    """The pixels of an explanation as the settings say: ``compose(layers(...), settings)``.

    Pure: same inputs, same pixels. The app caches :func:`layers` (keyed by ``settings.only("layers")``)
    and re-composes on colour changes; exports call this with ``side=None`` to draw at the film's own
    resolution, never from screen pixels. ``lungs``: the lung fields (bool, radiograph grid) to outline;
    ``zones``: the zone boundaries to draw (see :func:`zone_layer`).
    """
    return compose(layers(radiograph, result, settings, lungs, zones), settings)


# --------------------------------------------------------------------------------------------- windows
#: Window presets for a radiograph, as ranges of display brightness percentiles (dark -> bright) of the
#: film's own values: radiographs have no Hounsfield scale, so a fixed centre/width cannot fit every film.
#: ``lung``: the darker part stretched (parenchyma and vessels); ``mediastinum``: mid to bright (heart,
#: mediastinum, retrocardiac and subdiaphragmatic areas); ``bone``: the brightest part (ribs, spine, clavicles).
WINDOW_PRESETS: Mapping[str, tuple[float, float]] = MappingProxyType({
    "lung": (2.0, 65.0),
    "mediastinum": (35.0, 97.0),
    "bone": (65.0, 99.8),
})


def window_preset(radiograph: _Radiograph, name: str) -> tuple[float, float]:
    """``(centre, width)`` on the modality values for a :data:`WINDOW_PRESETS` entry.

    The preset's brightness percentiles ``(a, b)`` become the values at those percentiles (at ``100 - b``
    and ``100 - a`` for an inverted display, MONOCHROME1, where low values are bright); the window spans
    them. Percentiles come from at most ~250k evenly strided pixels (a 12 MP film costs a few ms).
    """
    if name not in WINDOW_PRESETS:
        raise ValueError(f"unknown window preset {name!r}; choose one of {', '.join(WINDOW_PRESETS)}")
    values = np.asarray(radiograph.modality_values, dtype=np.float32)
    stride = max(1, int(np.sqrt(values.size / 250_000)))
    sample = values[::stride, ::stride]
    lo_p, hi_p = WINDOW_PRESETS[name]
    if radiograph.inverted:
        lo_p, hi_p = 100.0 - hi_p, 100.0 - lo_p
    lo, hi = (float(v) for v in np.percentile(sample, [lo_p, hi_p]))
    return (lo + hi) / 2.0, max(hi - lo, 1e-3)


def nice_step(span: float, steps: int = 200) -> float:
    """A round slider step (1, 2 or 5 times a power of ten, nearest in ratio) to ``span / steps``: an arrow key then moves
    a visible amount on a 12-bit film as on an 8-bit one."""
    if not np.isfinite(span) or span <= 0:
        return 1.0
    raw = span / max(1, steps)
    power = 10.0 ** np.floor(np.log10(raw))
    return float(min((m * power for m in (1.0, 2.0, 5.0, 10.0)), key=lambda c: abs(np.log(c / raw))))
