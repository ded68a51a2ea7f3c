"""xai.batch.run.pipelined: the report's decode -> explain -> write stages overlap across chunks, keep the
input order, run each stage one call at a time, and pass a failure on to the caller."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest

from xai.batch.run import pipelined


def test_results_arrive_in_order_and_equal_the_sequential_composition() -> None:
    got: list[str] = []
    pipelined(range(12), (lambda x: x + 1, lambda x: x * 2, str), got.append)
    assert got == [str((x + 1) * 2) for x in range(12)]
    pipelined([], (str,), got.append)  # nothing in, nothing out
    assert len(got) == 12


def test_the_next_chunk_is_decoded_while_this_one_is_explained() -> None:
    second_decode_started = threading.Event()
    overlapped: list[bool] = []

    def decode(x: int) -> int:
        if x == 1:
            second_decode_started.set()
        return x

    def explain(x: int) -> int:
        if x == 0:  # chunk 0 is explained only once chunk 1's decoding has begun: they run at the same time
            overlapped.append(second_decode_started.wait(timeout=10))
        return x

    got: list[int] = []
    pipelined(range(3), (decode, explain), got.append)
    assert got == [0, 1, 2] and overlapped == [True]


def test_each_stage_runs_one_call_at_a_time_and_at_most_two_chunks_wait() -> None:
    lock = threading.Lock()
    running: dict[int, int] = defaultdict(int)
    peak: dict[int, int] = defaultdict(int)
    started: list[int] = []
    taken: list[int] = []

    def stage(index: int):
        def run(x: int) -> int:
            with lock:
                running[index] += 1
                peak[index] = max(peak[index], running[index])
                if index == 0:
                    started.append(x)
                    # bounded look-ahead: decoding never runs more than 3 chunks ahead of what was taken
                    assert x - len(taken) <= 3, (x, len(taken))
            threading.Event().wait(0.002)
            with lock:
                running[index] -= 1
            return x
        return run

    pipelined(range(30), tuple(stage(i) for i in range(3)), taken.append)
    assert taken == list(range(30)) and started == list(range(30))
    assert dict(peak) == {0: 1, 1: 1, 2: 1}


def test_a_failing_stage_reaches_the_caller() -> None:
    def explain(x: int) -> int:
        if x == 2:
            raise RuntimeError("engine failed on chunk 2")
        return x

    got: list[int] = []
    with pytest.raises(RuntimeError, match="chunk 2"):
        pipelined(range(5), (lambda x: x, explain, lambda x: x), got.append)
    assert got == [0, 1]  # every chunk before the failing one was written
