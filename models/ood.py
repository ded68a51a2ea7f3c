"""The out-of-distribution statistics of a bundle: where they live, reading them once, fitting them.

The score itself (:mod:`xai.trust.ood`, Mahalanobis on penultimate features) takes the statistics as an
object; this module is the bundle side: ``models/bundles/<name>/ood.safetensors`` beside the weights,
read by :func:`ood_stats` once per process and only when fitted for exactly these weights (sha256).

Command line (once per bundle, after training):
``python -m models.ood fit --model chestcovnet --data ../shared/data/chestcovnet``
(train split for the class Gaussians, val split for the percentiles).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.bundle import BUNDLES_DIR, LoadedModel
from xai.trust.ood import OOD_FILE

if TYPE_CHECKING:
    from xai.trust.ood import OODStats

__all__ = ["OOD_FILE", "main", "ood_stats", "stats_path"]

_CACHE: dict[tuple[str, str], OODStats | None] = {}
_CACHE_LOCK = threading.Lock()


def stats_path(model: LoadedModel | str) -> Path:
    """Where a bundle's statistics live: beside the weights of a bundle loaded from a folder, else
    ``models/bundles/<name>/ood.safetensors`` (``model`` may be a bundle name)."""
    if isinstance(model, str):
        return BUNDLES_DIR / model / OOD_FILE
    source = Path(model.source) if model.source else None
    if source is not None and source.is_dir():
        return source / OOD_FILE
    return BUNDLES_DIR / model.card.name / OOD_FILE


def ood_stats(model: LoadedModel) -> OODStats | None:
    """The bundle's statistics when they were fitted for these exact weights (the card's sha256), else None.

    Read once per (name, sha256) in a process; safe from several threads."""
    from xai.trust.ood import load_ood

    key = (model.card.name, model.card.sha256)
    with _CACHE_LOCK:
        if key not in _CACHE:
            path = stats_path(model)
            stats = load_ood(path) if path.is_file() else None
            _CACHE[key] = stats if stats is not None and stats.model_sha256 == model.card.sha256 else None
        return _CACHE[key]


# ------------------------------------------------------------------------------------------ comparing scores
# Candidate warnings, compared on the per-film outputs a training run saves (``films.npz``,
# :func:`models.train.record.save_film_outputs`). Each is "larger = stranger"; each is fitted on the run's
# train split, its limit is a percentile of its val scores, and it is judged where the model fails: on the
# held-out source of a leave-one-source-out run, by the AUROC of the score for "misclassified" and by the
# silent error rate it leaves.
def gaussian_distance(fit: np.ndarray, labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of ``other`` to the nearer class Gaussian fitted on ``fit`` (signed square root
    features, Ledoit-Wolf pooled covariance: the app's check, :mod:`xai.trust.ood`; Lee et al. 2018)."""
    from xai.trust.ood import fit_gaussian, mahalanobis, transform_features

    means, precision, _ = fit_gaussian(transform_features(fit), labels)
    return mahalanobis(transform_features(other), means, precision)


def energy(logits: np.ndarray) -> np.ndarray:
    """Energy score E(x) = -log sum_c exp(f_c(x)) (Liu et al. 2020, "Energy-based out-of-distribution
    detection"): in-distribution inputs get lower energy, so larger = stranger."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1)
    return -(top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def low_confidence(logits: np.ndarray) -> np.ndarray:
    """1 - max softmax probability (Hendrycks & Gimpel 2017): the model's own doubt, larger = less sure."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return 1.0 - (p / p.sum(axis=1, keepdims=True)).max(axis=1)


def standardised(score: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(score - mean(reference)) / std(reference): puts scores of different layers on one scale before
    they are added (the reference is the run's val split)."""
    sd = float(reference.std())
    return (score - float(reference.mean())) / (sd if sd > 0 else 1.0)


def candidate_scores(films: dict[str, np.ndarray], lung_stats: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{name: per-film score} for the candidate warnings, fitted on ``films["train"]`` rows and put on the
    val scale. ``lung_stats`` (N, k): the lung model's statistics per film (e.g. lung area, width), scored
    as a Mahalanobis distance to the train films' (one Gaussian)."""
    train, val = films["train"].astype(bool), films["val"].astype(bool)
    labels = films["label"][train]
    head = gaussian_distance(films["head"][train], labels, films["head"])
    front = gaussian_distance(films["front"][train], labels, films["front"])
    out = {"mahalanobis_head (the app's)": head, "mahalanobis_front": front,
           "mahalanobis_head+front": standardised(head, head[val]) + standardised(front, front[val]),
           "energy": energy(films["logits"]), "low_confidence": low_confidence(films["logits"])}
    if lung_stats is not None:
        from xai.trust.ood import fit_gaussian, mahalanobis

        means, precision, _ = fit_gaussian(lung_stats[train], np.zeros(int(train.sum()), dtype=int))
        lungs = mahalanobis(lung_stats, means, precision)
        out["lung_statistics"] = lungs
        out["mahalanobis_head+front+lungs"] = out["mahalanobis_head+front"] + standardised(lungs, lungs[val])
        out["mahalanobis_head+low_confidence"] = (standardised(head, head[val])
                                                  + standardised(out["low_confidence"], out["low_confidence"][val]))
    return out


def judge_scores(films: dict[str, np.ndarray], scores: dict[str, np.ndarray], threshold: float,
                 judged: np.ndarray, percentile: float) -> dict[str, dict[str, float | None]]:
    """Per candidate on the ``judged`` rows: AUROC of the score for "misclassified at ``threshold``", and at
    the limit = ``percentile`` of its val scores the warning rate and the silent error rate."""
    from models.metrics import auroc, silent_errors

    val = films["val"].astype(bool)
    y = films["label"][judged]
    z = films["logits"][judged].astype(np.float64)
    p = 1.0 / (1.0 + np.exp(z[:, 0] - z[:, 1]))  # softmax P(class 1) of two logits
    wrong = (p >= threshold) != (y == 1)
    out = {}
    for name, score in scores.items():
        limit = float(np.percentile(score[val], percentile))
        warned = score[judged] > limit
        silent = silent_errors(y, p, threshold, warned)
        out[name] = {"auroc_misclassified": auroc(wrong.astype(int), score[judged]) if 0 < wrong.sum() < len(y)
                     else None, "warning_rate": silent["warning_rate"], "silent_error_rate": silent["silent_error_rate"],
                     "errors": silent["errors"], "n": silent["n"]}
    return out


def lung_statistics(files: np.ndarray, data_dir: str | Path, cache_dir: str | Path | None) -> np.ndarray:
    """(N, 3) per film from the lung U-Net's visible lung fields (NLM) on the model grid: lung area share,
    lung width share and lung height share of the (cropped) film; zeros where no lung field was found."""
    from models.data import build_predicted_mask_cache, read_manifest
    from models.train.preprocessing import CHESTCOVNET_PREPROCESSING

    records = read_manifest(data_dir)
    by_file = {r.file: i for i, r in enumerate(records)}
    masks, _ = build_predicted_mask_cache(data_dir, records, CHESTCOVNET_PREPROCESSING, "nlm", cache_dir,
                                          progress=False)
    m = masks[[by_file[str(f)] for f in files]].astype(bool)
    cols, rows = m.any(axis=1), m.any(axis=2)
    return np.stack([m.mean((1, 2)), cols.mean(1), rows.mean(1)], axis=1).astype(np.float64)


def test_figures(films: dict[str, np.ndarray], scores: dict[str, np.ndarray], threshold: float,
                 test: np.ndarray, percentile: float) -> dict[str, Any]:
    """Metrics at ``threshold`` on the ``test`` rows, per source, and per source the silent errors left by
    the app's check (Mahalanobis on the classifier's input, limit = ``percentile`` of val), from the
    logits of the cached (float16) features — a quick look, not the app-path figures of models.evaluate."""
    from models.metrics import binary_metrics, silent_errors

    z = films["logits"].astype(np.float64)
    p = 1.0 / (1.0 + np.exp(z[:, 0] - z[:, 1]))
    app = scores["mahalanobis_head (the app's)"]
    warned = app > np.percentile(app[films["val"].astype(bool)], percentile)
    out: dict[str, Any] = {"all": {**binary_metrics(films["label"][test], p[test], threshold),
                                   "silent": silent_errors(films["label"][test], p[test], threshold, warned[test])}}
    for source in sorted(set(films["source"][test].tolist())):
        m = test & (films["source"] == source)
        out[source] = {**binary_metrics(films["label"][m], p[m], threshold),
                       "silent": silent_errors(films["label"][m], p[m], threshold, warned[m])}
    return out


def compare_runs(run_dirs: Iterable[str | Path], data_dir: str | Path, cache_dir: str | Path | None,
                 percentile: float) -> dict[str, Any]:
    """:func:`judge_scores` for each run folder (``films.npz`` + ``card.json``): on its held-out source when
    it has one (else on its test split), plus every candidate's warning rate on the run's test split."""
    import json

    result: dict[str, Any] = {}
    for run in map(Path, run_dirs):
        with np.load(run / "films.npz", allow_pickle=False) as z:
            films = {k: z[k] for k in z.files}
        card = json.loads((run / "card.json").read_text(encoding="utf-8"))
        held = next(iter(card.get("cross_source") or {}), None)
        scores = candidate_scores(films, lung_statistics(films["files"], data_dir, cache_dir))
        judged = films["source"] == held if held else films["split"] == "test"
        test = (films["split"] == "test") & (films["source"] != held if held else True)
        result[run.name] = {"held_out": held, "threshold": card["threshold"],
                            "test_from_cached_features": test_figures(films, scores, card["threshold"], test,
                                                                      percentile),
                            "judged": judge_scores(films, scores, card["threshold"], judged, percentile),
                            "test_warning_rate": {k: float((v[test] > np.percentile(v[films["val"].astype(bool)],
                                                                                   percentile)).mean())
                                                  for k, v in scores.items()}}
    return result


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.ood", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit and save the statistics of a bundle")
    fit.add_argument("--model", default="chestcovnet", help="bundle name (models/bundles/<name>) or folder")
    fit.add_argument("--data", default="../shared/data/chestcovnet", help="folder with manifest.csv and images/")
    fit.add_argument("--out", default=None, help="output file (default: the bundle's ood.safetensors)")
    compare = sub.add_parser("compare", help="compare candidate warnings on training runs' films.npz")
    compare.add_argument("runs", nargs="+", help="training output folders (films.npz + card.json)")
    compare.add_argument("--data", default="../shared/data/chestcovnet")
    compare.add_argument("--cache-dir", default="runs/cache")
    compare.add_argument("--percentile", type=float, default=99.0, help="warning limit: this percentile of val")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command == "compare":
        import json

        from models.metrics import rounded

        print(json.dumps(rounded(compare_runs(args.runs, args.data, args.cache_dir or None, args.percentile)),
                         indent=1))
        return 0

    from models.bundle import load
    from models.data import read_manifest, select
    from xai.trust.ood import fit_ood, save_ood

    loaded = load(args.model)
    data = Path(args.data)
    records = read_manifest(data, loaded.card.class_names)
    train = [(data / "images" / r.file, r.label) for r in select(records, ["train"])]
    val = [data / "images" / r.file for r in select(records, ["val"])]

    def show(fraction: float, message: str) -> None:
        print(f"\r{fraction * 100:5.1f}% {message}", end="", flush=True)

    stats = fit_ood(loaded, train, val, progress=show)
    out = Path(args.out) if args.out else stats_path(loaded)
    save_ood(stats, out)
    print(f"\nsaved {out} (train {stats.n_train}, shrinkage {stats.shrinkage:.3f}, "
          f"val 99th percentile distance {stats.threshold:.2f}, max {stats.val_distances.max():.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
