"""Stage: features. The frozen front (stem + the first blocks) and the cache of its outputs for the clean
images and a fixed set of augmented views, shared by every run."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.data import Augmentation, augment, normalize
from models.efficientnet_lite import EfficientNetLite0
from models.train.data import TrainData
from models.train.run_log import log
from xai.preprocessing import Preprocessing


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
