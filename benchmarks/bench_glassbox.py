"""What the "How the maps are made" page costs, against the Explain panel, and what it shows on the samples.

    .venv/bin/python benchmarks/bench_glassbox.py [--repeats 15] [--threads 1]

Speed (the bundled ChestCOVNet, the MHH sample, 224 px, CPU, one torch thread, medians of process CPU time
with the variants interleaved in every repeat after one warm-up):

* ``panel``: ``Explainer.explain(x)``, the four maps the Explain page shows;
* ``panel + details``: the same call with ``details=True``;
* ``glass box``: what the page computes -- the call with ``details=True``, the plain input gradient
  (:func:`xai.glassbox.plain_input_gradient`, one extra forward + backward pass), the ReLU nodes of one
  more forward graph (:func:`xai.glassbox.guided_relus`) and every step of
  :mod:`xai.glassbox` (CAM steps, top channels, Grad-CAM++ contrast, guided contrast, Guided Grad-CAM).

Figures (every bundled sample, both classes): where Grad-CAM and Grad-CAM++ part (share of pixels whose
display values differ by >= 0.25, rank correlation), and how the maps of the two training seeds agree
(:func:`xai.compare.compare_maps`, Spearman per method).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from xai import glassbox  # noqa: E402
from xai.compare import compare_maps  # noqa: E402
from xai.engine import Explainer  # noqa: E402
from xai.pipeline import explain_source  # noqa: E402
from xai.preprocessing import prepare  # noqa: E402
from xai.radiograph import load_radiograph  # noqa: E402

SAMPLES = ("covid19_mhh_pa.jpg", "covid19_cxnet.jpg", "non_covid_nih_pa.png", "cr_pa_siim.dcm")


def glass_box(model: models.LoadedModel, explainer: Explainer, x: torch.Tensor, target: int) -> None:
    e = explainer.explain(x, target=target, details=True)
    d = glassbox.image_details(e)
    size = (x.shape[2], x.shape[3])
    cam = glassbox.cam_steps(d.activations, d.gradcam_weights, size)
    glassbox.top_channels(d.activations, d.gradcam_weights, 8)
    glassbox.plus_plus_contrast(d, size)
    plain = glassbox.plain_input_gradient(model.module, x, target)
    glassbox.guided_contrast(plain[0], e.raw["guided_backprop"][0])
    glassbox.guided_gradcam(e.raw["guided_backprop"][0], cam.upsampled)
    glassbox.guided_relus(model.module, x)


def speed(model: models.LoadedModel, repeats: int) -> None:
    x, _ = prepare(load_radiograph(REPO / "samples" / SAMPLES[0]), model.card.preprocessing)
    explainer = Explainer(model.module, target_layer=model.card.target_layer)
    variants = {
        "panel": lambda: explainer.explain(x, target=1),
        "panel + details": lambda: explainer.explain(x, target=1, details=True),
        "glass box": lambda: glass_box(model, explainer, x, 1),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.process_time()
            fn()
            times[name].append((time.process_time() - start) * 1e3)
    base = statistics.median(times["panel"])
    print(f"| variant | CPU ms (median of {repeats}) | x panel |\n|---|---|---|")
    for name, t in times.items():
        m = statistics.median(t)
        print(f"| {name} | {m:.0f} | {m / base:.2f}x |")


def figures(model: models.LoadedModel) -> None:
    second = models.load("chestcovnet-seed2")
    explainer = Explainer(model.module, target_layer=model.card.target_layer)
    print("\n| sample | class | P(class) | cells < 0 | Grad-CAM vs ++: differ share | Spearman | "
          "seeds: Grad-CAM | Grad-CAM++ | Guided BP | Guided Grad-CAM |\n|---|---|---|---|---|---|---|---|---|---|")
    for sample in SAMPLES:
        path = REPO / "samples" / sample
        x, _ = prepare(load_radiograph(path), model.card.preprocessing)
        for target, name in enumerate(model.card.class_names):
            e = explainer.explain(x, target=target, details=True)
            c = glassbox.plus_plus_contrast(glassbox.image_details(e), (x.shape[2], x.shape[3]))
            a, b = explain_source(path, model, target=target), explain_source(path, second, target=target)
            seeds = compare_maps(a.maps, b.maps)
            print(f"| {sample} | {name} | {float(e.probabilities[0, target]):.3f} | "
                  f"{100 * c.gradcam.negative_share:.0f} % | {100 * c.differ_share:.1f} % | {c.map_spearman:.2f} | "
                  + " | ".join(f"{seeds[m].spearman:.2f}" for m in seeds) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.set_printoptions(precision=3)
    model = models.load("chestcovnet")
    speed(model, args.repeats)
    figures(model)


if __name__ == "__main__":
    main()
