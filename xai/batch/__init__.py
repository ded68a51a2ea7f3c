"""Many images at once: the ``explain`` and ``report`` commands (:mod:`xai.cli`) and the Batch page.

Pure library: no UI imports, and no model loading (the caller passes the model and what the trust checks
need). One module per job:

* :mod:`~xai.batch.names` — output names: file stems for the command line, hashed names for downloads;
* :mod:`~xai.batch.archive` — the one safe zip reader (uploads and model bundles) and the zip download;
* :mod:`~xai.batch.inputs` — files, folders and uploads as input items;
* :mod:`~xai.batch.boxes` — finding boxes from a CSV, as masks, drawn on films;
* :mod:`~xai.batch.outputs` — per-image files (overlays with provenance, maps, thumbnails), atomic writes;
* :mod:`~xai.batch.films` — the per-film work of a report (shared by the local and Ray engines);
* :mod:`~xai.batch.report` and :mod:`~xai.batch.html` — rows streamed into ``report.csv`` and ``index.html``;
* :mod:`~xai.batch.run` (here) and :mod:`~xai.batch.ray_engine` (on Ray) — running a report.

Names are resolved lazily, so ``from xai.batch.archive import read_zip`` does not import OpenCV or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "names": ("safe_stem", "export_stem", "method_file", "unique_stems", "file_stems", "output_dir_for",
              "content_sha256"),
    "archive": ("ArchiveError", "ZipLimits", "read_zip", "is_zip", "zip_folder"),
    "inputs": ("InputItem", "NOT_IMAGE_SUFFIXES", "collect_inputs", "iter_inputs", "items_from_uploads"),
    "boxes": ("Box", "BoxesError", "load_boxes", "parse_boxes", "boxes_mask", "draw_boxes"),
    "outputs": ("OverlayFormat", "COMPACT", "FULL_RESOLUTION", "write_explain_outputs", "jpeg_bytes"),
    "films": ("BatchSpec", "Checks", "FilmTask", "FilmRunner", "iter_explained", "load_item"),
    "report": ("AGREEMENT_KEYS", "Report", "ReportMeta", "ReportRow", "ReportWriter", "report_texts"),
    "run": ("run_report", "plan_tasks", "report_meta", "default_report_target"),
    "ray_engine": ("run_report_ray",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'xai.batch' has no attribute {name!r}")
    return getattr(importlib.import_module(f"xai.batch.{module}"), name)
