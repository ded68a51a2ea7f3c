"""Bounded fuzz run for CI (the 10,000-input run is benchmarks/fuzz_io.py) and replay of kept crashers."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_io import check_outcome, make_seeds, mutate
from xai.radiograph import CorruptImageError, load_radiograph

REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"


@pytest.fixture(scope="module")
def seeds(shared_data: Path) -> dict[str, bytes]:
    return make_seeds(shared_data)


@pytest.mark.timeout(300)
def test_mutated_seeds_end_in_radiograph_error_or_valid_image(seeds):
    rng = random.Random(2024)
    names = sorted(seeds)
    outcomes: Counter[str] = Counter()
    for i in range(450):  # 30 per seed
        outcomes[check_outcome(load_radiograph, mutate(seeds[names[i % len(names)]], rng))] += 1
    assert sum(outcomes.values()) == 450
    assert outcomes["ok"] > 0 and outcomes["CorruptImageError"] > 0  # the mutations reach both ends


def test_kept_crashers_are_refused_cleanly():
    files = sorted(REGRESSIONS.glob("*"))
    assert files, "tests/fuzz_regressions/ holds the inputs that once broke the loader"
    for path in files:
        with pytest.raises(CorruptImageError):
            load_radiograph(path)


MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"RIFF\x00\x00\x00\x00WEBP",
          b"\x00" * 128 + b"DICM", b"\x08\x00\x05\x00CS"]


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from(MAGICS), body=st.binary(max_size=400))
def test_arbitrary_bytes_behind_a_magic_number(magic, body):
    check_outcome(load_radiograph, magic + body)
