"""Stage: calibration. The decision threshold on val (Youden's J) and the val metrics at it."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from models.data import Record
from models.metrics import binary_metrics, rounded, youden_threshold
from models.train.data import TrainData
from models.train.run_log import log

Scorer = Callable[[Sequence[Record]], np.ndarray]


def calibrate(score: Scorer, val: Sequence[Record]) -> tuple[float, dict[str, Any]]:
    """Decision threshold by Youden's J on ``val`` (0.5 when val has one class) and the val metrics at it."""
    y_val = TrainData.labels(val)
    p_val = score(val)
    threshold = youden_threshold(y_val, p_val) if len(set(y_val.tolist())) == 2 else 0.5
    metrics = binary_metrics(y_val, p_val, threshold)
    log.info("val threshold (Youden's J) %.4f; val %s", threshold, json.dumps(rounded(metrics)))
    return threshold, metrics
