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
from typing import TYPE_CHECKING

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


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.ood", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit and save the statistics of a bundle")
    fit.add_argument("--model", default="chestcovnet", help="bundle name (models/bundles/<name>) or folder")
    fit.add_argument("--data", default="../shared/data/chestcovnet", help="folder with manifest.csv and images/")
    fit.add_argument("--out", default=None, help="output file (default: the bundle's ood.safetensors)")
    args = parser.parse_args(list(argv) if argv is not None else None)

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
