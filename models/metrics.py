"""Binary classification metrics in plain numpy, deterministic (so a card's figures reproduce exactly).

Scores are probabilities of the positive class; labels are 0/1. A prediction is positive when
``score >= threshold``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_arrays(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.shape[0]}) and scores ({s.shape[0]}) differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def _rank_average(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_vals)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
    return ranks


def auroc(labels: Any, scores: Any) -> float | None:
    """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney U / (n_pos n_neg)).

    ``None`` when only one class is present (undefined).
    """
    y, s = _as_arrays(labels, scores)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _rank_average(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def confusion(labels: Any, scores: Any, threshold: float) -> dict[str, int]:
    """Counts ``tp, fp, tn, fn`` at ``score >= threshold``."""
    y, s = _as_arrays(labels, scores)
    pred = s >= threshold
    return {"tp": int((pred & (y == 1)).sum()), "fp": int((pred & (y == 0)).sum()),
            "tn": int((~pred & (y == 0)).sum()), "fn": int((~pred & (y == 1)).sum())}


def _ratio(a: int, b: int) -> float | None:
    return None if b == 0 else a / b


def expected_calibration_error(labels: Any, scores: Any, n_bins: int = 10) -> float | None:
    """ECE of the positive-class probability (Guo et al. 2017, binary form).

    ECE = sum_b (n_b / N) |mean(y in b) - mean(p in b)| over ``n_bins`` equal-width bins on [0, 1]
    (the last bin includes 1.0). ``None`` for an empty input.
    """
    y, s = _as_arrays(labels, scores)
    if len(y) == 0:
        return None
    bins = np.clip((s * n_bins).astype(np.int64), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            total += in_bin.sum() / len(y) * abs(y[in_bin].mean() - s[in_bin].mean())
    return float(total)


def youden_threshold(labels: Any, scores: Any) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (Youden 1950).

    Candidates are midpoints between consecutive distinct scores (plus just below the lowest and just
    above the highest); when several maximise J, the median candidate is taken so the threshold sits in
    the middle of the best plateau rather than on its edge.
    """
    y, s = _as_arrays(labels, scores)
    if y.sum() == 0 or (1 - y).sum() == 0:
        raise ValueError("Youden's J needs both classes")
    u = np.unique(s)
    candidates = np.concatenate(([max(0.0, u[0] - 1e-6)], (u[:-1] + u[1:]) / 2.0, [min(1.0, u[-1] + 1e-6)]))
    n_pos, n_neg = y.sum(), (1 - y).sum()
    j = np.array([((s >= t) & (y == 1)).sum() / n_pos + ((s < t) & (y == 0)).sum() / n_neg - 1
                  for t in candidates])
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(candidates[best[len(best) // 2]])


def binary_metrics(labels: Any, scores: Any, threshold: float) -> dict[str, Any]:
    """auroc, sensitivity, specificity, precision, f1, threshold, ece, confusion_matrix, n.

    ``confusion_matrix`` is ``[[tn, fp], [fn, tp]]`` (rows: true negative/positive class, columns:
    predicted). Undefined ratios (no positives, no predicted positives ...) are ``None`` (JSON null).
    """
    y, s = _as_arrays(labels, scores)
    c = confusion(y, s, threshold)
    sens = _ratio(c["tp"], c["tp"] + c["fn"])
    prec = _ratio(c["tp"], c["tp"] + c["fp"])
    f1 = None if sens is None or prec is None or sens + prec == 0 else 2 * sens * prec / (sens + prec)
    return {
        "auroc": auroc(y, s),
        "sensitivity": sens,
        "specificity": _ratio(c["tn"], c["tn"] + c["fp"]),
        "precision": prec,
        "f1": f1,
        "threshold": float(threshold),
        "ece": expected_calibration_error(y, s),
        "confusion_matrix": [[c["tn"], c["fp"]], [c["fn"], c["tp"]]],
        "n": len(y),
    }


def silent_errors(labels: Any, scores: Any, threshold: float, warned: Any) -> dict[str, Any]:
    """How often the model is wrong with nothing to say so: a film is a *silent error* when it is
    misclassified at ``threshold`` (``score >= threshold`` is positive) and ``warned`` is False for it.

    ``silent_error_rate = #(wrong and not warned) / n``; also ``errors`` (wrong), ``warned``,
    ``warning_rate = #warned / n``, ``errors_warned`` (wrong and warned) and ``warning_precision`` =
    errors_warned / warned (None when nothing is warned). An unseen hospital's errors can only be caught by
    a warning, so this rate, not the error rate alone, is what a user is exposed to (``n`` = 0: rates None).
    """
    y, s = _as_arrays(labels, scores)
    w = np.asarray(warned, dtype=bool).ravel()
    if w.shape != y.shape:
        raise ValueError(f"labels ({y.shape[0]}) and warnings ({w.shape[0]}) differ in length")
    wrong = (s >= threshold) != (y == 1)
    n, n_warned, n_wrong_warned = len(y), int(w.sum()), int((wrong & w).sum())
    return {"n": n, "errors": int(wrong.sum()), "warned": n_warned, "errors_warned": n_wrong_warned,
            "silent_errors": int((wrong & ~w).sum()),
            "silent_error_rate": _ratio(int((wrong & ~w).sum()), n),
            "warning_rate": _ratio(n_warned, n), "warning_precision": _ratio(n_wrong_warned, n_warned),
            "threshold": float(threshold)}


def rounded(obj: Any, digits: int = 4) -> Any:
    """Round floats in nested dicts/lists for display in cards and JSON."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, digits) for v in obj]
    return obj
