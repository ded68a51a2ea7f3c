"""The readout-based plain verdict (xai.trust.verdict.anatomy_verdict) on shares measured from real maps on a
real film's regions, at the edges of its rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xai.anatomy import LUNG_ZONES, REGIONS, anatomy_regions, evidence_by_region
from xai.radiograph import load_radiograph
from xai.trust.verdict import ANATOMY_RED, SUSPECT_REGIONS, anatomy_verdict, lung_verdict

FILM = Path(__file__).resolve().parent.parent / "samples" / "non_covid_nih_pa.png"  # every region present


@pytest.fixture(scope="module")
def regions():
    r = anatomy_regions(load_radiograph(FILM), ocr=False)
    assert r.found
    return r


def _blob_on(regions, name: str, weight: float = 1.0) -> np.ndarray:
    """A map whose mass is spread over one region (uniform inside it)."""
    return regions[name].astype(np.float64) * weight


def test_map_on_the_heart_is_red_and_names_it(regions) -> None:
    shares = evidence_by_region(_blob_on(regions, "heart and mediastinum"), regions)
    v = anatomy_verdict(shares, regions.found)
    assert v.check == "anatomy" and v.light == "red"
    assert "heart and mediastinum" in v.sentence and "100%" in v.sentence


def test_map_in_one_lung_zone_is_green(regions) -> None:
    shares = evidence_by_region(_blob_on(regions, "left lower zone"), regions)
    v = anatomy_verdict(shares, True)
    assert v.light == "green" and "left lower zone" in v.sentence


@pytest.mark.parametrize("suspect", SUSPECT_REGIONS)
def test_largest_suspect_region_below_half_is_amber(regions, suspect: str) -> None:
    # 40 % of the mass on the suspect region, 30 % on each of two lung zones: the suspect region is the largest.
    s = sum(_blob_on(regions, name) / regions[name].sum() * w
            for name, w in ((suspect, 0.4), ("right lower zone", 0.3), ("left lower zone", 0.3)))
    shares = evidence_by_region(s, regions)
    assert shares[suspect] == pytest.approx(0.4, abs=1e-6) and shares[suspect] < ANATOMY_RED
    v = anatomy_verdict(shares, True)
    assert v.light == "amber" and suspect in v.sentence and "40%" in v.sentence


def test_most_outside_the_lungs_on_a_plain_region_is_amber_and_named(regions) -> None:
    # 30 % below the lungs, 25 % chest wall, 45 % over the six zones: the largest is "below the lungs", which is
    # not suspect, but the lungs hold less than half.
    parts = [("below the lungs", 0.30), ("chest wall", 0.25)] + [(z, 0.45 / 6) for z in LUNG_ZONES]
    s = sum(_blob_on(regions, name) / regions[name].sum() * w for name, w in parts)
    shares = evidence_by_region(s, regions)
    v = anatomy_verdict(shares, True)
    assert v.light == "amber" and "below the lungs" in v.sentence and "55%" in v.sentence


def test_non_lung_majority_led_by_a_suspect_region_is_red(regions) -> None:
    # The largest region is a lung zone (35 %), yet 60 % lies outside them, led by the film border (30 %).
    parts = [("right lower zone", 0.35), ("left upper zone", 0.05), ("film border", 0.30), ("chest wall", 0.15),
             ("below the lungs", 0.15)]
    s = sum(_blob_on(regions, name) / regions[name].sum() * w for name, w in parts)
    v = anatomy_verdict(evidence_by_region(s, regions), True)
    assert v.light == "red" and "on the film border (30%)" in v.sentence


def test_flat_map_and_no_lung_field_are_gray(regions) -> None:
    flat = evidence_by_region(np.ones(regions.shape), regions)
    assert all(np.isnan(v) for v in flat.values())
    assert anatomy_verdict(flat, True).light == "gray"
    assert anatomy_verdict(dict.fromkeys(REGIONS, float("nan")), False).light == "gray"
    assert "No lung field" in anatomy_verdict({}, False).sentence
    # The same flat map reads gray in the older inside-the-lungs verdict too.
    assert lung_verdict(float("nan"), {}, True).light == "gray"
