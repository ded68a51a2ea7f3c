"""Films from the PACS against the same films from an upload or a disk (issue targets: +<= 0.5 s, <= 1.5x).

A throw-away Orthanc with its DICOMweb plugin (``tests/pacs_server.py``) runs on this machine, so the figures
measure the DICOMweb path (QIDO-RS listing, WADO-RS retrieve, the file bytes rebuilt) rather than a network.

1. Opening one film: ``PacsClient.retrieve`` (WADO-RS) + the upload loader (``xai.sandboxed_decoder.load_radiograph_isolated``)
   against the upload loader alone on the same bytes, median of ``--repeat`` runs. Films: a 2.7 MP 16-bit
   uncompressed DICOM built from the real Canon DX film (resampled by area), and the real 3.6 MP Philips
   JPEG 2000 film. Target: the PACS adds <= 0.5 s.
2. The command line on a ``--films``-film study (real ChestCOVNet radiographs wrapped as CR DICOM files, one
   study): ``xai explain --pacs URL --study UID`` against ``xai explain FOLDER`` on the same files, each run
   in a fresh process, median of ``--repeat`` runs. Target: <= 1.5x.

    .venv/bin/python benchmarks/bench_pacs.py [--repeat 3] [--films 20] [--methods gradcam]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
OPEN_TARGET_S = 0.5
CLI_TARGET_RATIO = 1.5


def _dicom(pixels: np.ndarray, *, study_uid: str, series_uid: str, number: int, bits: int) -> bytes:
    """A CR DICOM file of ``pixels`` (uint8 or uint16, MONOCHROME2) in the given study."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID, ds.Modality, ds.InstanceNumber = "Bench^Film", "BENCH", "CR", number
    ds.StudyDate, ds.SeriesNumber = "20260101", 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16 if bits == 16 else np.uint8)).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def two_point_seven_mp_film() -> bytes:
    import cv2
    from pydicom.uid import generate_uid

    from xai.radiograph import load_radiograph

    values = load_radiograph(DATA / "dicom" / "canon_dx_pa_mono1_inverse_j2k_lossless.dcm").pixels
    small = cv2.resize(values, (1600, 1702), interpolation=cv2.INTER_AREA)  # 2.72 MP
    return _dicom(np.round(small * 4095).astype(np.uint16), study_uid=generate_uid(), series_uid=generate_uid(),
                  number=1, bits=16)


def bench_open(server, repeat: int) -> list[tuple[str, float, float]]:
    import pydicom

    from xai.pacs import PacsClient, PacsConfig
    from xai.sandboxed_decoder import load_radiograph_isolated

    films = {"2.7 MP 16-bit uncompressed (from the Canon film)": two_point_seven_mp_film(),
             "3.6 MP Philips JPEG 2000 (real file)": (DATA / "dicom" / "philips_cr_pa_mono1_j2k_lossy.dcm").read_bytes()}
    rows = []
    with PacsClient(PacsConfig(server.dicomweb_url, timeout_s=30)) as client:
        for name, data in films.items():
            server.upload(data)
            study_uid = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID
            load_radiograph_isolated(data)  # warm the worker pool
            upload, from_pacs = [], []
            for _ in range(repeat):
                t = time.perf_counter()
                load_radiograph_isolated(data)
                upload.append(time.perf_counter() - t)
                t = time.perf_counter()
                (instance,) = client.instances(study_uid).items
                load_radiograph_isolated(client.retrieve(instance))
                from_pacs.append(time.perf_counter() - t)
            rows.append((name, statistics.median(upload), statistics.median(from_pacs)))
    return rows


def build_study(folder: Path, films: int) -> tuple[list[bytes], str]:
    import cv2
    from pydicom.uid import generate_uid

    images = sorted((DATA / "chestcovnet" / "images").glob("*.jpg"))[:films]
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for n, path in enumerate(images, start=1):
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        data = _dicom(gray, study_uid=study_uid, series_uid=series_uid, number=n, bits=8)
        (folder / f"film{n:03d}.dcm").write_bytes(data)
        files.append(data)
    return files, study_uid


def _cli(argv: list[str]) -> float:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "xai", *argv], capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"xai {' '.join(argv[:2])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def bench_cli(server, folder: Path, films: int, repeat: int, methods: str) -> tuple[float, float]:
    disk = folder / "films"
    disk.mkdir()
    files, study_uid = build_study(disk, films)
    for data in files:
        server.upload(data)
    common = ["--methods", methods, "--no-progress"]
    from_disk, from_pacs = [], []
    for i in range(repeat):
        from_disk.append(_cli(["explain", str(disk), "--out", str(folder / f"disk{i}"), *common]))
        from_pacs.append(_cli(["explain", "--pacs", server.dicomweb_url, "--study", study_uid,
                               "--out", str(folder / f"pacs{i}"), *common]))
    return statistics.median(from_disk), statistics.median(from_pacs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--films", type=int, default=20)
    parser.add_argument("--methods", default="gradcam")
    args = parser.parse_args()
    from tests.pacs_server import OrthancServer

    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as tmp, OrthancServer(Path(tmp) / "orthanc") as server:
        print("Opening one film: upload loader vs PACS (WADO-RS) + the same loader; median of", args.repeat)
        print(f"{'film':52s} {'upload s':>9s} {'PACS s':>9s} {'added s':>9s}  target <= {OPEN_TARGET_S} s")
        for name, upload, from_pacs in bench_open(server, args.repeat):
            added = from_pacs - upload
            print(f"{name:52s} {upload:9.3f} {from_pacs:9.3f} {added:9.3f}  {'ok' if added <= OPEN_TARGET_S else 'MISSED'}")
        disk, from_pacs = bench_cli(server, Path(tmp), args.films, args.repeat, args.methods)
        ratio = from_pacs / disk
        print(f"\nCLI explain, {args.films}-film study ({args.methods}), fresh process each, median of {args.repeat}")
        print(f"from disk {disk:.2f} s, from the PACS {from_pacs:.2f} s, ratio {ratio:.2f}x  target <= "
              f"{CLI_TARGET_RATIO}x: {'ok' if ratio <= CLI_TARGET_RATIO else 'MISSED'}")


if __name__ == "__main__":
    main()
