"""The radiograph a session looks at: an upload, a bundled sample or DICOM bytes -> :class:`LoadedImage`.

Uploads are untrusted: they decode in a sandboxed worker process with a time and memory limit, so a crash or
hang inside a C decoder fails that file only. The bundled samples are ours and decode in-process.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from pages._state import Key, session
from xai.batch.names import content_sha256
from xai.radiograph import RadiographError

if TYPE_CHECKING:
    from xai.radiograph import Radiograph

APP_DIR = Path(__file__).resolve().parents[1]
SAMPLES_DIR = APP_DIR / "samples"
NO_SAMPLE = "—"


@dataclass(frozen=True)
class LoadedImage:
    """The radiograph a session is looking at. ``label`` is for the screen only (never exported).

    ``dicom_bytes`` keeps a DICOM file's bytes so a Secondary Capture can reference the exact source
    (its SOP class and instance UIDs); None for other formats.
    """

    label: str
    sha256: str
    radiograph: Radiograph
    source: str  # "upload" or "sample"
    dicom_bytes: bytes | None = field(default=None, repr=False)


def current_image() -> LoadedImage | None:
    """The radiograph this session looks at (shared by every page), or None."""
    image = session().get(Key.IMAGE)
    return image if isinstance(image, LoadedImage) else None


def set_image(image: LoadedImage) -> None:
    session()[Key.IMAGE] = image
    set_load_error(None)


def load_error() -> str | None:
    return session().get(Key.LOAD_ERROR)


def set_load_error(message: str | None) -> None:
    if message is None:
        session().pop(Key.LOAD_ERROR, None)
    else:
        session()[Key.LOAD_ERROR] = message


def load_bytes(data: bytes, label: str, source: str) -> LoadedImage:
    """Decode an image. Raises ``xai.radiograph.RadiographError`` with a message naming the problem.

    ``source="upload"`` decodes in the sandboxed decoder (:mod:`xai.sandboxed_decoder`); a bundled sample in-process.
    """
    from xai.radiograph import load_radiograph
    from xai.sandboxed_decoder import load_radiograph_isolated

    radiograph = load_radiograph_isolated(data) if source == "upload" else load_radiograph(data)
    return LoadedImage(
        label=label, sha256=content_sha256(data), radiograph=radiograph, source=source,
        dicom_bytes=data if radiograph.format == "dicom" else None,
    )


def list_samples() -> dict[str, str]:
    """Bundled samples, ``{title: file name}``, from ``samples/samples.json`` (else the folder's images)."""
    index = SAMPLES_DIR / "samples.json"
    entries: dict[str, str] = {}
    if index.is_file():
        try:
            for item in json.loads(index.read_text(encoding="utf-8")):
                if (SAMPLES_DIR / item["file"]).is_file():
                    entries[str(item.get("title") or item["file"])] = str(item["file"])
        except (ValueError, KeyError, TypeError):
            entries = {}
    if not entries and SAMPLES_DIR.is_dir():
        skip = {".md", ".json", ".txt"}
        entries = {p.name: p.name for p in sorted(SAMPLES_DIR.iterdir()) if p.is_file() and p.suffix not in skip}
    return entries


@st.cache_resource(max_entries=8, show_spinner=False)
def load_sample(file_name: str) -> LoadedImage:
    """A bundled sample, decoded once for every session (samples carry no patient data)."""
    path = SAMPLES_DIR / Path(file_name).name  # a name from samples.json, never a path that leaves the folder
    data = path.read_bytes()
    return load_bytes(data, label=file_name, source="sample")


def load_input(*, prefix: str = "", container: Any = None) -> LoadedImage | None:
    """The uploader and the sample picker, and the session's radiograph — one helper for every page.

    Draws the two widgets (keys ``{prefix}upload`` and ``{prefix}sample``) in ``container`` (e.g.
    ``st.sidebar``; default: where the page is drawing), loads what the user has just chosen (a new upload
    or another sample) as :func:`current_image` for every page, and returns the current image. A file
    that cannot be read leaves the previous image in place and shows a message naming the problem.
    """
    samples = list_samples()
    with container if container is not None else contextlib.nullcontext():
        upload = st.file_uploader(
            "Upload a radiograph", key=f"{prefix}upload",
            help="DICOM, PNG, JPEG, TIFF, BMP or WEBP — recognised from the file's content, not its name.",
        )
        sample = st.selectbox("…or a bundled sample", [NO_SAMPLE, *samples], key=f"{prefix}sample")
    _ingest(upload, f"{prefix}upload", sample, f"{prefix}sample", samples)
    image = current_image()
    if message := load_error():
        st.error(message + (" The previous image is still shown." if image is not None else ""))
    return image


def _seen(widget_key: str) -> Any:
    return session().setdefault(Key.SEEN_INPUTS, {}).get(widget_key)


def _mark_seen(widget_key: str, value: Any) -> None:
    session().setdefault(Key.SEEN_INPUTS, {})[widget_key] = value


def _ingest(upload: Any, upload_key: str, sample: str, sample_key: str, samples: dict[str, str]) -> None:
    """Load a new choice of either widget into :func:`current_image` (errors go to :func:`load_error`)."""
    if upload is not None and upload.file_id != _seen(upload_key):
        _mark_seen(upload_key, upload.file_id)
        try:
            set_image(load_bytes(upload.getvalue(), label=upload.name, source="upload"))
        except RadiographError as exc:
            set_load_error(f"Could not read “{upload.name}”: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bad file must never take the page down
            set_load_error(f"Could not read “{upload.name}”: unexpected {type(exc).__name__}.")
    elif upload is None and _seen(upload_key) is not None:
        _mark_seen(upload_key, None)
        set_load_error(None)  # the bad file was removed from the uploader
    if sample != _seen(sample_key):
        _mark_seen(sample_key, sample)
        if sample in samples:
            try:
                set_image(replace(load_sample(samples[sample]), label=sample))
            except (RadiographError, OSError) as exc:
                set_load_error(f"Could not read the sample “{sample}”: {exc}")
