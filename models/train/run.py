"""The stages in order: :func:`train` runs one training from parsed arguments, :func:`finish` calibrates,
checks the held-out source and writes the outputs for the model as it is."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.data import CLASS_NAMES, Augmentation, Record
from models.efficientnet_lite import EfficientNetLite0, efficientnet_lite0
from models.train.calibration import Scorer, calibrate
from models.train.data import TrainData, prepare_data
from models.train.features import build_features
from models.train.fit import fit_top, fit_whole
from models.train.held_out import check_held_out_source
from models.train.loop import FitResult
from models.train.predict import pooled_features, predict_images
from models.train.preprocessing import CHESTCOVNET_PREPROCESSING
from models.train.record import save_film_outputs, training_record, write_outputs
from models.train.run_log import _setup_logging, log
from xai.preprocessing import Preprocessing
from xai.scores import probabilities


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
