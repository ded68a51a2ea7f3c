"""Stages 1 and 2: :func:`fit_top` trains the blocks after the frozen front on the cached features,
:func:`fit_whole` fine-tunes the whole network on freshly augmented images; both run the epoch loop
:func:`models.train.loop._fit`."""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.data import Augmentation, augment, balanced_weights, mix_styles, normalize
from models.efficientnet_lite import EfficientNetLite0
from models.metrics import rounded
from models.train.data import TrainData
from models.train.features import Features
from models.train.loop import FitResult, _fit
from models.train.loss_terms import Adversary, _penalties
from models.train.predict import pooled_features, predict_features, predict_images
from models.train.run_log import log
from xai.preprocessing import Preprocessing


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
