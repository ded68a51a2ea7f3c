"""Zip archives: the one safe reader (uploads, model bundles) and the report's zip download.

:func:`read_zip` is the only place in the project that opens a zip someone else made. It reads in memory
(nothing is extracted to disk) and refuses, with a message that names the problem:

* a file that is not a zip, or an encrypted member;
* a member whose path is absolute, climbs out with ``..`` or starts with a drive letter (``C:``);
* more entries than ``max_members``, an archive over ``max_archive_bytes``, a member over
  ``max_member_bytes``, members that together unpack past ``max_total_bytes``;
* a member that inflates more than ``max_ratio`` times its compressed size (a zip bomb).

Sizes are counted while decompressing, never trusted from the headers, so a header that lies about them
does not help a zip bomb. Directories, symlinks, hidden files and ``__MACOSX`` resource forks are skipped.
"""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: Entries that are never radiographs and are skipped quietly.
_SKIPPED_PARTS = frozenset({"__MACOSX"})
#: Files stored without deflating in :func:`zip_folder` (already compressed: deflating again costs time).
_STORED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gz", ".zip", ".pdf"})


class ArchiveError(ValueError):
    """A zip archive refused as unsafe or unreadable (the message says why).

    ``anonymous`` is the same message without member names (they may identify a patient), for exports.
    """

    def __init__(self, message: str, *, anonymous: str | None = None) -> None:
        super().__init__(message)
        self.anonymous = anonymous if anonymous is not None else message


def _member_error(name: str, reason: str) -> ArchiveError:
    return ArchiveError(f"{name}: {reason}", anonymous=f"a file in the archive: {reason}")


@dataclass(frozen=True)
class ZipLimits:
    """Limits for reading a zip (defaults suit a few hundred radiographs)."""

    max_archive_bytes: int = 512 * 1024 * 1024
    max_members: int = 500
    max_member_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 1024 * 1024 * 1024
    max_ratio: float = 100.0


DEFAULT_LIMITS = ZipLimits()


def is_zip(data: bytes) -> bool:
    """True for the bytes of a zip archive (by content, not by name)."""
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def is_unsafe_member(name: str) -> bool:
    """True for a member path that is absolute, has a ``..`` part or a drive letter (would leave a folder)."""
    text = name.replace("\\", "/")
    path = PurePosixPath(text)
    return path.is_absolute() or ".." in path.parts or (len(text) >= 2 and text[1] == ":") or "\x00" in text


def _is_skippable(info: zipfile.ZipInfo) -> bool:
    parts = PurePosixPath(info.filename.replace("\\", "/")).parts
    return (
        info.is_dir()
        or not parts
        or any(p.startswith(".") or p in _SKIPPED_PARTS for p in parts)
        or stat.S_ISLNK(info.external_attr >> 16)
    )


def _open(source: bytes | Path, limits: ZipLimits) -> zipfile.ZipFile:
    size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    if size > limits.max_archive_bytes:
        raise ArchiveError(f"archive is {size} bytes; the limit is {limits.max_archive_bytes}")
    try:
        return zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ArchiveError(f"not a readable zip archive ({exc})") from None


def read_zip(
    source: bytes | Path,
    limits: ZipLimits = DEFAULT_LIMITS,
    *,
    only: Callable[[str], bool] | None = None,
) -> list[tuple[str, bytes]]:
    """The files of a zip (bytes in memory, or a path) as ``(member path, bytes)`` in archive order.

    ``only(name)`` picks the members to decompress (default: all); the others are still checked for
    unsafe paths and counted against ``max_members``. Raises :class:`ArchiveError` (see the module
    docstring for every reason); an ``OSError`` reading a path is reported the same way.
    """
    try:
        archive = _open(source, limits)
    except OSError as exc:
        raise ArchiveError(f"cannot read the archive ({exc.strerror or exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            raise ArchiveError(f"archive holds {len(infos)} files; the limit is {limits.max_members}")
        unsafe = [info.filename for info in infos if is_unsafe_member(info.filename)]
        if unsafe:
            raise ArchiveError(f"archive has unsafe paths (absolute or '..'): {', '.join(unsafe[:5])}; refused",
                               anonymous="archive has unsafe paths (absolute or '..'); refused")
        members = [info for info in infos if not _is_skippable(info) and (only is None or only(info.filename))]
        declared = sum(info.file_size for info in members)
        if declared > limits.max_total_bytes:
            raise ArchiveError(f"archive would unpack to {declared} bytes; the limit is {limits.max_total_bytes}")
        files: list[tuple[str, bytes]] = []
        total = 0
        for info in members:
            if info.flag_bits & 0x1:
                raise _member_error(info.filename, "encrypted archive members are not supported")
            content = _read_member(archive, info, limits, budget=min(limits.max_member_bytes,
                                                                     limits.max_total_bytes - total))
            total += len(content)
            files.append((info.filename.replace("\\", "/"), content))
        return files


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ZipLimits, *, budget: int) -> bytes:
    """Decompress one member, stopping as soon as it passes the size budget or the compression ratio."""
    ratio_cap = max(int(max(info.compress_size, 1) * limits.max_ratio), 1024)
    cap = min(budget, ratio_cap)
    chunks: list[bytes] = []
    size = 0
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(min(1 << 20, cap + 1 - size)):
                size += len(chunk)
                if size > cap:
                    break
                chunks.append(chunk)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise _member_error(info.filename, f"cannot be decompressed ({exc})") from None
    if size > cap:
        if cap >= budget:
            raise _member_error(info.filename, f"unpacks past the size limit ({budget} bytes); refused")
        raise _member_error(info.filename, f"compression ratio over {limits.max_ratio:g}:1 (a zip bomb?); refused")
    return b"".join(chunks)


def _files_under(root: Path) -> Iterator[Path]:
    yield from sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def zip_folder(folder: Path, *, keep: Callable[[Path], bool] | None = None) -> bytes:
    """The files under ``folder`` as a zip (relative names, sorted), for one download.

    ``keep(relative path)`` selects files (default: all). Images and other compressed files are stored
    as they are (deflating a PNG or JPEG again costs time and saves nothing); text is deflated.
    """
    buffer = io.BytesIO()
    root = Path(folder)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in _files_under(root):
            relative = path.relative_to(root)
            if keep is not None and not keep(relative):
                continue
            stored = path.suffix.lower() in _STORED_SUFFIXES
            archive.write(path, relative.as_posix(),
                          compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
