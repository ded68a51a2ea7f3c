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
from pages._methods import method_label
from pages._models import default_target_choice, require_model
from pages._state import page_store
from xai.batch.archive import ArchiveError, ZipLimits, zip_folder
from xai.batch.boxes import BoxesError, parse_boxes
from xai.batch.films import BatchSpec, Checks
from xai.batch.inputs import items_from_uploads
from xai.batch.names import content_sha256, export_stem
from xai.batch.outputs import COMPACT, FULL_RESOLUTION
from xai.batch.report import Report
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


def _cohort(report: Report) -> list[tuple[str, list[tuple[str, int, np.ndarray]]]]:
    """The cohort view's images (as in index.html): per grouping, ``(group, films, RGB)``."""
    from xai.batch.lungs import cohort_image

    return [(grouping, [(name, n, cohort_image(heat, lungs)) for name, n, heat, lungs in means])
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

            def _progress(done: int, total: int, _row: object) -> None:
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
                    "done": report.done,
                    "total": report.total,
                    "target": report.target,
                }
            bar.empty()

    result = page_store(_PAGE).get(_RESULT)
    if result:
        st.success(f"{result['done']} of {result['total']} image(s) explained (class: {result['target']}).")
        if result["summary"]:
            st.markdown("**Agreement with the boxes**")
            st.markdown(result["summary"])
        for grouping, groups in result["cohort"]:
            st.markdown(f"**Where the model looks, relative to the lungs — by {grouping}** (mean Grad-CAM, each "
                        "film's map registered to its lungs' box; cyan: the lung outline of half the films)")
            for column, (name, n, rgb) in zip(st.columns(min(len(groups), 6)), groups[:6], strict=False):
                column.image(rgb, caption=f"{name} — {n} film{'s' if n != 1 else ''}", width=160)
        if result["failed"]:
            st.warning("Not processed:\n\n" + "\n".join(
                f"- `{label}`" + (f" (`{name}`)" if name != label else "") + f": {reason}"
                for label, name, reason in result["failed"]))
        c1, c2, c3 = st.columns(3)
        c1.download_button("Report (zip)", result["zip"], "xai-report.zip", "application/zip")
        c2.download_button("report.csv", result["csv"], "report.csv", "text/csv")
        c3.download_button("index.html", result["html"], "index.html", "text/html")


main()
