"""The command line: :func:`parse_args` reads ``python -m models.train``'s arguments, :func:`main` runs
:func:`models.train.run.train` with them."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

import models.train
from models.train.preprocessing import CHESTCOVNET_PREPROCESSING
from models.train.run import train
from xai.preprocessing import CROP_MODES


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.train",
                                description=models.train.__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/chestcovnet", help="folder with manifest.csv and images/")
    p.add_argument("--out", required=True, help="output bundle folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10, help="stage 1 epochs (cached frozen-front features)")
    p.add_argument("--holdout-source", default=None, help="exact manifest source name to hold out entirely")
    p.add_argument("--max-images", type=int, default=None, help="smoke runs: cap train (and val) images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--patience", type=int, default=3, help="epochs without val improvement before stopping")
    p.add_argument("--freeze-blocks", type=int, default=15,
                   help="stage 1: freeze stem + this many MBConv blocks (their outputs are cached)")
    p.add_argument("--views", type=int, default=2, help="augmented views per train image in the feature cache")
    p.add_argument("--view-seed", type=int, default=1234, help="seed of the cached augmented views")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after the epoch that passes this many minutes of training (caches not counted)")
    p.add_argument("--whole-epochs", type=int, default=0,
                   help="stage 2: epochs of whole-network fine-tuning on freshly augmented images (0: off)")
    p.add_argument("--whole-lr", type=float, default=1e-4)
    p.add_argument("--whole-batch-size", type=int, default=16)
    p.add_argument("--whole-steps", type=int, default=None, help="stage 2: steps per epoch (default: one pass)")
    p.add_argument("--equalize", default=CHESTCOVNET_PREPROCESSING.equalize, choices=("none", "hist", "clahe"),
                   help="ablations: override the card's equalisation")
    p.add_argument("--crop", default=CHESTCOVNET_PREPROCESSING.crop, choices=CROP_MODES,
                   help="ablations: override the card's crop")
    p.add_argument("--cam-border-weight", type=float, default=0.0,
                   help="weight of the Grad-CAM border-share penalty (0: off)")
    p.add_argument("--cam-lung-weight", type=float, default=0.0,
                   help="weight of the penalty on the Grad-CAM share outside the dilated lung mask (0: off)")
    p.add_argument("--lungs", default=None, help="lungs/ folder (manifest.csv + masks) for --cam-lung-weight")
    p.add_argument("--lung-masks", default=None,
                   help="optional .npz (files, masks on the model grid) of predicted masks for films without a manual one")
    p.add_argument("--lung-convention", default="mixed", choices=("mixed", "nlm"),
                   help="--cam-lung-weight's region: 'mixed' = manual NLM masks and V7 polygons (retrocardiac lung "
                        "inside); 'nlm' = the visible lung fields only (manual NLM masks, else the lung U-Net's NLM "
                        "output for every other film): the heart and mediastinum count as outside")
    p.add_argument("--lung-dilate", type=int, default=16, help="lung mask dilation radius in model pixels")
    p.add_argument("--source-adversary-weight", type=float, default=0.0,
                   help="stage 1: gradient-reversal weight of the class-conditional source adversary (0: off)")
    p.add_argument("--mixstyle", type=float, default=0.0,
                   help="stage 1: probability per batch of MixStyle across sources on the cached features (0: off)")
    p.add_argument("--cache-dir", default="runs/cache", help="decoded-image cache ('' to disable)")
    p.add_argument("--name", default="chestcovnet")
    p.add_argument("--version", default="1.0")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.cam_lung_weight > 0 and not args.lungs:
        p.error("--cam-lung-weight needs --lungs (the folder with the lung-mask manifest)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    train(args, "python -m models.train " + shlex.join(argv))
    return 0
