"""Evaluate a model bundle on one split of the ChestCOVNet data set; print ONE JSON object.

    python -m models.evaluate [--model NAME_OR_PATH] [--data ../shared/data/chestcovnet] [--split test]
        [--update-card] [--border-energy N]

Top-level keys: ``auroc, sensitivity, specificity, precision, f1, threshold, ece, confusion_matrix, n``
(positive class = the card's ``positive_class``, at the card's threshold) and ``per_source`` ({source:
same keys}), plus ``model``, ``split``, ``date``, ``command``. Every image goes through the same
``load_radiograph`` + ``prepare`` as the app and the CLI; inference is deterministic on CPU, so the
card's AUROC reproduces to 3 decimals.

``--update-card`` writes the figures into the bundle's ``card.json`` (``metrics[split]``).
``--ood`` scores every split once, fits the out-of-distribution statistics (:mod:`xai.trust.ood`) on
``train`` and calibrates them on ``val`` (written beside the bundle as ``ood.safetensors`` with
``--update-card``), and reports how often they warn on the split, per source.
``--lung-evidence manual|predicted`` measures Grad-CAM's share of evidence inside the lungs
(:func:`xai.anatomy.evidence_in_lungs`) on the split's COVID-19 films, per source: with the manual /
V7 masks of ``../shared/data/lungs`` where a film has one, or the lung U-Net's mask (:func:`xai.anatomy.lung_mask`).
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
from models.metrics import binary_metrics, rounded, silent_errors

BORDER_FRACTION = 0.10


def _prepared(data_dir: Path, rec: Record, loaded: LoadedModel):  # noqa: ANN202 - (tensor, Geometry, pixels)
    import xai.anatomy  # noqa: F401 - registers the "lungs" crop a card may name (xai.preprocessing.crop_box)
    from xai.preprocessing import prepare
    from xai.radiograph import load_radiograph

    radiograph = load_radiograph(data_dir / "images" / rec.file)
    x, geometry = prepare(radiograph, loaded.card.preprocessing)
    return x, geometry, radiograph


@torch.no_grad()
def score_records(loaded: LoadedModel, data_dir: Path, records: Sequence[Record], batch_size: int = 32,
                  progress: bool = False) -> np.ndarray:
    """Positive-class probabilities for ``records`` (same decode + prepare as the app)."""
    return score_and_features(loaded, data_dir, records, batch_size, progress, features=False)[0]


@torch.no_grad()
def score_and_features(loaded: LoadedModel, data_dir: Path, records: Sequence[Record], batch_size: int = 32,
                       progress: bool = False, *, features: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Positive-class probabilities and (with ``features``) the last linear layer's input, as the OOD check
    sees it (:func:`xai.trust.ood.extract_features`), in one forward pass per batch."""
    from tqdm import tqdm

    from models.train.predict import eval_mode
    from xai.scores import probabilities
    from xai.trust.ood import extract_features

    module = loaded.module
    scores: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    with eval_mode(module):
        for start in tqdm(range(0, len(records), batch_size), disable=not progress, desc="evaluate",
                          mininterval=5):
            batch = torch.cat([_prepared(data_dir, r, loaded)[0] for r in records[start:start + batch_size]])
            if features:
                f, logits = extract_features(loaded, batch)
                feats.append(f)
                logits_t = torch.from_numpy(logits)
            else:
                logits_t = module(batch)
            scores.append(probabilities(logits_t.double())[:, loaded.card.positive_index].numpy())
    return (np.concatenate(scores) if scores else np.zeros(0),
            (np.concatenate(feats) if feats else None) if features else None)


def metrics_by_source(labels: np.ndarray, scores: np.ndarray, records: Sequence[Record],
                      threshold: float) -> dict[str, Any]:
    """Metrics at ``threshold`` overall, plus ``per_source``."""
    result = binary_metrics(labels, scores, threshold)
    result["per_source"] = {
        source: binary_metrics(labels[m], scores[m], threshold)
        for source in sorted({r.source for r in records})
        if (m := np.array([r.source == source for r in records])).any()}
    return result


def fit_ood_stats(loaded: LoadedModel, records: Sequence[Record], features: np.ndarray):  # noqa: ANN201 - OODStats
    """Out-of-distribution statistics (:mod:`xai.trust.ood`) from precomputed features: class Gaussians
    on the ``train`` rows, distances calibrated on the ``val`` rows (:func:`xai.trust.ood.stats_from_features`)."""
    from xai.trust.ood import stats_from_features

    split = np.array([r.split for r in records])
    labels = np.array([int(r.label) for r in records])
    train = split == "train"
    return stats_from_features(loaded, features[train], labels[train], features[split == "val"])


def ood_warning_rates(stats, records: Sequence[Record], features: np.ndarray) -> dict[str, Any]:  # noqa: ANN001
    """How often ``stats`` warn (distance above their val percentile) on ``records``, overall and per source."""
    from xai.trust.ood import WARN_PERCENTILE

    warned = ood_warned(stats, features)

    def rate(mask: np.ndarray) -> dict[str, Any]:
        return {"warned": int(warned[mask].sum()), "n": int(mask.sum()), "rate": float(warned[mask].mean())}

    sources = np.array([r.source for r in records])
    return {**rate(np.ones(len(records), dtype=bool)),
            "per_source": {s: rate(sources == s) for s in sorted(set(sources.tolist()))},
            "rule": f"Mahalanobis distance above the {WARN_PERCENTILE:.0f}th percentile of val distances",
            "fitted_on": f"train split ({stats.n_train} films), calibrated on val"}


def ood_warned(stats, features: np.ndarray) -> np.ndarray:  # noqa: ANN001 - xai.trust.ood.OODStats
    """Per film: is its Mahalanobis distance (:mod:`xai.trust.ood`) above the statistics' threshold."""
    from xai.trust.ood import mahalanobis, transform_features

    return mahalanobis(transform_features(features, stats.transform), stats.means, stats.precision) > stats.threshold


def silent_errors_by_source(loaded: LoadedModel, records: Sequence[Record], scores: np.ndarray,
                            warned: np.ndarray) -> dict[str, Any]:
    """:func:`models.metrics.silent_errors` at the card's threshold, overall and per source."""
    labels = np.array([int(r.label == loaded.card.positive_index) for r in records])
    sources = np.array([r.source for r in records])
    threshold = loaded.card.threshold
    return {**silent_errors(labels, scores, threshold, warned),
            "rule": "misclassified at the card's threshold AND no out-of-distribution warning",
            "per_source": {s: silent_errors(labels[m], scores[m], threshold, warned[m])
                           for s in sorted(set(sources.tolist())) if (m := sources == s).any()}}


def lung_evidence(loaded: LoadedModel, data_dir: str | Path, records: Sequence[Record], masks: str,
                  lungs_dir: str | Path | None = None) -> dict[str, Any]:
    """Grad-CAM's share of evidence inside the lungs (:func:`xai.anatomy.evidence_in_lungs`: the map's mass
    inside the mask dilated by 3 % of the width), per source: median, mean, n, share of films >= 0.70.

    ``masks``: ``"manual"`` (``lungs/manifest.csv``; films without one are skipped) or ``"predicted"``
    (:func:`xai.anatomy.lung_mask`, every film; a film where it finds no lung field is skipped and counted).
    Grad-CAM for the card's positive class at the card's target layer, on the original pixel grid."""
    shares, skipped = lung_evidence_shares(loaded, data_dir, records, masks, lungs_dir)
    return summarize_lung_evidence(shares, skipped, masks)


def lung_evidence_shares(loaded: LoadedModel, data_dir: str | Path, records: Sequence[Record], masks: str,
                         lungs_dir: str | Path | None = None,
                         between: dict[str, list[float]] | None = None) -> tuple[dict[str, list[float]], int]:
    """({source: per-film shares}, films skipped for want of a mask) that :func:`lung_evidence` summarises.

    ``masks="nlm"``: the lung U-Net's visible lung fields (NLM convention, heart and mediastinum outside);
    ``between``, when given, collects per source the share of the map between the lungs (heart,
    mediastinum, spine: :func:`xai.anatomy.lung_evidence`'s "between the lungs")."""
    import cv2

    from models.data import read_lung_masks
    from xai import Explainer
    from xai.anatomy import lung_evidence as evidence_against
    from xai.anatomy import lung_mask

    data_dir = Path(data_dir)
    manual = read_lung_masks(lungs_dir or data_dir.parent / "lungs") if masks == "manual" else {}
    explainer = Explainer(loaded.module, target_layer=loaded.card.target_layer)
    shares: dict[str, list[float]] = {}
    skipped = 0
    for rec in records:
        if masks == "manual" and rec.file not in manual:
            continue
        x, geometry, radiograph = _prepared(data_dir, rec, loaded)
        mask: np.ndarray
        if masks == "manual":
            drawn = cv2.imread(str(manual[rec.file]), cv2.IMREAD_GRAYSCALE)
            if drawn is None:
                raise ValueError(f"cannot read lung mask {manual[rec.file].name}")
            mask = drawn > 0
        else:
            mask = np.asarray(lung_mask(radiograph, convention="nlm" if masks == "nlm" else "v7"), dtype=bool)
        if mask.shape != geometry.original_size or not mask.any():
            skipped += 1
            continue
        explanation = explainer.explain(x, target=loaded.card.positive_index, methods=("gradcam",))
        heat = geometry.to_original(np.asarray(explanation.maps["gradcam"][0], dtype=np.float32))
        evidence = evidence_against({"gradcam": heat}, mask)["gradcam"]
        if np.isfinite(evidence.inside):
            shares.setdefault(rec.source, []).append(float(evidence.inside))
            if between is not None:
                between.setdefault(rec.source, []).append(float(evidence.outside["between the lungs"]))
    return shares, skipped


def summarize_lung_evidence(shares: dict[str, list[float]], skipped: int, masks: str) -> dict[str, Any]:
    def summary(values: list[float]) -> dict[str, Any]:
        v = np.array(values)
        return {"median": float(np.median(v)), "mean": float(v.mean()), "n": len(v),
                "share_at_least_0.70": float((v >= 0.70).mean())}

    every = [s for values in shares.values() for s in values]
    if masks in ("predicted", "nlm"):
        from xai.anatomy import load_lung_model

        lung_card = load_lung_model().card
        masks_from = {"lung_model": f"{lung_card.get('name', 'lungs')} {lung_card.get('version', '')}".strip(),
                      "sha256": lung_card.get("sha256", "")}
    else:
        masks_from = {"masks": "manual NLM masks (Montgomery, Shenzhen) and V7 Labs polygons (COVID-CXNet, MHH)"}
    if masks == "nlm":
        masks_from["convention"] = "nlm: the visible lung fields, heart and mediastinum outside"
    return {"masks": masks, **masks_from,
            "method": "gradcam, class covid19, mass inside the lung mask dilated by 3 % of width",
            "all": summary(every) if every else None, "skipped_no_mask": skipped,
            "per_source": {s: summary(v) for s, v in sorted(shares.items())}}


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
    return metrics_by_source(labels, scores, records, card.threshold)


def border_energy(loaded: LoadedModel, data_dir: str | Path, records: Sequence[Record],
                  fraction: float = BORDER_FRACTION) -> dict[str, Any]:
    """Share of Grad-CAM energy in the outer ``fraction`` band of each original image (mean, median, max).

    For each image: Grad-CAM for the predicted class at the card's target layer, brought to the original
    pixel grid with ``Geometry.to_original``; share = sum(map in band) / sum(map). The band alone covers
    ``1 - (1 - 2 f)^2`` = 36 % of the area for f = 10 %, so a map spread uniformly would score 0.36.
    """
    return summarize_border(border_shares(loaded, data_dir, records, fraction), loaded, fraction)


def border_shares(loaded: LoadedModel, data_dir: str | Path, records: Sequence[Record],
                  fraction: float = BORDER_FRACTION) -> list[float]:
    """Per film (flat maps skipped): the border share :func:`border_energy` summarises."""
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
    return shares


def summarize_border(shares: Sequence[float], loaded: LoadedModel, fraction: float = BORDER_FRACTION) -> dict[str, Any]:
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
    p.add_argument("--ood", action="store_true",
                   help="score every split once, fit the OOD statistics on train/val (written beside the bundle "
                        "with --update-card) and report their warning rates on the split")
    p.add_argument("--ood-shipped", action="store_true",
                   help="report how often the bundle's own OOD statistics (ood.safetensors, not refitted) warn on "
                        "the split, per source")
    p.add_argument("--lung-evidence", nargs="+", default=(), choices=("manual", "predicted", "nlm"),
                   help="Grad-CAM evidence inside the lungs on the split's COVID-19 films, with these masks")
    p.add_argument("--lungs", default=None, help="lungs/ folder with the manual masks (default: beside --data)")
    p.add_argument("--part", default=None, metavar="I/N",
                   help="measure only films I, I+N, I+2N ... of the split (1-based) and write the per-film values to "
                        "--part-out; --merge-parts combines the parts (the same figures as one run, in parallel)")
    p.add_argument("--part-out", default=None, metavar="FILE")
    p.add_argument("--merge-parts", nargs="+", default=None, metavar="FILE")
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


def _split_records(loaded: LoadedModel, args: argparse.Namespace) -> list[Record]:
    records = [r for r in read_manifest(args.data, loaded.card.class_names) if r.split == args.split]
    if not records:
        raise ValueError(f"no images in split {args.split!r}")
    return records


def measure_part(loaded: LoadedModel, args: argparse.Namespace, index: int, count: int,
                 scores: np.ndarray | None = None) -> dict[str, Any]:
    """Per-film values for films ``index, index + count, ...`` of the split: P(positive), lung-evidence
    shares, border shares (``scores``: the split's probabilities when already computed)."""
    records = _split_records(loaded, args)
    mine = list(range(index, len(records), count))
    part = [records[k] for k in mine]
    probs = scores[mine] if scores is not None else score_records(loaded, Path(args.data), part,
                                                                  progress=sys.stderr.isatty())
    positives = [r for r in part if r.label == loaded.card.positive_index]
    lung = {}
    for masks in args.lung_evidence:
        between: dict[str, list[float]] = {}
        shares, skipped = lung_evidence_shares(loaded, args.data, positives, masks, args.lungs, between)
        lung[masks] = {"shares": shares, "skipped": skipped, "between": between}
    border: list[float] = []
    if args.border_energy > 0:
        step = max(1, len(records) // args.border_energy)
        chosen = {r.file for r in records[::step][:args.border_energy]}
        border = border_shares(loaded, args.data, [r for r in part if r.file in chosen])
    return {"model_sha256": loaded.card.sha256, "split": args.split, "files": [r.file for r in part],
            "scores": [float(p) for p in probs], "lung": lung, "border": border}


def combine_parts(loaded: LoadedModel, args: argparse.Namespace, parts: Sequence[dict[str, Any]],
                  command: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The split's figures from per-film parts (one part = the whole split): metrics at the card's
    threshold per source, lung evidence, border energy. Refuses parts of another model or split, or parts
    that do not cover the split exactly once."""
    records = _split_records(loaded, args)
    by_file: dict[str, float] = {}
    for part in parts:
        if part["model_sha256"] != loaded.card.sha256 or part["split"] != args.split:
            raise ModelError("a part was measured on another model or split")
        by_file.update(zip(part["files"], part["scores"], strict=True))
    if sorted(by_file) != sorted(r.file for r in records) or sum(len(p["files"]) for p in parts) != len(records):
        raise ModelError("the parts do not cover the split exactly once")
    scores = np.array([by_file[r.file] for r in records])
    labels = np.array([int(r.label == loaded.card.positive_index) for r in records])
    result = rounded(metrics_by_source(labels, scores, records, loaded.card.threshold))
    result["model"] = {"name": loaded.card.name, "version": loaded.card.version, "sha256": loaded.card.sha256}
    result["split"] = args.split
    result["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    result["command"] = command
    if args.lung_evidence:
        evidence = {}
        for masks in args.lung_evidence:
            shares: dict[str, list[float]] = {}
            for part in parts:
                for source, values in part["lung"][masks]["shares"].items():
                    shares.setdefault(source, []).extend(values)
            skipped = sum(part["lung"][masks]["skipped"] for part in parts)
            evidence[masks] = rounded(summarize_lung_evidence(shares, skipped, masks))
            if masks == "nlm":
                between: dict[str, list[float]] = {}
                for part in parts:
                    for source, values in part["lung"][masks].get("between", {}).items():
                        between.setdefault(source, []).extend(values)
                every = [v for values in between.values() for v in values]
                evidence[masks]["between_the_lungs"] = rounded({
                    "what": "share of the map between the lungs (heart, mediastinum, spine), outside the "
                            "dilated NLM lung fields",
                    "all": {"median": float(np.median(every)), "n": len(every)} if every else None,
                    "per_source": {s: {"median": float(np.median(v)), "n": len(v)} for s, v in sorted(between.items())}})
        result["grad_cam_lung_evidence"] = evidence
    energy = None
    if args.border_energy > 0:
        energy = rounded(summarize_border([s for part in parts for s in part["border"]], loaded))
        energy.update(split=args.split, date=result["date"], command=command)
        result["grad_cam_border_energy"] = energy
    return result, energy


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
    stats = None
    if args.part:
        i, n = (int(v) for v in args.part.split("/"))
        Path(args.part_out).write_text(json.dumps(measure_part(loaded, args, i - 1, n)), encoding="utf-8")
        return 0
    if args.merge_parts:
        parts = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.merge_parts]
        result, energy = combine_parts(loaded, args, parts, command)
    elif args.ood:
        records = read_manifest(args.data, loaded.card.class_names)
        scores, features = score_and_features(loaded, Path(args.data), records, progress=sys.stderr.isatty())
        if features is None:  # only when the manifest lists no films
            raise ValueError(f"no images in {args.data}")
        on_split = np.array([r.split == args.split for r in records])
        split_records = [r for r, keep in zip(records, on_split, strict=True) if keep]
        stats = fit_ood_stats(loaded, records, features)
        part = measure_part(loaded, args, 0, 1, scores=scores[on_split])
        result, energy = combine_parts(loaded, args, [part], command)
        result["ood_warnings"] = rounded(ood_warning_rates(stats, split_records, features[on_split]))
        result["silent_errors"] = rounded(silent_errors_by_source(
            loaded, split_records, scores[on_split], ood_warned(stats, features[on_split])))
    elif args.ood_shipped:
        from xai.trust.ood import OOD_FILE, load_ood

        split_records = _split_records(loaded, args)
        scores, features = score_and_features(loaded, Path(args.data), split_records, progress=sys.stderr.isatty())
        if features is None:  # cannot happen: the split has films (_split_records refuses an empty one)
            raise ValueError(f"no images in split {args.split!r}")
        part = measure_part(loaded, args, 0, 1, scores=scores)
        result, energy = combine_parts(loaded, args, [part], command)
        shipped = load_ood(_bundle_dir(args.model) / OOD_FILE)
        result["ood_warnings"] = rounded(ood_warning_rates(shipped, split_records, features))
        result["silent_errors"] = rounded(silent_errors_by_source(loaded, split_records, scores,
                                                                  ood_warned(shipped, features)))
    else:
        result, energy = combine_parts(loaded, args, [measure_part(loaded, args, 0, 1)], command)
    print(json.dumps(result, indent=2))
    if args.update_card:
        from dataclasses import replace

        card = loaded.card
        metrics = dict(card.metrics)
        metrics[args.split] = {k: v for k, v in result.items() if k != "grad_cam_border_energy"}
        card = replace(card, metrics=metrics, grad_cam_border_energy=energy or card.grad_cam_border_energy)
        write_card(_bundle_dir(args.model), card)
        if stats is not None:
            from xai.trust.ood import OOD_FILE, save_ood

            save_ood(stats, _bundle_dir(args.model) / OOD_FILE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
