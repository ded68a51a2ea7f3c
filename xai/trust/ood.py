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
radiograph, a paediatric patient.

The statistics are an object the caller passes in (:class:`OODStats`, read with :func:`load_ood`); this
module never looks up a bundle. The shipped ones live beside the bundle,
``models/bundles/<name>/ood.safetensors`` (tensors + metadata naming the weights' sha256 they were fitted
for): ``models.ood_stats(loaded)`` reads them once per process, and ``python -m models.ood fit`` fits them.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from xai.layers import last_linear
from xai.trust.model_access import Progress, on_model, report, to_numpy, unpack_model

if TYPE_CHECKING:  # the seams' types: a bundle's model or a bare module, a radiograph or its pixels
    from xai.protocols import LoadedModel
    from xai.radiograph_core import Radiograph

__all__ = [
    "OOD_FILE",
    "WARN_PERCENTILE",
    "OODResult",
    "OODStats",
    "extract_features",
    "fit_gaussian",
    "fit_ood",
    "header_hints",
    "ledoit_wolf",
    "ledoit_wolf_precision",
    "load_ood",
    "mahalanobis",
    "save_ood",
    "score",
    "stats_from_features",
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


def _shrinkage(x: np.ndarray) -> tuple[float, float]:
    """(Ledoit–Wolf shrinkage a, mu = tr(S) / p) for centred rows ``x`` (n, p); see :func:`ledoit_wolf`.

    ||S||_F^2 comes from the n x n Gram matrix when n < p (||X^T X||_F = ||X X^T||_F), never a p x p product."""
    n, p = x.shape
    row_sq = np.einsum("ij,ij->i", x, x)
    mu = float(row_sq.sum()) / (n * p)
    gram = x @ x.T if n < p else x.T @ x
    cov_norm2 = float(np.sum(gram**2)) / n**2
    b2 = (float(np.sum(row_sq**2)) / n - cov_norm2) / (n * p)
    d2 = cov_norm2 / p - mu**2
    return (0.0 if d2 <= 0 else min(max(b2, 0.0), d2) / d2), mu


def ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit–Wolf shrunk covariance of rows that are already centred, and the shrinkage used.

    Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices", J. Multivariate
    Anal. 2004 (the form scikit-learn's ``ledoit_wolf`` implements with ``assume_centered=True``). With
    S = X^T X / n and mu = tr(S) / p, the estimate is (1 - a) S + a mu I, where
    a = min(b2, d2) / d2, d2 = ||S - mu I||_F^2 / p = ||S||_F^2 / p - mu^2 and
    b2 = (sum_k ||x_k x_k^T - S||_F^2) / (n^2 p) = (sum_k ||x_k||^4 / n - ||S||_F^2) / (n p).
    """
    x = np.asarray(centred, dtype=np.float64)
    shrinkage, mu = _shrinkage(x)
    shrunk = (1.0 - shrinkage) * (x.T @ x) / x.shape[0]
    shrunk.flat[:: x.shape[1] + 1] += shrinkage * mu
    return shrunk, shrinkage


def ledoit_wolf_precision(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """The inverse of :func:`ledoit_wolf`'s covariance, and the shrinkage.

    With fewer rows than dimensions (the usual case: a few hundred films, 1280 features) the covariance is
    c I + B^T B with c = a mu and B = sqrt((1 - a) / n) X, and the Woodbury identity gives its inverse
    from an n x n system: (I - B^T (c I + B B^T)^-1 B) / c. Otherwise (or without shrinkage) the
    pseudo-inverse of the p x p matrix."""
    x = np.asarray(centred, dtype=np.float64)
    n, p = x.shape
    shrinkage, mu = _shrinkage(x)
    c = shrinkage * mu
    if n >= p or c <= 0:
        return np.linalg.pinv(ledoit_wolf(x)[0], hermitian=True), shrinkage
    b = np.sqrt((1.0 - shrinkage) / n) * x
    inner = c * np.eye(n) + b @ b.T
    precision = -(b.T @ np.linalg.solve(inner, b))
    precision.flat[:: p + 1] += 1.0
    return precision / c, shrinkage


def fit_gaussian(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Class means, Ledoit–Wolf-shrunk pooled within-class precision, and the shrinkage used."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    if f.ndim != 2 or f.shape[0] != y.shape[0] or classes.size < 1:
        raise ValueError("features must be (N, D) with one label per row")
    means = np.stack([f[y == c].mean(axis=0) for c in range(int(classes.max()) + 1)])
    precision, shrinkage = ledoit_wolf_precision(f - means[y])
    return means, precision, shrinkage


def extract_features(model: Any, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features (N, D), logits (N, C)) for a prepared batch, without gradients, on the model's
    device (the arrays are copied back to the CPU).

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
            logits = module(on_model(module, batch))
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the last linear layer was not called during the forward pass")
    return to_numpy(captured[-1].flatten(1), np.float32), to_numpy(logits, np.float32)


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


def check_fits(stats: OODStats, model: Any) -> None:
    """Raise ``ValueError`` when ``stats`` were fitted for other weights than ``model``'s card names."""
    sha = str(getattr(getattr(model, "card", None), "sha256", "") or "")
    if sha and stats.model_sha256 and stats.model_sha256 != sha:
        raise ValueError(f"the out-of-distribution statistics were fitted for other weights "
                         f"(sha256 {stats.model_sha256[:12]}…, the model's is {sha[:12]}…)")


def score(
    model: LoadedModel | nn.Module, x: torch.Tensor, stats: OODStats | None, *, radiograph: Radiograph | None = None,
    features: np.ndarray | None = None,
) -> OODResult:
    """Out-of-distribution verdict for one prepared input ``x`` (1, C, H, W) of ``model`` (a loaded model,
    :class:`xai.protocols.LoadedModel`, or an ``nn.Module``).

    ``stats``: the statistics fitted for this model (``models.ood_stats(model)`` for a shipped bundle), or
    None when there are none: then only header hints are given. Statistics fitted for other weights than
    the model's card names raise ``ValueError``. ``radiograph`` (optional) adds the header hints.
    ``features``: the penultimate features of ``x`` when already computed (the engine records them in the
    explanation's own forward pass, :attr:`xai.engine.Explanation.features`); otherwise a forward pass
    computes them."""
    hints = header_hints(radiograph) if radiograph is not None else ()
    if stats is None:
        note = "No out-of-distribution statistics for this model; only header hints are checked."
        return OODResult(None, None, None, bool(hints), (*hints, note) if hints else (), hints)
    check_fits(stats, model)
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


def _features_of_sources(model: Any, sources: Sequence[Any], batch_size: int,
                         progress: Callable[[int], None]) -> np.ndarray:
    from xai.preprocessing import prepare_array
    from xai.radiograph import load_radiograph

    pre = model.card.preprocessing
    out = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        arrays = [prepare_array(load_radiograph(source), pre)[0] for source in chunk]
        feats, _ = extract_features(model, torch.from_numpy(np.stack(arrays)))
        out.append(feats)
        progress(len(chunk))
    return np.concatenate(out)


def fit_ood(model: Any, train: Sequence[tuple[Any, int]], val: Sequence[Any], *, batch_size: int = 32,
            transform: str = DEFAULT_TRANSFORM, progress: Progress | None = None) -> OODStats:
    """Fit the class Gaussians on ``train`` and calibrate the distances on ``val``.

    ``model``: a loaded model (its card gives the preprocessing, class names, name and weights' sha256).
    ``train``: (image, class index) pairs; ``val``: images; an image is anything
    :func:`xai.radiograph.load_radiograph` reads (a path, bytes). ``python -m models.ood fit`` feeds the
    ChestCOVNet manifest's train and val splits."""
    if not train or not val:
        raise ValueError("fitting the statistics needs train and val images")
    done = [0]
    total = len(train) + len(val)

    def tick(n: int) -> None:
        done[0] += n
        report(progress, done[0] / total, f"features {done[0]}/{total}")

    sources = [source for source, _label in train]
    f_train = _features_of_sources(model, sources, batch_size, tick)
    f_val = _features_of_sources(model, list(val), batch_size, tick)
    return stats_from_features(model, f_train, [int(label) for _source, label in train], f_val, transform)


def stats_from_features(model: Any, train_features: np.ndarray, train_labels: Sequence[int],
                        val_features: np.ndarray, transform: str = DEFAULT_TRANSFORM) -> OODStats:
    """The statistics from penultimate features already computed (:func:`extract_features`, or the
    engine's :attr:`~xai.engine.Explanation.features`): class Gaussians fitted on the transformed train
    features, distances calibrated on the val features; identity from ``model``'s card."""
    f_train = transform_features(train_features, transform)
    means, precision, shrinkage = fit_gaussian(f_train, np.asarray(train_labels))
    val_d = np.sort(mahalanobis(transform_features(val_features, transform), means, precision))
    layer, _ = last_linear(unpack_model(model)[0])
    card = model.card
    return OODStats(
        means=means.astype(np.float32),
        precision=precision.astype(np.float32),
        val_distances=val_d.astype(np.float32),
        class_names=tuple(card.class_names),
        model_name=str(card.name),
        model_sha256=str(card.sha256),
        feature_layer=f"input of {layer}",
        n_train=int(len(train_features)),
        shrinkage=shrinkage,
        transform=transform,
    )
