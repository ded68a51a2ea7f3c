"""Stage: the cross-source check. With ``--holdout-source``, every image of that source scored at the
threshold chosen on the remaining val, and how often the out-of-distribution check warns on them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from models.data import SPLITS, Record
from models.metrics import binary_metrics, rounded, silent_errors
from models.train.calibration import Scorer
from models.train.data import TrainData
from models.train.ood_warnings import ood_warned, ood_warning_rate
from models.train.run_log import log


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
