"""Output names: the one home for how files and folders written for an image are named.

Two rules, one per audience:

* **File stems** (:func:`safe_stem`) for the command line, whose user names their own files: the input
  file's stem as it is (``No_findings__x.png`` -> ``No_findings__x``), with only the characters that are
  unsafe in a path replaced by ``_`` (see :func:`safe_stem`). Never from DICOM header fields.
* **Hashed names** (:func:`export_stem`) for everything the app lets someone download (the Explain
  page's files, the Batch page's CSV, HTML and zip folders): ``<model>_<first 10 hex digits of the file's
  sha256>``, because an uploaded file's name may itself identify a patient. The uploaded name is used
  only when the user switches patient details on.

Method names become file names through :func:`method_file` (``gradcam++`` stays ``gradcam++``: ``+`` is a
safe file character).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
)
_MAX_STEM_BYTES = 100
#: Characters kept besides letters and digits (portable in file names on every common file system,
#: harmless in a shell). Anything else, separators and control characters included, becomes ``_``.
_KEPT = frozenset("-_.+")
HASH_DIGITS = 10
"""Hex digits of the content sha256 in a hashed name (collisions are resolved by :func:`unique_stems`)."""


def _safe_char(c: str) -> bool:
    return c in _KEPT or (c.isalnum() and unicodedata.category(c)[0] in "LN")


def _clean(text: str) -> str:
    """``text`` with every character unsafe in a file name replaced (the rule of :func:`safe_stem`)."""
    text = unicodedata.normalize("NFKC", text)
    cleaned = "".join(c if _safe_char(c) else "_" for c in text.lstrip(". -")).rstrip(".")
    cleaned = cleaned.encode("utf-8")[:_MAX_STEM_BYTES].decode("utf-8", errors="ignore").rstrip(".")
    if not cleaned:
        return "image"
    if cleaned.split(".", 1)[0].lower() in _WINDOWS_RESERVED:
        cleaned = f"_{cleaned}"[:_MAX_STEM_BYTES]
    return cleaned


def safe_stem(name: str) -> str:
    """A file-system-safe stem of the last component of ``name`` (a file name or path as given).

    The last extension is dropped; Unicode is NFKC-normalised; every character that is not a letter,
    digit, ``-``, ``_``, ``.`` or ``+`` becomes ``_`` (no collapsing: ``No_findings__x`` stays as it is);
    leading dots, dashes and spaces go (no hidden files, nothing read as an option), trailing dots too;
    empty -> ``image``; Windows device names (``CON``, ``nul.x``...) get a ``_`` prefix; at most 100
    UTF-8 bytes.
    """
    base = PurePosixPath(str(name).replace("\\", "/")).name
    if "." in base.lstrip("."):
        base = base.rsplit(".", 1)[0]
    return _clean(base)


def content_sha256(data: bytes) -> str:
    """Hex sha256 of a file's bytes (what a hashed name is made from)."""
    return hashlib.sha256(data).hexdigest()


def export_stem(model_name: str, sha256: str) -> str:
    """The hashed name of an image's exports: ``<model>_<sha256 prefix>`` (no trace of the upload's name)."""
    return f"{_clean(model_name)}_{sha256[:HASH_DIGITS]}"


def method_file(method: str) -> str:
    """The file-name form of a method name (``gradcam``, ``gradcam++``, ``guided_backprop`` ...)."""
    return _clean(method)


def unique_stems(stems: Sequence[str]) -> list[str]:
    """``stems`` made unique case-insensitively with ``_2``, ``_3``... in order (a stem is never changed
    otherwise, so pass :func:`safe_stem` or :func:`export_stem` values)."""
    taken: set[str] = set()
    out: list[str] = []
    for stem in stems:
        candidate = stem
        n = 1
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.casefold())
        out.append(candidate)
    return out


def file_stems(names: Sequence[str]) -> list[str]:
    """:func:`safe_stem` of each name, made unique (:func:`unique_stems`): the command line's folders."""
    return unique_stems([safe_stem(name) for name in names])


def output_dir_for(out_dir: Path, stem: str) -> Path:
    """``out_dir/stem``, refusing anything that would resolve outside ``out_dir`` (e.g. a planted symlink)."""
    root = Path(out_dir).resolve()
    target = (root / stem).resolve()
    if target.parent != root or stem in {"", ".", ".."} or "/" in stem or "\\" in stem:
        raise ValueError(f"output name {stem!r} would leave the output folder")
    return target
