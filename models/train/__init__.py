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

:func:`train` (:mod:`~models.train.run`) runs the stages in order, a module each:
:func:`~models.train.data.prepare_data`, :func:`~models.train.features.build_features`,
:func:`~models.train.fit.fit_top` (and :func:`~models.train.fit.fit_whole`, both on the epoch loop of
:mod:`~models.train.loop`), :func:`~models.train.calibration.calibrate`,
:func:`~models.train.held_out.check_held_out_source`, :func:`~models.train.record.write_outputs`.
Beside them: :mod:`~models.train.cli` (the arguments and :func:`main`), :mod:`~models.train.preprocessing`
(the card's preprocessing), :mod:`~models.train.predict` (outputs in eval mode),
:mod:`~models.train.loss_terms` (the Grad-CAM penalties and the source adversary of a run),
:mod:`~models.train.ood_warnings` (the app's out-of-distribution check refitted on the run) and
:mod:`~models.train.run_log` (the log).
"""

from __future__ import annotations

from models.train.cli import main, parse_args
from models.train.run import train

__all__ = ["main", "parse_args", "train"]
