"""Is this input like the training data? Mahalanobis out-of-distribution score and DICOM header hints.

Score (Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", NeurIPS 2018): the penultimate features f (the input of the model's last ``nn.Linear``, i.e.
the pooled 1280-d vector of EfficientNet-Lite0) are compared with class-conditional Gaussians that share
one covariance, fitted on the ``train`` split:

    d(f) = min_c sqrt((f - mu_c)^T Sigma^-1 (f - mu_c))

Sigma is the pooled within-class covariance with Ledoit–Wolf shrinkage (there are fewer training images
than feature dimensions, so the plain estimate is singular). The features are first passed through a
signed square root, sign(f) sqrt(|f|): pooled post-ReLU activations are non-negative and right-skewed, and
this variance-stabilising step makes the Gaussian model fit better. Measured on the default model (half
the train split, val, a quarter of test): a natural-scene picture scored at the 98th val percentile on raw
features (no warning) but above every val image after the transform, with no test film flagged.

The distance is calibrated on the ``val`` split: ``percentile`` = share of val images with a distance <= d(f), and a warning is raised above the
99th percentile of the val distances (:data:`WARN_PERCENTILE`).

The features are captured by a forward pre-hook on the last linear layer that exists only during our
forward pass (removed in ``finally``) and records only the calling thread, so concurrent sessions sharing
the model never see it. The engine captures the same input in an explanation's own forward pass
(:attr:`xai.engine.Explanation.features`); the app and the batch report pass it to :func:`score`, so the
check costs no second pass.

Header hints (from :attr:`Radiograph.metadata`, and the patient's age — identifying data used only to
warn, never echoed): lateral view, body part other than chest, a modality that is not a projection
radiograph, a paediatric patient. Statistics live beside the bundle: ``models/bundles/<name>/ood.safetensors``
(tensors + metadata naming the weights' sha256 they were fitted for).

Command line (once per bundle): ``python -m xai.trust.ood fit --model chestcovnet --data ../shared/data/chestcovnet``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xai.layers import last_linear
from xai.trust._common import Progress, report, unpack_model

__all__ = [
    "OOD_FILE",
    "WARN_PERCENTILE",
    "OODResult",
    "OODStats",
    "extract_features",
    "fit_gaussian",
    "fit_ood",
    "header_hints",
    "load_ood",
    "mahalanobis",
    "ood_report",
    "save_ood",
    "score",
    "stats_path",
    "transform_features",
]

OOD_FILE = "ood.safetensors"
WARN_PERCENTILE = 99.0
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE LATERAL"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "PORT CHEST", "CHEST_LAT", "CHEST PA"})
RADIOGRAPH_MODALITIES = frozenset({"", "CR", "DX", "DR", "RG", "OT"})
ADULT_AGE_YEARS = 18
FEATURE_TRANSFORMS = ("none", "signed_sqrt")
DEFAULT_TRANSFORM = "signed_sqrt"


def transform_features(features: np.ndarray, transform: str = DEFAULT_TRANSFORM) -> np.ndarray:
    """The feature transform applied before the Gaussian model: ``signed_sqrt`` = sign(f) sqrt(|f|)."""
    f = np.asarray(features, dtype=np.float64)
    if transform == "none":
        return f
    if transform == "signed_sqrt":
        return np.sign(f) * np.sqrt(np.abs(f))
    raise ValueError(f"unknown feature transform {transform!r}; one of {FEATURE_TRANSFORMS}")


@dataclass(frozen=True)
class OODStats:
    """Fitted statistics: class means (C, D), shared precision (D, D), sorted val distances."""

    means: np.ndarray
    precision: np.ndarray
    val_distances: np.ndarray
    class_names: tuple[str, ...]
    model_name: str
    model_sha256: str
    feature_layer: str
    n_train: int
    shrinkage: float
    transform: str = DEFAULT_TRANSFORM

    @property
    def threshold(self) -> float:
        """Distance above which an input is flagged: the WARN_PERCENTILE-th percentile of val distances."""
        return float(np.percentile(self.val_distances, WARN_PERCENTILE))

    def percentile(self, distance: float) -> float:
        """Share (in %) of val images whose distance is <= ``distance``."""
        v = self.val_distances
        return float(100.0 * np.searchsorted(v, distance, side="right") / v.size)


@dataclass(frozen=True)
class OODResult:
    """OOD verdict for one input. ``score`` is the Mahalanobis distance (None when no statistics fit the
    model); ``warnings`` are sentences ready to show (score warning first, then header hints)."""

    score: float | None
    percentile: float | None
    threshold: float | None
    is_ood: bool
    warnings: tuple[str, ...]
    header_hints: tuple[str, ...] = ()


def mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """min over classes of sqrt((f - mu_c)^T P (f - mu_c)) for each row of ``features`` (N, D) -> (N,)."""
    f = np.atleast_2d(np.asarray(features, dtype=np.float64))
    mu = np.asarray(means, dtype=np.float64)
    p = np.asarray(precision, dtype=np.float64)
    d2 = np.empty((f.shape[0], mu.shape[0]))
    for c in range(mu.shape[0]):
        diff = f - mu[c]
        d2[:, c] = np.einsum("nd,de,ne->n", diff, p, diff)
    return np.sqrt(np.clip(d2.min(axis=1), 0.0, None))


def fit_gaussian(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Class means, Ledoit–Wolf-shrunk pooled within-class precision, and the shrinkage used."""
    from sklearn.covariance import LedoitWolf

    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    if f.ndim != 2 or f.shape[0] != y.shape[0] or classes.size < 1:
        raise ValueError("features must be (N, D) with one label per row")
    means = np.stack([f[y == c].mean(axis=0) for c in range(int(classes.max()) + 1)])
    centred = f - means[y]
    lw = LedoitWolf(assume_centered=True).fit(centred)
    return means, lw.precision_, float(lw.shrinkage_)


def extract_features(model: Any, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features (N, D), logits (N, C)) for a prepared batch, without gradients.

    The pre-hook on the last linear layer lives only for this call and ignores other threads."""
    module, _layer, _card = unpack_model(model)
    _name, linear = last_linear(module)
    me = threading.get_ident()
    captured: list[torch.Tensor] = []

    def hook(_mod: nn.Module, inputs: tuple[Any, ...]) -> None:
        if threading.get_ident() == me and inputs and isinstance(inputs[0], torch.Tensor):
            captured.append(inputs[0].detach())

    handle = linear.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            logits = module(batch)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the last linear layer was not called during the forward pass")
    feats = captured[-1].flatten(1)
    return feats.float().numpy(), logits.float().numpy()


def stats_path(model_name: str) -> Path:
    """``models/bundles/<name>/ood.safetensors``."""
    import models

    return Path(models.BUNDLES_DIR) / model_name / OOD_FILE


def save_ood(stats: OODStats, path: str | Path) -> None:
    """Write the statistics as safetensors (tensors) with a JSON-safe metadata header."""
    from safetensors.numpy import save_file

    meta = {
        "class_names": json.dumps(list(stats.class_names)),
        "model_name": stats.model_name,
        "model_sha256": stats.model_sha256,
        "feature_layer": stats.feature_layer,
        "n_train": str(stats.n_train),
        "shrinkage": repr(stats.shrinkage),
        "transform": stats.transform,
        "method": "Mahalanobis, class-conditional means, tied Ledoit-Wolf covariance (Lee et al. 2018)",
    }
    save_file(
        {
            "means": np.ascontiguousarray(stats.means, dtype=np.float32),
            "precision": np.ascontiguousarray(stats.precision, dtype=np.float32),
            "val_distances": np.ascontiguousarray(np.sort(stats.val_distances), dtype=np.float32),
        },
        str(path),
        metadata=meta,
    )


def load_ood(path: str | Path) -> OODStats:
    """Read statistics written by :func:`save_ood` (safetensors only: nothing is unpickled)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    missing = {"means", "precision", "val_distances"} - set(tensors)
    if missing:
        raise ValueError(f"{Path(path).name} lacks {sorted(missing)}")
    return OODStats(
        means=tensors["means"],
        precision=tensors["precision"],
        val_distances=np.sort(tensors["val_distances"]),
        class_names=tuple(json.loads(meta.get("class_names", "[]"))),
        model_name=meta.get("model_name", ""),
        model_sha256=meta.get("model_sha256", ""),
        feature_layer=meta.get("feature_layer", ""),
        n_train=int(meta.get("n_train", "0")),
        shrinkage=float(meta.get("shrinkage", "nan")),
        transform=meta.get("transform", "none"),
    )


_CACHE: dict[tuple[str, str], OODStats | None] = {}
_CACHE_LOCK = threading.Lock()


def stats_for(model: Any) -> OODStats | None:
    """The shipped statistics of a LoadedModel's bundle when they were fitted for these exact weights."""
    card = getattr(model, "card", None)
    name, sha = str(getattr(card, "name", "") or ""), str(getattr(card, "sha256", "") or "")
    if not name:
        return None
    with _CACHE_LOCK:
        if (name, sha) not in _CACHE:
            path = stats_path(name)
            stats = None
            if path.is_file():
                loaded = load_ood(path)
                stats = loaded if loaded.model_sha256 == sha else None
            _CACHE[(name, sha)] = stats
        return _CACHE[(name, sha)]


def _age_years(patient: dict[str, str]) -> float | None:
    """Age from PatientAge ('045Y', '006M', ...) or from birth and study dates; None when unknown."""
    text = str(patient.get("PatientAge", "") or "").strip().upper()
    m = re.fullmatch(r"(\d{1,3})\s*([YMWD])?", text)
    if m:
        n = int(m.group(1))
        return {"Y": n, "M": n / 12, "W": n / 52.18, "D": n / 365.25}[m.group(2) or "Y"]
    birth, study = (str(patient.get(k, "") or "") for k in ("PatientBirthDate", "StudyDate"))
    if re.fullmatch(r"\d{8}", birth) and re.fullmatch(r"\d{8}", study):
        try:
            b = date(int(birth[:4]), int(birth[4:6]), int(birth[6:]))
            s = date(int(study[:4]), int(study[4:6]), int(study[6:]))
        except ValueError:
            return None
        return (s - b).days / 365.25
    return None


def header_hints(radiograph: Any) -> tuple[str, ...]:
    """Warnings from the file's header (DICOM): lateral view, not a chest, not a radiograph, paediatric.

    The age is read from the identifying header fields only to decide the paediatric warning; it is never
    written into the warning."""
    meta = {str(k): str(v) for k, v in (getattr(radiograph, "metadata", None) or {}).items()}
    patient = dict(getattr(radiograph, "patient", None) or {})
    hints = []
    view = meta.get("view_position", "").strip().upper()
    if view in LATERAL_VIEWS or "LAT" in view.split():
        hints.append(f"Header says this is a lateral view ({view}); the model was trained on frontal "
                     "(PA/AP) chest films only.")
    body = meta.get("body_part", "").strip().upper()
    if body and body not in CHEST_BODY_PARTS:
        hints.append(f"Header says the body part is {body!r}, not the chest; the model only knows chest films.")
    modality = meta.get("modality", "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        hints.append(f"Header modality is {modality}, not a projection radiograph (CR/DX).")
    age = _age_years(patient)
    if age is not None and age < ADULT_AGE_YEARS:
        hints.append("Header age indicates a paediatric patient; the model was trained almost only on adult "
                     "films, its output and maps may not hold for children.")
    return tuple(hints)


def score(
    model: Any, x: torch.Tensor, stats: OODStats | None = None, *, radiograph: Any = None,
    features: np.ndarray | None = None,
) -> OODResult:
    """Out-of-distribution verdict for one prepared input ``x`` (1, C, H, W) of ``model`` (a LoadedModel).

    ``stats`` defaults to the bundle's shipped statistics (None when absent or fitted for other weights:
    then only header hints are given). ``radiograph`` (optional) adds the header hints. ``features``: the
    penultimate features of ``x`` when already computed (the engine records them in the explanation's own
    forward pass, :attr:`xai.engine.Explanation.features`); otherwise a forward pass computes them."""
    hints = header_hints(radiograph) if radiograph is not None else ()
    stats = stats if stats is not None else stats_for(model)
    if stats is None:
        note = "No out-of-distribution statistics for this model; only header hints are checked."
        return OODResult(None, None, None, bool(hints), (*hints, note) if hints else (), hints)
    feats = np.atleast_2d(np.asarray(features, dtype=np.float32)) if features is not None else extract_features(model, x)[0]
    if feats.shape[1] != stats.means.shape[1]:
        raise ValueError(f"feature size {feats.shape[1]} does not match the statistics ({stats.means.shape[1]})")
    distance = float(mahalanobis(transform_features(feats[:1], stats.transform), stats.means, stats.precision)[0])
    pct = stats.percentile(distance)
    threshold = stats.threshold
    warnings = []
    if distance > threshold:
        warnings.append(
            f"Unlike the training data: Mahalanobis distance {distance:.1f} is above the {WARN_PERCENTILE:.0f}th "
            f"percentile of validation images ({threshold:.1f}); the prediction and maps may be meaningless."
        )
    return OODResult(distance, pct, threshold, bool(warnings or hints), (*warnings, *hints), hints)


def ood_report(model: Any, x: torch.Tensor, radiograph: Any = None, features: np.ndarray | None = None) -> OODResult:
    """Same as :func:`score` with the bundle's statistics (the batch report's entry point)."""
    return score(model, x, radiograph=radiograph, features=features)


def _features_of_split(model: Any, data_dir: Path, records: Sequence[Any], batch_size: int,
                       progress: Callable[[int], None]) -> np.ndarray:
    from xai.preprocessing import prepare_array
    from xai.radiograph import load_radiograph

    pre = model.card.preprocessing
    out = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        arrays = [prepare_array(load_radiograph(data_dir / "images" / r.file), pre)[0] for r in chunk]
        feats, _ = extract_features(model, torch.from_numpy(np.stack(arrays)))
        out.append(feats)
        progress(len(chunk))
    return np.concatenate(out)


def fit_ood(model: Any, card: Any = None, data_dir: str | Path = "../shared/data/chestcovnet", *,
            batch_size: int = 32, transform: str = DEFAULT_TRANSFORM, progress: Progress | None = None) -> OODStats:
    """Fit the Gaussian on the train split and calibrate on val of the ChestCOVNet manifest in ``data_dir``."""
    from models.data import read_manifest, select

    card = card if card is not None else model.card
    data_dir = Path(data_dir)
    class_names = tuple(card.class_names)
    records = read_manifest(data_dir, class_names)
    train, val = select(records, ["train"]), select(records, ["val"])
    if not train or not val:
        raise ValueError(f"{data_dir} has no train or no val images")
    done = [0]
    total = len(train) + len(val)

    def tick(n: int) -> None:
        done[0] += n
        report(progress, done[0] / total, f"features {done[0]}/{total}")

    f_train = transform_features(_features_of_split(model, data_dir, train, batch_size, tick), transform)
    means, precision, shrinkage = fit_gaussian(f_train, np.array([r.label for r in train]))
    f_val = transform_features(_features_of_split(model, data_dir, val, batch_size, tick), transform)
    val_d = np.sort(mahalanobis(f_val, means, precision))
    layer, _ = last_linear(unpack_model(model)[0])
    return OODStats(
        means=means.astype(np.float32),
        precision=precision.astype(np.float32),
        val_distances=val_d.astype(np.float32),
        class_names=class_names,
        model_name=str(card.name),
        model_sha256=str(card.sha256),
        feature_layer=f"input of {layer}",
        n_train=len(train),
        shrinkage=shrinkage,
        transform=transform,
    )


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xai.trust.ood", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit and save the statistics of a bundle")
    fit.add_argument("--model", default="chestcovnet", help="bundle name (models/bundles/<name>)")
    fit.add_argument("--data", default="../shared/data/chestcovnet", help="folder with manifest.csv and images/")
    fit.add_argument("--out", default=None, help="output file (default: the bundle's ood.safetensors)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    import models

    torch.set_num_threads(max(1, torch.get_num_threads()))
    loaded = models.load(args.model)

    def show(fraction: float, message: str) -> None:
        print(f"\r{fraction * 100:5.1f}% {message}", end="", flush=True)

    stats = fit_ood(loaded, loaded.card, args.data, progress=show)
    out = Path(args.out) if args.out else stats_path(loaded.card.name)
    save_ood(stats, out)
    print(f"\nsaved {out} (train {stats.n_train}, shrinkage {stats.shrinkage:.3f}, "
          f"val 99th percentile distance {stats.threshold:.2f}, max {stats.val_distances.max():.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
