"""A review session's exports: the ratings as CSV and a self-contained HTML report of the statistics.

Both carry no patient identifier: cases are named by their id and position in the worklist; a file name
appears only when the session was created with patient details on. Cells a spreadsheet would run as a
formula are quoted (the batch report's rule), every string in the HTML is escaped, and the page runs no
script (a Content-Security-Policy forbids it).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

from xai.batch.report import csv_cell
from xai.export import DISCLAIMER, METHOD_TITLES
from xai.review.records import ReviewSession

__all__ = ["ratings_csv", "report_html"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222;max-width:70rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
td:first-child,th:first-child{text-align:left}.note{font-size:.85rem;color:#555}
"""


def ratings_csv(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], predictions: Mapping[str, str] | None = None) -> str:
    """One line per (case, reader): the latest rating, plausibility per method, the box, the model's call."""
    with_file = any("file" in r for r in rows)
    header = ["case", "position", *(["file"] if with_file else []), "reader", "diagnosis", "confidence", "reference"]
    header += [f"plausibility_{m}" for m in methods]
    header += ["box_x", "box_y", "box_w", "box_h", "note", "seconds", "model_prediction", "map_order", "saved_at"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        box = r.get("box") or [None] * 4
        values: list[Any] = [r["case"], r["position"], *([r.get("file", "")] if with_file else []), r["reader"],
                             r.get("diagnosis") or "", r.get("confidence") or "", r.get("reference") or ""]
        values += [(r.get("plausibility") or {}).get(m, "") for m in methods]
        values += ["" if v is None else float(v) for v in box]
        values += [r.get("note") or "", "" if r.get("seconds") is None else float(r["seconds"]),
                   (predictions or {}).get(r["case"], ""), " ".join(r.get("map_order") or ()), r["saved_at"]]
        writer.writerow([csv_cell(v) for v in values])
    return buffer.getvalue()


def _num(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _bar(value: float | None, lo: float, hi: float, low: float | None = None, high: float | None = None) -> str:
    """An inline SVG bar of ``value`` on [lo, hi] with an optional interval (no script, no external file)."""
    if value is None:
        return ""
    scale = lambda v: 4 + 200 * (float(v) - lo) / (hi - lo)  # noqa: E731
    svg = [f"<svg width='210' height='14' role='img'><rect x='4' y='3' width='{scale(value) - 4:.1f}' height='8' "
           "fill='#4c9be8'/>"]
    if low is not None and high is not None:
        svg.append(f"<line x1='{scale(low):.1f}' x2='{scale(high):.1f}' y1='7' y2='7' stroke='#222' stroke-width='2'/>")
    svg.append("</svg>")
    return "".join(svg)


def report_html(session: ReviewSession, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """The session report: settings, agreement between readers, per-method plausibility with 95% CIs,
    reader vs model, boxes against maps, and every (case, reader) rating."""
    e = html.escape
    title = lambda m: e(METHOD_TITLES.get(m, m))  # noqa: E731
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>Review session {e(session.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Review session “{e(session.name)}”</h1>",
        f"<p class='note'>{e(DISCLAIMER)}.</p>",
        f"<p>Owner {e(session.owner)} · model {e(session.model)} · {session.n_cases} cases · readers: "
        f"{e(', '.join(summary.get('readers', [])) or 'none yet')} · "
        f"{'blinded' if session.blinded else 'not blinded'}, maps {'anonymised' if session.anonymised else 'named'} · "
        f"{'closed ' + e(session.closed_at) if session.closed_at else 'open'}.</p>",
        "<h2>Agreement between readers</h2><table>",
        f"<tr><td>Fleiss' kappa, the read ({summary.get('fleiss_cases', 0)} cases read by every reader)</td>"
        f"<td>{_num(summary.get('fleiss_kappa'), 3)}</td></tr>",
        f"<tr><td>Krippendorff's alpha (ordinal), all plausibility ratings</td><td>{_num(summary.get('alpha_all'), 3)}</td></tr>",
        "</table>",
        "<h2>Plausibility per method (5 = on the finding … 1 = artefact / outside the lungs)</h2>",
        "<table><tr><th>method</th><th>mean</th><th>95% CI (bootstrap over cases)</th><th></th><th>cases</th>"
        "<th>ratings</th><th>Krippendorff's alpha</th></tr>",
    ]
    for method, m in summary.get("methods", {}).items():
        parts.append(f"<tr><td>{title(method)}</td><td>{_num(m['mean'])}</td><td>{_num(m['ci_low'])} – {_num(m['ci_high'])}</td>"
                     f"<td>{_bar(m['mean'], 1, 5, m['ci_low'], m['ci_high'])}</td><td>{m['n_cases']}</td>"
                     f"<td>{m['n_ratings']}</td><td>{_num(m['alpha'], 3)}</td></tr>")
    parts.append("</table><h2>Reader vs model</h2><table><tr><th>reader</th><th>cases compared</th>"
                 "<th>agreement</th><th>Cohen's kappa</th><th>uncertain reads (left out)</th></tr>")
    for reader, a in summary.get("reader_vs_model", {}).items():
        parts.append(f"<tr><td>{e(reader)}</td><td>{int(a['n'] or 0)}</td><td>{_num(a['agreement'])}</td>"
                     f"<td>{_num(a['kappa'], 3)}</td><td>{int(a['uncertain'] or 0)}</td></tr>")
    if summary.get("reader_accuracy"):
        parts.append("</table><h2>Readers against the reference diagnosis</h2><table><tr><th>reader</th>"
                     "<th>decided reads</th><th>correct</th><th>accuracy</th><th>95% CI (Wilson)</th>"
                     "<th>uncertain reads (left out)</th></tr>")
        for reader, a in summary["reader_accuracy"].items():
            parts.append(f"<tr><td>{e(reader)}</td><td>{int(a['n'] or 0)}</td><td>{int(a['correct'] or 0)}</td>"
                         f"<td>{_num(a['accuracy'])}</td><td>{_num(a['ci_low'])} – {_num(a['ci_high'])}</td>"
                         f"<td>{int(a['uncertain'] or 0)}</td></tr>")
    parts.append("</table><h2>Readers' boxes against the maps</h2><table><tr><th>method</th><th>boxes</th>"
                 "<th>hit rate (pointing game)</th><th>share of the map inside</th><th>IoU (Otsu)</th>"
                 "<th>chance hit rate (box area)</th></tr>")
    for method, b in summary.get("boxes", {}).items():
        parts.append(f"<tr><td>{title(method)}</td><td>{b['n']}</td><td>{_num(b['hit'])}</td>"
                     f"<td>{_num(b['energy_inside'])}</td><td>{_num(b['iou_otsu'])}</td><td>{_num(b['area_share'])}</td></tr>")
    methods = list(summary.get("methods", {}))
    parts.append("</table><h2>Ratings</h2><table><tr><th>case</th><th>reader</th><th>read</th><th>confidence</th>"
                 + "".join(f"<th>{title(m)}</th>" for m in methods) + "<th>box</th><th>note</th></tr>")
    for r in rows:
        box = r.get("box")
        box_text = "" if not box else "{:.0f}, {:.0f}, {:.0f}×{:.0f}".format(*box)
        parts.append(f"<tr><td>{r['position']}</td><td>{e(r['reader'])}</td><td>{e(r.get('diagnosis') or '')}</td>"
                     f"<td>{r.get('confidence') or ''}</td>"
                     + "".join(f"<td>{(r.get('plausibility') or {}).get(m, '')}</td>" for m in methods)
                     + f"<td>{box_text}</td><td>{e(r.get('note') or '')}</td></tr>")
    parts.append("</table></body></html>\n")
    return "".join(parts)
