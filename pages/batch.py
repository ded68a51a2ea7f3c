"""Batch page: several uploads or a zip -> overlays, report.csv and a self-contained index.html.

A thin layer over :func:`xai.batch.run.run_report` (the same code as ``python -m xai report``). Zips are
read in memory by the one safe reader (:func:`xai.batch.archive.read_zip`: unsafe paths, size, count and
compression-ratio limits); the report is built in a temporary folder that is removed as soon as its zip is
in memory. Every download names the films by the Explain page's hashed names (model + content hash),
never by the uploaded file names, unless patient details are switched on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import streamlit as st

import models
from pages._access import ensure_routed
from pages._figures import readout_figure
from pages._methods import method_label
from pages._models import default_target_choice, require_model
from pages._state import page_store
from xai.anatomy import readout_sentence
from xai.batch.archive import ArchiveError, ZipLimits, zip_folder
from xai.batch.boxes import BoxesError, parse_boxes
from xai.batch.films import BatchSpec, Checks
from xai.batch.html import ood_warning_text
from xai.batch.html import title as method_title
from xai.batch.inputs import items_from_uploads
from xai.batch.names import content_sha256, export_stem, output_dir_for
from xai.batch.outputs import COMPACT, FULL_RESOLUTION
from xai.batch.records import Report, ReportRow
from xai.batch.run import run_report
from xai.method_names import METHODS, listed_methods

ZIP_LIMITS = ZipLimits(max_archive_bytes=200 * 1024 * 1024, max_members=200, max_member_bytes=64 * 1024 * 1024,
                       max_total_bytes=512 * 1024 * 1024, max_ratio=100.0)
_PAGE, _RESULT = "batch", "result"  # this session's last report: page_store(_PAGE)[_RESULT]
_SIZES = {"Compact: JPEG overlays, longest side 1024 px": COMPACT,
          "Full resolution: PNG overlays on each film's own pixel grid (slow, large)": FULL_RESOLUTION}


def _in_download(path: PurePosixPath) -> bool:
    """The zip holds the report, the CSV and the overlays; thumbnails live in index.html already."""
    return not (path.parts[-1] == "row.json" or "thumbs" in path.parts[:-1])


def _data_url(jpeg: bytes) -> str:
    import base64

    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def film_rows(out_dir: Path, rows: list[ReportRow], target: str, methods: tuple[str, ...]) -> list[dict[str, object]]:
    """One on-screen row per explained film (failed ones are listed apart): its thumbnail and the first
    method's, the prediction, the explained class's probability, the out-of-distribution warning and where
    the first method's evidence lies (its two largest anatomical regions, :func:`xai.anatomy.readout_sentence`;
    else its share inside the lungs) and its share inside the lungs. Names are the report's (hashed unless patient
    details are on)."""
    method = methods[0]
    table = []
    for row in rows:
        if row.error is not None or row.stem is None:
            continue
        folder = output_dir_for(out_dir, row.stem)
        thumbs = row.thumbnail_files()

        def picture(key: str, thumbs: dict[str, str] = thumbs, folder: Path = folder) -> str | None:
            try:
                return _data_url((folder / thumbs[key]).read_bytes()) if key in thumbs else None
            except OSError:
                return None

        share = row.in_lungs.get(method)
        explained = row.target or target
        regions = {k: float("nan") if v is None else float(v) for k, v in (row.anatomy.get(method) or {}).items()}
        where = readout_sentence(regions) if regions else ""
        if not where:
            where = "no lung field found" if share is None else (
                f"{share:.0%} in the lungs" + ("" if share >= 0.5 else ", mostly outside"))
        table.append({
            "film": picture("original"), "map": picture(method), "name": row.file,
            "prediction": row.predicted or "",
            "probability": float(row.probabilities.get(explained, float("nan"))),
            "warning": ood_warning_text(row.ood) or "no warning",
            "evidence in the lungs": float("nan") if share is None else float(share),
            "where the evidence lies": where,
        })
    return table


def show_films(films: list[dict[str, object]], target: str, method: str) -> None:
    """The per-film table: sortable by any column (click its header); thumbnails as image cells."""
    st.markdown(f"**Per film** — click a column's header to sort. Map: {method_title(method)} for {target}.")
    st.dataframe(
        films, hide_index=True, key="batch_films", row_height=72,
        column_config={
            "film": st.column_config.ImageColumn("film", width="small"),
            "map": st.column_config.ImageColumn(method_title(method), width="small"),
            "probability": st.column_config.NumberColumn(f"P({target})", format="%.3f"),
            "evidence in the lungs": st.column_config.ProgressColumn(
                "evidence in the lungs", min_value=0.0, max_value=1.0, format="percent"),
            "warning": st.column_config.TextColumn("out-of-distribution warning", width="medium"),
        },
    )
    st.caption("“No warning” is not proof a film is like the training data: the check misses films from "
               "hospitals the model never saw. Where the evidence lies: the map's two largest shares by anatomical "
               "region. Evidence in the lungs: the share of the map inside the lung field (dilated by 3 % of the "
               "film's width).")


def _cohort(report: Report) -> list[tuple[str, list[tuple[str, int, np.ndarray]], dict[str, dict[str, float]]]]:
    """The cohort view (as in index.html): per grouping, ``(grouping, [(group, films, RGB)], {group: {region:
    mean share}})`` — the mean maps and, beside them, the mean share of the map per anatomical region."""
    from xai.batch.lungs import cohort_image

    return [(grouping, [(name, n, cohort_image(heat, lungs)) for name, n, heat, lungs in means],
             report.cohort.region_means(grouping))
            for grouping in ("folder", "predicted class") if (means := report.cohort.means(grouping))]


def main() -> None:
    ensure_routed()  # gate + disclaimer before anything renders, deep links included
    st.title("Batch report")
    st.caption(
        "Explain many radiographs at once: upload images (PNG, JPEG, DICOM…) or one zip. Optional finding boxes "
        "(CSV `file,x,y,w,h[,label]` in image pixels, or the data manifest) add agreement figures: does the "
        "model's evidence sit on the boxed finding? Same computation as `python -m xai report`."
    )

    model = require_model()
    class_names = model.class_names
    with st.form("batch_form"):
        uploads = st.file_uploader("Images or a zip", accept_multiple_files=True, key="batch_uploads")
        boxes_file = st.file_uploader("Finding boxes (optional CSV)", type=["csv"], key="batch_boxes")
        left, right = st.columns(2)
        methods = left.multiselect("Methods", listed_methods(), default=list(METHODS), format_func=method_label)
        target = right.selectbox("Explain class", ["predicted", *class_names], index=default_target_choice(model))
        size = st.radio("Overlays in the download", list(_SIZES), index=0, key="batch_overlays")
        stability = st.checkbox("Stability under small changes (slow: several explanations per image)")
        show_patient = st.toggle(
            "Show patient details", value=False, key="batch_show_patient",
            help="Off: the downloads name each film by the model and a hash of its content, as the Explain page "
                 "does. On: by its uploaded file name, which may identify a patient.",
        )
        submitted = st.form_submit_button("Run the batch", type="primary")

    if submitted:
        page_store(_PAGE).pop(_RESULT, None)
        boxes = None
        problem = None
        if not uploads:
            problem = "Upload at least one image or zip."
        elif not methods:
            problem = "Choose at least one method."
        if boxes_file is not None and problem is None:
            try:
                boxes = parse_boxes(boxes_file.getvalue().decode("utf-8-sig"))
            except UnicodeDecodeError:
                problem = "Boxes file: not UTF-8 text."
            except BoxesError as exc:
                problem = f"Boxes file: {exc}"
        items = []
        if problem is None:
            card_name = model.card.name
            labeller = None if show_patient else (lambda _name, data: export_stem(card_name, content_sha256(data)))
            try:
                items = items_from_uploads([(u.name, u.getvalue()) for u in uploads], ZIP_LIMITS, labeller=labeller)
            except ArchiveError as exc:
                problem = str(exc)
        if problem is not None:
            st.error(problem)
        else:
            bar = st.progress(0.0, text="Starting…")

            done_rows: list[ReportRow] = []

            def _progress(done: int, total: int, row: ReportRow) -> None:
                done_rows.append(row)
                bar.progress(done / max(total, 1), text=f"{done} of {total} done")

            spec = BatchSpec(methods=tuple(methods), target=target, stability=stability, overlays=_SIZES[size])
            checks = Checks(ood_stats=models.ood_stats(model.loaded),
                            second_model=models.second_checkpoint(model.card) if stability else None)
            with tempfile.TemporaryDirectory(prefix="xai-batch-") as tmp:
                out_dir = Path(tmp) / "report"
                report = run_report(items, model.loaded, out_dir, spec, boxes=boxes, checks=checks, progress=_progress,
                                    explainer=model.explainer)
                page_store(_PAGE)[_RESULT] = {
                    "zip": zip_folder(out_dir, keep=lambda p: _in_download(PurePosixPath(p.as_posix()))),
                    "csv": (out_dir / "report.csv").read_bytes(),
                    "html": (out_dir / "index.html").read_bytes(),
                    "summary": report.summary_markdown() if boxes else "",
                    # On screen only: which upload a failure was (the downloads carry the hashed names).
                    "failed": [(name, next((i.name for i in items if i.export_name == name), name), error)
                               for name, error in report.failed],
                    "cohort": _cohort(report),
                    "films": film_rows(out_dir, done_rows, report.target, tuple(methods)),
                    "method": methods[0],
                    "done": report.done,
                    "total": report.total,
                    "target": report.target,
                    "named": show_patient,
                }
            bar.empty()

    result = page_store(_PAGE).get(_RESULT)
    if result:
        st.success(f"{result['done']} of {result['total']} image(s) explained (class: {result['target']}).")
        if result.get("films"):
            show_films(result["films"], result["target"], result["method"])
        if result["summary"]:
            st.markdown("**Agreement with the boxes**")
            st.markdown(result["summary"])
        for grouping, groups, regions in result["cohort"]:
            shown = "site" if grouping == "folder" and not result.get("named") else grouping
            st.markdown(f"**Where the model looks, relative to the lungs — by {shown}** (mean Grad-CAM, each "
                        "film's map registered to its lungs' box; cyan: the lung outline of half the films)")
            if shown == "site":
                st.caption("Sites are the uploads' folders, renamed site 1, site 2, … in upload order (folder names "
                           "can identify a patient; switch patient details on to see them). Comparing sites shows "
                           "best whether the model looks at where a film came from.")
            for column, (name, n, rgb) in zip(st.columns(min(len(groups), 6)), groups[:6], strict=False):
                column.image(rgb, caption=f"{name} — {n} film{'s' if n != 1 else ''}", width=160)
            if regions:
                st.caption(f"Mean share of each {shown}'s Grad-CAM maps per anatomical region (lung zones = the "
                           "visible lung fields; films without a lung field are left out).")
                st.plotly_chart(readout_figure(regions), key=f"cohort_regions_{grouping}")
        if result["failed"]:
            st.warning("Not processed:\n\n" + "\n".join(
                f"- `{label}`" + (f" (`{name}`)" if name != label else "") + f": {reason}"
                for label, name, reason in result["failed"]))
        c1, c2, c3 = st.columns(3)
        c1.download_button("Report (zip)", result["zip"], "xai-report.zip", "application/zip")
        c2.download_button("report.csv", result["csv"], "report.csv", "text/csv")
        c3.download_button("index.html", result["html"], "index.html", "text/html")


main()
