"""What to expect at a hospital the model never saw, from the model card's leave-one-source-out checks.

The test split's figures come from the same hospitals as the training films; a classifier that learnt
where a film came from scores well there and fails elsewhere (DeGrave, Janizek & Lee, Nature Machine
Intelligence 2021). The card's ``cross_source`` entries hold the honest estimate: for each source, a model
retrained *without* it, its threshold chosen on the remaining validation films, then run on every film of
that source. This module adds them up, one way, for every page that quotes them:

    wrong_share  = sum_s (fp_s + fn_s) / sum_s n_s      over the held-out sources s
                   (each entry's ``all_splits.confusion_matrix`` [[tn, fp], [fn, tp]])
    silent_share = sum_s (n_s - warned_s) / sum_s n_s   (each entry's ``ood_warnings``: warned of n)
    silent_error_share = sum_s e_s / sum_s n_s          (each entry's ``silent_errors.all_splits``: e_s films
                                                           misclassified at the threshold AND not warned)

``silent_share`` is how often the out-of-distribution check stayed silent on films from a hospital it
never saw. The cards record warnings per source, not per misclassified film, so it is the share of all
held-out films not warned (Lee et al. 2018's check judged as a guard: a silent check on an unseen
hospital's films is the case where it should have spoken).

``silent_error_share`` is the harm a reader cannot see coming: a wrong call with no warning beside it. It is
pooled over the held-out sources (every film counts once), so large sources weigh more; the per-source
rates give the spread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["HeldOutRecord", "held_out_record", "in_words", "silent_error_rate", "silent_share"]


@dataclass(frozen=True)
class HeldOutRecord:
    """Totals over the card's held-out sources: ``films`` judged, ``wrong`` called wrongly, and of the
    ``checked`` films with an out-of-distribution record, ``warned``; ``wrong_by_source`` per source."""

    films: int
    wrong: int
    checked: int = 0
    warned: int = 0
    wrong_by_source: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    silent_errors: int = 0
    silent_judged: int = 0
    silent_errors_by_source: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def wrong_share(self) -> float:
        return self.wrong / self.films if self.films else float("nan")

    @property
    def silent(self) -> int:
        """Held-out films the out-of-distribution check did not warn on."""
        return self.checked - self.warned

    @property
    def silent_share(self) -> float | None:
        return self.silent / self.checked if self.checked else None

    def expectation(self) -> str:
        """One plain sentence: how many films a hospital the model never saw should expect called wrongly."""
        sources = len(self.wrong_by_source)
        spread = ""
        if sources > 1:
            low, high = min(self.wrong_by_source.values()), max(self.wrong_by_source.values())
            spread = f"; from {in_words(low)} to {in_words(high)} depending on the hospital"
        return (f"At a hospital it has never seen, expect {in_words(self.wrong_share)} films to be called wrongly "
                f"({self.wrong} of {self.films} films when each of {sources} sources was left out of training"
                f"{spread}).")

    @property
    def silent_error_share(self) -> float | None:
        """Held-out films called wrongly with no out-of-distribution warning, pooled over the sources."""
        return self.silent_errors / self.silent_judged if self.silent_judged else None

    def silent_expectation(self) -> str | None:
        """The silent error rate as one plain sentence (pooled over the held-out sources), or None when the
        card records no silent errors."""
        share = self.silent_error_share
        if share is None:
            return None
        sources = len(self.silent_errors_by_source)
        counts = (f"{self.silent_errors} of {self.silent_judged} films, pooled over the {sources} sources each "
                  "left out of training in turn")
        if share == 0:
            return f"At a hospital it has never seen, no film was called wrongly with no warning ({counts})."
        spread = ""
        if sources > 1:
            low, high = min(self.silent_errors_by_source.values()), max(self.silent_errors_by_source.values())
            spread = f"; from {in_words(low)} to {in_words(high)} depending on the hospital"
        return (f"At a hospital it has never seen, expect about one film in {max(1, round(1 / share))} to be "
                f"called wrongly with no warning ({counts}{spread}).")

    def silence(self) -> str | None:
        """How often the out-of-distribution check stays silent on an unseen hospital's films, or None."""
        share = self.silent_share
        if share is None:
            return None
        return (f"it stayed silent on {share:.0%} of the films of hospitals left out of training "
                f"({self.silent} of {self.checked})")


def in_words(share: float) -> str:
    """A share as "about k in 10" (or "about one in N" below 15 %, "almost none" below 1 %)."""
    if math.isnan(share):
        return "an unknown share of"
    if share < 0.01:
        return "almost no"
    if share < 0.15:
        return f"about one in {round(1 / share)}"
    return f"about {round(10 * share)} in 10"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _confusion(entry: Mapping[str, Any]) -> tuple[int, int] | None:
    """(films, wrong) from an entry's ``all_splits.confusion_matrix`` [[tn, fp], [fn, tp]], or None."""
    cm = _mapping(entry.get("all_splits")).get("confusion_matrix")
    try:
        (tn, fp), (fn, tp) = cm  # type: ignore[misc]
        n, wrong = int(tn) + int(fp) + int(fn) + int(tp), int(fp) + int(fn)
    except (TypeError, ValueError):
        return None
    return (n, wrong) if n > 0 else None


def held_out_record(cross_source: Any) -> HeldOutRecord | None:
    """The totals of a card's ``cross_source`` mapping (see the module docstring), or None without a usable
    entry (a user's model without held-out checks)."""
    films = wrong = checked = warned = silent = judged = 0
    by_source: dict[str, float] = {}
    silent_by_source: dict[str, float] = {}
    for source, entry in _mapping(cross_source).items():
        entry = _mapping(entry)
        counts = _confusion(entry)
        if counts is None:
            continue
        n, bad = counts
        films, wrong = films + n, wrong + bad
        by_source[str(source)] = bad / n
        ood = _mapping(entry.get("ood_warnings"))
        if isinstance(ood.get("n"), int) and isinstance(ood.get("warned"), int) and ood["n"] > 0:
            checked, warned = checked + ood["n"], warned + ood["warned"]
        errors = _silent_errors(entry)
        if errors is not None:
            silent, judged = silent + errors[0], judged + errors[1]
            silent_by_source[str(source)] = errors[0] / errors[1]
    if not films:
        return None
    return HeldOutRecord(films=films, wrong=wrong, checked=checked, warned=warned,
                         wrong_by_source=MappingProxyType(by_source), silent_errors=silent, silent_judged=judged,
                         silent_errors_by_source=MappingProxyType(silent_by_source))


def silent_error_rate(entry: Any) -> float | None:
    """One held-out source's silent error rate (``silent_errors.all_splits``: wrong and not warned, of its
    films), or None when the entry records none."""
    return silent_share(_mapping(_mapping(entry).get("silent_errors")).get("all_splits"))


def silent_share(record: Any) -> float | None:
    """``silent_errors / n`` of one silent-error record (a card's ``silent_errors`` of a split or a source),
    or None when it holds no usable counts."""
    errors = _counts(_mapping(record))
    return errors[0] / errors[1] if errors else None


def _silent_errors(entry: Mapping[str, Any]) -> tuple[int, int] | None:
    """(silent errors, films) from an entry's ``silent_errors.all_splits``, or None."""
    return _counts(_mapping(_mapping(entry.get("silent_errors")).get("all_splits")))


def _counts(record: Mapping[str, Any]) -> tuple[int, int] | None:
    silent, n = record.get("silent_errors"), record.get("n")
    if isinstance(silent, int) and isinstance(n, int) and 0 <= silent <= n and n > 0:
        return silent, n
    return None
