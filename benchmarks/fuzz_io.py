"""Fuzz the radiograph loader with mutated small real PNG, JPEG, TIFF, BMP, WEBP and DICOM seeds.

Every input must end in a ``RadiographError`` or a valid ``Radiograph`` (float32 pixels in [0, 1], finite
modality values of the same shape): no other exception, no hang over 5 s, bounded memory (the process
runs under an address-space limit). The seeds are tiny (about 48 px) versions of the real files in
``../shared/data`` so that every byte of header, tables and entropy-coded data gets hit often.

    .venv/bin/python benchmarks/fuzz_io.py --n 10000            # the full run (about a minute)
    .venv/bin/python benchmarks/fuzz_io.py --n 500 --isolated   # through xai.sandboxed_decoder worker processes

An input that breaks the contract is written to ``--out`` (default ``$TMPDIR/chestcovnet_fuzz``) as ``bug-<n>.bin``;
keep it in ``tests/fuzz_regressions/`` so ``tests/test_fuzz.py`` replays it forever.
``make_seeds`` and ``mutate`` are reused by ``tests/test_corruption.py`` and ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import random
import resource
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
HANG_S = 5.0

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING_INTS = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)


# ------------------------------------------------------------------------------------------------ seeds
def _small(gray: np.ndarray, side: int = 48) -> np.ndarray:
    import cv2

    h, w = gray.shape
    s = side / max(h, w)
    return cv2.resize(gray, (max(16, round(w * s)), max(16, round(h * s))), interpolation=cv2.INTER_AREA)


def _dicom(arr: np.ndarray, *, photometric: str, bits_stored: int, syntax: str | None = None,
           encapsulated: bytes | None = None, preamble: bool = True, **attrs: object) -> bytes:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    ds.Modality = "DX"
    ds.PatientName = "Fuzz^Seed"
    ds.PatientID = "FUZZ-1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = 8 * arr.dtype.itemsize
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if encapsulated is not None:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([encapsulated])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
        if syntax is not None:
            ds.compress(syntax)
    ds.preamble = b"\x00" * 128 if preamble else None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    return buf.getvalue()


def make_seeds(data_root: Path = DEFAULT_DATA) -> dict[str, bytes]:
    """Small seeds made by downscaling the real radiographs: name -> file bytes."""
    import cv2
    from PIL import Image
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    from xai.radiograph import load_radiograph

    jpg = sorted((data_root / "chestcovnet" / "images").glob("*.jpg"))[0]
    gray8 = np.clip(_small(load_radiograph(jpg).pixels) * 255 + 0.5, 0, 255).astype(np.uint8)
    canon = load_radiograph(data_root / "dicom" / "canon_dx_pa_mono1_inverse_j2k_lossless.dcm")
    raw12 = np.clip(_small(canon.modality_values), 0, 4095).astype(np.uint16)
    siim = load_radiograph(data_root / "dicom" / "siim_cr_pa_mono2_jpeg_baseline.dcm")
    siim8 = np.clip(_small(siim.pixels) * 255 + 0.5, 0, 255).astype(np.uint8)

    def pil(arr: np.ndarray, fmt: str, mode: str | None = None, **kwargs: object) -> bytes:
        image = Image.fromarray(arr)
        if mode is not None:
            image = image.convert(mode)
        buf = io.BytesIO()
        image.save(buf, fmt, **kwargs)
        return buf.getvalue()

    rgb = np.dstack([gray8, gray8 // 2, 255 - gray8])
    jpeg_siim = pil(siim8, "JPEG", quality=90)
    window = {"WindowCenter": 2048, "WindowWidth": 4096, "RescaleSlope": 1, "RescaleIntercept": 0,
              "PresentationLUTShape": "INVERSE", "PixelSpacing": [0.16, 0.16]}
    return {
        "png8.png": pil(gray8, "PNG"),
        "png16.png": cv2.imencode(".png", raw12 * 16)[1].tobytes(),
        "png_palette.png": pil(gray8, "PNG", mode="P"),
        "png_rgba.png": pil(np.dstack([rgb, np.full_like(gray8, 200)]), "PNG"),
        "jpeg_gray.jpg": pil(gray8, "JPEG", quality=90),
        "jpeg_rgb_progressive.jpg": pil(rgb, "JPEG", quality=85, progressive=True),
        "jpeg_cmyk.jpg": pil(rgb, "JPEG", mode="CMYK", quality=90),
        "tiff16.tif": pil(raw12, "TIFF"),
        "bmp.bmp": pil(gray8, "BMP"),
        "webp.webp": pil(gray8, "WEBP", lossless=True),
        "dicom_raw_mono1.dcm": _dicom(raw12, photometric="MONOCHROME1", bits_stored=12, **window),
        "dicom_rle.dcm": _dicom(raw12, photometric="MONOCHROME2", bits_stored=12, syntax=RLELossless),
        "dicom_jpegls.dcm": _dicom(raw12, photometric="MONOCHROME2", bits_stored=12, syntax=JPEGLSLossless),
        "dicom_j2k.dcm": _dicom(raw12, photometric="MONOCHROME1", bits_stored=12, syntax=JPEG2000Lossless, **window),
        "dicom_jpeg_baseline.dcm": _dicom(siim8, photometric="MONOCHROME2", bits_stored=8, encapsulated=jpeg_siim),
    }


# ---------------------------------------------------------------------------------------------- mutate
def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three stacked byte-level mutations; half of the positions fall in the first 512 bytes."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not buf:
            break

        def pos() -> int:
            limit = min(len(buf), 512) if rng.random() < 0.5 else len(buf)
            return rng.randrange(limit)

        op = rng.randrange(7)
        if op == 0:  # truncate
            del buf[rng.randrange(len(buf)):]
        elif op == 1:  # flip bits
            for _ in range(rng.randint(1, 8)):
                buf[pos()] ^= 1 << rng.randrange(8)
        elif op == 2:  # interesting bytes
            for _ in range(rng.randint(1, 4)):
                buf[pos()] = rng.choice(INTERESTING_BYTES)
        elif op == 3:  # interesting 16/32-bit integers, either endianness (sizes, lengths, counts)
            size = rng.choice((2, 4))
            p = pos()
            value = rng.choice(INTERESTING_INTS) & ((1 << (8 * size)) - 1)
            buf[p:p + size] = value.to_bytes(size, rng.choice(("little", "big")))
        elif op == 4:  # delete a chunk
            p = pos()
            del buf[p:p + rng.randint(1, 64)]
        elif op == 5:  # duplicate a chunk
            p = pos()
            chunk = buf[p:p + rng.randint(1, 64)]
            q = pos()
            buf[q:q] = chunk
        else:  # random bytes over a range
            p = pos()
            n = rng.randint(1, 32)
            buf[p:p + n] = bytes(rng.randrange(256) for _ in range(n))
    if buf.startswith(PNG_SIGNATURE) and rng.random() < 0.5:
        fix_png_crcs(buf)  # get past libpng's CRC check into the chunk parsers and the inflater
    return bytes(buf)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fix_png_crcs(buf: bytearray) -> None:
    """Recompute every PNG chunk CRC in place (as far as the chunk lengths stay inside the buffer)."""
    p = len(PNG_SIGNATURE)
    while p + 12 <= len(buf):
        length = int.from_bytes(buf[p:p + 4], "big")
        end = p + 8 + length
        if end + 4 > len(buf):
            break
        buf[end:end + 4] = zlib.crc32(bytes(buf[p + 4:end])).to_bytes(4, "big")
        p = end + 4


# ----------------------------------------------------------------------------------------------- check
def check_outcome(load: Callable[[bytes], object], data: bytes) -> str:
    """Run one input; return the outcome name ("ok" or the error class). Raises AssertionError on a bug."""
    from xai.radiograph import Radiograph, RadiographError

    try:
        result = load(data)
    except RadiographError as exc:
        assert str(exc), "a RadiographError without a message"
        return type(exc).__name__
    assert isinstance(result, Radiograph), f"returned {type(result).__name__}"
    p, v = result.pixels, result.modality_values
    assert p.dtype == np.float32 and p.ndim == 2 and p.shape == v.shape, "bad pixel arrays"
    assert np.isfinite(p).all() and float(p.min()) >= 0.0 and float(p.max()) <= 1.0, "pixels outside [0, 1]"
    assert np.isfinite(v).all(), "non-finite modality values"
    return "ok"


def run(n: int, seed: int, seeds: dict[str, bytes], load: Callable[[bytes], object], out: Path) -> dict:
    rng = random.Random(seed)
    names = sorted(seeds)
    outcomes: Counter[str] = Counter()
    per_seed: Counter[str] = Counter()
    bugs: list[str] = []
    durations = np.empty(n)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last_input.bin"  # survives a crash or a hang: the culprit
    started = time.perf_counter()
    for i in range(n):
        name = names[i % len(names)]
        data = mutate(seeds[name], rng)
        last.write_bytes(data)
        faulthandler.dump_traceback_later(HANG_S, exit=True)  # a hang ends the run, last_input.bin kept
        t0 = time.perf_counter()
        try:
            outcome = check_outcome(load, data)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - exactly what the fuzzer is looking for
            outcome = "BUG"
            path = out / f"bug-{len(bugs)}-{name}.bin"
            path.write_bytes(data)
            bugs.append(f"{path.name}: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            faulthandler.cancel_dump_traceback_later()
        durations[i] = time.perf_counter() - t0
        outcomes[outcome] += 1
        per_seed[f"{name}:{'ok' if outcome == 'ok' else 'refused' if outcome != 'BUG' else 'BUG'}"] += 1
    elapsed = time.perf_counter() - started
    last.unlink(missing_ok=True)
    return {
        "inputs": n,
        "seconds": elapsed,
        "outcomes": dict(outcomes.most_common()),
        "per_seed": dict(sorted(per_seed.items())),
        "median_ms": float(np.median(durations) * 1e3),
        "p99_ms": float(np.percentile(durations, 99) * 1e3),
        "max_ms": float(durations.max() * 1e3),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bugs": bugs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of mutated inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "chestcovnet_fuzz")
    parser.add_argument("--memory-mb", type=int, default=3072, help="address-space limit for this process")
    parser.add_argument("--isolated", action="store_true", help="decode through xai.sandboxed_decoder worker processes")
    args = parser.parse_args(argv)

    from xai.radiograph import load_radiograph

    warnings.simplefilter("ignore")  # pydicom warns on every malformed value; the outcomes are what count
    seeds = make_seeds(args.data)
    for data in seeds.values():  # every seed itself must load
        load_radiograph(data)
    if args.isolated:
        from xai.sandboxed_decoder import load_radiograph_isolated

        def load(d: bytes) -> object:
            return load_radiograph_isolated(d, timeout_s=HANG_S)
    else:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = args.memory_mb * 2**20
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        load = load_radiograph
    stats = run(args.n, args.seed, seeds, load, args.out)
    print(f"seeds: {len(seeds)} ({', '.join(f'{k} {len(v)} B' for k, v in seeds.items())})")
    print(f"inputs: {stats['inputs']}  mode: {'isolated workers' if args.isolated else 'in-process'}  "
          f"time: {stats['seconds']:.1f} s  ({stats['inputs'] / stats['seconds']:.0f} inputs/s)")
    print(f"per input: median {stats['median_ms']:.2f} ms, p99 {stats['p99_ms']:.1f} ms, max {stats['max_ms']:.0f} ms "
          f"(hang limit {HANG_S:.0f} s)")
    print(f"max RSS: {stats['max_rss_mb']:.0f} MB (address-space limit {args.memory_mb} MB)")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in stats["outcomes"].items()))
    print("per seed: " + ", ".join(f"{k} {v}" for k, v in stats["per_seed"].items()))
    print(f"contract violations: {len(stats['bugs'])}")
    for bug in stats["bugs"]:
        print("  " + bug)
    return 1 if stats["bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())
