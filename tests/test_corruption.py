"""Corruption sweep: truncated and byte-flipped small real files raise only RadiographError, never hang."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from benchmarks.fuzz_io import check_outcome, make_seeds
from xai.radiograph import RadiographError, load_radiograph


@pytest.fixture(scope="module")
def seeds(shared_data: Path) -> dict[str, bytes]:
    return make_seeds(shared_data)


SEED_NAMES = (
    "png8.png", "png16.png", "png_palette.png", "png_rgba.png", "jpeg_gray.jpg", "jpeg_rgb_progressive.jpg",
    "jpeg_cmyk.jpg", "tiff16.tif", "bmp.bmp", "webp.webp", "dicom_raw_mono1.dcm", "dicom_rle.dcm",
    "dicom_jpegls.dcm", "dicom_j2k.dcm", "dicom_jpeg_baseline.dcm",
)


def test_every_seed_is_a_valid_radiograph(seeds):
    assert sorted(seeds) == sorted(SEED_NAMES)
    for name, data in seeds.items():
        r = load_radiograph(data)
        assert min(r.shape) >= 16 and 0.0 <= r.pixels.min() < r.pixels.max() <= 1.0, name


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", SEED_NAMES)
def test_truncation_sweep(seeds, name):
    data = seeds[name]
    offsets = sorted(set(range(0, min(len(data), 160), 3)) | set(np.linspace(0, len(data) - 1, 60).astype(int)))
    refused = 0
    for n in offsets:
        outcome = check_outcome(load_radiograph, data[:n])
        refused += outcome != "ok"
        if n < 0.9 * len(data):  # a file missing a tenth of its bytes has lost pixel data: refuse it
            assert outcome != "ok", f"{name} truncated to {n} of {len(data)} bytes was accepted"
    assert refused >= 0.9 * len(offsets)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", SEED_NAMES)
def test_byte_flip_sweep(seeds, name):
    data = seeds[name]
    rng = random.Random(name)
    outcomes = set()
    for _ in range(80):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(min(len(buf), 600)) if rng.random() < 0.6 else rng.randrange(len(buf))
            buf[position] ^= 1 << rng.randrange(8)
        outcomes.add(check_outcome(load_radiograph, bytes(buf)))  # only RadiographError or a valid image
    assert outcomes  # the sweep ran; check_outcome asserted each result


def test_errors_have_user_messages(seeds):
    with pytest.raises(RadiographError, match=r"truncated|damaged"):
        load_radiograph(seeds["dicom_j2k.dcm"][:-400])
    with pytest.raises(RadiographError, match=r"truncated|damaged"):
        load_radiograph(seeds["jpeg_gray.jpg"][:500])
