"""What a run adds to the cross-entropy of a batch: the Grad-CAM penalties (:mod:`models.cam_penalties`)
and the class-conditional source adversary (:mod:`models.source_adversary`), as the command line sets them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from models.cam_penalties import cam_border_share, cam_outside_share
from models.efficientnet_lite import HEAD_CHANNELS, EfficientNetLite0
from models.source_adversary import SourceAdversary
from models.train.data import TrainData


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
