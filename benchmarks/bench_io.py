"""Load + prepare time and peak memory for large radiographs (target: <= 0.5 s each).

Cases, built here from the real radiographs in ``../shared/data`` (nothing downloaded):
- a 2000 x 2000 16-bit uncompressed DICOM (MONOCHROME1, window, Presentation LUT INVERSE);
- a 3000 x 3000 8-bit JPEG (quality 92);
- for reference, the real 2128 x 2000 JPEG 2000 lossless Canon DICOM (decoder-bound, no target).

Each case runs in a fresh process: median over ``--repeat`` runs of ``load_radiograph`` and of
``prepare`` (224 px letterbox, and with the body crop), and the peak resident memory the first
load + prepare added to the process (``ru_maxrss`` after minus RSS before). The last column is
``load_radiograph_isolated`` (worker process) + prepare.

    .venv/bin/python benchmarks/bench_io.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import resource
import statistics
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
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
    print(f"load + prepare, median of {args.repeat}; prepare = 224 px letterbox; target <= {TARGET_S} s")
    print("| case | file MB | load ms | prepare ms | prepare with body crop ms | load+prepare ms | peak RSS +MB "
          "| isolated load+prepare ms | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size, r in rows:
        total = r["load"] + r["prepare"]
        verdict = "n/a" if "real" in name else ("met" if total <= TARGET_S else "MISSED")
        print(f"| {name} | {size:.1f} | {r['load'] * 1e3:.0f} | {r['prepare'] * 1e3:.1f} | {r['prepare_body'] * 1e3:.1f} "
              f"| {total * 1e3:.0f} | {r['peak_mb']:.0f} | {r['isolated'] * 1e3:.0f} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
