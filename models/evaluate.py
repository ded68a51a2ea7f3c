"""Evaluate a model bundle on one split of the ChestCOVNet data set; print ONE JSON object.

    python -m models.evaluate [--model NAME_OR_PATH] [--data ../shared/data/chestcovnet] [--split test]
        [--update-card] [--border-energy N]

Top-level keys: ``auroc, sensitivity, specificity, precision, f1, threshold, ece, confusion_matrix, n``
(positive class = the card's ``positive_class``, at the card's threshold) and ``per_source`` ({source:
same keys}), plus ``model``, ``split``, ``date``, ``command``. Every image goes through the same
``load_radiograph`` + ``prepare`` as the app and the CLI; inference is deterministic on CPU, so the
card's AUROC reproduces to 3 decimals.

``--update-card`` writes the figures into the bundle's ``card.json`` (``metrics[split]``).
``--border-energy N`` also measures, on N images of the split, the share of Grad-CAM energy (sum of the
map) that falls in the outer 10 % band of the ORIGINAL image (maps taken back with
``Geometry.to_original``); a model looking at film edges, markers and text scores high.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import BUNDLES_DIR, LoadedModel, ModelError, load, write_card
from models.data import SPLITS, Record, read_manifest
from models.metrics import binary_metrics, rounded

BORDER_FRACTION = 0.10


def _prepared(data_dir: Path, rec: Record, loaded: LoadedModel):  # noqa: ANN202 - (tensor, Geometry, pixels)
    from xai.preprocessing import prepare
    from xai.radiograph import load_radiograph

    radiograph = load_radiograph(data_dir / "images" / rec.file)
    x, geometry = prepare(radiograph, loaded.card.preprocessing)
    return x, geometry, radiograph


@torch.no_grad()
def score_records(loaded: LoadedModel, data_dir: Path, records: Sequence[Record], batch_size: int = 32,
                  progress: bool = False) -> np.ndarray:
    """Positive-class probabilities for ``records`` (same decode + prepare as the app)."""
    from tqdm import tqdm

    module = loaded.module
    was_training = module.training
    module.eval()
    scores: list[np.ndarray] = []
    try:
        for start in tqdm(range(0, len(records), batch_size), disable=not progress, desc="evaluate",
                          mininterval=5):
            batch = torch.cat([_prepared(data_dir, r, loaded)[0] for r in records[start:start + batch_size]])
            probs = torch.softmax(module(batch).double(), dim=1)[:, loaded.card.positive_index]
            scores.append(probs.numpy())
    finally:
        module.train(was_training)
    return np.concatenate(scores) if scores else np.zeros(0)


def evaluate(loaded: LoadedModel, data_dir: str | Path, split: str = "test", *,
             progress: bool = False) -> dict[str, Any]:
    """Metrics at the card's threshold on ``split``, overall and per source."""
    data_dir = Path(data_dir)
    card = loaded.card
    records = [r for r in read_manifest(data_dir, card.class_names) if r.split == split]
    if not records:
        raise ValueError(f"no images in split {split!r}")
    scores = score_records(loaded, data_dir, records, progress=progress)
    labels = np.array([int(r.label == card.positive_index) for r in records])
    result = binary_metrics(labels, scores, card.threshold)
    per_source = {}
    for source in sorted({r.source for r in records}):
        mask = np.array([r.source == source for r in records])
        per_source[source] = binary_metrics(labels[mask], scores[mask], card.threshold)
    result["per_source"] = per_source
    return result


def border_energy(loaded: LoadedModel, data_dir: str | Path, records: Sequence[Record],
                  fraction: float = BORDER_FRACTION) -> dict[str, Any]:
    """Share of Grad-CAM energy in the outer ``fraction`` band of each original image (mean, median, max).

    For each image: Grad-CAM for the predicted class at the card's target layer, brought to the original
    pixel grid with ``Geometry.to_original``; share = sum(map in band) / sum(map). The band alone covers
    ``1 - (1 - 2 f)^2`` = 36 % of the area for f = 10 %, so a map spread uniformly would score 0.36.
    """
    from xai import Explainer

    data_dir = Path(data_dir)
    explainer = Explainer(loaded.module, target_layer=loaded.card.target_layer)
    shares: list[float] = []
    for rec in records:
        x, geometry, _ = _prepared(data_dir, rec, loaded)
        explanation = explainer.explain(x, target=None, methods=("gradcam",))
        heat = geometry.to_original(np.asarray(explanation.maps["gradcam"][0], dtype=np.float32))
        total = float(heat.sum())
        if total <= 0:
            continue
        h, w = heat.shape
        by, bx = max(1, round(fraction * h)), max(1, round(fraction * w))
        inner = float(heat[by:h - by, bx:w - bx].sum())
        shares.append((total - inner) / total)
    arr = np.array(shares)
    return {"mean": float(arr.mean()) if len(arr) else None, "median": float(np.median(arr)) if len(arr) else None,
            "max": float(arr.max()) if len(arr) else None, "n": len(arr), "band": f"outer {fraction:.0%} of each side",
            "uniform_map_share": 1 - (1 - 2 * fraction) ** 2, "method": "gradcam, predicted class",
            "target_layer": loaded.card.target_layer}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="chestcovnet", help="bundle name, bundle folder or .zip")
    p.add_argument("--data", default="../shared/data/chestcovnet")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--update-card", action="store_true", help="write the metrics into the bundle's card.json")
    p.add_argument("--border-energy", type=int, default=0, metavar="N",
                   help="also measure Grad-CAM border energy on N images of the split (0: skip)")
    p.add_argument("--cross-source-from", nargs="+", default=None, metavar="DIR",
                   help="copy the cross_source checks of these --holdout-source training outputs into the "
                        "bundle's card (no evaluation is run)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def merge_cross_source(bundle_dir: str | Path, holdout_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Copy ``cross_source`` entries from held-out-source training bundles into a bundle's card."""
    from dataclasses import replace

    bundle_dir = Path(bundle_dir)
    loaded = load(bundle_dir)
    cross = dict(loaded.card.cross_source)
    for directory in holdout_dirs:
        other = json.loads((Path(directory) / "card.json").read_text(encoding="utf-8"))
        if other.get("architecture") != loaded.card.architecture or not other.get("cross_source"):
            raise ModelError(f"{directory} is not a held-out-source run of {loaded.card.architecture}")
        for source, entry in other["cross_source"].items():
            cross[source] = {**entry, "model": {"name": other["name"], "sha256": other["sha256"]}}
    write_card(bundle_dir, replace(loaded.card, cross_source=cross))
    return cross


def _bundle_dir(model: str) -> Path:
    path = Path(model)
    if path.is_dir():
        return path
    if (BUNDLES_DIR / model).is_dir():
        return BUNDLES_DIR / model
    raise ModelError(f"--update-card needs a bundle folder; {model!r} is not one")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        loaded = load(args.model)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = "python -m models.evaluate " + shlex.join(argv)
    if args.cross_source_from:
        print(json.dumps(merge_cross_source(_bundle_dir(args.model), args.cross_source_from), indent=2))
        return 0
    result = rounded(evaluate(loaded, args.data, args.split, progress=sys.stderr.isatty()))
    result["model"] = {"name": loaded.card.name, "version": loaded.card.version, "sha256": loaded.card.sha256}
    result["split"] = args.split
    result["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    result["command"] = command
    energy = None
    if args.border_energy > 0:
        records = [r for r in read_manifest(args.data, loaded.card.class_names) if r.split == args.split]
        step = max(1, len(records) // args.border_energy)
        energy = rounded(border_energy(loaded, args.data, records[::step][:args.border_energy]))
        energy.update(split=args.split, date=result["date"], command=command)
        result["grad_cam_border_energy"] = energy
    print(json.dumps(result, indent=2))
    if args.update_card:
        from dataclasses import replace

        card = loaded.card
        metrics = dict(card.metrics)
        metrics[args.split] = {k: v for k, v in result.items() if k != "grad_cam_border_energy"}
        card = replace(card, metrics=metrics, grad_cam_border_energy=energy or card.grad_cam_border_energy)
        write_card(_bundle_dir(args.model), card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
