"""Train the lung-field U-Net from scratch on CPU, checkpoint every epoch, write the bundle.

    python -m models.train_lungs --data ../shared/data/lungs --out runs/lungs [--epochs N] [--minutes M]
        [--threads 1] [--seed 0] [--batch 8] [--lr 3e-3]

- Input: :data:`xai.anatomy.LUNG_PREPROCESSING` through the project's ``load_radiograph`` + ``prepare_array``
  (cached once as uint8 on the 128 px model grid in ``<out>/cache_128.npz``).
- One network, two output channels (one per mask convention, :data:`xai.anatomy.CONVENTIONS`); each film's
  loss (BCE + soft Dice) is taken on its own convention's channel only, so both conventions share every
  feature while neither is forced onto the other's labels.
- Augmentation (:func:`models.lungs.augment_pair`): window/gamma before equalisation, rotation +-10 degrees,
  scale, shift, blur/noise; no flips. 8 % synthetic non-chest images with an empty target on both channels.
- ``--init`` continues from saved weights (a fine-tune: e.g. with ``--narrow-window`` for window robustness).
- AdamW, warm-up then cosine learning rate, best epoch by mean val Dice (both conventions weighted equally).
- ``--minutes`` caps the wall time: the schedule advances by whichever is further along, steps out of
  ``--epochs`` or wall time out of ``--minutes``, and training stops at the end of the epoch where it
  completes (the history records how many epochs ran). The cap includes building the cache.
Writes ``<out>/checkpoint.safetensors`` each epoch, ``<out>/best.safetensors``, ``<out>/history.json``,
``<out>/train.log``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from models.lungs import augment_pair, build_cache, dice, random_non_chest, read_lung_manifest
from xai.anatomy import CONVENTIONS, LUNG_PREPROCESSING
from xai.unet import DEFAULT_WIDTHS, LungUNet

log = logging.getLogger("train_lungs")
NON_CHEST_FRACTION = 0.08


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data/lungs")
    p.add_argument("--out", default="runs/lungs")
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--v7-weight", type=float, default=1.5, help="sampling weight of a V7 film relative to an NLM film")
    p.add_argument("--narrow-window", type=float, default=0.0,
                   help="probability of a narrow display window in augmentation (see models.lungs.augment_pair)")
    p.add_argument("--init", default=None, help="start from these weights (safetensors) instead of from scratch")
    return p.parse_args(argv)


def _loss(logits: torch.Tensor, target: torch.Tensor, channel: torch.Tensor, non_chest: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice on each film's own convention channel; non-chest images: BCE on both channels (empty)."""
    idx = torch.arange(len(logits))
    own = logits[idx, channel]
    bce = F.binary_cross_entropy_with_logits(own, target, reduction="none").mean(dim=(1, 2))
    p = torch.sigmoid(own)
    inter = (p * target).sum(dim=(1, 2))
    soft_dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)
    per = bce + torch.where(non_chest, torch.zeros_like(soft_dice), soft_dice)
    other = F.binary_cross_entropy_with_logits(logits[idx, 1 - channel], torch.zeros_like(target),
                                               reduction="none").mean(dim=(1, 2))
    per = per + torch.where(non_chest, other, torch.zeros_like(other))
    return per.mean()


def _progress(step: int, total_steps: int, start: float, minutes: float) -> float:
    """Fraction of the run done: the larger of steps done and wall time used (the CPU is shared)."""
    return max(step / total_steps, (time.monotonic() - start) / 60 / minutes)


def _lr(peak: float, progress: float, warmup: float = 0.1) -> float:
    """Linear warm-up to ``peak`` over the first 10 %, then cosine decay to 1 % of it."""
    if progress < warmup:
        return peak * (0.1 + 0.9 * progress / warmup)
    t = min(1.0, (progress - warmup) / (1 - warmup))
    return peak * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * t)))


def evaluate(model: LungUNet, cache: dict[str, np.ndarray], rows: np.ndarray, conventions: np.ndarray) -> list[float]:
    """Dice on the model grid (threshold 0.5) for each row, on its own convention's channel."""
    from models.lungs import finish_input

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            chunk = rows[start:start + 16]
            x = np.stack([finish_input(cache["image"][i].astype(np.float32) / 255, cache["content"][i],
                                       cache["image"].shape[1]) for i in chunk])
            logits = model(torch.from_numpy(x)[:, None])
            for j, i in enumerate(chunk):
                pred = logits[j, conventions[i]].numpy() > 0
                out.append(dice(pred, cache["mask"][i].astype(bool)))
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(out / "train.log"), logging.StreamHandler()])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    start = time.monotonic()

    records = read_lung_manifest(args.data)
    S = LUNG_PREPROCESSING.input_size
    cache = build_cache(records, out / f"cache_{S}.npz")
    log.info("cache ready: %d films in %.0f s", len(records), time.monotonic() - start)
    splits = np.array([r.split for r in records])
    conventions = np.array([r.convention for r in records])
    train = np.flatnonzero(splits == "train")
    val = np.flatnonzero(splits == "val")
    weights = np.where(conventions[train] == CONVENTIONS.index("v7"), args.v7_weight, 1.0)
    weights = weights / weights.sum()
    steps_per_epoch = len(train) // args.batch

    model = LungUNet(1, len(CONVENTIONS), DEFAULT_WIDTHS)
    if args.init:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.init), strict=True)
        log.info("initialised from %s", args.init)
    opt = torch.optim.AdamW(model.parameters(), lr=_lr(args.lr, 0.0), weight_decay=1e-4)
    total_steps = args.epochs * steps_per_epoch
    step = 0
    history, best = [], -1.0
    for epoch in range(args.epochs):
        model.train()
        t0, losses = time.monotonic(), []
        for _ in range(steps_per_epoch):
            xs, ys, chans, neg = [], [], [], []
            for i in rng.choice(train, size=args.batch, p=weights):
                if rng.uniform() < NON_CHEST_FRACTION:
                    xs.append(random_non_chest(rng, S))
                    ys.append(np.zeros((S, S), np.float32))
                    chans.append(int(rng.integers(0, len(CONVENTIONS))))
                    neg.append(True)
                    continue
                x, y = augment_pair(cache["image"][i], cache["mask"][i], cache["content"][i], rng,
                                    narrow_window=args.narrow_window)
                xs.append(x)
                ys.append(y)
                chans.append(int(conventions[i]))
                neg.append(False)
            logits = model(torch.from_numpy(np.stack(xs))[:, None])
            loss = _loss(logits, torch.from_numpy(np.stack(ys)), torch.tensor(chans), torch.tensor(neg))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            for group in opt.param_groups:
                group["lr"] = _lr(args.lr, _progress(step, total_steps, start, args.minutes))
            losses.append(float(loss.detach()))
        scores = evaluate(model, cache, val, conventions)
        by_conv = {c: float(np.mean([s for s, i in zip(scores, val, strict=True) if conventions[i] == k]))
                   for k, c in enumerate(CONVENTIONS)}
        mean_dice = float(np.mean(list(by_conv.values())))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_dice": by_conv,
                        "seconds": time.monotonic() - t0})
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, out / "checkpoint.safetensors")
        if mean_dice > best:
            best = mean_dice
            save_file(state, out / "best.safetensors")
        (out / "history.json").write_text(json.dumps({"args": vars(args), "history": history,
                                                      "best_mean_val_dice": best}, indent=1))
        log.info("epoch %d loss %.4f val dice %s (%.0f s)", epoch + 1, np.mean(losses),
                 {k: round(v, 4) for k, v in by_conv.items()}, time.monotonic() - t0)
        if _progress(step, total_steps, start, args.minutes) >= 1.0:
            log.info("schedule finished after epoch %d (%.1f min)", epoch + 1, (time.monotonic() - start) / 60)
            break
    log.info("done in %.1f min; best mean val Dice %.4f", (time.monotonic() - start) / 60, best)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
