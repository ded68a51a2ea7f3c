"""Everything the library changes for the whole process, in one place: :func:`boot` and :func:`freeze_heap`.

A library should not change global state behind its caller's back; the few process-wide settings this
one needs are listed here, each with the reason, and nowhere else.

:func:`boot` (the Streamlit app's ``app.py`` and the ``xai`` command line call it at start-up; the
decoders' fork server runs it through :mod:`xai._worker_boot`):

1. **pydicom's reading validation off** (``pydicom.config.settings.reading_validation_mode = IGNORE``).
   pydicom warns *and logs* an invalid value together with the value itself ("Invalid value for VR UI:
   '<uid>'"), which would put patient identifiers in server logs. Reading never needs the check: the
   values are only displayed, and :mod:`xai.dicom` validates what it uses. The DICOM reader calls
   :func:`boot` before its first read, so a program that never called it is still safe. When pydicom is not
   imported yet, :func:`boot` does not import it (0.3 s, on the path of the app's first page, which needs no
   DICOM): an import hook (:class:`AfterImport`) sets the mode right after ``pydicom.config`` first runs,
   whoever imports it.
2. **Decoder workers skip the parent's ``__main__``** (``multiprocessing.spawn.prepare`` wrapped by
   :func:`prepare_without_main`). ``multiprocessing`` re-imports the parent's main script in every worker
   it starts so that functions defined there unpickle. A Streamlit server replaces
   ``sys.modules["__main__"]`` with the page script it is running, and page scripts have no
   ``if __name__ == "__main__"`` guard: every upload's decoder re-ran the whole app in bare mode (about
   0.4 s, a model load and a nested fork server). The decoders only run top-level functions of
   importable modules (:func:`xai.sandboxed_decoder._load_bytes`, test seams), so the main script is never
   needed there; ``sys.path``, the working directory and the authkey are kept. The wrap matters only in
   the fork server (``xai.sandboxed_decoder.PRELOAD`` imports :mod:`xai._worker_boot` there first), whose forked
   workers inherit it; in any other process it is inert: ``prepare`` only runs inside a freshly started
   child, and a child started by ``spawn`` is a new interpreter that has not run :func:`boot`.

3. **Idle OpenMP threads sleep** (``OMP_WAIT_POLICY=PASSIVE``, set when the environment does not set it and
   torch is not imported yet: the OpenMP runtime reads it once, when torch loads it). By default an idle
   intra-op thread spins, waiting for the next parallel region. On this 2-core machine, while other jobs
   ran (four nice-19 training processes and a test run), one four-map explanation of a 1024 px film took
   4.0 s (three runs, 3.98-4.10 s) with the default policy, 0.17 s passive and 0.13 s with one thread. The
   cost when nothing else runs: 148 ms passive against 109 ms default (``benchmarks/bench_threads.py``,
   which also shows that plain busy loops at nice 19 do not trigger the collapse). A server shares its
   cores with browsers, sessions and background work, so the bounded cost is taken over the unbounded
   one. A process that imported torch before :func:`boot`, or an environment that sets the variable, keeps
   its own setting.

4. **numpy asks for no transparent huge pages** (``NUMPY_MADVISE_HUGEPAGE=0`` for processes not yet running
   numpy, e.g. the decoders' fork server; numpy's own switch where it is already imported; an environment that
   sets the variable keeps its own setting). numpy marks every array of 4 MB or more ``MADV_HUGEPAGE``; with the
   kernel's ``defrag`` set to ``madvise`` (this machine's, and the common default), the first touch of such an
   array may then stall in direct compaction, looking for free 2 MB blocks. A fresh 43 MB array took 6-9 ms
   when the kernel had them and 90-570 ms when it had not (8 fresh processes each, ``benchmarks/bench_io.py``
   prints both), 25-28 ms every time with 4 kB pages. A decoder worker is a fresh process that makes a film's
   arrays anew each time: on the 2.7 MP DICOM its decode took 0.02-0.37 s in the app with huge pages, and
   0.05-0.09 s without. The app takes the bounded cost over the unbounded one, as for the thread policy.

:func:`boot` is idempotent and thread-safe (a lock and a done flag): calling it again costs a flag check.

:func:`freeze_heap` (the app calls it once, right after the shared model is loaded): ``gc.collect(1)``
then ``gc.freeze()``. Everything allocated by then (modules, the model, torch and plotly internals)
lives as long as the server; frozen objects leave the cyclic collector's full passes, which otherwise
re-scan that heap and stall every session for 100-200 ms now and then (measured with ``gc`` callbacks).
It is not part of :func:`boot` because it must run *after* the long-lived objects exist. Only the young
generations are collected first (0.1-1.3 ms): right after the app's model is read they hold no unreachable
object; a full collection finds ~40 small ones (tuples, closures, dicts from imports: no array, no tensor),
which stay frozen, for 0.1 s more on the cold start.
"""

from __future__ import annotations

import gc
import importlib.abc
import os
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from multiprocessing import spawn
from types import ModuleType
from typing import Any

__all__ = ["MAIN_MODULE_KEYS", "NUMPY_MADVISE_HUGEPAGE", "OMP_WAIT_POLICY", "AfterImport", "boot", "booted", "freeze_heap",
           "prepare_without_main"]

#: The ``spawn.prepare`` entries that make a worker import the parent's ``__main__``.
MAIN_MODULE_KEYS = ("init_main_from_path", "init_main_from_name")

#: The OpenMP wait policy :func:`boot` sets for torch's intra-op threads (see the module docstring).
OMP_WAIT_POLICY = "PASSIVE"

_lock = threading.Lock()
_done = False
_prepare_with_main = spawn.prepare


def prepare_without_main(data: dict[str, Any]) -> None:
    """``multiprocessing.spawn.prepare`` minus the re-import of the parent's ``__main__``."""
    _prepare_with_main({key: value for key, value in data.items() if key not in MAIN_MODULE_KEYS})


class _ThenLoader(importlib.abc.Loader):
    """``loader`` that calls ``then(module)`` once the module's code has run (the module keeps ``loader``)."""

    def __init__(self, loader: importlib.abc.Loader, then: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._then = then

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._then(module)


class AfterImport(importlib.abc.MetaPathFinder):
    """An import hook: ``action(module)`` runs once, right after module ``name`` has first run, whoever imports it.

    It finds the module with the other finders and only wraps the loader. It stays on ``sys.meta_path``, inert
    once it has fired: removing a finder while another thread's import walks that list could make the other
    import skip a finder. A failed import of ``name`` fires nothing; the next attempt is hooked again.
    """

    def __init__(self, name: str, action: Callable[[ModuleType], None]) -> None:
        self.name = name
        self._action = action
        self.fired = False

    def _fire(self, module: ModuleType) -> None:
        self.fired = True
        self._action(module)

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != self.name or self.fired:
            return None
        for finder in list(sys.meta_path):
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenLoader(spec.loader, self._fire)
                return spec
        return None


def _ignore_reading_validation(config: ModuleType) -> None:
    config.settings.reading_validation_mode = config.IGNORE


def _quiet_pydicom() -> None:
    # The hook first, then the check: a pydicom imported in between is caught by one or the other.
    sys.meta_path.insert(0, AfterImport("pydicom.config", _ignore_reading_validation))
    config = sys.modules.get("pydicom.config")
    if config is not None:
        _ignore_reading_validation(config)


def _workers_skip_main() -> None:
    if spawn.prepare is not prepare_without_main:
        spawn.prepare = prepare_without_main  # type: ignore[assignment]  # typeshed: Mapping; CPython passes a dict


def _idle_threads_sleep() -> None:
    if "torch" not in sys.modules:  # the OpenMP runtime reads the variable once, when torch loads it
        os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)


#: numpy's switch for ``madvise(MADV_HUGEPAGE)`` on large arrays, as :func:`boot` sets it (module docstring).
NUMPY_MADVISE_HUGEPAGE = "0"


def _no_huge_pages() -> None:
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", NUMPY_MADVISE_HUGEPAGE)  # read by numpy when it is imported
    numpy_core = sys.modules.get("numpy._core.multiarray")
    if numpy_core is not None:  # imported already (e.g. by Streamlit): numpy's own switch, as the variable says
        set_hugepage = getattr(numpy_core, "_set_madvise_hugepage", None)
        if set_hugepage is not None:
            set_hugepage(os.environ["NUMPY_MADVISE_HUGEPAGE"] not in ("0", ""))


def boot() -> None:
    """Apply the library's process-wide settings once (see the module docstring for what and why)."""
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        _idle_threads_sleep()
        _no_huge_pages()
        _quiet_pydicom()
        _workers_skip_main()
        _done = True


def booted() -> bool:
    """Whether :func:`boot` has run in this process."""
    return _done


def freeze_heap() -> None:
    """Move every object alive now out of the cyclic garbage collector's reach (``gc.freeze``).

    Call once in a long-lived server after loading what lives as long as it (see the module docstring)."""
    gc.collect(1)  # the young generations: where start-up's garbage is (a full pass costs 0.11 s more)
    gc.freeze()
