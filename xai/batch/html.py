"""The report's self-contained ``index.html``: inline CSS, images as data URIs, no scripts, every string escaped.

Written in pieces so that it can be streamed: :func:`head` (title, model, summary, failed files) once the
rows are all in, :func:`card` per explained film as it arrives, :data:`TAIL` at the end.

Written for a radiologist first: methods by their names (Grad-CAM, not ``gradcam``), figures in plain
words; the modeler's details (metric conventions, distances, method keys) sit in ``<details>`` blocks that
open on a click without any script.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from xai.export import METHOD_TITLES

if TYPE_CHECKING:
    from xai.batch.records import Report, ReportRow

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
td:first-child,th:first-child{text-align:left}.card{background:#fff;border:1px solid #ddd;margin:1rem 0;padding:.75rem}
.strip{display:flex;flex-wrap:wrap;gap:.5rem}.strip figure{margin:0}.strip img{max-width:256px;height:auto;display:block}
figcaption{font-size:.8rem;color:#555}.warn{color:#a40}.fail{color:#b00}.note{font-size:.85rem;color:#555}
details{font-size:.85rem;color:#555;margin:.25rem 0}summary{cursor:pointer}
.bar{display:flex;width:192px;height:14px;border:1px solid #999;margin:.25rem 0}.bar span{display:block;height:100%}
.legend span{display:inline-block;margin-right:.75rem;font-size:.8rem}
.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.25rem;vertical-align:middle;border:1px solid #999}
"""
#: The ``<details>`` summary line of every modeler's block.
FOR_MODELERS = "For modelers"
TAIL = "</body></html>\n"


def ood_warning_text(ood: Mapping[str, Any]) -> str:
    """The out-of-distribution warnings of a row as one line (the CSV cell and the card's warning)."""
    warnings = ood.get("warnings") or ()
    if isinstance(warnings, str):
        return warnings
    return "; ".join(str(w) for w in warnings)


def ood_fields(ood: Mapping[str, Any], notices: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """A film's out-of-distribution check as ``result.json``'s ``"ood"`` and the report CSV's ``ood_*`` columns
    write it: ``score`` (the Mahalanobis distance, None without statistics), ``warning`` (whether the check
    warned: the Explain page's "do not use this prediction") and ``reason`` (the warnings as one line; without
    a warning, why there is no score, else None). ``ood``: :func:`xai.batch.films.ood_record`'s dict and its
    ``notices``."""
    reason = ood_warning_text(ood)
    return {"score": ood.get("score"), "warning": bool(ood.get("is_ood") or ood.get("warnings")),
            "reason": reason or "; ".join(notices) or None}


def title(key: str) -> str:
    """A thumbnail's or method's plain name: ``gradcam`` -> "Grad-CAM", ``original`` -> "Original film"."""
    return "Original film" if key == "original" else METHOD_TITLES.get(key, key)


def _modelers(inner: str) -> str:
    return f"<details><summary>{FOR_MODELERS}</summary>{inner}</details>"


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _explained(target: str) -> str:
    return "the predicted class of each image" if target == "predicted" else target


def head(report: Report) -> str:
    """Everything above the image cards: the model, the question, the agreement summary, failed files."""
    e = html.escape
    meta = report.meta
    model = meta.model
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>ChestCOVNet XAI batch report</title><style>{_CSS}</style></head><body>",
        "<h1>ChestCOVNet XAI batch report</h1>",
        f"<p>Model <b>{e(model['name'])}</b> version {e(model['version'])} "
        f"(weights sha256 <code>{e(model['sha256'][:16])}…</code>). Explained class: <b>{e(_explained(meta.target))}</b>. "
        f"Images: {report.total}, failed: {len(report.failed)}.</p>",
        "<p class='note'>Where a radiologist's box exists (green), the agreement figures ask whether the "
        "model's evidence for the explained class sits on the boxed finding: how often the map's strongest "
        "point falls inside a box, how much of the map lies inside, and how well the map's bright part "
        "overlaps the boxes. They do not say whether the prediction is right.</p>",
        _modelers("<p>Pointing game (the map's maximum inside a box), share of map energy inside, and IoU of "
                  "the Otsu-thresholded map with the boxes: CheXlocalize conventions (Saporta et al., Nature "
                  "Machine Intelligence 2022). Methods: " + ", ".join(
                      f"{e(title(m))} = <code>{e(m)}</code>" for m in meta.methods) + ".</p>"),
    ]
    summary = report.summary()
    if summary:
        parts.append("<h2>Agreement with the boxes</h2><table><tr><th>method</th><th>films</th>"
                     "<th>strongest point inside (share of films)</th><th>mean share of the map inside</th>"
                     "<th>overlap of the bright part (mIoU)</th></tr>")
        for method, s in summary.items():
            parts.append(
                f"<tr><td>{e(title(method))}</td><td>{int(s['n'])}</td><td>{s['hit_rate']:.3f}</td>"
                f"<td>{s['mean_energy_inside']:.3f}</td><td>{s['miou']:.3f}</td></tr>"
            )
        chance = report.chance_hit_rate()
        if chance is not None:
            parts.append(f"<tr><td><i>chance: uniform map or random point</i></td><td></td><td>{chance:.3f}</td>"
                         f"<td>{chance:.3f}</td><td></td></tr>")
        parts.append("</table>")
    parts.append(cohort_section(report))
    if report.failed:
        parts.append("<h2 class='fail'>Files not processed</h2><ul>")
        parts += [f"<li><b>{e(name)}</b>: {e(error)}</li>" for name, error in report.failed]
        parts.append("</ul>")
    parts.append("<h2>Images</h2>")
    return "".join(parts)


def region_bar(shares: Mapping[str, float]) -> str:
    """A stacked bar of shares per region (inline HTML/CSS; each piece's tooltip names its region and share)."""
    from xai.anatomy import REGION_COLOURS

    e = html.escape
    pieces = "".join(f"<span style='width:{100 * shares[r]:.2f}%;background:{c}' title='{e(r)} {shares[r]:.0%}'>"
                     "</span>" for r, c in REGION_COLOURS.items() if shares.get(r, 0) > 0)
    return f"<div class='bar'>{pieces}</div>"


def region_legend() -> str:
    """The colour key of :func:`region_bar`."""
    from xai.anatomy import REGION_COLOURS

    return "<p class='legend'>" + "".join(f"<span><i style='background:{c}'></i>{html.escape(r)}</span>"
                                          for r, c in REGION_COLOURS.items()) + "</p>"


def cohort_section(report: Report) -> str:
    """Where the model looks on average relative to the lungs: one mean registered map per group."""
    from xai.batch.lungs import COHORT_METHOD, cohort_image
    from xai.batch.outputs import jpeg_bytes

    e = html.escape
    groupings = [g for g in ("folder", "predicted class") if report.cohort.means(g)]
    if not groupings:
        return ""
    method = COHORT_METHOD if COHORT_METHOD in report.meta.methods else report.meta.methods[0]
    parts = [f"<h2>Where the model looks, relative to the lungs</h2><p class='note'>Mean {e(title(method))} map of "
             "the films in each group, each film's map first cropped to its lungs' bounding box and resampled to a "
             "common square (so films of any size and framing line up lung on lung); cyan: the lung outline of at "
             "least half the films. Colours run from 0 to each group's own maximum. Films without a lung field "
             "are left out. Under each map: the group's mean share of that map per anatomical region (lung zones = "
             "thirds of each visible lung's height; the patient's right and left), as a stacked bar and its two "
             "largest regions.</p>", region_legend()]
    for grouping in groupings:
        parts.append(f"<h3>By {e(grouping)}</h3><div class='strip'>")
        readouts = report.cohort.region_means(grouping)
        for name, n, mean_map, mean_lungs in report.cohort.means(grouping):
            jpeg = jpeg_bytes(cohort_image(mean_map, mean_lungs), quality=90)
            bar = sentence = ""
            if name in readouts:
                from xai.anatomy import readout_sentence

                bar, sentence = region_bar(readouts[name]), f"<br>{e(readout_sentence(readouts[name]))}"
            parts.append(f"<figure><img alt='{e(name)}' src='{_data_uri(jpeg)}'>{bar}<figcaption>{e(name)} — "
                         f"{n} film{'s' if n != 1 else ''}{sentence}</figcaption></figure>")
        parts.append("</div>")
    return "".join(parts)


def card(row: ReportRow) -> str:
    """One explained film: prediction, OOD verdict, notices, and its thumbnails with their figures."""
    e = html.escape
    probs = ", ".join(f"{e(c)} {p:.3f}" for c, p in row.probabilities.items())
    parts = [f"<div class='card'><h3>{e(row.file)}</h3><p>Prediction <b>{e(row.predicted or '')}</b> "
             f"({probs}); explained: {e(row.target or '')}."]
    if row.lung_area_fraction:
        parts.append(f" Lung field: {row.lung_area_fraction:.0%} of the film.")
    parts.append("</p>")
    if row.ood.get("score") is not None:
        parts.append(_modelers(f"<p>Out-of-distribution score (Mahalanobis distance of the penultimate "
                               f"features) {float(row.ood['score']):.1f}.</p>"))
    warning = ood_warning_text(row.ood)
    if warning:
        parts.append(f"<p class='warn'>⚠ {e(warning)}</p>")
    if row.notices:
        parts.append("<ul class='note'>" + "".join(f"<li>{e(n)}</li>" for n in row.notices) + "</ul>")
    parts.append("<div class='strip'>")
    for key, jpeg in row.thumbnails.items():
        caption = e(title(key))
        if key in row.agreement:
            a = row.agreement[key]
            caption += (f" — strongest point {'inside' if a['hit'] else 'outside'} the box, "
                        f"{a['energy_inside']:.0%} of the map inside (IoU {a['iou_otsu']:.2f})")
        if row.in_lungs.get(key) is not None:
            caption += f" — {row.in_lungs[key]:.0%} in the lungs"
        shares = row.anatomy.get(key) or {}
        known = {k: v for k, v in shares.items() if v is not None}
        if known and len(known) == len(shares):  # no unknown share
            from xai.anatomy import readout_sentence

            caption += f" — {e(readout_sentence(known))}"
        if key in row.stability and "spearman_mean" in row.stability[key]:
            caption += f" — stability under small changes: rank correlation {row.stability[key]['spearman_mean']:.2f}"
        parts.append(f"<figure><img alt='{e(title(key))}' src='{_data_uri(jpeg)}'><figcaption>{caption}"
                     "</figcaption></figure>")
    parts.append("</div></div>")
    return "".join(parts)
