"""benchmarks/bench_app_vs.py: the round lines of both benchmark generations parse, and the paired table adds up."""

from __future__ import annotations

from benchmarks.bench_app_vs import parse_round, summary

# Real `round 1:` lines: the benchmark as issue 12 found it (7cf31b7) and today's (more measures, same three).
EARLIER_LINE = ("round 1: cold 9.21 s, first result 1.15 s in the page, 1.19 s from the driver (figure received "
                "after 0.81 s; engine in app 132 ms, in process 114 ms), display-only median 353 ms in the page, "
                "375 ms from the driver (max 410 ms; figure received after 260 ms)")
TODAY_LINE = ("round 1: cold 8.50 s (uploader at 8.14 s, record's chart at 8.61 s), first result 0.98 s in the page, "
              "1.05 s from the driver (figure received after 0.79 s; engine in app 145 ms, in process 182 ms), "
              "display-only median 37 ms in the page, 88 ms from the driver (max 131 ms; server's style back after "
              "234 ms); colormap 32 ms; class switch first 477 ms, median 389 ms (after 3.0 s looking); later film "
              "1.43 s in the page (engine in app 214 ms)")


def test_both_benchmark_generations_parse_to_the_same_three_measures() -> None:
    assert parse_round("engine stages (ms): load 26\n" + EARLIER_LINE) == {
        "cold start": 9.21, "upload -> four overlays, in the page": 1.15, "opacity change, in the page": 353.0}
    assert parse_round(TODAY_LINE) == {
        "cold start": 8.50, "upload -> four overlays, in the page": 0.98, "opacity change, in the page": 37.0}
    assert parse_round("Traceback (most recent call last): ...") is None  # a failed run is left out, not zero


def test_the_table_gives_medians_ranges_and_the_paired_difference() -> None:
    def measures(cold: float, first: float, opacity: float) -> dict[str, float]:
        return {"cold start": cold, "upload -> four overlays, in the page": first,
                "opacity change, in the page": opacity}

    earlier = [measures(10.0, 1.0, 300), measures(12.0, 1.2, 350), measures(9.0, 1.4, 320)]
    now = [measures(9.0, 1.1, 30), measures(12.5, 1.0, 40), measures(8.0, 1.3, 35)]
    header, rule, cold, first, opacity = summary(earlier, now)
    assert header.startswith("| measure |") and rule.count("|") == 6
    # cold: medians 10.0 / 9.0; differences -1.0, +0.5, -1.0 -> median -1.0, faster in 2 of 3.
    assert cold == "| cold start | 10.00 s (9.00 s–12.00 s) | 9.00 s (8.00 s–12.50 s) | −1.00 s | 2 of 3 pairs |"
    # first: differences +0.1, -0.2, -0.1 -> median -0.1, faster in 2 of 3.
    assert first.endswith("| −0.10 s | 2 of 3 pairs |")
    # opacity: differences -270, -310, -285 -> median -285 ms, faster in all.
    assert opacity == ("| opacity change, in the page | 320 ms (300 ms–350 ms) | 35 ms (30 ms–40 ms) | −285 ms | "
                       "3 of 3 pairs |")


def test_the_same_driver_table_has_its_own_three_measures() -> None:
    from benchmarks.bench_app_vs import SAME_DRIVER_MEASURES

    names = [name for name, _, _ in SAME_DRIVER_MEASURES]
    earlier = [dict(zip(names, (8.0, 5.0, 0.9), strict=True)), dict(zip(names, (9.0, 6.0, 1.0), strict=True))]
    now = [dict(zip(names, (7.5, 5.5, 0.8), strict=True)), dict(zip(names, (9.5, 5.0, 1.1), strict=True))]
    header, rule, cold, uploader, first = summary(earlier, now, SAME_DRIVER_MEASURES)
    assert "opacity" not in "".join((cold, uploader, first))  # not measured with --same-driver
    # cold: differences -0.5, +0.5 -> median 0.00; uploader: +0.5, -1.0 -> -0.25; first: -0.1, +0.1 -> 0.00
    assert cold.startswith("| cold start | 8.50 s (8.00 s–9.00 s) | 8.50 s (7.50 s–9.50 s) |")
    assert uploader.endswith("| −0.25 s | 1 of 2 pairs |")
    assert first.endswith("| 1 of 2 pairs |")
