"""The epoch loop both stages share: AdamW, linear warm-up then cosine decay, early stopping on val AUROC
(ties: val loss), the best epoch's weights restored."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.metrics import auroc
from models.train.run_log import log


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    minutes: float
    source_adversary: dict[str, Any] | None = None  # the adversary's weight, sources and val accuracy


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


def _lr_lambda(total_steps: int, warmup: int):  # noqa: ANN202
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f
