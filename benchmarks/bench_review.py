"""Review sessions under load: 10 concurrent readers saving through the store, and the next case in a browser.

1. Store: one reader, then ``--readers`` readers (threads of one process, as one Streamlit server runs its
   sessions, and separate processes, as several app replicas would) each save ``--saves`` ratings into one
   session, flat out (no pause: the store saturated) and paced (an exponential pause of mean ``--think``
   seconds between a reader's saves, still ~100x a radiologist's pace); reports saves per second and the
   p50 / p95 / max latency of one ``save_case`` (validation + one transaction: the rating row, its four
   map rows, and their read-back), on SQLite (WAL, synchronous=FULL) and, when the server binaries
   are there, on a throw-away PostgreSQL cluster (unix socket, fsync on). Target: p95 <= 100 ms on SQLite.
2. Browser (``--browser``): ``streamlit run app.py`` + headless chromium; a reader presses → on a blinded
   session; the time from the key press until the next film is drawn and the page is idle again.
   Target: <= 1 s.

Run: ``.venv/bin/python benchmarks/bench_review.py [--readers 10] [--saves 50] [--browser]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from xai.review import ReviewStore  # noqa: E402

FILMS = [REPO.parent / "shared" / "data" / "chestcovnet" / "images" / f"cxnet_{i:03d}.jpg" for i in range(1, 11)]


def _reader(url: str, sid: str, cases: list[str], reader: str, n: int, start: object, out: object,
            think_s: float = 0.0) -> None:
    import random

    store = ReviewStore(url)
    latencies = []
    pause = random.Random(reader).expovariate
    start.wait()  # type: ignore[attr-defined]
    for i in range(n):
        if think_s:
            time.sleep(pause(1.0 / think_s))
        rating = {"diagnosis": ("covid19", "non_covid", "uncertain")[i % 3], "confidence": 1 + i % 5,
                  "plausibility": {"gradcam": 1 + i % 5, "gradcam++": 1 + (i + 1) % 5,
                                   "guided_backprop": 1 + (i + 2) % 5, "guided_gradcam": 1 + (i + 3) % 5},
                  "note": f"note {i}", "box": [10 + i, 20, 100, 80]}
        t0 = time.perf_counter()
        store.save_case(sid, cases[i % len(cases)], reader, rating)
        latencies.append(time.perf_counter() - t0)
    if isinstance(out, list):
        out.extend(latencies)
    else:
        out.put(latencies)  # type: ignore[attr-defined]


def run_store(url: str, readers: int, saves: int, mode: str, think_s: float = 0.0) -> dict[str, float]:
    store = ReviewStore(url)
    sid = store.create_session(f"bench {mode} {time.time_ns()}", [str(p) for p in FILMS], owner="bench")
    cases = store.cases(sid)
    if mode == "threads":
        latencies: list[float] = []
        start = threading.Event()
        workers = [threading.Thread(target=_reader, args=(url, sid, cases, f"r{k}", saves, start, latencies, think_s))
                   for k in range(readers)]
    else:
        store.dispose()
        ctx = multiprocessing.get_context("fork")
        start, queue = ctx.Event(), ctx.Queue()
        workers = [ctx.Process(target=_reader, args=(url, sid, cases, f"r{k}", saves, start, queue, think_s))
                   for k in range(readers)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    start.set()
    if mode != "threads":
        latencies = [x for _ in workers for x in queue.get(timeout=600)]
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    assert len(store.history(sid)) == readers * saves, "lost saves"
    ordered = sorted(latencies)
    return {"saves": len(ordered), "wall_s": wall, "saves_per_s": len(ordered) / wall,
            "p50_ms": 1e3 * statistics.median(ordered), "p95_ms": 1e3 * ordered[int(0.95 * (len(ordered) - 1))],
            "max_ms": 1e3 * ordered[-1]}


def postgres_url() -> tuple[object, str] | None:
    try:
        from test_review_store import PostgresCluster
    except ImportError:
        return None
    try:
        cluster = PostgresCluster(fsync=True)
    except (AssertionError, OSError) as exc:
        print(f"PostgreSQL not measured: {exc}", file=sys.stderr)
        return None
    return cluster, cluster.new_database()


def run_browser(rounds: int) -> list[float]:
    """Seconds from pressing → until the next case's film is drawn and the run is over."""
    from playwright.sync_api import sync_playwright
    from test_browser import (
        CHROMIUM,
        CHROMIUM_ARGS,
        SERVER_START_S,
        free_port,
        start_server,
        stop_server,
        wait_healthy,
        wait_idle,
    )

    tmp = Path(tempfile.mkdtemp(prefix="bench-review-"))
    url_db = f"sqlite:///{tmp / 'review.sqlite3'}"
    store = ReviewStore(url_db)
    sid = store.create_session("bench browser", [str(p) for p in FILMS], owner="bench")
    cases = store.cases(sid)
    port, log = free_port(), tmp / "server.log"
    process = start_server(log, port, {"XAI_DB_URL": url_db})
    times = []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log, SERVER_START_S)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(f"{url}/review?session=bench+browser", wait_until="domcontentloaded")
            field = page.locator(".st-key-review_reader_name input")
            field.wait_for(timeout=SERVER_START_S * 1000)
            field.fill("reader")
            field.press("Enter")
            page.wait_for_selector('[data-testid="stProgress"]', timeout=120_000)
            wait_idle(page)
            page.locator("h1").first.click()  # focus off the name field: the shortcut is for the page
            for k in range(1, min(rounds, len(cases) - 1) + 1):
                selector = f"[class*='st-key-review_film_{sid}_{cases[k]}_'] .js-plotly-plot image"
                t0 = time.perf_counter()
                page.keyboard.press("ArrowRight")
                page.wait_for_selector(selector, state="attached", timeout=60_000)
                page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                       timeout=60_000, polling=20)
                times.append(time.perf_counter() - t0)
            browser.close()
    finally:
        stop_server(process)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=10)
    parser.add_argument("--saves", type=int, default=50, help="saves per reader")
    parser.add_argument("--think", type=float, default=0.5,
                        help="mean pause between a reader's saves in the paced runs (s; exponential)")
    parser.add_argument("--browser", action="store_true", help="also time the next case in a real browser")
    parser.add_argument("--rounds", type=int, default=8, help="next-case presses in the browser")
    parser.add_argument("--only-browser", action="store_true", help="skip the store measurements")
    args = parser.parse_args()
    import os

    plans = [("1 reader", 1, "threads", 0.0), (f"{args.readers} flat out", args.readers, "threads", 0.0),
             (f"{args.readers} flat out", args.readers, "processes", 0.0),
             (f"{args.readers} paced {args.think:g} s", args.readers, "threads", args.think),
             (f"{args.readers} paced {args.think:g} s", args.readers, "processes", args.think)]
    rows = []
    if args.only_browser:
        plans, args.browser = [], True
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = f"sqlite:///{tmp}/review.sqlite3"
        rows += [("SQLite", what, mode, run_store(sqlite, n, args.saves, mode, think)) for what, n, mode, think in plans]
    pg = postgres_url() if plans else None
    if pg is not None:
        cluster, url = pg
        try:
            rows += [("PostgreSQL", what, mode, run_store(url, n, args.saves, mode, think))
                     for what, n, mode, think in plans]
        finally:
            cluster.stop()  # type: ignore[attr-defined]
    load = os.getloadavg()[0]
    print(f"\nbench_review: {args.saves} saves per reader, {os.cpu_count()} CPUs, load average {load:.1f} at the end\n")
    print("| database   | readers           | as        | saves/s | p50 ms | p95 ms | max ms | p95 <= 100 ms |")
    print("|------------|-------------------|-----------|--------:|-------:|-------:|-------:|---------------|")
    for db, what, mode, r in rows:
        ok = "met" if r["p95_ms"] <= 100 else "missed"
        print(f"| {db:<10} | {what:<17} | {mode:<9} | {r['saves_per_s']:7.0f} | {r['p50_ms']:6.1f} | {r['p95_ms']:6.1f} | "
              f"{r['max_ms']:6.1f} | {ok:<13} |")
    if args.browser:
        times = run_browser(args.rounds)
        median, worst = statistics.median(times), max(times)
        print(f"\nnext case in the browser (→ until the film is drawn, {len(times)} presses): median {median:.2f} s, "
              f"max {worst:.2f} s — target <= 1 s: {'met' if worst <= 1.0 else 'median ' + ('met' if median <= 1 else 'MISSED')}")


if __name__ == "__main__":
    main()
