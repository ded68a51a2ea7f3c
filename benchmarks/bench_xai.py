"""Speed and peak memory of the four-map panel against a lower bound, pytorch-grad-cam and captum (CPU).

    .venv/bin/python benchmarks/bench_xai.py            # resnet18 + densenet121 at 224 and 512 px
    .venv/bin/python benchmarks/bench_xai.py --quick    # resnet18 at 224 px, 2 repeats (smoke run)

Per model and size, one image, seeded random weights (speed does not depend on training), target class 0:

* ``lower bound``: one forward pass plus one input-gradient backward pass
  (``torch.autograd.grad(logit, x)``, no parameter gradients). Any method that shows an input-resolution
  gradient map needs at least this.
* ``xai panel``: ``Explainer(model).explain(x)`` -- all four maps, display maps and numpy results included.
* ``pytorch-grad-cam``: the four maps the way its README shows them: ``GradCAM`` and ``GradCAMPlusPlus``
  (each in a ``with`` block), ``GuidedBackpropReLUModel`` (on its own copy of the model, since it swaps the
  ReLU modules), and guided Grad-CAM as ``deprocess_image(cam_mask * gb)``. Target layers as in its README:
  ``layer4[-1]`` for resnet, ``features[-1]`` for densenet.
* ``captum (3)``: ``LayerGradCam``, ``GuidedBackprop`` and ``GuidedGradCam`` ``attribute`` calls (no
  Grad-CAM++ in captum), on a copy with ``inplace=False`` ReLUs (captum's requirement for correctness).
* Engine variants, in the same interleaved repeats (second table): ``fresh explainer``,
  ``Explainer(model).explain(x)`` with a new explainer per call (the batch-norm-folded copy is cached per
  model, so this should cost what the reused explainer costs; target <= 1.05x the panel), and
  ``details=True``, the panel plus the CAMs' intermediate quantities (target <= 1.25x the panel).

Time: medians over repeats after one warm-up, as process CPU time and as wall-clock; the methods are
interleaved within each repeat so that background load hits them alike, in a seeded random order per
repeat. By default torch runs ONE intra-op thread (``--threads``): on a shared, busy machine multi-threaded wall-clock times are dominated by
scheduling (threads spinning while a sibling waits for a core), whereas single-thread CPU time measures the
work each method does; on a quiet machine the two agree. Memory: each method runs in a fresh subprocess (model built, one
warm-up call, ``gc``); the Linux peak-RSS counter is reset (``/proc/self/clear_refs`` = 5) just before one
measured call and ``VmHWM - VmRSS(before)`` is reported: the extra resident memory the call needed at its
peak (activations saved for backward, gradients, results), independent of imports and the model's own
weights. glibc's adaptive mmap threshold is turned off in those subprocesses (``MALLOC_MMAP_THRESHOLD_``)
so that freed tensors leave the resident set and the counter follows live memory. (Without ``clear_refs`` it falls back to ``ru_maxrss`` minus the RSS before, an upper bound.)
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

METHODS = ("lower bound", "xai panel", "pytorch-grad-cam", "captum (3)")  # main table, memory too
VARIANTS = ("fresh explainer", "details=True")  # engine variants, timed side by side with the above
TARGET = 0


def build_model(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, num_classes=2).eval()


def not_in_place(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return clone


def make_runner(method: str, name: str, model: nn.Module) -> Callable[[torch.Tensor], Any]:
    """A zero-state callable running one method once on ``x`` (copies made here, outside the timing)."""
    if method == "lower bound":

        def lower_bound(x: torch.Tensor) -> Any:
            leaf = x.clone().requires_grad_(True)
            return torch.autograd.grad(model(leaf)[0, TARGET], leaf)[0]

        return lower_bound

    if method == "xai panel":
        from xai import Explainer

        explainer = Explainer(model)
        return lambda x: explainer.explain(x, target=TARGET)

    if method == "fresh explainer":
        from xai import Explainer

        return lambda x: Explainer(model).explain(x, target=TARGET)

    if method == "details=True":
        from xai import Explainer

        detailed = Explainer(model)
        return lambda x: detailed.explain(x, target=TARGET, details=True)

    if method == "pytorch-grad-cam":
        from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, GuidedBackpropReLUModel
        from pytorch_grad_cam.utils.image import deprocess_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam_model = copy.deepcopy(model)
        gb_model = GuidedBackpropReLUModel(model=copy.deepcopy(model), device="cpu")
        layers = [cam_model.layer4[-1]] if name.startswith("resnet") else [cam_model.features[-1]]

        def grad_cam_library(x: torch.Tensor) -> Any:
            targets = [ClassifierOutputTarget(TARGET)]
            with GradCAM(model=cam_model, target_layers=layers) as cam:
                grayscale_cam = cam(input_tensor=x, targets=targets)[0]
            with GradCAMPlusPlus(model=cam_model, target_layers=layers) as cam:
                grayscale_cam_pp = cam(input_tensor=x, targets=targets)[0]
            gb = gb_model(x, target_category=TARGET)
            cam_mask = np.stack([grayscale_cam] * 3, axis=-1)
            cam_gb = deprocess_image(cam_mask * gb)
            return grayscale_cam, grayscale_cam_pp, deprocess_image(gb), cam_gb

        return grad_cam_library

    if method == "captum (3)":
        from captum.attr import GuidedBackprop, GuidedGradCam, LayerGradCam

        clone = not_in_place(model)
        layer = clone.layer4 if name.startswith("resnet") else clone.features
        gradcam, guided, guided_gradcam = (
            LayerGradCam(clone, layer),
            GuidedBackprop(clone),
            GuidedGradCam(clone, layer),
        )

        def captum_three(x: torch.Tensor) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return (
                    gradcam.attribute(x, target=TARGET, relu_attributions=True),
                    guided.attribute(x.clone(), target=TARGET),
                    guided_gradcam.attribute(x.clone(), target=TARGET),
                )

        return captum_three

    raise ValueError(method)


def make_input(size: int) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------ memory


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_memory_here(method: str, name: str, size: int) -> dict[str, Any]:
    """Run in a fresh process: peak extra resident memory (MiB) of one call after a warm-up."""
    model = build_model(name)
    run = make_runner(method, name, model)
    x = make_input(size)
    run(x)
    gc.collect()
    before = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        result = run(x)
        peak, how = _status_kib("VmHWM"), "VmHWM after clear_refs"
    except OSError:
        result = run(x)
        peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss (upper bound)"
    del result
    return {"peak_mib": (peak - before) / 1024, "how": how}


def measure_memory(method: str, name: str, size: int) -> float:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from benchmarks.bench_xai import measure_memory_here; "
        "print(json.dumps(measure_memory_here(sys.argv[2], sys.argv[3], int(sys.argv[4]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO), method, name, str(size)],
        check=True,
        capture_output=True,
        text=True,
        # A fixed mmap threshold turns off glibc's adaptive one, so that every large buffer is mmap-ed and
        # returned to the OS when freed: resident memory then follows live tensors (otherwise memory freed
        # after the warm-up stays resident in the heap and hides the measured call's peak).
        env={
            **os.environ,
            "PYTHONWARNINGS": "ignore",
            "MALLOC_MMAP_THRESHOLD_": "65536",
            "MALLOC_TRIM_THRESHOLD_": "0",
        },
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


# -------------------------------------------------------------------------------------------------- time


def measure_times(name: str, size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median wall-clock and process CPU time (ms) per method (the main four and the engine variants)."""
    model = build_model(name)
    runners = {m: make_runner(m, name, model) for m in METHODS + VARIANTS}
    x = make_input(size)
    for run in runners.values():  # warm-up
        run(x)
    wall: dict[str, list[float]] = {m: [] for m in runners}
    cpu: dict[str, list[float]] = {m: [] for m in runners}
    names = list(runners)
    for repeat in range(repeats):
        # A seeded shuffle each repeat: no method always runs right after the same neighbour (a method
        # following captum's large, freshly freed allocations pays page faults that are not its own).
        for method in random.Random(repeat).sample(names, len(names)):
            run = runners[method]
            gc.collect()
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run(x)
            cpu[method].append((time.process_time() - start_cpu) * 1e3)
            wall[method].append((time.perf_counter() - start_wall) * 1e3)
    return {
        "wall": {m: statistics.median(v) for m, v in wall.items()},
        "cpu": {m: statistics.median(v) for m, v in cpu.items()},
    }


def print_time_table(rows: list[tuple[str, int, dict[str, float]]], title: str) -> None:
    print(f"\n{title}\n")
    print(
        "| model | px | lower bound ms | xai panel ms (x LB) | pytorch-grad-cam ms (x LB) | captum (3) ms (x LB) "
        "| speed-up vs pytorch-grad-cam | speed-up vs captum |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, size, t in rows:
        lb = t["lower bound"]
        print(
            f"| {name} | {size} | {lb:.0f} | {t['xai panel']:.0f} ({t['xai panel'] / lb:.2f}x) "
            f"| {t['pytorch-grad-cam']:.0f} ({t['pytorch-grad-cam'] / lb:.2f}x) "
            f"| {t['captum (3)']:.0f} ({t['captum (3)'] / lb:.2f}x) "
            f"| {t['pytorch-grad-cam'] / t['xai panel']:.1f}x | {t['captum (3)'] / t['xai panel']:.1f}x |"
        )


def print_variant_table(rows: list[tuple[str, int, dict[str, float]]], title: str) -> None:
    print(f"\n{title}\n")
    print("| model | px | xai panel ms (x LB) | fresh explainer per call ms (x LB, x panel) "
          "| details=True ms (x panel) |")
    print("|---|---|---|---|---|")
    for name, size, t in rows:
        lb, panel, fresh, detailed = t["lower bound"], t["xai panel"], t["fresh explainer"], t["details=True"]
        print(
            f"| {name} | {size} | {panel:.0f} ({panel / lb:.2f}x) "
            f"| {fresh:.0f} ({fresh / lb:.2f}x, {fresh / panel:.2f}x) | {detailed:.0f} ({detailed / panel:.2f}x) |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="resnet18 at 224 px, 2 repeats, no memory runs")
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeats per method (default 5 / 3 at 512 px)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1, see below)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument(
        "--case", action="append", default=None, metavar="MODEL:PX",
        help="only this torchvision model and size (repeatable), e.g. --case densenet121:224",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the memory subprocesses
    if args.case:
        cases = [(c.partition(":")[0], int(c.partition(":")[2] or 224)) for c in args.case]
    elif args.quick:
        cases = [("resnet18", 224)]
    else:
        cases = [(m, s) for m in ("resnet18", "densenet121") for s in (224, 512)]
    measure_mem = not (args.quick or args.no_memory)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), CPU ({os.cpu_count()} cores), "
        f"load average {os.getloadavg()[0]:.1f}; one image, medians",
        flush=True,
    )
    rows = []
    for name, size in cases:
        repeats = args.repeats or (2 if args.quick else (5 if size <= 224 else 3))
        times = measure_times(name, size, repeats)
        mem = {m: measure_memory(m, name, size) for m in METHODS} if measure_mem else {}
        rows.append((name, size, times, mem))
        print(
            f"  {name} {size}px ({repeats} repeats): "
            + ", ".join(
                f"{m} {times['cpu'][m]:.0f} ms cpu / {times['wall'][m]:.0f} ms wall" for m in METHODS + VARIANTS
            )
            + ("; peak MiB " + ", ".join(f"{m} {v:.0f}" for m, v in mem.items()) if mem else ""),
            flush=True,
        )

    print_time_table([(n, s, t["cpu"]) for n, s, t, _ in rows], "Process CPU time (ms, median)")
    print_time_table([(n, s, t["wall"]) for n, s, t, _ in rows], "Wall-clock time (ms, median)")
    print_variant_table([(n, s, t["cpu"]) for n, s, t, _ in rows], "Engine variants, process CPU time (ms, median)")
    print_variant_table([(n, s, t["wall"]) for n, s, t, _ in rows], "Engine variants, wall-clock time (ms, median)")
    if measure_mem:
        print("\nPeak extra resident memory of one call (MiB; fresh process per cell)\n")
        print("| model | px | lower bound | xai panel (x LB) | pytorch-grad-cam (x LB) | captum (3) (x LB) |")
        print("|---|---|---|---|---|---|")
        for name, size, _, mem in rows:
            lb = mem["lower bound"]
            cells = " | ".join(f"{mem[m]:.0f} ({mem[m] / lb:.2f}x)" for m in METHODS[1:])
            print(f"| {name} | {size} | {lb:.0f} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
