"""Inputs of a batch: files and folders given on the command line, or uploads (zips expanded)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from xai.batch.archive import DEFAULT_LIMITS, ArchiveError, ZipLimits, is_zip, read_zip
from xai.batch.names import safe_stem

#: Side files skipped when walking a folder (named explicitly, they are tried like any file): formats are
#: detected from content, so images need no extension, but these are never radiographs.
NOT_IMAGE_SUFFIXES = frozenset(
    {".md", ".txt", ".json", ".csv", ".tsv", ".html", ".htm", ".xml", ".pdf", ".py", ".yaml", ".yml",
     ".toml", ".log", ".npy", ".npz", ".zip", ".gz", ".ini", ".cfg"}
)

Labeller = Callable[[str, bytes], str]
"""``labeller(name, data)``: the name exports give an upload (e.g. a hashed :func:`~xai.batch.names.export_stem`)."""


@dataclass(frozen=True)
class InputItem:
    """One input.

    ``name`` as given (path or upload name; finding boxes are matched on its last component),
    ``source`` a path or bytes (``None`` with an ``error``), ``label`` what the exports call it
    (``None``: the name as given, and the output folder is the file's :func:`safe_stem`), ``site`` the
    neutral name of its folder ("site 1", "site 2", … in upload order) when names are hidden: the cohort
    view's per-site grouping without a folder name that could identify a patient.
    """

    name: str
    source: Path | bytes | None
    error: str | None = None
    label: str | None = None
    site: str | None = None

    @property
    def export_name(self) -> str:
        """What the report's CSV and HTML call this input."""
        return self.name if self.label is None else self.label

    @property
    def stem(self) -> str:
        """Its output folder's name before de-duplication: the label, or the file's stem."""
        return safe_stem(self.name) if self.label is None else self.label

    @property
    def file_name(self) -> str:
        """The last component of ``name`` (the key of a boxes file)."""
        return PurePosixPath(self.name.replace("\\", "/")).name


def _walk_sorted(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` in sorted order, skipping hidden files and folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.startswith("."):
                yield Path(dirpath) / filename


def iter_inputs(paths: Iterable[str | Path], skipped: list[str] | None = None) -> Iterator[InputItem]:
    """Files as given, directories walked (sorted, deterministic, lazily: an archive of any size streams);
    missing paths become error items.

    While walking, hidden files and obvious side files (:data:`NOT_IMAGE_SUFFIXES`) are left out and
    their names appended to ``skipped`` when a list is given.
    """
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for p in _walk_sorted(path):
                if p.suffix.lower() in NOT_IMAGE_SUFFIXES:
                    if skipped is not None:
                        skipped.append(str(p))
                elif p.is_file():
                    yield InputItem(str(p), p)
        elif path.is_file():
            yield InputItem(str(given), path)
        elif path.exists():
            yield InputItem(str(given), None, "not a regular file")
        else:
            yield InputItem(str(given), None, "no such file or directory")


def collect_inputs(paths: Iterable[str | Path], skipped: list[str] | None = None) -> list[InputItem]:
    """:func:`iter_inputs` as a list."""
    return list(iter_inputs(paths, skipped))


def items_from_uploads(
    uploads: Sequence[tuple[str, bytes]], limits: ZipLimits = DEFAULT_LIMITS, *, labeller: Labeller | None = None
) -> list[InputItem]:
    """Uploaded files as input items; a zip becomes its members (``archive.zip/member`` names).

    An unsafe or unreadable zip becomes one error item with the reason; the other uploads still run.
    The number of images across all uploads is capped at ``limits.max_members``. ``labeller`` names each
    item for the exports from its name and bytes (a refused zip: the zip's bytes); without one, exports
    use the names as uploaded.
    """
    items: list[InputItem] = []

    def label(name: str, data: bytes) -> str | None:
        return None if labeller is None else labeller(name, data)

    for name, data in uploads:
        if is_zip(data):
            try:
                members = read_zip(data, limits)
            except ArchiveError as exc:
                reason = str(exc) if labeller is None else exc.anonymous
                items.append(InputItem(name, None, reason, label(name, data)))
                continue
            items.extend(InputItem(f"{name}/{member}", content, None, label(member, content))
                         for member, content in members)
        else:
            items.append(InputItem(name, data, None, label(name, data)))
    if len(items) > limits.max_members:
        raise ArchiveError(f"{len(items)} images uploaded; the limit is {limits.max_members} per batch")
    return items if labeller is None else neutral_sites(items)


def folder_of(name: str) -> str:
    """The folder a file was in, as given (``.`` for none): the cohort's stand-in for its source."""
    parent = PurePosixPath(name.replace("\\", "/")).parent.as_posix()
    return parent.rsplit("/", 1)[-1] if parent not in ("", ".") else "."


def neutral_sites(items: Sequence[InputItem]) -> list[InputItem]:
    """``items`` with ``site`` set: each distinct folder (:func:`folder_of`) named "site 1", "site 2", … in
    the order it first appears."""
    sites: dict[str, str] = {}
    out = []
    for item in items:
        folder = folder_of(item.name)
        sites.setdefault(folder, f"site {len(sites) + 1}")
        out.append(replace(item, site=sites[folder]))
    return out
