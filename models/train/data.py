"""Stage: data. The splits of one run (fixed patient-level split, minus a held-out source), the decoded
images they are read from and, with ``--cam-lung-weight``, each film's allowed Grad-CAM region."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.cam_penalties import CAM_SIZE, dilate, outside_weights
from models.data import (
    CLASS_NAMES,
    SPLITS,
    Record,
    build_cache,
    build_mask_cache,
    build_predicted_mask_cache,
    read_lung_masks,
    read_manifest,
    select,
)
from models.train.run_log import log
from xai.preprocessing import Preprocessing


@dataclass
class TrainData:
    """The splits of one run and the decoded images (and lung regions) they are read from."""

    records: list[Record]  # the whole manifest
    train: list[Record]
    val: list[Record]
    held: list[Record]  # the held-out source's images (all splits); empty without --holdout-source
    needed: list[Record]  # rows of ``images`` (and ``outside``)
    images: np.ndarray  # (N, S, S) float16, display space
    outside: torch.Tensor | None = None  # (N, h, w) CAM-cell mass outside each film's allowed region
    total: torch.Tensor | None = None  # (h, w) CAM-cell mass in all
    masks_per_source: dict[str, int] = dataclasses.field(default_factory=dict)  # train films with a lung mask

    def __post_init__(self) -> None:
        self._row = {r.file: i for i, r in enumerate(self.needed)}

    def rows(self, records: Sequence[Record]) -> np.ndarray:
        return np.array([self._row[r.file] for r in records], dtype=np.int64)

    @staticmethod
    def labels(records: Sequence[Record]) -> np.ndarray:
        return np.array([r.label for r in records], dtype=np.int64)


def prepare_data(args: argparse.Namespace, pre: Preprocessing) -> TrainData:
    """Read the manifest, take the fixed splits (minus a held-out source), decode every image once, and
    (with ``--cam-lung-weight``) put each film's dilated lung mask on the CAM grid."""
    data_dir = Path(args.data)
    records = read_manifest(data_dir)
    holdout = args.holdout_source
    if holdout is not None and holdout not in {r.source for r in records}:
        raise SystemExit(f"--holdout-source {holdout!r} is not a source in the manifest; sources: "
                         f"{sorted({r.source for r in records})}")
    train_recs = _cap(select(records, ["train"], exclude_source=holdout), args.max_images)
    val_recs = _cap(select(records, ["val"], exclude_source=holdout), args.max_images)
    held_recs = _cap(select(records, SPLITS, only_source=holdout), args.max_images) if holdout else []
    log.info("train %d, val %d, held-out %d images (%s); seed %d", len(train_recs), len(val_recs),
             len(held_recs), holdout or "no source held out", args.seed)
    # The full-manifest cache is shared by all runs.
    needed = records if args.max_images is None else train_recs + val_recs + held_recs
    t0 = time.time()
    images = build_cache(data_dir, needed, pre, args.cache_dir or None)
    log.info("decoded in %.0f s", time.time() - t0)
    data = TrainData(records, train_recs, val_recs, held_recs, needed, images)
    if args.cam_lung_weight > 0:
        _attach_lung_regions(args, pre, data)
    return data


def _attach_lung_regions(args: argparse.Namespace, pre: Preprocessing, data: TrainData) -> None:
    """Each film's allowed CAM region: its dilated lung mask (manual first, then ``--lung-masks``
    predictions), or the central 80 % for films with neither."""
    nlm = getattr(args, "lung_convention", "mixed") == "nlm"
    masks, has = build_mask_cache(args.data, data.needed, pre, read_lung_masks(args.lungs, "nlm" if nlm else None),
                                  args.cache_dir or None)
    if nlm:
        predicted, found = build_predicted_mask_cache(args.data, data.needed, pre, "nlm", args.cache_dir or None)
        fill = ~has & found
        masks[fill], has[fill] = predicted[fill], True
    if args.lung_masks:
        with np.load(args.lung_masks, allow_pickle=False) as z:
            by_file = dict(zip(z["files"].tolist(), z["masks"], strict=True))
        for i, r in enumerate(data.needed):
            if not has[i] and r.file in by_file:
                masks[i], has[i] = by_file[r.file] > 0, True
    grid = CAM_SIZE // 32  # EfficientNet-Lite0's head stride
    data.total, data.outside = outside_weights(dilate(masks, args.lung_dilate), has, grid, grid)
    train_has = has[data.rows(data.train)]
    for r, h in zip(data.train, train_has, strict=True):
        data.masks_per_source[r.source] = data.masks_per_source.get(r.source, 0) + int(h)
    log.info("lung masks for %d of %d train films: %s", int(train_has.sum()), len(data.train),
             data.masks_per_source)


def _cap(records: list[Record], n: int | None) -> list[Record]:
    """First ``n`` records alternating between classes (a smoke run still sees both)."""
    if n is None or n >= len(records):
        return records
    by_class = [[r for r in records if r.label == c] for c in range(len(CLASS_NAMES))]
    out: list[Record] = []
    i = 0
    while len(out) < n and any(i < len(b) for b in by_class):
        out.extend(b[i] for b in by_class if i < len(b) and len(out) < n)
        i += 1
    return out
