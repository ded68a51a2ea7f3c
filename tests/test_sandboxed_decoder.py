"""xai.sandboxed_decoder: decoding in a worker process; a crash, hang or memory blow-up refuses that file only."""

from __future__ import annotations

import ctypes
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from xai.radiograph import (
    CodecMissingError,
    CorruptImageError,
    ImageTooLargeError,
    NotAnImageError,
    RadiographError,
    load_radiograph,
)
from xai.sandboxed_decoder import (
    DecoderCrashedError,
    DecodeTimeoutError,
    load_radiograph_isolated,
    run_isolated,
)

pytestmark = pytest.mark.timeout(180)


# Functions injected into a real worker through run_isolated (the test seam): top level, so they pickle.
def _segfault() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a crashing C decoder would


def _hard_exit() -> None:
    os._exit(3)


def _stall(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)


def _allocate(megabytes: int) -> int:
    return int(np.ones(megabytes * 2**20, dtype=np.uint8).sum())


def _raise_value_error() -> None:
    raise ValueError("boom")


def _pid() -> int:
    return os.getpid()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_same_result_as_in_process(dicom_dir: Path, chestcovnet_dir: Path):
    for path in (dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm", next((chestcovnet_dir / "images").glob("*.jpg"))):
        isolated, direct = load_radiograph_isolated(path), load_radiograph(path)
        np.testing.assert_array_equal(isolated.pixels, direct.pixels)
        np.testing.assert_array_equal(isolated.modality_values, direct.modality_values)
        assert (isolated.window, isolated.format, isolated.metadata, isolated.patient, isolated.notices) == (
            direct.window, direct.format, direct.metadata, direct.patient, direct.notices)
        assert not isolated.pixels.flags.writeable
    small = load_radiograph_isolated(_png(np.tile(np.arange(64, dtype=np.uint8), (64, 1))))  # pickled, not shm
    assert not small.pixels.flags.writeable and small.shape == (64, 64)
    assert run_isolated(_pid) != os.getpid()  # it really ran elsewhere


def test_errors_keep_their_class_and_message(dicom_dir: Path):
    with pytest.raises(NotAnImageError, match="not a recognised image"):
        load_radiograph_isolated(b"plain text, not an image" * 8)
    with pytest.raises(ImageTooLargeError, match="megapixel"):
        load_radiograph_isolated(_png(np.tile(np.arange(64, dtype=np.uint8), (64, 1))), max_pixels=100)
    ds = pydicom.dcmread(dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(CodecMissingError, match="MPEG2") as info:
        load_radiograph_isolated(buf.getvalue())
    assert "MPEG2" in info.value.codec
    with pytest.raises(RadiographError, match="not found"):
        load_radiograph_isolated(dicom_dir / "missing.dcm")


def test_a_crashing_decoder_refuses_that_file_only():
    with pytest.raises(DecoderCrashedError, match="SIGSEGV"):
        run_isolated(_segfault)
    with pytest.raises(DecoderCrashedError, match="exit code 3"):
        run_isolated(_hard_exit)
    assert issubclass(DecoderCrashedError, CorruptImageError)
    # the server (this process) carries on, and the next file decodes normally
    r = load_radiograph_isolated(_png(np.tile(np.arange(64, dtype=np.uint8), (64, 1))))
    assert r.shape == (64, 64)


def test_a_hanging_decoder_is_killed_after_the_timeout(tmp_path: Path):
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    # 5 s, not 1 s: the timeout starts at process start, and on a loaded CI machine the worker may need
    # more than a second to import this module before it can write its pid and stall.
    with pytest.raises(DecodeTimeoutError, match="longer than 5 s"):
        run_isolated(_stall, str(pid_file), timeout_s=5)
    assert time.monotonic() - started < 60  # killed long before the 600 s stall ends
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker is gone, not left running


def test_memory_limit_turns_into_image_too_large():
    with pytest.raises(ImageTooLargeError, match="256 MB memory limit"):
        run_isolated(_allocate, 1024, memory_mb=256)
    assert run_isolated(_allocate, 16, memory_mb=256) == 16 * 2**20  # within the limit it works


def test_other_exceptions_become_radiograph_errors():
    with pytest.raises(CorruptImageError, match="ValueError"):
        run_isolated(_raise_value_error)
    with pytest.raises(RadiographError, match="timeout_s"):
        run_isolated(_pid, timeout_s=0)


def test_concurrent_uploads_get_their_own_images():
    images = {side: _png(np.tile(np.arange(side, dtype=np.uint8), (side + 7, 1))) for side in (32, 48, 64, 80)}
    results: dict[int, tuple[int, int]] = {}
    errors: list[BaseException] = []

    def work(side: int) -> None:
        try:
            results[side] = load_radiograph_isolated(images[side]).shape
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(side,)) for side in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert results == {side: (side + 7, side) for side in images}


def test_warm_up_starts_a_separate_worker_process():
    from xai.sandboxed_decoder import warm_up

    assert warm_up() is True  # the worker reported a pid other than ours


@pytest.mark.parametrize("worker_boot", [True, False], ids=["booted", "control-without-worker-boot"])
def test_workers_do_not_rerun_the_parents_main_script(tmp_path, worker_boot):
    """A Streamlit server replaces ``__main__`` with the page script, which has no main guard: the decoder
    workers must not execute it again (it would re-run the whole app, in bare mode, for every upload).
    The control leaves ``xai._worker_boot`` (the fork server's :func:`xai.startup.boot`) out of the
    preload and sees the page script run in the workers: the check can fail."""
    page, marker = tmp_path / "page.py", tmp_path / "page_ran.txt"
    page.write_text(f"open({str(marker)!r}, 'a').write('ran\\n')\n")
    repo = Path(__file__).resolve().parents[1]
    driver = (
        "import os, sys, types\n"
        f"sys.path.insert(0, {str(repo)!r})\n"
        "import xai.sandboxed_decoder\n"
        f"if not {worker_boot}: xai.sandboxed_decoder.PRELOAD.remove('xai._worker_boot')\n"
        "from xai.sandboxed_decoder import load_radiograph_isolated, run_isolated, _worker_pid\n"
        "page = types.ModuleType('__main__')\n"
        f"page.__file__ = {str(page)!r}\n"
        "sys.modules['__main__'] = page  # what Streamlit's script runner does\n"
        "assert run_isolated(_worker_pid) != os.getpid()\n"
        f"print(load_radiograph_isolated({str(repo / 'samples' / 'cr_pa_siim.dcm')!r}).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1024, 1024)" in done.stdout
    if worker_boot:
        assert not marker.exists(), "a worker executed the parent's __main__ script"
    else:
        assert marker.read_text().count("ran") == 2, "the control's two workers both ran the page script"
