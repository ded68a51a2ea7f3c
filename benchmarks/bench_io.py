"""Load + prepare time and peak memory for large radiographs (target: <= 0.5 s each).

Cases, built here from the real radiographs in ``../shared/data`` (nothing downloaded):
- a 2000 x 2000 16-bit uncompressed DICOM (MONOCHROME1, window, Presentation LUT INVERSE);
- a 3000 x 3000 8-bit JPEG (quality 92);
- for reference, the real 2128 x 2000 JPEG 2000 lossless Canon DICOM (decoder-bound, no target).

Each case runs in a fresh process: median over ``--repeat`` runs of ``load_radiograph`` and of
``prepare`` (224 px letterbox, and with the body crop), and the peak resident memory the first
load + prepare added to the process (``ru_maxrss`` after minus RSS before). The last column is
``load_radiograph_isolated`` (worker process) + prepare.

Then numpy's transparent huge pages, on and off (``NUMPY_MADVISE_HUGEPAGE``; ``xai.boot()`` turns them off, see
``xai/startup.py``), alternating, each round a fresh process as an upload's decoder is: the first touch of a
fresh 43 MB array, and the first isolated decode of the 2000 x 2000 DICOM in a server-like process (the decoders'
fork server started, then one film). Medians and ranges: huge pages make the typical case faster and the worst
case far slower (direct compaction when the kernel has no free 2 MB blocks), so both are printed.

    .venv/bin/python benchmarks/bench_io.py [--repeat 5] [--hugepage-rounds 8]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TARGET_S = 0.5


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def build_cases(folder: Path) -> dict[str, Path]:
    import cv2
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from xai.radiograph import load_radiograph

    rng = np.random.default_rng(0)
    canon = DATA / "dicom" / "canon_dx_pa_mono1_inverse_j2k_lossless.dcm"
    values = load_radiograph(canon).modality_values
    big = cv2.resize(values, (2000, 2000), interpolation=cv2.INTER_LINEAR)
    big = np.clip(big + rng.normal(0, 8, big.shape), 0, 4095).astype(np.uint16)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PresentationLUTShape = "INVERSE"
    ds.Rows, ds.Columns = big.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelSpacing = [0.16, 0.16]
    ds.PixelData = big.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dicom_path = folder / "dx_2000x2000_16bit.dcm"
    buf = io.BytesIO()
    ds.preamble = b"\x00" * 128
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    dicom_path.write_bytes(buf.getvalue())

    jpg = sorted((DATA / "chestcovnet" / "images").glob("*.jpg"))[0]
    gray = load_radiograph(jpg).pixels
    large = cv2.resize(gray, (3000, 3000), interpolation=cv2.INTER_CUBIC) * 255 + rng.normal(0, 2, (3000, 3000))
    jpeg_path = folder / "cxr_3000x3000.jpg"
    ok, encoded = cv2.imencode(".jpg", np.clip(large, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    jpeg_path.write_bytes(encoded.tobytes())
    return {"DICOM 2000x2000 16-bit": dicom_path, "JPEG 3000x3000": jpeg_path, "DICOM J2K 2128x2000 (real)": canon}


def measure(path: str, repeat: int, queue: multiprocessing.Queue) -> None:
    """Runs in a fresh process so peak memory belongs to this case alone."""
    from xai.preprocessing import Preprocessing, prepare
    from xai.radiograph import load_radiograph
    from xai.sandboxed_decoder import load_radiograph_isolated

    letterbox, body = Preprocessing(), Preprocessing(crop="body")
    prepare(np.zeros((32, 32), np.float32), letterbox)  # torch and OpenCV warm
    rss_before = _rss_mb()
    loads, preps, crops, isolated = [], [], [], []
    for i in range(repeat):
        t0 = time.perf_counter()
        r = load_radiograph(path)
        t1 = time.perf_counter()
        prepare(r, letterbox)
        t2 = time.perf_counter()
        prepare(r, body)
        t3 = time.perf_counter()
        loads.append(t1 - t0)
        preps.append(t2 - t1)
        crops.append(t3 - t2)
        if i == 0:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
        del r
    for _ in range(repeat):
        t0 = time.perf_counter()
        prepare(load_radiograph_isolated(path), letterbox)
        isolated.append(time.perf_counter() - t0)
    queue.put({"load": statistics.median(loads), "prepare": statistics.median(preps),
               "prepare_body": statistics.median(crops), "peak_mb": peak,
               "isolated": statistics.median(isolated)})


#: One fresh process of the huge-page comparison: a fresh 43 MB array, then the first isolated decode of a film.
HUGEPAGE_PROBE = """
import sys, time
import numpy as np
t = time.perf_counter(); np.ones(2_700_000 * 4, np.float32); touch = time.perf_counter() - t
import xai
xai.boot()  # keeps the variable this process was given (an operator's choice)
from xai.sandboxed_decoder import load_radiograph_isolated, warm_up
warm_up()  # as the app does at start-up
t = time.perf_counter(); load_radiograph_isolated(sys.argv[1]); decode = time.perf_counter() - t
print(touch, decode)
"""


def huge_pages(film: Path, rounds: int) -> dict[str, dict[str, list[float]]]:
    """``{"on" | "off": {"touch": [s], "decode": [s]}}``, alternating fresh processes (see the docstring)."""
    out: dict[str, dict[str, list[float]]] = {"on": {"touch": [], "decode": []}, "off": {"touch": [], "decode": []}}
    for i in range(2 * rounds):
        # on, off, off, on, on, off, ...: each setting goes first as often as second
        setting = ("on", "off")[i % 2] if (i // 2) % 2 == 0 else ("off", "on")[i % 2]
        env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": "1" if setting == "on" else "0"}
        done = subprocess.run([sys.executable, "-c", HUGEPAGE_PROBE, str(film)], env=env, cwd=REPO,
                              capture_output=True, text=True, check=True, timeout=300)
        touch, decode = map(float, done.stdout.split()[-2:])
        out[setting]["touch"].append(touch)
        out[setting]["decode"].append(decode)
        time.sleep(0.5)  # as between uploads: the kernel's free memory moves on
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--hugepage-rounds", type=int, default=8, help="fresh processes per setting (0: skip)")
    args = parser.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = build_cases(Path(tmp))
        for name, path in cases.items():
            queue = ctx.Queue()
            proc = ctx.Process(target=measure, args=(str(path), args.repeat, queue))
            proc.start()
            result = queue.get(timeout=600)
            proc.join()
            rows.append((name, path.stat().st_size / 2**20, result))
        pages = huge_pages(next(iter(cases.values())), args.hugepage_rounds) if args.hugepage_rounds else None
    print(f"load + prepare, median of {args.repeat}; prepare = 224 px letterbox; target <= {TARGET_S} s")
    print("| case | file MB | load ms | prepare ms | prepare with body crop ms | load+prepare ms | peak RSS +MB "
          "| isolated load+prepare ms | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size, r in rows:
        total = r["load"] + r["prepare"]
        verdict = "n/a" if "real" in name else ("met" if total <= TARGET_S else "MISSED")
        print(f"| {name} | {size:.1f} | {r['load'] * 1e3:.0f} | {r['prepare'] * 1e3:.1f} | {r['prepare_body'] * 1e3:.1f} "
              f"| {total * 1e3:.0f} | {r['peak_mb']:.0f} | {r['isolated'] * 1e3:.0f} | {verdict} |")
    if pages:
        print(f"\nnumpy's huge pages, {args.hugepage_rounds} fresh processes each, alternating: median (range), ms")
        print("| huge pages | fresh 43 MB array | first isolated decode, 2000 x 2000 DICOM |")
        print("|---|---|---|")
        for setting, times in pages.items():
            cells = [f"{statistics.median(v) * 1e3:.0f} ({min(v) * 1e3:.0f}-{max(v) * 1e3:.0f})"
                     for v in (times["touch"], times["decode"])]
            print(f"| {setting}{' (xai.boot)' if setting == 'off' else ''} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
