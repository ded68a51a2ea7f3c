"""Decode untrusted files in a worker process with a time and a memory limit.

A crash (segfault, abort, Rust panic turned fatal) or a hang inside a C decoder (JPEG 2000, JPEG-LS, PNG,
...) must not take the server down. :func:`load_radiograph_isolated` runs
:func:`xai.radiograph.load_radiograph` in a short-lived child process:

- the child is forked from a clean *forkserver* (spawn where fork servers do not exist) that has the
  decoders preloaded, so a worker starts in tens of milliseconds and inherits no server threads or
  locks;
- the child sets ``RLIMIT_AS`` (address space: the worker's starting footprint + ``memory_mb``) and
  disables core dumps before touching the bytes; running out of memory becomes
  :class:`~xai.radiograph.ImageTooLargeError`;
- the parent waits at most ``timeout_s``; then it kills the child: :class:`DecodeTimeoutError`;
- a child that dies without an answer becomes :class:`DecoderCrashedError` (naming the signal or exit
  code) for that file only; the server and other sessions carry on;
- a large decoded image comes back through one shared-memory block (unlinked by the parent), not a
  pickle stream: about half the transfer time for a 3000 x 3000 image;
- at most :data:`MAX_CONCURRENT_WORKERS` decoders run at once (a bounded semaphore), so many uploads at
  once cannot multiply the memory limit without bound.

All errors are :class:`~xai.radiograph.RadiographError` subclasses with the message the in-process
loader would have given. :func:`run_isolated` is the general mechanism (any picklable top-level
function); the tests use it to inject a crash, a hang or an oversized allocation into a real worker.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from xai import radiograph as _rg
from xai.radiograph import (
    DEFAULT_MAX_PIXELS,
    CorruptImageError,
    Radiograph,
    RadiographError,
    Source,
)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MEMORY_MB = 2048
MAX_CONCURRENT_WORKERS = max(2, os.cpu_count() or 2)
# Imported once in the fork server so each worker starts warm (missing optional modules are skipped).
# ``xai._worker_boot`` first: workers never import the parent's ``__main__`` (in a Streamlit server that is
# the page script, which would re-run the whole app for every file; see that module).
PRELOAD = [
    "xai._worker_boot", "numpy", "cv2", "PIL.Image", "PIL.PngImagePlugin", "PIL.JpegImagePlugin", "PIL.TiffImagePlugin",
    "PIL.BmpImagePlugin", "PIL.WebPImagePlugin", "pydicom", "pydicom.pixels", "xai.radiograph", "xai.dicom",
    "openjpeg", "libjpeg", "rle", "jpeg_ls",
]

T = TypeVar("T")

__all__ = [
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_S",
    "DecodeTimeoutError",
    "DecoderCrashedError",
    "load_radiograph_isolated",
    "run_isolated",
]


class DecoderCrashedError(CorruptImageError):
    """The worker process died while decoding (a crash in a C decoder); only this file is refused."""


class DecodeTimeoutError(CorruptImageError):
    """Decoding took longer than the time limit; the worker was killed."""


_context_lock = threading.Lock()
_context: Any = None
_slots = threading.BoundedSemaphore(MAX_CONCURRENT_WORKERS)


def _get_context() -> Any:
    global _context
    with _context_lock:
        if _context is None:
            ctx: multiprocessing.context.BaseContext
            if "forkserver" in multiprocessing.get_all_start_methods():
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(PRELOAD)
            else:
                ctx = multiprocessing.get_context("spawn")
            _context = ctx
        return _context


# -------------------------------------------------------------------------------------------- the child
def _address_space_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _limit_resources(memory_mb: int | None) -> None:
    try:
        import resource
    except ImportError:  # not POSIX: the time limit still applies
        return
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _address_space_bytes() + int(memory_mb) * 2**20
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


SHARED_MEMORY_MIN_BYTES = 1 << 20
_ARRAY_FIELDS = ("pixels", "modality_values")


def _pack(result: Any) -> tuple[Any, ...]:
    """A large Radiograph travels through shared memory (one copy each way) instead of a pickle stream."""
    if not isinstance(result, Radiograph):
        return ("ok", result)
    arrays = [np.ascontiguousarray(getattr(result, f), dtype=np.float32) for f in _ARRAY_FIELDS]
    size = sum(a.nbytes for a in arrays)
    if size < SHARED_MEMORY_MIN_BYTES:
        return ("ok", result)
    from multiprocessing import shared_memory

    block = shared_memory.SharedMemory(create=True, size=size)
    try:
        offset = 0
        for a in arrays:
            np.ndarray(a.shape, np.float32, buffer=block.buf, offset=offset)[...] = a
            offset += a.nbytes
        placeholder = np.zeros((0, 0), np.float32)
        light = dataclasses.replace(result, pixels=placeholder, modality_values=placeholder)
        return ("shm", light, block.name, arrays[0].shape)
    finally:
        block.close()  # the parent unlinks it after copying


def _unpack(message: tuple[Any, ...]) -> Any:
    if message[0] == "ok":
        result = message[1]
        # a Radiograph re-validated here: unpickled arrays come back writeable
        return dataclasses.replace(result) if isinstance(result, Radiograph) else result
    from multiprocessing import shared_memory

    _, light, name, shape = message
    block = shared_memory.SharedMemory(name=name)
    try:
        count = int(np.prod(shape))
        flat = np.ndarray((2 * count,), np.float32, buffer=block.buf)
        pixels, values = flat[:count].reshape(shape).copy(), flat[count:].reshape(shape).copy()
        del flat
    finally:
        block.close()
        block.unlink()
    return dataclasses.replace(light, pixels=pixels, modality_values=values)


def _child(conn: Any, func: Callable[..., Any], args: tuple[Any, ...], memory_mb: int | None) -> None:
    try:
        _limit_resources(memory_mb)
        try:
            message: tuple[Any, ...] = _pack(func(*args))
        except RadiographError as exc:
            message = ("error", type(exc).__name__, str(exc), getattr(exc, "codec", ""))
        except MemoryError:
            message = ("error", "ImageTooLargeError",
                       f"decoding this image needs more than the {memory_mb} MB memory limit", "")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as this file's failure
            message = ("error", "CorruptImageError",
                       f"the image could not be decoded; the file looks damaged ({type(exc).__name__})", "")
        try:
            conn.send(message)
        except MemoryError:
            conn.send(("error", "ImageTooLargeError",
                       f"the decoded image is larger than the {memory_mb} MB memory limit allows", ""))
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------- the parent
def _error_class(name: str) -> type[RadiographError]:
    candidate = {"DecoderCrashedError": DecoderCrashedError, "DecodeTimeoutError": DecodeTimeoutError}.get(name)
    candidate = candidate or getattr(_rg, name, None)
    if isinstance(candidate, type) and issubclass(candidate, RadiographError):
        return candidate
    return RadiographError


def _raise_from_message(message: tuple[Any, ...]) -> None:
    _, name, text, codec = message
    cls = _error_class(str(name))
    if cls is _rg.CodecMissingError:
        raise cls(str(text), codec=str(codec))
    raise cls(str(text))


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "it did not exit"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def run_isolated(func: Callable[..., T], *args: Any, timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_mb: int | None = DEFAULT_MEMORY_MB) -> T:
    """Run ``func(*args)`` in a worker process under the time and memory limits; return its result.

    ``func`` must be a picklable top-level function. A ``RadiographError`` raised in the worker is
    re-raised here with the same class and message; any other failure becomes a ``RadiographError``
    subclass (``DecoderCrashedError``, ``DecodeTimeoutError``, ``ImageTooLargeError``, ``CorruptImageError``).
    """
    if not (isinstance(timeout_s, int | float) and timeout_s > 0):
        raise RadiographError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    with _slots:
        try:
            ctx = _get_context()
            receiver, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_child, args=(sender, func, args, memory_mb), daemon=True,
                                  name="xai-decoder")
            process.start()
        except Exception as exc:  # noqa: BLE001 - e.g. too many processes, no /dev/shm
            raise RadiographError(f"could not start a decoder process ({type(exc).__name__}); try again") from None
        sender.close()
        started = time.monotonic()
        try:
            if not receiver.poll(timeout_s):
                raise DecodeTimeoutError(
                    f"decoding took longer than {timeout_s:g} s and was stopped; the file may be damaged "
                    f"or built to stall the decoder")
            try:
                message = receiver.recv()
            except (EOFError, OSError):
                process.join(max(0.0, min(5.0, timeout_s - (time.monotonic() - started))) or 1.0)
                raise DecoderCrashedError(
                    f"the image decoder crashed on this file ({_describe_exit(process.exitcode)}); the file is "
                    f"probably damaged. Nothing else was affected.") from None
            except MemoryError:
                raise _rg.ImageTooLargeError("the decoded image is too large to receive") from None
        finally:
            receiver.close()
            if process.is_alive():
                process.kill()
            process.join(5.0)
    if message[0] == "error":
        _raise_from_message(message)
    try:
        return _unpack(message)
    except MemoryError:
        raise _rg.ImageTooLargeError("not enough memory to receive the decoded image") from None
    except (OSError, ValueError) as exc:
        raise RadiographError(f"could not receive the decoded image ({type(exc).__name__})") from None


def _load_bytes(data: bytes, max_pixels: int) -> Radiograph:
    from xai.radiograph import load_radiograph

    return load_radiograph(data, max_pixels=max_pixels)


def _worker_pid() -> int:
    return os.getpid()


def warm_up() -> bool:
    """Start the fork server (and its preloaded decoders) now rather than on the first upload.

    A server calls this once at start-up: the first user's file then waits only for a fork, not for the
    fork server to import pydicom and the codecs. Best effort: False when no worker could be started
    (the first upload then reports the problem for that file).
    """
    try:
        return run_isolated(_worker_pid, timeout_s=60) != os.getpid()
    except RadiographError:
        return False


def load_radiograph_isolated(
    source: Source,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int | None = DEFAULT_MEMORY_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Radiograph:
    """:func:`~xai.radiograph.load_radiograph` in a worker process (see the module docstring).

    ``timeout_s``: wall-clock limit for decoding; ``memory_mb``: address space the worker may add to its
    starting footprint. Raises only ``RadiographError`` subclasses.
    """
    try:
        data = _rg._read_source(source)
    except RadiographError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _rg.UnreadableSourceError(f"the file could not be read ({type(exc).__name__})") from None
    result = run_isolated(_load_bytes, data, max_pixels, timeout_s=timeout_s, memory_mb=memory_mb)
    if not isinstance(result, Radiograph):
        raise RadiographError("the decoder returned an unexpected result")
    return result
