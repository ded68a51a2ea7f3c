"""The Explain page's figures: the prediction's bars (HTML) and the linked side-by-side panel (plotly).

Pure figure builders (no Streamlit calls), so they can be tested and reused. Pixels come from
``xai.render`` (the same layers as the exports); this module only lays them out.

The Explain panel blends in the browser: each overlay panel is the radiograph, the map's
:func:`xai.render.heat_index` as a gray image on top (:func:`screen_heat_uri`), painted with the colormap by an SVG colour filter
(:func:`colormap_filters_js`, one ``feComponentTransfer`` table per colormap, the same 256 entries as
:func:`xai.render.lut`) at the chosen opacity (:func:`heat_style`), then the outlines
(:func:`xai.render.outlines`). That is :func:`xai.render.compose`'s formula, so the pixels match the exports
within rounding — and an opacity or colormap change sends one small style element instead of a new figure
(Streamlit remounts a chart whose figure changes: ~0.3 s of plotly redrawing five images). The page also
previews those changes as the controls move (:data:`HEAT_PREVIEW_JS`).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import plotly.graph_objects as go

#: Quality of the on-screen JPEGs: panels are previews; downloads are lossless PNG at full resolution.
SCREEN_JPEG_QUALITY = 85
#: Room above each row of panels for a four-line title (method, model, class and time, where the evidence lies).
TITLE_HEIGHT = 78
#: Width the main area is assumed to have (wide layout on a 1600-1920 px screen) to size rows.
ASSUMED_WIDTH_PX = 1150


def row_height_for(image_shape: tuple[int, int], per_row: int, scale: float = 1.0) -> int:
    """Row height (px) that fits ``per_row`` images of ``image_shape`` across the assumed width.

    The panel keeps square pixels whatever the height; this only avoids empty bands around the images.
    """
    h, w = image_shape
    return int(np.clip(ASSUMED_WIDTH_PX / max(per_row, 1) * h / max(w, 1) * scale, 220, 1100))


@dataclass(frozen=True)
class Panel:
    """One image of the side-by-side panel: a uint8 RGB array and its (HTML) title.

    ``source``: the image already encoded by :func:`screen_image_uri` (e.g. cached), else encoded here.
    ``heat``: a gray image data URI (:func:`screen_heat_uri`) of a map's heat index drawn over the image, coloured
    and blended by the page's :func:`heat_style`; ``lines``: an RGBA PNG data URI drawn on top of both.
    """

    title: str
    rgb: np.ndarray
    source: str | None = None
    heat: str | None = None
    lines: str | None = None


#: A black-to-white colour bar: the page's colour filter paints it with the colormap, like the heat layers.
GRAY_COLORSCALE: tuple[tuple[float, str], ...] = ((0.0, "rgb(0,0,0)"), (1.0, "rgb(255,255,255)"))
#: The Streamlit key of the Explain page's panel chart (the style rules below are scoped to it).
PANEL_KEY = "panel_chart"


def subplot_id(i: int) -> str:
    """Plotly's name of the ``i``-th panel's subplot (``xy``, ``x2y2``, ...), also its SVG group's class."""
    return "xy" if i == 0 else f"x{i + 1}y{i + 1}"


def filter_id(cmap: str) -> str:
    """The id of the page's SVG colour filter for ``cmap`` (installed by :func:`colormap_filters_js`)."""
    return f"xai-cmap-{cmap}"


@cache
def colormap_filters_js() -> str:
    """JS that installs the colour filters of every colormap on the page: one SVG ``feComponentTransfer``
    filter each, added once per page load (a rerun finds them). With 256 table entries, input level ``i``
    maps exactly to ``lut[i]``; ``color-interpolation-filters="sRGB"`` keeps the
    browser from converting to linear light first. Built with DOM calls: Streamlit's HTML sanitiser drops
    an SVG written as markup."""
    import json

    from xai import render

    tables = {filter_id(c): [" ".join(f"{v / 255:.5f}" for v in render.lut(c)[:, k]) for k in range(3)]
              for c in render.COLORMAPS}
    return """<script>
(() => {
  const NS = 'http://www.w3.org/2000/svg';
  let defs = document.getElementById('xai-colormaps');
  if (!defs) {
    defs = document.createElementNS(NS, 'svg');
    defs.id = 'xai-colormaps';
    defs.setAttribute('width', '0'); defs.setAttribute('height', '0');
    defs.style.position = 'absolute';
    document.body.appendChild(defs);
  }
  for (const [id, rgb] of Object.entries(TABLES)) {
    if (document.getElementById(id)) continue;
    const filter = document.createElementNS(NS, 'filter');
    filter.id = id;
    filter.setAttribute('color-interpolation-filters', 'sRGB');
    const transfer = document.createElementNS(NS, 'feComponentTransfer');
    ['R', 'G', 'B'].forEach((c, k) => {
      const f = document.createElementNS(NS, 'feFunc' + c);
      f.setAttribute('type', 'table');
      f.setAttribute('tableValues', rgb[k]);
      transfer.appendChild(f);
    });
    filter.appendChild(transfer);
    defs.appendChild(filter);
  }
})();
</script>""".replace("TABLES", json.dumps(tables))


def heat_style(heat_panels: Iterable[int], *, cmap: str, alpha: float, show_heat: bool, key: str = PANEL_KEY) -> str:
    """The ``<style>`` that colours and blends the heat layers of the chart keyed ``key`` (laid out by
    :func:`panel_figure`): ``cmap``'s filter and opacity ``alpha`` (0 when ``show_heat`` is off) on the heat
    image of each panel in ``heat_panels`` (positions; the second image of its subplot), and the same
    filter on the colour bar. Style only: Streamlit puts it outside the layout, so it can be sent first.

    The values are two custom properties of the chart's container, ``--xai-heat-opacity`` and
    ``--xai-heat-filter``; :data:`HEAT_PREVIEW_JS` sets the same properties from the display widgets as
    they move, before this style comes back from the server with the same values."""
    heat_rules = ", ".join(f".st-key-{key} g.subplot.{subplot_id(i)} .imagelayer > g:nth-child(2) > image"
                           for i in heat_panels)
    opacity = float(alpha) if show_heat else 0.0
    rules = [f".st-key-{key} {{ --xai-heat-opacity: {opacity:.3f}; --xai-heat-filter: url(#{filter_id(cmap)}); }}",
             f".st-key-{key} .colorbar .cbfill {{ filter: var(--xai-heat-filter); }}"]
    if heat_rules:
        rules.append(f"{heat_rules} {{ opacity: var(--xai-heat-opacity) !important; filter: var(--xai-heat-filter); }}")
    return "<style>" + "\n".join(rules) + "</style>"


#: The page previews an opacity, overlay or colormap change the moment the widget moves: it reads the
#: Display widgets (the opacity slider's value, the overlay toggle, the colormap shown in its select box)
#: and sets the chart container's custom properties that :func:`heat_style` uses. The server's rerun then
#: sends the same values in the style (and keeps the exports in step). Without these widgets on the page,
#: or if Streamlit's markup changes, nothing is previewed and the server's style alone applies.
HEAT_PREVIEW_JS = r"""<script>
(() => {
  if (window.__xaiHeatPreview) return;
  window.__xaiHeatPreview = true;
  let queued = false;
  const apply = () => {
    queued = false;
    const chart = document.querySelector('.st-key-KEY');
    const slider = document.querySelector('.st-key-disp_alpha input[type="range"]');
    const toggle = document.querySelector('.st-key-disp_overlay input[type="checkbox"]');
    const combo = document.querySelector('.st-key-disp_cmap input[role="combobox"]');
    if (!chart || !slider || !toggle || !combo) return;
    const alpha = parseFloat(slider.value);
    if (Number.isFinite(alpha)) {
      chart.style.setProperty('--xai-heat-opacity', (toggle.checked ? alpha : 0).toFixed(3));
    }
    // The colormap once chosen (the list closed), not while a name is being typed to filter the list, and
    // only when the box's value changes (the key press or click below may have painted the new one first).
    if (combo.getAttribute('aria-expanded') !== 'true' && combo.value !== shownValue) {
      shownValue = combo.value;
      paint(combo.value);
    }
  };
  let shownValue = null;
  // A colormap option's text ("jet (not perceptually uniform)"): its first word names the filter.
  const paint = (text) => {
    const chart = document.querySelector('.st-key-KEY');
    const cmap = (text || '').trim().split(/\s+/)[0];
    if (chart && document.getElementById('xai-cmap-' + cmap)) {
      chart.style.setProperty('--xai-heat-filter', 'url(#xai-cmap-' + cmap + ')');
    }
  };
  // The option being chosen, at the key press or click itself (before the select box redraws).
  const cmapCombo = () => document.querySelector('.st-key-disp_cmap input[role="combobox"]');
  document.addEventListener('keydown', (e) => {
    const combo = cmapCombo();
    if (e.key !== 'Enter' || !combo || e.target !== combo) return;
    const active = document.getElementById(combo.getAttribute('aria-activedescendant') || '');
    if (active) paint(active.textContent);
  }, true);
  document.addEventListener('click', (e) => {
    const combo = cmapCombo();
    const list = combo && document.getElementById(combo.getAttribute('aria-controls') || '');
    const option = e.target.closest && e.target.closest('[role="option"]');
    if (list && option && list.contains(option)) paint(option.textContent);
  }, true);
  const schedule = () => { if (!queued) { queued = true; requestAnimationFrame(apply); } };
  new MutationObserver(schedule).observe(document.body, {
    subtree: true, childList: true, characterData: true, attributes: true,
    attributeFilter: ['value', 'aria-valuetext', 'aria-expanded', 'aria-checked', 'checked', 'class']});
  document.addEventListener('input', schedule, true);
  document.addEventListener('change', schedule, true);
})();
</script>""".replace("KEY", PANEL_KEY)


def screen_png_uri(image: np.ndarray, *, row_filter: bool = True) -> str:
    """A uint8 gray (H, W) or RGBA (H, W, 4) image as a PNG data URI (lossless: heat indices are looked up
    in a colour table, where a JPEG's ringing would show as false colours). Fast compression: these are
    previews re-encoded whenever the maps change; ``row_filter=False`` for mostly empty layers (outlines)."""
    from xai.render import to_png_bytes

    return _data_uri("png", to_png_bytes(image, compression=1, row_filter=row_filter))


def _data_uri(subtype: str, encoded: bytes) -> str:
    """``data:image/<subtype>;base64,...`` for an encoded image (the panel's image sources)."""
    return f"data:image/{subtype};base64," + base64.b64encode(encoded).decode("ascii")


#: A heat layer's PNG above this size (speckled guided maps: ~290 kB at 768 px, over 1 MB at 1536 px) is
#: sent as a gray JPEG at :data:`HEAT_JPEG_QUALITY` instead (about half the bytes).
HEAT_PNG_MAX_BYTES = 160_000
#: On guided maps at 768 px, q95 keeps every index within 5 levels of the lossless one (mean 0.4): finer than
#: the overlay JPEGs (q85) the panel used to show; smooth CAM maps stay lossless PNGs (20-60 kB).
HEAT_JPEG_QUALITY = 95


def screen_heat_uri(index: np.ndarray) -> str:
    """A map's uint8 heat index (H, W) as a data URI for the page's colour filter: lossless PNG, unless that
    exceeds :data:`HEAT_PNG_MAX_BYTES` (speckled maps), then a gray JPEG at :data:`HEAT_JPEG_QUALITY`."""
    import cv2

    png = screen_png_uri(index)
    if len(png) * 3 // 4 <= HEAT_PNG_MAX_BYTES:
        return png
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(index), [cv2.IMWRITE_JPEG_QUALITY, HEAT_JPEG_QUALITY])
    if not ok:
        raise ValueError(f"could not encode a {index.shape} heat map as JPEG")
    return _data_uri("jpeg", buffer.tobytes())


def screen_image_uri(rgb: np.ndarray) -> str:
    """A uint8 RGB image as a JPEG data URI for a plotly ``go.Image(source=...)`` trace.

    Sending an encoded image instead of ``z`` keeps a 1024² panel at ~100 kB instead of megabytes of JSON.
    """
    from xai.batch.outputs import jpeg_bytes  # one JPEG encoder (OpenCV, a colour conversion not a copy)

    return _data_uri("jpeg", jpeg_bytes(rgb, quality=SCREEN_JPEG_QUALITY))


def panel_figure(
    panels: Sequence[Panel],
    *,
    per_row: int,
    row_height: int,
    uirevision: str,
    colorscale: list | None = None,
    colorbar_title: str = "",
    colorbar_range: tuple[float, float] = (0.0, 1.0),
    view: tuple[float, float, float] | None = None,
    light: bool = False,
) -> go.Figure:
    """Panels on a grid with zoom and pan linked across all of them.

    ``light``: titles in dark text for the light (projector) theme; the images keep their black surround.

    ``view = (zoom, centre_x, centre_y)`` (centre as fractions of the image) sets the shown region of
    every panel from the server: Streamlit remounts a chart whenever its figure changes, so a zoom made
    with the mouse lasts until the next display change, while this one persists.

    Every x axis ``matches`` the first, every y axis the first; only the first y axis keeps the image
    trace's square-pixel ``scaleanchor`` (plotly forbids an axis in both kinds of constraint, and the
    matched axes inherit the aspect ratio through the shared constraint group). ``uirevision`` keeps the
    user's zoom across reruns (opacity, colormap, window changes) until the image changes.

    The layout is written as one dict (no ``make_subplots``, no template copy): building the figure is on
    the path of every display-only change, which should feel instant.
    """
    if not panels:
        raise ValueError("no panels to show")
    per_row = max(1, min(per_row, len(panels)))
    rows = math.ceil(len(panels) / per_row)
    height = rows * (row_height + TITLE_HEIGHT) + 10
    gap_x = 0.01
    cell_w = (1.0 - gap_x * (per_row - 1)) / per_row
    title_frac = TITLE_HEIGHT / height
    cell_h = (1.0 - title_frac * rows) / rows
    layout: dict = {
        "template": {},
        "height": height,
        "margin": {"l": 4, "r": 4, "t": TITLE_HEIGHT, "b": 4},
        "uirevision": uirevision,
        "dragmode": "pan",
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "black",
        "font": {"color": "#1f1f1f" if light else "#e8e8e8"},
        "showlegend": False,
        "annotations": [],
    }
    if view is not None and view[0] > 1.0:
        img_h, img_w = panels[0].rgb.shape[:2]
        zoom, cx, cy = view
        half_w, half_h = img_w / (2 * zoom), img_h / (2 * zoom)
        x_mid = float(np.clip(cx * img_w, half_w - 0.5, img_w - 0.5 - half_w))
        y_mid = float(np.clip(cy * img_h, half_h - 0.5, img_h - 0.5 - half_h))
        x_range = [x_mid - half_w, x_mid + half_w]
        y_range = [y_mid + half_h, y_mid - half_h]  # image axes run downwards
    else:
        x_range = y_range = None
    data: list[dict] = []
    for i, panel in enumerate(panels):
        row, col = divmod(i, per_row)
        x0 = col * (cell_w + gap_x)
        top = 1.0 - row * (cell_h + title_frac)
        suffix = "" if i == 0 else str(i + 1)
        layout[f"xaxis{suffix}"] = {
            "domain": [x0, x0 + cell_w], "anchor": f"y{suffix}", "visible": False,
            **({"range": x_range, "autorange": False} if x_range and i == 0 else {}),
            **({} if i == 0 else {"matches": "x"}),
        }
        layout[f"yaxis{suffix}"] = {
            "domain": [top - cell_h, top], "anchor": f"x{suffix}", "visible": False,
            **({"range": y_range, "autorange": False} if y_range and i == 0 else {}),
            **({} if i == 0 else {"matches": "y"}),
        }
        layout["annotations"].append({
            "text": panel.title, "x": x0 + cell_w / 2, "y": top, "xref": "paper", "yref": "paper",
            "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 12},
        })
        # The radiograph, then the heat layer (coloured and blended by heat_style), then the outlines.
        for layer, source in (("", panel.source or screen_image_uri(panel.rgb)), (" heat", panel.heat),
                              (" lines", panel.lines)):
            if source is not None:
                data.append({
                    "type": "image", "source": source, "x0": 0, "dx": 1, "y0": 0, "dy": 1,
                    "hoverinfo": "skip", "name": f"{i}{layer}", "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
                })
    if colorscale is not None:
        lo, hi = colorbar_range
        data.append({
            "type": "scatter", "x": [None], "y": [None], "mode": "markers", "showlegend": False,
            "hoverinfo": "skip", "xaxis": "x", "yaxis": "y",
            "marker": {
                "colorscale": colorscale, "cmin": lo, "cmax": hi, "color": [lo], "showscale": True,
                "colorbar": {"title": {"text": colorbar_title, "side": "right"}, "thickness": 14, "len": 0.9},
            },
        })
    return unvalidated_figure(data, layout)


#: The prediction's bars: the decided class in the app's accent colour, the other classes neutral (the How and
#: Compare pages' charts use the same two), the threshold line.
DECIDED_COLOUR = "#e4572e"
OTHER_COLOUR = "#7f8c9a"
THRESHOLD_COLOUR = "#b8860b"  # dark goldenrod: 3.3:1 on white, 5.7:1 on the dark theme


def prediction_bars_html(
    probabilities: Mapping[str, float],
    *,
    threshold: float | None,
    positive_class: str | None,
    decision: str,
) -> str:
    """The model's probabilities as plain HTML: one horizontal bar per class on a 0-1 track, the decided class
    highlighted, each row labelled by the class's name and probability (always horizontal and readable, however
    short the bar), and the card's threshold as a dashed line across the positive class's track only, explained
    above the bars. Rows carry ``data-class`` / ``data-probability`` (the value in full), the line
    ``data-threshold``.

    Drawn instead of a plotly chart: the browser drew that chart while the server was still computing the
    overlays, on the same two cores (~0.1-0.2 s of a first result on this machine; these few ``div``s cost
    nothing measurable). Text takes the theme's colour, so it reads on the light and the dark theme alike."""
    from html import escape

    rows = []
    for name, value in probabilities.items():
        p = float(value)
        width = 100.0 * min(max(p, 0.0), 1.0) if math.isfinite(p) else 0.0
        colour = DECIDED_COLOUR if name == decision else OTHER_COLOUR
        line = ""
        if threshold is not None and name == positive_class:
            line = (f'<span class="xai-threshold" data-threshold="{float(threshold):.6f}" '
                    f'style="left:{100.0 * min(max(float(threshold), 0.0), 1.0):.3f}%"></span>')
        decided = ' data-decided="1"' if name == decision else ""
        rows.append(
            f'<div class="xai-prob-row" data-class="{escape(name)}" data-probability="{p!r}"{decided} '
            f'title="{escape(name)}: {p:.4f}"><span class="xai-prob-name">{escape(name)}</span>'
            f'<span class="xai-prob-value">{p:.3f}</span><span class="xai-prob-track">'
            f'<span class="xai-prob-bar" style="width:{width:.3f}%;background:{colour}"></span>{line}</span></div>')
    caption = ""
    if threshold is not None and positive_class in probabilities:
        caption = (f'<div class="xai-prob-note"><span class="xai-prob-dash"></span>threshold {float(threshold):.3f} '
                   f"on P({escape(str(positive_class))})</div>")
    return (
        "<style>"
        ".xai-prediction{font-size:0.9rem;margin:0.1rem 0 0.4rem}"
        ".xai-prob-note{font-size:0.75rem;opacity:0.8;margin-bottom:0.3rem}"
        f".xai-prob-dash{{display:inline-block;width:1.1rem;border-top:3px dashed {THRESHOLD_COLOUR};"
        "vertical-align:middle;margin-right:0.35rem}"
        ".xai-prob-row{display:flex;align-items:center;gap:0.5rem;margin:0.3rem 0}"
        ".xai-prob-name{flex:0 0 7rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}"
        ".xai-prob-value{flex:0 0 3rem;text-align:right;font-variant-numeric:tabular-nums}"
        ".xai-prob-track{position:relative;flex:1;height:1.6rem;border-radius:3px;"
        "outline:1px solid rgba(128,128,128,0.35)}"
        ".xai-prob-bar{position:absolute;left:0;top:0;bottom:0;border-radius:3px}"
        f".xai-threshold{{position:absolute;top:-3px;bottom:-3px;border-left:3px dashed {THRESHOLD_COLOUR}}}"
        "</style>"
        '<div class="xai-prediction" role="figure" aria-label="The model\'s probability for each class">'
        + caption + "".join(rows) + "</div>"
    )


def unvalidated_figure(data: list[dict], layout: dict) -> go.Figure:
    """A figure from plain dicts without plotly's per-property validation (tens of ms per figure on every
    rerun of the Explain page). The builders here are fixed code: tests rebuild each figure with validation
    on and compare, so a misspelt property still fails (tests/test_panel_figures.py). Without a ``template``
    in ``layout`` the default one is used, as a validated figure would."""
    if "template" not in layout:
        import plotly.io as pio

        layout = {"template": pio.templates[pio.templates.default], **layout}
    return go.Figure(data=data, layout=layout, _validate=False)


#: The chart's name for the share of films misclassified at the threshold with no out-of-distribution warning.
SILENT_RATE = "silent error rate (wrong, no warning)"


def _silent_rates(split_metrics: Mapping[str, object], split: str) -> dict[str, float]:
    """{chart row: silent error rate} of a split's ``silent_errors`` record, overall and per source."""
    record = split_metrics.get("silent_errors")
    if not isinstance(record, Mapping):
        return {}
    rows: dict[str, Mapping] = {f"all {split} (n={split_metrics.get('n', '?')})": record}
    per_source = record.get("per_source")
    if isinstance(per_source, Mapping):
        rows.update({f"{name} (n={m.get('n', '?')})": m for name, m in per_source.items() if isinstance(m, Mapping)})
    from xai.trust.held_out import silent_share

    shares = {name: silent_share(m) for name, m in rows.items()}
    return {name: share for name, share in shares.items() if share is not None}


def source_metrics_figure(
    split_metrics: Mapping[str, object], split: str = "test", cross_source: Mapping[str, object] | None = None,
) -> go.Figure | None:
    """Sensitivity and specificity on one split, overall and per data source, as grouped bars.

    ``split_metrics`` is a card's ``metrics[split]`` (``sensitivity``, ``specificity``, ``n`` and an optional
    ``per_source`` mapping of the same). ``cross_source``: the card's cross-source checks (per held-out
    source, ``all_splits`` rates of a model retrained without that source): one more row each, the honest
    estimate for a hospital the model has never seen. A source holding one class has only one of the two
    rates; the other is left out, not drawn as zero. None when the card records neither rate. A third bar, the
    silent error rate (misclassified at the threshold with no out-of-distribution warning), sits beside them
    wherever the card records it (``silent_errors``, overall and ``per_source``; ``silent_errors.all_splits``
    of each held-out source).
    """
    from xai.trust.held_out import silent_error_rate

    groups: dict[str, Mapping] = {f"all {split} (n={split_metrics.get('n', '?')})": split_metrics}
    silent = _silent_rates(split_metrics, split)
    per_source = split_metrics.get("per_source")
    if isinstance(per_source, Mapping):
        groups.update({f"{name} (n={m.get('n', '?')})": m for name, m in per_source.items() if isinstance(m, Mapping)})
    for name, check in (cross_source or {}).items():
        rates = check.get("all_splits") if isinstance(check, Mapping) else None
        if isinstance(rates, Mapping):
            group = f"{name}, never seen in training (n={rates.get('n', '?')})"
            groups[group] = rates
            silent_rate = silent_error_rate(check)
            if silent_rate is not None:
                silent[group] = silent_rate
    rows = {g: {**m, SILENT_RATE: silent[g]} if g in silent else m for g, m in groups.items()}
    traces = []
    for rate, color in (("sensitivity", "#e4572e"), ("specificity", "#4c9be8"), (SILENT_RATE, "#6c6c6c")):
        names = [g for g, m in rows.items() if isinstance(m.get(rate), int | float)]
        values = [float(rows[g][rate]) for g in names]
        if names:
            traces.append({  # values outside the bars: a rate of 0 (a source's failure) stays readable
                "type": "bar", "x": values, "y": names, "name": rate, "orientation": "h", "marker": {"color": color},
                "text": [f"{rate.split()[0][:4] if rate == SILENT_RATE else rate[:4]}. {v:.2f}" for v in values],
                "textposition": "outside", "cliponaxis": False,
                "hovertemplate": f"%{{y}}<br>{rate} %{{x:.3f}}<extra></extra>",
            })
    if not traces:
        return None
    # Unvalidated (:func:`unvalidated_figure`): the landing page draws this on a fresh server before the model
    # loads, and plotly's validators cost 0.14 s the first time they run in a process.
    return unvalidated_figure(traces, {
        "barmode": "group", "height": 80 + 46 * len(groups), "margin": {"l": 8, "r": 8, "t": 8, "b": 8},
        "xaxis": {"range": [0, 1.15], "tickvals": [0, 0.2, 0.4, 0.6, 0.8, 1.0],
                  "title": {"text": "rate at the threshold chosen on val"}},
        # rows in reading order: overall, each source, then the sources never seen in training
        "yaxis": {"categoryorder": "array", "categoryarray": list(groups), "autorange": "reversed"},
        "legend": {"orientation": "h", "y": -0.25},
    })
