"""Agreement statistics for a review session (pure: numpy only, no database, no UI).

Formulas (N subjects/cases, k categories, n readers):

- **Fleiss' kappa** (Fleiss 1971) for the categorical read (COVID-19 / not / uncertain): with n_ij the
  number of readers who put case i in category j, every case read by the same n >= 2 readers,
  P_i = (sum_j n_ij^2 - n) / (n (n - 1)),  P_bar = mean_i P_i,  p_j = sum_i n_ij / (N n),
  P_e = sum_j p_j^2,  kappa = (P_bar - P_e) / (1 - P_e)  (NaN when P_e = 1: one category only).
  Equal to ``statsmodels.stats.inter_rater.fleiss_kappa(table, method="fleiss")``.
- **Krippendorff's alpha, ordinal** (Krippendorff 2011, "Computing Krippendorff's alpha-reliability") for
  the 1-5 plausibility ratings, missing ratings allowed: coincidences o_ck = sum_u (number of ordered
  pairs (c, k) of values in unit u) / (m_u - 1) over units with m_u >= 2 values; n_c = sum_k o_ck,
  n = sum_c n_c; ordinal metric delta^2_ck = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2;
  alpha = 1 - (n - 1) sum o_ck delta^2_ck / sum n_c n_k delta^2_ck  (NaN when there is no variation).
  Equal to ``krippendorff.alpha(..., level_of_measurement="ordinal")``.
- **Per-method plausibility with a bootstrap CI over cases** (Efron & Tibshirani 1993, percentile
  interval): the case score is the mean of its readers' ratings; the estimate is the mean over cases; the
  interval is the (alpha/2, 1 - alpha/2) quantiles of that mean over B resamples of the cases drawn with
  replacement (seeded, so a report is reproducible). Cases, not ratings, are resampled: ratings of one
  case are not independent.
- **Reader vs model**: per reader, the share of cases where the read (``uncertain`` left out) equals the
  model's prediction and Cohen's kappa (Cohen 1960): kappa = (p_o - p_e) / (1 - p_e),
  p_e = sum_c p_reader(c) p_model(c).
- **Reader accuracy against the reference diagnosis** (teaching sessions): per reader, over the cases
  with a reference, the share of decided reads (``uncertain`` left out and counted apart) equal to the
  reference, with a Wilson score 95% interval (Wilson 1927): (p + z^2/2n ± z sqrt(p(1-p)/n + z^2/4n^2)) /
  (1 + z^2/n), z = 1.96 — with a handful of cases the interval says how little one share proves.
- **The reader's box against each map**: pointing-game hit, share of the map's energy inside the box and
  IoU of the Otsu-thresholded map with the box, with the CheXlocalize conventions of
  :mod:`xai.trust.metrics` (the batch report's :func:`xai.batch.films.agreement`); the box's share of the film is the
  chance hit rate of a map pointing at random.
- **The reader's zones against the map's top zones**: the box is assigned to the anatomical regions it covers
  (:func:`box_regions`: share of the box's area per region of :data:`xai.anatomy.REGIONS`); its main zone is
  the region holding most of it. Per method and zone, over readers and cases (:func:`zone_agreement`): how
  many boxes have that main zone, and the share of them whose zone is among the map's :data:`MAP_TOP_ZONES`
  largest regions (:func:`xai.anatomy.evidence_by_region`) — "does the map point where the reader points", in
  the radiologist's words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from xai.review.questions import DIAGNOSES

__all__ = [
    "bootstrap_mean_ci",
    "MAP_TOP_ZONES",
    "box_agreement",
    "box_regions",
    "zone_agreement",
    "category_table",
    "cohen_kappa",
    "fleiss_kappa",
    "krippendorff_alpha_ordinal",
    "plausibility_matrix",
    "reader_accuracy",
    "reader_model_agreement",
    "session_summary",
    "wilson_interval",
]

#: The model's class names mapped onto the reader's answers.
MODEL_TO_DIAGNOSIS = {"covid19": "covid19", "non_covid": "non_covid"}


def fleiss_kappa(table: ArrayLike) -> float:
    """Fleiss' kappa of an (N cases x k categories) table of counts, equal readers per case (see above)."""
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 2:
        raise ValueError(f"need an (N cases x k >= 2 categories) table of counts, got shape {t.shape}")
    if np.any(t < 0) or np.any(t % 1 != 0):
        raise ValueError("the table must hold non-negative whole counts")
    per_case = t.sum(axis=1)
    n = per_case[0]
    if n < 2 or np.any(per_case != n):
        raise ValueError(f"every case needs the same number (>= 2) of readers, got {sorted(set(per_case.tolist()))}")
    p_i = ((t * t).sum(axis=1) - n) / (n * (n - 1))
    p_j = t.sum(axis=0) / (t.shape[0] * n)
    p_bar, p_e = float(p_i.mean()), float((p_j * p_j).sum())
    if math.isclose(p_e, 1.0):
        return float("nan")
    return (p_bar - p_e) / (1.0 - p_e)


def category_table(
    reads: Mapping[str, Mapping[str, str]], categories: Sequence[str] = DIAGNOSES
) -> tuple[NDArray[np.int64], list[str], list[str]]:
    """``reads[case][reader] = category`` -> (counts table, cases used, readers used) for Fleiss' kappa.

    Only the cases read by every reader who read any case are kept (Fleiss' kappa needs the same readers
    on every case); readers are those with at least one read.
    """
    readers = sorted({r for per_case in reads.values() for r in per_case})
    cases = [c for c, per_case in reads.items() if all(per_case.get(r) is not None for r in readers)]
    index = {c: j for j, c in enumerate(categories)}
    table = np.zeros((len(cases), len(categories)), dtype=np.int64)
    for i, case in enumerate(cases):
        for reader in readers:
            category = reads[case][reader]
            if category not in index:
                raise ValueError(f"unknown category {category!r}; expected one of {list(categories)}")
            table[i, index[category]] += 1
    return table, cases, readers


def krippendorff_alpha_ordinal(data: ArrayLike) -> float:
    """Krippendorff's alpha with the ordinal metric for a (readers x units) matrix, NaN = missing."""
    m = np.asarray(data, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"need a (readers x units) matrix, got shape {m.shape}")
    values = np.unique(m[np.isfinite(m)])
    if values.size == 0:
        return float("nan")
    index = {v: i for i, v in enumerate(values.tolist())}
    o = np.zeros((values.size, values.size), dtype=np.float64)
    for unit in m.T:
        present = [index[v] for v in unit[np.isfinite(unit)].tolist()]
        mu = len(present)
        if mu < 2:
            continue
        counts = np.bincount(present, minlength=values.size).astype(np.float64)
        pairs = np.outer(counts, counts) - np.diag(counts)  # ordered pairs of distinct raters
        o += pairs / (mu - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n <= 1:
        return float("nan")
    cum = np.cumsum(n_c)
    lo = np.minimum.outer(np.arange(values.size), np.arange(values.size))
    hi = np.maximum.outer(np.arange(values.size), np.arange(values.size))
    between = cum[hi] - cum[lo] + n_c[lo]  # sum_{g = c..k} n_g
    delta2 = (between - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2
    expected = (np.outer(n_c, n_c) * delta2).sum()
    if expected == 0:
        return float("nan")
    return float(1.0 - (n - 1) * (o * delta2).sum() / expected)


def bootstrap_mean_ci(
    case_scores: ArrayLike, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-case scores and its percentile bootstrap interval over cases."""
    x = np.asarray(case_scores, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (float("nan"),) * 3
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(x.mean()), float(low), float(high)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items (NaN when chance agreement is 1)."""
    if len(a) != len(b) or not a:
        raise ValueError("need two non-empty label lists of the same length")
    labels = sorted(set(a) | set(b))
    xa, xb = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    p_o = float(np.mean(xa == xb))
    p_e = float(sum(np.mean(xa == c) * np.mean(xb == c) for c in labels))
    return float("nan") if math.isclose(p_e, 1.0) else (p_o - p_e) / (1.0 - p_e)


def plausibility_matrix(rows: Sequence[Mapping[str, Any]], method: str | None) -> tuple[NDArray[np.float64], list[str], list[str]]:
    """(readers x units) ratings for Krippendorff's alpha: units are the cases (``method`` given) or the
    (case, method) pairs (``method=None``); NaN where a reader gave no rating."""
    readers = sorted({r["reader"] for r in rows})
    units: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        for m, value in (row.get("plausibility") or {}).items():
            if method is None or m == method:
                units.setdefault((row["case"], m), {})[row["reader"]] = float(value)
    keys = sorted(units)
    matrix = np.full((len(readers), len(keys)), np.nan)
    for j, key in enumerate(keys):
        for i, reader in enumerate(readers):
            matrix[i, j] = units[key].get(reader, np.nan)
    return matrix, readers, [f"{c}:{m}" for c, m in keys]


def reader_model_agreement(
    rows: Sequence[Mapping[str, Any]], predictions: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Per reader: ``n`` cases compared, ``agreement`` share, Cohen's ``kappa``, ``uncertain`` reads left out."""
    out: dict[str, dict[str, float]] = {}
    for reader in sorted({r["reader"] for r in rows}):
        mine = [r for r in rows if r["reader"] == reader and r.get("diagnosis") and r["case"] in predictions]
        uncertain = sum(r["diagnosis"] == "uncertain" for r in mine)
        pairs = [(r["diagnosis"], MODEL_TO_DIAGNOSIS.get(predictions[r["case"]], predictions[r["case"]]))
                 for r in mine if r["diagnosis"] != "uncertain"]
        if not pairs:
            out[reader] = {"n": 0, "agreement": float("nan"), "kappa": float("nan"), "uncertain": uncertain}
            continue
        reads, model = [p[0] for p in pairs], [p[1] for p in pairs]
        out[reader] = {"n": len(pairs), "agreement": float(np.mean([a == b for a, b in pairs])),
                       "kappa": cohen_kappa(reads, model), "uncertain": uncertain}
    return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaN, NaN for n = 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def reader_accuracy(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per reader, over rows whose case has a ``reference``: ``n`` decided reads, ``correct``, ``accuracy``
    (NaN without a decided read), its Wilson 95% ``ci_low`` / ``ci_high``, and ``uncertain`` reads."""
    out: dict[str, dict[str, float]] = {}
    for reader in sorted({r["reader"] for r in rows if r.get("reference") and r.get("diagnosis")}):
        mine = [r for r in rows if r["reader"] == reader and r.get("reference") and r.get("diagnosis")]
        decided = [r for r in mine if r["diagnosis"] != "uncertain"]
        correct = sum(r["diagnosis"] == r["reference"] for r in decided)
        low, high = wilson_interval(correct, len(decided))
        out[reader] = {"n": len(decided), "correct": correct,
                       "accuracy": correct / len(decided) if decided else float("nan"),
                       "ci_low": low, "ci_high": high, "uncertain": len(mine) - len(decided)}
    return out


def box_agreement(maps: Mapping[str, NDArray], box: Sequence[float]) -> dict[str, dict[str, float]]:
    """Per method: ``hit`` (1.0/0.0), ``energy_inside``, ``iou_otsu`` of the map against the box, and the
    box's ``area_share`` of the film (chance hit rate). ``box`` = [x, y, w, h] in film pixels."""
    from xai.batch.films import agreement
    from xai.trust.metrics import box_to_mask

    out: dict[str, dict[str, float]] = {}
    for method, heat in maps.items():
        mask = box_to_mask(cast(tuple[float, float, float, float], tuple(box)), heat.shape[:2])
        out[method] = {**agreement(np.asarray(heat, dtype=np.float64), mask), "area_share": float(mask.mean())}
    return out


#: How many of the map's largest regions a reader's zone is compared with.
MAP_TOP_ZONES = 2


def box_regions(box: Sequence[float], film_shape: tuple[int, int], regions: Any) -> dict[str, float]:
    """Share of the box's area in each region of an :class:`xai.anatomy.AnatomyRegions` (every region, summing
    to 1). ``box`` = [x, y, w, h] in pixels of the film of shape ``film_shape`` (H, W); the regions may be on a
    shrunk grid of it (the box is scaled onto theirs)."""
    from xai.anatomy import REGIONS
    from xai.trust.metrics import box_to_mask

    h, w = regions.shape
    sy, sx = h / float(film_shape[0]), w / float(film_shape[1])
    x, y, bw, bh = (float(v) for v in box)
    mask = box_to_mask((x * sx, y * sy, max(bw * sx, 1.0), max(bh * sy, 1.0)), (h, w))
    counts = np.bincount(np.asarray(regions.labels)[mask], minlength=len(REGIONS)).astype(np.float64)
    total = counts.sum()
    return {r: float(c / total) if total else float("nan") for r, c in zip(REGIONS, counts, strict=True)}


def zone_agreement(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float | int]]]:
    """``{method: {zone: {"boxes": n, "agree": share}}}`` from rows ``{method, reader_zone, map_zones}`` (the
    box's main region, the map's :data:`MAP_TOP_ZONES` largest regions): per method and reader zone, how many
    boxes and the share whose zone is among the map's top regions. Rows without a zone are left out."""
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for row in rows:
        zone = row.get("reader_zone")
        if not zone:
            continue
        cell = out.setdefault(str(row["method"]), {}).setdefault(str(zone), {"boxes": 0, "agree": 0.0})
        cell["boxes"] = int(cell["boxes"]) + 1
        cell["agree"] = float(cell["agree"]) + float(zone in (row.get("map_zones") or ()))
    for zones in out.values():
        for cell in zones.values():
            cell["agree"] = float(cell["agree"]) / int(cell["boxes"])
    return out


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def session_summary(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    *,
    predictions: Mapping[str, str] | None = None,
    box_scores: Sequence[Mapping[str, Any]] = (),
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything the results page and the report show, from :meth:`ReviewStore.export` rows.

    ``box_scores``: rows ``{case, reader, method, hit, energy_inside, iou_otsu, area_share}`` (from
    :func:`box_agreement` on the maps the page computed). NaN becomes None (JSON-friendly).
    """
    reads: dict[str, dict[str, str]] = {}
    for row in rows:
        if row.get("diagnosis"):
            reads.setdefault(row["case"], {})[row["reader"]] = row["diagnosis"]
    table, kappa_cases, kappa_readers = category_table(reads)
    kappa = fleiss_kappa(table) if len(kappa_readers) >= 2 and len(kappa_cases) >= 1 else float("nan")

    per_method = {}
    for method in methods:
        per_case: dict[str, list[float]] = {}
        for row in rows:
            value = (row.get("plausibility") or {}).get(method)
            if value is not None:
                per_case.setdefault(row["case"], []).append(float(value))
        scores = [float(np.mean(v)) for v in per_case.values()]
        mean, low, high = bootstrap_mean_ci(scores, n_boot=n_boot, seed=seed)
        alpha = krippendorff_alpha_ordinal(plausibility_matrix(rows, method)[0])
        per_method[method] = {"mean": _nan_to_none(mean), "ci_low": _nan_to_none(low), "ci_high": _nan_to_none(high),
                              "n_cases": len(scores), "n_ratings": sum(len(v) for v in per_case.values()),
                              "alpha": _nan_to_none(alpha)}
    boxes: dict[str, dict[str, float | None]] = {}
    for method in methods:
        mine = [s for s in box_scores if s["method"] == method]
        boxes[method] = {k: _nan_to_none(float(np.nanmean([s[k] for s in mine]))) if mine else None
                         for k in ("hit", "energy_inside", "iou_otsu", "area_share")}
        boxes[method]["n"] = len(mine)
    agreement = reader_model_agreement(rows, predictions or {})
    return {
        "n_cases": len({r["case"] for r in rows}),
        "readers": sorted({r["reader"] for r in rows}),
        "fleiss_kappa": _nan_to_none(kappa),
        "fleiss_cases": len(kappa_cases),
        "alpha_all": _nan_to_none(krippendorff_alpha_ordinal(plausibility_matrix(rows, None)[0])),
        "methods": per_method,
        "reader_vs_model": {r: {k: _nan_to_none(v) for k, v in d.items()} for r, d in agreement.items()},
        "reader_accuracy": {r: {k: _nan_to_none(v) for k, v in d.items()} for r, d in reader_accuracy(rows).items()},
        "boxes": boxes,
        "zones": zone_agreement(box_scores),
    }
