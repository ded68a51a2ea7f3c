"""The app's out-of-distribution check refitted on one run (train split) and calibrated on its val split:
which records it warns on, and how often."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from models.data import Record
from models.train.data import TrainData


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
