"""Sanity check + stability for one radiograph with the default model: wall time (target <= 20 s on CPU).

    .venv/bin/python benchmarks/bench_trust.py [IMAGE] [--model chestcovnet] [--threads N]

Prints the time of each part, the sanity-check verdict per method (Spearman / SSIM after randomising every
layer group) and the stability summary. IMAGE defaults to the first ``test`` image of the shared data set
that has an NIH finding box.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chestcovnet"
TARGET_S = 20.0
sys.path.insert(0, str(ROOT))  # the repository's own packages first (models/, xai/)


def default_image() -> Path:
    with (DATA / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "test" and row.get("nih_boxes_1024"):
                return DATA / "images" / row["file"]
    raise SystemExit(f"no test image with a box in {DATA}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", nargs="?", type=Path, default=None)
    parser.add_argument("--model", default="chestcovnet")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import models
    from xai.preprocessing import prepare
    from xai.radiograph import load_radiograph
    from xai.trust.sanity import sanity_check
    from xai.trust.stability import stability

    image = args.image or default_image()
    t0 = time.perf_counter()
    model = models.load(args.model)
    radiograph = load_radiograph(image)
    x, _geometry = prepare(radiograph, model.card.preprocessing)
    second = models.second_checkpoint(model.card)
    t_load = time.perf_counter() - t0
    print(f"model {model.card.name} {model.card.version} ({model.card.architecture}), image {image.name} "
          f"{radiograph.pixels.shape[1]}x{radiograph.pixels.shape[0]}, torch threads {torch.get_num_threads()}, "
          f"second checkpoint: {second.card.name if second else 'none'}")

    from xai.engine import Explainer

    explainer = Explainer(model.module, target_layer=model.card.target_layer)
    target = int(explainer.explain(x).target[0])  # the predicted class (a non-flat map to test); warm-up
    one = []
    for _ in range(3):
        ts = time.perf_counter()
        explainer.explain(x, target=target)
        one.append(time.perf_counter() - ts)
    t_one = sorted(one)[1]
    print(f"one explanation (four maps, median of 3): {t_one:.3f} s — the load-independent unit below")

    t1 = time.perf_counter()
    sanity = sanity_check(model, x, target=target)
    t_sanity = time.perf_counter() - t1
    t2 = time.perf_counter()
    stab = stability(model, radiograph, target=sanity.target, second_model=second)
    t_stab = time.perf_counter() - t2
    total = t_sanity + t_stab

    print(f"\nsanity check ({len(sanity.steps)} cascade steps, target {model.card.class_names[sanity.target]}): "
          f"{t_sanity:.2f} s")
    print("| method | Spearman, all layers random | SSIM, all layers random | first step with Spearman < 0.5 "
          "| verdict (< 0.5 passes) |")
    print("|---|---:|---:|---|---|")
    for row in sanity.table():
        print(f"| {row['method']} | {row['spearman_all_random']:.3f} | {row['ssim_all_random']:.3f} "
              f"| {row['changes_at']} | {row['verdict']} |")
    print("Spearman per step: " + "; ".join(
        f"{m}: " + " ".join(f"{v:.2f}" for v in sanity.spearman[m]) for m in sanity.methods))
    print(f"\nstability ({len(stab.comparisons)} changes{' + second checkpoint' if stab.checkpoint else ''}): "
          f"{t_stab:.2f} s")
    summary = stab.summary()
    keys = list(next(iter(summary.values())))
    print("| method | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for method, figures in summary.items():
        print(f"| {method} | " + " | ".join(f"{figures[k]:.3f}" for k in keys) + " |")
    import os

    print(f"\nload {t_load:.2f} s (not counted); sanity + stability {total:.2f} s "
          f"(target <= {TARGET_S:.0f} s: {'met' if total <= TARGET_S else 'NOT met'}; "
          f"{total / TARGET_S:.2f}x the budget) = {total / t_one:.1f} x one explanation; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
