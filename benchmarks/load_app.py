"""Many users at once, and memory over time, against the real Streamlit server.

    .venv/bin/python benchmarks/load_app.py concurrent [--sessions 10]
    .venv/bin/python benchmarks/load_app.py memory [--explanations 200]

``concurrent``: one server on 127.0.0.1, ``--sessions`` browser contexts in one headless chromium. Every
session uploads a DIFFERENT real radiograph from ../shared/data (test split, mixed sources) at the same
moment and waits for the original + four overlays. Reported: throughput, p50/p95 time to overlays, errors,
server peak memory (RSS of the server and its children, sampled every 0.2 s, and the kernel's VmHWM), and
whether each session got the maps for its own image: the probabilities it shows must equal an in-process
forward pass of the same model on that file, and its "Original" panel must match that file's pixels
better than any other session's file.

``memory``: one session uploads ``--explanations`` different radiographs one after another (each a
new explanation: no cache hit) and the server's RSS is sampled after each; the curve is printed (it should
level off once the bounded caches are full).

Bounded: every loop has a count and an overall time limit; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from test_browser import (  # noqa: E402 - one home for the server/browser helpers
    CHROMIUM,
    CHROMIUM_ARGS,
    PANEL,
    SHOWN_PROBABILITIES_JS,
    UPLOADER,
    free_port,
    overlay_count_js,
    start_server,
    stop_server,
    wait_healthy,
)

DATA = Path(os.environ.get("CHESTCOVNET_DATA_ROOT", REPO.parent / "shared" / "data")) / "chestcovnet"
HREFS_JS = f"() => Array.from(document.querySelectorAll('{PANEL} image')).map(e => e.getAttribute('href'))"
PAGE_SIZE = 4096


# ------------------------------------------------------------------------------------------ memory
def _descendants(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                out.append(child)
                stack.append(child)
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (decode workers included), MB."""
    return sum(_status_kb(p, "VmRSS") for p in [pid, *_descendants(pid)]) / 1024


class RssSampler:
    """Samples the server tree's RSS every ``interval`` s in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak, self.samples = pid, interval, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ------------------------------------------------------------------------------------------ images
def pick_images(count: int, *, offset: int = 0) -> list[Path]:
    """``count`` different real radiographs, deterministic, round-robin over sources (test split first)."""
    with (DATA / "manifest.csv").open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: (r["split"] != "test", r["file"]))
    by_source: dict[str, list[str]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row["file"])
    queues = [iter(v) for v in by_source.values()]
    ordered: list[str] = []
    while queues and len(ordered) < offset + count:
        for q in list(queues):
            name = next(q, None)
            if name is None:
                queues.remove(q)
            else:
                ordered.append(name)
    picked = [DATA / "images" / name for name in ordered[offset : offset + count]]
    if len(picked) < count:
        raise SystemExit(f"only {len(picked)} images available in {DATA}")
    return picked


def expected_probabilities(images: list[Path], model_name: str) -> dict[Path, dict[str, float]]:
    """Softmax of the same model for each file, computed in this process (independent of the app)."""
    import torch

    import models
    from xai.preprocessing import prepare
    from xai.radiograph import load_radiograph

    loaded = models.load(model_name)
    out = {}
    with torch.no_grad():
        for path in images:
            tensor, _ = prepare(load_radiograph(path), loaded.card.preprocessing)
            probs = torch.softmax(loaded.module(tensor), dim=1)[0].numpy()
            out[path] = dict(zip(loaded.card.class_names, probs.tolist(), strict=True))
    return out


def decode_href(href: str) -> np.ndarray:
    from PIL import Image

    data = base64.b64decode(href.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)


def similarity(panel: np.ndarray, path: Path) -> float:
    """Correlation of the panel's Original image with a file's pixels resized to the panel's size."""
    import cv2

    from xai.radiograph import load_radiograph

    pixels = load_radiograph(path).pixels
    resized = cv2.resize(pixels, (panel.shape[1], panel.shape[0]), interpolation=cv2.INTER_AREA)
    return float(np.corrcoef(panel.ravel(), resized.ravel())[0, 1])


# --------------------------------------------------------------------------------------- sessions
class Barrier:
    """All sessions load the page first; the uploads then start together."""

    def __init__(self, parties: int) -> None:
        self.parties, self.ready = parties, 0
        self.all_ready, self.go = asyncio.Event(), asyncio.Event()

    def arrive(self) -> None:
        self.ready += 1
        if self.ready >= self.parties:
            self.all_ready.set()


async def session(browser, url: str, image: Path, barrier: Barrier, timeout_s: float) -> dict:
    """One user: open the app, wait for the go signal, upload, wait for the four overlays."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    record: dict = {"image": image, "error": None}
    try:
        await page.goto(url, wait_until="domcontentloaded", timeout=timeout_s * 1000)
        await page.wait_for_selector(UPLOADER, state="attached", timeout=timeout_s * 1000)
        barrier.arrive()
        await barrier.go.wait()
        t0 = time.perf_counter()
        await page.locator(UPLOADER).set_input_files(str(image))
        await page.wait_for_function(overlay_count_js(4), timeout=timeout_s * 1000, polling=100)
        record["seconds"] = time.perf_counter() - t0
        record["finished"] = time.perf_counter()
        await page.wait_for_function(f"() => ({SHOWN_PROBABILITIES_JS})() !== null", timeout=timeout_s * 1000)
        record["shown"] = {str(k): float(v) for k, v in (await page.evaluate(SHOWN_PROBABILITIES_JS) or {}).items()}
        hrefs = await page.evaluate(HREFS_JS)
        record["original"] = decode_href(hrefs[0])
        errors = await page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').count()
        if errors:
            record["error"] = f"{errors} error box(es) on the page"
    except Exception as exc:  # noqa: BLE001 - a failed session is counted, not fatal
        record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        barrier.arrive()  # never leave the others waiting for a session that failed to load
    finally:
        await context.close()
    return record


async def run_concurrent(url: str, images: list[Path], timeout_s: float, pid: int) -> tuple[list[dict], float, float]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            barrier = Barrier(len(images))
            tasks = [asyncio.create_task(session(browser, url, img, barrier, timeout_s)) for img in images]
            await asyncio.wait_for(barrier.all_ready.wait(), timeout=timeout_s)
            ready_rss = tree_rss_mb(pid)  # model loaded, every page open, nothing explained yet
            started = time.perf_counter()
            barrier.go.set()
            records = await asyncio.wait_for(asyncio.gather(*tasks), timeout=timeout_s + 120)
            return list(records), started, ready_rss
        finally:
            await browser.close()


@contextlib.contextmanager
def running_server(args: argparse.Namespace) -> Iterator[tuple[str, subprocess.Popen]]:
    """``streamlit run app.py`` on a free localhost port, healthy, stopped on exit: ``(url, process)``."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        process = start_server(log, port, server_env(args))
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, process, log, 180)
            yield url, process
        finally:
            stop_server(process)


def concurrent_main(args: argparse.Namespace) -> int:
    images = pick_images(args.sessions)
    expected = expected_probabilities(images, args.model)
    with running_server(args) as (url, process):
        with RssSampler(process.pid) as sampler:
            records, started, idle = asyncio.run(run_concurrent(url, images, args.timeout, process.pid))
        hwm = _status_kb(process.pid, "VmHWM") / 1024

    ok = [r for r in records if r["error"] is None]
    own_ok = 0
    for r in ok:
        want = expected[r["image"]]
        probs_match = r["shown"].keys() == want.keys() and all(
            abs(r["shown"][k] - v) <= 1e-4 for k, v in want.items())
        scores = {img: similarity(r["original"], img) for img in images}
        best = max(scores, key=scores.get)
        r["own"] = probs_match and best == r["image"]
        own_ok += r["own"]
        if not r["own"]:
            r["error"] = (f"wrong result: shown {r['shown']} vs expected {expected[r['image']]}, "
                          f"panel most like {best.name}")
    times = sorted(r["seconds"] for r in ok)
    wall = max((r["finished"] for r in ok), default=started) - started
    errors = [r for r in records if r["error"]]
    print(f"\nload_app concurrent: {len(images)} sessions, model {args.model}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| measure | value |\n|---|---|")
    print(f"| sessions (each a different radiograph) | {len(images)} |")
    print(f"| completed with the four overlays | {len(ok)} |")
    print(f"| errors (exceptions, error boxes, timeouts, wrong image) | {len(errors)} |")
    print(f"| got the maps for its own image (probabilities + Original panel) | {own_ok}/{len(images)} |")
    if times:
        p95 = float(np.percentile(times, 95))
        print(f"| time to overlays p50 / p95 / max | {statistics.median(times):.1f} s / {p95:.1f} s / "
              f"{times[-1]:.1f} s |")
        print(f"| throughput | {len(ok) / wall * 60:.1f} explanations/min ({len(ok)} in {wall:.1f} s) |")
    print(f"| server RSS with model loaded and {len(images)} pages open -> peak (sampled every 0.2 s, incl. "
          f"children) | {idle:.0f} MB -> {sampler.peak:.0f} MB |")
    print(f"| server VmHWM (kernel peak RSS, main process) | {hwm:.0f} MB |")
    for r in errors:
        print(f"ERROR {r['image'].name}: {r['error']}")
    return 0 if not errors else 1


# ----------------------------------------------------------------------------------------- memory
async def run_memory(url: str, images: list[Path], pid: int, budget_s: float, timeout_s: float) -> list[dict]:
    from playwright.async_api import async_playwright

    curve: list[dict] = []
    deadline = time.perf_counter() + budget_s
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            page = await context.new_page()
            await page.goto(url, wait_until="domcontentloaded")
            await page.wait_for_selector(UPLOADER, state="attached", timeout=timeout_s * 1000)
            curve.append({"n": 0, "rss": tree_rss_mb(pid), "seconds": 0.0, "error": None})
            for n, image in enumerate(images, start=1):
                if time.perf_counter() > deadline:
                    print(f"time budget reached after {n - 1} explanations")
                    break
                before = await page.evaluate(HREFS_JS)
                t0 = time.perf_counter()
                error = None
                try:
                    await page.locator(UPLOADER).set_input_files(str(image))
                    await page.wait_for_function(
                        f"(before) => {{ const now = ({HREFS_JS})(); return now.length >= 5 && "
                        f"now[0] !== before[0] && ({overlay_count_js(4)})(); }}",
                        arg=before, timeout=timeout_s * 1000, polling=100)
                    if await page.locator('[data-testid="stException"], '
                                          '[data-testid="stAlertContentError"]').count():
                        error = "error box on the page"
                except Exception as exc:  # noqa: BLE001 - counted
                    error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                curve.append({"n": n, "rss": tree_rss_mb(pid), "seconds": time.perf_counter() - t0,
                              "error": error})
                if n % 10 == 0:
                    print(f"  {n:4d} explanations: RSS {curve[-1]['rss']:.0f} MB, last {curve[-1]['seconds']:.1f} s",
                          flush=True)
            await context.close()
        finally:
            await browser.close()
    return curve


def memory_main(args: argparse.Namespace) -> int:
    images = pick_images(args.explanations, offset=args.sessions_offset)
    with running_server(args) as (url, process):
        curve = asyncio.run(run_memory(url, images, process.pid, args.budget, args.timeout))
        hwm = _status_kb(process.pid, "VmHWM") / 1024
    done = [c for c in curve[1:]]
    errors = [c for c in done if c["error"]]
    print(f"\nload_app memory: {len(done)} consecutive explanations (different images), model {args.model}, "
          f"server env {server_env(args)}, load average {os.getloadavg()[0]:.1f}")
    print("| explanations | server RSS (MB) |\n|---|---|")
    marks = sorted({0, 1, 5, 10, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200, len(done)})
    for c in curve:
        if c["n"] in marks:
            print(f"| {c['n']} | {c['rss']:.0f} |")
    if len(done) >= 40:
        first_half = [c["rss"] for c in done[len(done) // 2 - 10 : len(done) // 2]]
        last = [c["rss"] for c in done[-10:]]
        print(f"mean RSS explanations {len(done) // 2 - 9}-{len(done) // 2}: {np.mean(first_half):.0f} MB; "
              f"last 10: {np.mean(last):.0f} MB; growth {np.mean(last) - np.mean(first_half):+.0f} MB")
    print(f"server VmHWM {hwm:.0f} MB; time per explanation median {statistics.median(c['seconds'] for c in done):.1f} s; "
          f"errors {len(errors)}")
    for c in errors[:10]:
        print(f"ERROR #{c['n']}: {c['error']}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["explanations", "rss_mb", "seconds", "error"])
            for c in curve:
                writer.writerow([c["n"], f"{c['rss']:.1f}", f"{c['seconds']:.2f}", c["error"] or ""])
    return 0 if not errors else 1


def server_env(args: argparse.Namespace) -> dict[str, str]:
    env = {"XAI_APP_MODEL": args.model}
    for item in args.server_env or []:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("concurrent", "memory"))
    parser.add_argument("--sessions", type=int, default=10, help="concurrent sessions (default 10, max 32)")
    parser.add_argument("--explanations", type=int, default=200, help="memory run length (default 200, max 400)")
    parser.add_argument("--sessions-offset", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=os.environ.get("XAI_APP_MODEL", "chestcovnet"))
    parser.add_argument("--timeout", type=float, default=600.0, help="per-wait timeout, s")
    parser.add_argument("--budget", type=float, default=3600.0, help="memory run time limit, s")
    parser.add_argument("--csv", type=Path, help="write the memory curve here")
    parser.add_argument("--server-env", action="append", metavar="KEY=VALUE",
                        help="extra environment for the server, e.g. MALLOC_ARENA_MAX=2")
    args = parser.parse_args(argv)
    args.sessions = max(1, min(args.sessions, 32))
    args.explanations = max(1, min(args.explanations, 400))
    if not CHROMIUM.is_file():
        print(f"{CHROMIUM} not found: install Debian's chromium (make browser)", file=sys.stderr)
        return 2
    return concurrent_main(args) if args.mode == "concurrent" else memory_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
