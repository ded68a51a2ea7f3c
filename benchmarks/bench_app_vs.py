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


def summary(earlier: list[dict[str, float]], now: list[dict[str, float]]) -> list[str]:
    """Markdown rows: each side's median (range) and the paired difference's median."""
    rows = ["| measure | earlier commit: median (range) | this tree: median (range) | paired difference, median | "
            "this tree faster in |", "|---|---|---|---|---|"]
    for name, _, unit in MEASURES:
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
            for pair in range(args.pairs):
                sides = [("earlier", worktree), ("now", REPO)]
                results = {}
                for side, tree in sides if pair % 2 == 0 else sides[::-1]:
                    results[side] = bench_once(tree, Path(tmp) / f"{side}_{pair}.log")
                if None in results.values():
                    failed = [side for side, r in results.items() if r is None]
                    print(f"pair {pair + 1}: {', '.join(failed)} failed; left out", flush=True)
                    continue
                earlier.append(results["earlier"])
                now.append(results["now"])
                print(f"pair {pair + 1}: earlier {results['earlier']}, now {results['now']}", flush=True)
            if not now:
                print("no pair completed")
                return 1
            print(f"\nbench_app_vs: {args.commit} against this tree, {len(now)} pairs")
            print("\n".join(summary(earlier, now)))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
