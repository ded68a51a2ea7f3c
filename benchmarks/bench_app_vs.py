"""The app's speed against an earlier commit, like with like: same machine, same hour, alternating.

    .venv/bin/python benchmarks/bench_app_vs.py --commit 7cf31b7 [--pairs 18]

A figure in the README was measured on the machine of its day; this machine's speed changes by the hour
(on the shared 2-core box the same code's cold start spans 8-13 s). To say whether the code got slower,
the earlier commit runs here too: it is checked out into a temporary git worktree (sharing this
checkout's ``.venv``; only the dependencies added since then differ) and each pair runs both trees'
own ``benchmarks/bench_app.py --rounds 1`` (a fresh server and browser each), the order alternating
from pair to pair. Both benchmarks print a ``round 1:`` line with the cold start, the first result in the
page and the opacity change in the page; the table gives each side's median and range and the paired
difference (this tree minus the earlier one), which cancels most of the machine's drift.

The earlier commit's benchmark defines its measures as that commit did (e.g. its cold start ends when the
uploader is visible with the model loaded; today's when the model's first widget is drawn, which the page
now shows after the uploader); read the two scripts before comparing a measure they define differently.

``--same-driver`` removes that difference: both trees' servers are driven by THIS script (one browser, one
definition of each measure: the cold start until the model's first widget is visible, the uploader's
appearance, and the first result in the page's own clock, from the file input's change to the animation frame
with all four overlays in the DOM, as ``bench_app.py`` defines it); the opacity change is not measured there.
The browser opens the page once, when the server answers its health check (``bench_app.open_when_listening``).
The film is chosen once the page is at rest (the record's chart drawn, the network idle, the server's CPU quiet:
``bench_app.wait_server_at_rest``), or with ``--choose-at-ready`` the moment the model's first widget is visible:
a quick reader, who may meet the start-up's work still going on in the background (since 0e06d35 the model's
load itself, before that the page warm-up; the chart code's load); the time from the server's start to the four
maps is then reported too.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: (name, pattern of its value in a ``round 1:`` line, unit): the three measures both benchmarks print.
MEASURES = (
    ("cold start", r"round 1: cold ([\d.]+) s", "s"),
    ("upload -> four overlays, in the page", r"first result ([\d.]+) s in the page", "s"),
    ("opacity change, in the page", r"display-only median ([\d.]+) ms in the page", "ms"),
)


#: The measures of ``--same-driver`` (this script drives both servers).
SAME_DRIVER_MEASURES = (
    ("cold start", "", "s"),
    ("a film can be chosen (uploader visible)", "", "s"),
    ("upload -> four overlays, in the page", "", "s"),
)
AT_READY = "server start -> four overlays (film chosen at ready)"  # measured by the driver's clock


def drive_once(tree: Path, image: Path, browser: object, log: Path,
               at_ready: bool = False) -> dict[str, float] | None:
    """One fresh server of ``tree`` driven by this script: :data:`SAME_DRIVER_MEASURES`, or None when it failed.
    ``at_ready``: the film is chosen the moment the model's first widget is visible, not once the page is at rest."""
    import time

    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.path.insert(0, str(REPO / "tests"))
    from bench_app import (
        LANDING_CHART,
        MODEL_READY,
        PAGE_CLOCK_JS,
        arm,
        drawn_at,
        open_when_listening,
        wait_server_at_rest,
    )
    from test_browser import UPLOADER, free_port, overlay_count_js, start_server, stop_server

    port = free_port()
    context = browser.new_context(viewport={"width": 1600, "height": 1200})  # type: ignore[attr-defined]
    context.add_init_script(PAGE_CLOCK_JS)
    page = context.new_page()
    started = time.perf_counter()
    process = start_server(log, port, app_dir=tree)
    try:
        open_when_listening(page, f"http://127.0.0.1:{port}", process, started)
        page.locator(UPLOADER).locator("..").wait_for(state="visible", timeout=120_000)
        uploader = time.perf_counter() - started
        page.get_by_text(MODEL_READY).first.wait_for(state="visible", timeout=120_000)
        cold = time.perf_counter() - started
        if not at_ready:
            page.wait_for_selector(LANDING_CHART, state="visible", timeout=120_000)  # as bench_app.py: at rest
            page.wait_for_load_state("networkidle", timeout=30_000)
            wait_server_at_rest(process.pid)
        arm(page, overlay_count_js(4), None)
        page.locator(UPLOADER).set_input_files(str(image))
        drawn = drawn_at(page)
        maps_at = time.perf_counter() - started
        first = (drawn - page.evaluate("() => window.__bench.change.at(-1)")) / 1e3
    except Exception as exc:  # noqa: BLE001 - a failed run is left out of the pairs, and said
        print(f"{tree}: {type(exc).__name__}: {exc}", flush=True)
        return None
    finally:
        context.close()  # type: ignore[attr-defined]
        stop_server(process)
    measured = {"cold start": cold, "a film can be chosen (uploader visible)": uploader,
                "upload -> four overlays, in the page": first}
    return measured | ({AT_READY: maps_at} if at_ready else {})


def bench_once(tree: Path, log: Path) -> dict[str, float] | None:
    """``tree``'s own app benchmark, one fresh server; its three measures, or None when it failed (see ``log``)."""
    with log.open("w") as out:
        subprocess.run([sys.executable, "benchmarks/bench_app.py", "--rounds", "1"], cwd=tree, stdout=out,
                       stderr=subprocess.STDOUT, timeout=1200, check=False)
    return parse_round(log.read_text())


def parse_round(text: str) -> dict[str, float] | None:
    """The three measures of a benchmark's output (its ``round 1:`` line), or None when one is missing."""
    found = {name: re.search(pattern, text) for name, pattern, _ in MEASURES}
    if not all(found.values()):
        return None
    return {name: float(match.group(1)) for name, match in found.items()}


def summary(earlier: list[dict[str, float]], now: list[dict[str, float]],
            measures: tuple[tuple[str, str, str], ...] = MEASURES) -> list[str]:
    """Markdown rows: each side's median (range) and the paired difference's median."""
    rows = ["| measure | earlier commit: median (range) | this tree: median (range) | paired difference, median | "
            "this tree faster in |", "|---|---|---|---|---|"]
    for name, _, unit in measures:
        before = [r[name] for r in earlier]
        after = [r[name] for r in now]
        deltas = [a - b for a, b in zip(after, before, strict=True)]
        fmt = (lambda v: f"{v:.2f} s") if unit == "s" else (lambda v: f"{v:.0f} ms")
        rows.append(f"| {name} | {fmt(statistics.median(before))} ({fmt(min(before))}–{fmt(max(before))}) | "
                    f"{fmt(statistics.median(after))} ({fmt(min(after))}–{fmt(max(after))}) | "
                    f"{'+' if statistics.median(deltas) >= 0 else '−'}{fmt(abs(statistics.median(deltas)))} | "
                    f"{sum(d < 0 for d in deltas)} of {len(deltas)} pairs |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--pairs", type=int, default=6, help="alternating pairs of fresh servers (default 6)")
    parser.add_argument("--same-driver", action="store_true",
                        help="drive both trees' servers with this script (one definition of each measure)")
    parser.add_argument("--choose-at-ready", action="store_true",
                        help="with --same-driver: choose the film the moment the model's first widget is visible "
                             "(a quick reader; the start-up's background work may not be done), not once the page "
                             "is at rest")
    parser.add_argument("--image", type=Path, default=REPO / "samples" / "cr_pa_siim.dcm",
                        help="the film uploaded with --same-driver (default: the DICOM sample)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-app-vs-") as tmp:
        worktree = Path(tmp) / "earlier"
        added = subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.commit], cwd=REPO,
                               capture_output=True, text=True, check=False)
        if added.returncode != 0:  # e.g. a revision this clone does not have: say so, no traceback
            print(f"cannot check out {args.commit!r}: {added.stderr.strip()}")
            return 2
        try:
            (worktree / ".venv").symlink_to(REPO / ".venv")
            # The earlier tree's bytecode written ahead, as `make run` does today; today's bench_app.py does this
            # itself before each run, an older one may not (a fair start for it).
            subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "app.py", "pages", "xai", "models"],
                           cwd=worktree, check=True)
            earlier, now = [], []
            browser, playwright = None, None
            if args.same_driver:
                from playwright.sync_api import sync_playwright

                sys.path.insert(0, str(REPO / "tests"))
                from test_browser import CHROMIUM, CHROMIUM_ARGS

                playwright = sync_playwright().start()
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for pair in range(args.pairs):
                sides = [("earlier", worktree), ("now", REPO)]
                results = {}
                for side, tree in sides if pair % 2 == 0 else sides[::-1]:
                    log = Path(tmp) / f"{side}_{pair}.log"
                    results[side] = (
                        drive_once(tree, args.image.resolve(), browser, log, args.choose_at_ready)
                        if browser is not None else bench_once(tree, log))
                if None in results.values():
                    failed = [side for side, r in results.items() if r is None]
                    print(f"pair {pair + 1}: {', '.join(failed)} failed; left out", flush=True)
                    continue
                earlier.append(results["earlier"])
                now.append(results["now"])
                rounded = {side: {k: round(v, 3) for k, v in r.items()} for side, r in results.items() if r}
                print(f"pair {pair + 1}: earlier {rounded['earlier']}, now {rounded['now']}", flush=True)
            if browser is not None and playwright is not None:
                browser.close()
                playwright.stop()
            if not now:
                print("no pair completed")
                return 1
            driver = ", both driven by this script" if args.same_driver else ""
            driver += ", the film chosen the moment the model was ready" if args.choose_at_ready else ""
            print(f"\nbench_app_vs: {args.commit} against this tree, {len(now)} pairs{driver}, {args.image.name}")
            measures = SAME_DRIVER_MEASURES + ((AT_READY, "", "s"),) * args.choose_at_ready
            print("\n".join(summary(earlier, now, measures if args.same_driver else MEASURES)))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
