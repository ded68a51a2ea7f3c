"""Batch throughput side by side on the same films: the engine's bound, the local report, Ray with 1 and 2
workers, and the Batch page.

    .venv/bin/python benchmarks/bench_batch.py                 # everything (several minutes on a busy CPU)
    .venv/bin/python benchmarks/bench_batch.py --copies 1 --skip-ray --profile

The films: five radiographs of 2-12 MP made here from the shared data — the two large DICOMs
(Philips CR 1955x1841, JPEG 2000 lossy; Canon DX 2128x2000, JPEG 2000 lossless) and three real films
upscaled (bicubic) to 1448x1448, 2448x2448 and 3000x4000 PNG — each copied ``--copies`` times under its own
name for the throughput rows. The bundled ``chestcovnet`` model, all four methods, class covid19, default
report settings (compact JPEG overlays, decoding in isolated worker processes).

Rows (films/s; seconds per film):

* ``engine bound``: what any report has to do per film — decode, prepare, the four maps and their mapping
  back to the film's grid (:func:`xai.pipeline.explain_source`, decoding in this process, a reused
  explainer) — and nothing else: no overlay, file, OOD or HTML.
* ``local report``: :func:`xai.batch.run.run_report` (what ``python -m xai report`` runs), the same films.
  Target: at most 1.5x the bound per film. Also with ``--no-isolation`` (decoding in this process, like the
  bound): the difference is what decoding each file in a worker process with limits costs.
* ``ray, 1 worker`` / ``ray, 2 workers``: :func:`xai.batch.ray_engine.run_report_ray` on a local Ray with 2
  CPUs started once before both (its start-up is printed apart); ``total`` includes starting the workers and
  loading the model in them, ``steady`` is the rate between the first and the last film (what an archive of
  10^5 films sees). Target: 2 workers >= 1.7x 1 worker.
* ``batch page``: the Streamlit page under ``AppTest`` on the five films (one copy), from the click on "Run
  the batch" to the finished downloads. Target: <= 10 s.

Wall-clock times; the local rows also give the CPU time of this process and its decoder children, which is
what background load on a shared machine disturbs least. ``--profile`` prints where the local report's time
goes (cProfile, top functions by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xai.startup import boot  # noqa: E402

boot()  # as the command line runs (idle OpenMP threads sleep; set before torch loads, see xai/startup.py)

DATA = REPO.parent / "shared" / "data"
METHODS = ("gradcam", "gradcam++", "guided_backprop", "guided_gradcam")
UPSCALED = (("mhh_b343e657.jpg", (1448, 1448)), ("nih_00008727_009.jpg", (2448, 2448)),
            ("nlm_CHNCXR_0001_0.jpg", (3000, 4000)))
DICOMS = ("philips_cr_pa_mono1_j2k_lossy.dcm", "canon_dx_pa_mono1_inverse_j2k_lossless.dcm")


def make_films(folder: Path) -> list[Path]:
    """The five films of 2-12 MP (see the module docstring), sorted by size."""
    folder.mkdir(parents=True, exist_ok=True)
    films = []
    for name, size in UPSCALED:
        image = cv2.imread(str(DATA / "chestcovnet" / "images" / name), cv2.IMREAD_GRAYSCALE)
        path = folder / f"{Path(name).stem}_{size[0]}x{size[1]}.png"
        cv2.imwrite(str(path), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC))
        films.append(path)
    for name in DICOMS:
        films.append(Path(shutil.copy(DATA / "dicom" / name, folder / name)))
    return sorted(films, key=lambda p: p.stat().st_size)


def copies(films: list[Path], folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        for film in films:
            target = folder / f"{film.stem}_copy{k}{film.suffix}"
            shutil.copy(film, target)
            out.append(target)
    return out


class Clock:
    """Wall and CPU time (this process and its finished children) of a block."""

    def __enter__(self) -> Clock:
        self.wall = time.perf_counter()
        self.cpu = time.process_time() + _children_cpu()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() + _children_cpu() - self.cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def engine_bound(model: Any, films: list[Path]) -> Clock:
    from xai.pipeline import explain_source, make_explainer

    explainer = make_explainer(model)
    explain_source(films[0], model, methods=METHODS, target="covid19", explainer=explainer)  # warm-up
    with Clock() as clock:
        for film in films:
            explain_source(film, model, methods=METHODS, target="covid19", explainer=explainer)
    return clock


def local_report(model: Any, films: list[Path], out: Path, *, profile: bool, batch_size: int,
                 isolated: bool = True) -> Clock:
    import models
    from xai.batch.films import BatchSpec, Checks
    from xai.batch.inputs import collect_inputs
    from xai.batch.run import run_report

    spec = BatchSpec(methods=METHODS, target="covid19", batch_size=batch_size, isolated=isolated)
    checks = Checks(ood_stats=models.ood_stats(model))
    items = collect_inputs(films)
    profiler = cProfile.Profile() if profile else None
    with Clock() as clock:
        if profiler is not None:
            profiler.enable()
        run_report(items, model, out, spec, checks=checks)
        if profiler is not None:
            profiler.disable()
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
        print("\nWhere the local report's time goes (cProfile, own time):\n" + text.getvalue().split("\n\n", 1)[-1])
    return clock


def ray_reports(model: Any, films: list[Path], out: Path) -> dict[str, dict[str, float]]:
    import functools

    import ray

    from xai.batch.films import BatchSpec
    from xai.batch.inputs import collect_inputs
    from xai.batch.ray_engine import start_local_ray
    from xai.batch.run import report_meta
    from xai.cli import worker_setup

    spec = BatchSpec(methods=METHODS, target="covid19")
    started = time.perf_counter()
    start_local_ray(2)
    rows: dict[str, dict[str, float]] = {"ray start-up": {"total": time.perf_counter() - started}}
    try:
        from xai.batch.ray_engine import run_report_ray

        items = collect_inputs(films)
        setup = functools.partial(worker_setup, "chestcovnet", False)
        for workers in (1, 2):
            arrivals: list[float] = []

            def arrived(*_: object, seen: list[float] = arrivals) -> None:
                seen.append(time.perf_counter())

            begin = time.perf_counter()
            run_report_ray(items, report_meta(model, spec), out / f"ray{workers}", spec, setup, workers=workers,
                           progress=arrived)
            total = time.perf_counter() - begin
            steady = (arrivals[-1] - arrivals[0]) / max(1, len(arrivals) - 1)
            rows[f"ray, {workers} worker{'s' if workers > 1 else ''}"] = {"total": total, "steady": steady}
    finally:
        ray.shutdown()
    return rows


def batch_page(films: list[Path]) -> float:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "pages" / "batch.py"), default_timeout=900)
    at.run()
    at.file_uploader(key="batch_uploads").set_value([(f.name, f.read_bytes(), "application/octet-stream")
                                                      for f in films])
    at.button[0].click()
    started = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - started
    if at.exception or "5 of 5" not in at.success[0].value:
        raise RuntimeError(f"the Batch page did not finish: {at.exception or at.success}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=2, help="copies of the five films for the throughput rows")
    parser.add_argument("--batch-size", type=int, default=1, help="films per pass in the local report")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-page", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile the local report")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads here (default 1, like each Ray worker: on a busy machine more threads "
                             "mostly measure scheduling)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    import models

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        root = Path(tmp)
        five = make_films(root / "five")
        films = copies(five, root / "films", args.copies)
        sizes = ", ".join(f"{cv2.imread(str(f), cv2.IMREAD_UNCHANGED).size / 1e6:.1f}" for f in five
                          if f.suffix == ".png")
        print(f"{len(films)} films ({args.copies} copies of five: PNG of {sizes} MP and DICOMs of 3.6 and 4.3 MP), "
              f"torch threads {args.threads}")
        model = models.load("chestcovnet")
        n = len(films)
        bound = engine_bound(model, films)
        local = local_report(model, films, root / "local", profile=args.profile, batch_size=args.batch_size)
        inproc = local_report(model, films, root / "inproc", profile=False, batch_size=args.batch_size,
                              isolated=False)
        print("\n| row | films/s | s per film (wall) | s per film (CPU) | x bound |\n|---|---:|---:|---:|---:|")
        print(f"| engine bound | {n / bound.wall:.3f} | {bound.wall / n:.3f} | {bound.cpu / n:.3f} | 1.00 |")
        print(f"| local report | {n / local.wall:.3f} | {local.wall / n:.3f} | {local.cpu / n:.3f} | "
              f"{local.wall / bound.wall:.2f} (CPU {local.cpu / bound.cpu:.2f}) |")
        print(f"| local report, decoding in this process (--no-isolation) | {n / inproc.wall:.3f} | "
              f"{inproc.wall / n:.3f} | {inproc.cpu / n:.3f} | {inproc.wall / bound.wall:.2f} "
              f"(CPU {inproc.cpu / bound.cpu:.2f}) |")
        if not args.skip_ray:
            rows = ray_reports(model, films, root)
            print(f"\nRay start-up (local, 2 CPUs): {rows.pop('ray start-up')['total']:.1f} s")
            print("\n| row | total s | films/s (total) | steady s per film | films/s (steady) |\n|---|---:|---:|---:|---:|")
            for name, r in rows.items():
                print(f"| {name} | {r['total']:.1f} | {n / r['total']:.3f} | {r['steady']:.3f} | {1 / r['steady']:.3f} |")
            one, two = rows["ray, 1 worker"], rows["ray, 2 workers"]
            print(f"\nRay 2 workers / 1 worker: {one['steady'] / two['steady']:.2f}x steady, "
                  f"{one['total'] / two['total']:.2f}x total (target >= 1.7x)")
        if not args.skip_page:
            page = batch_page(five)
            print(f"\nBatch page, the five films: {page:.1f} s (target <= 10 s); engine bound on the same five: "
                  f"{bound.wall / n * 5:.1f} s")


if __name__ == "__main__":
    main()
