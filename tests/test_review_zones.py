"""A reader's box assigned to anatomical regions (xai.review.stats.box_regions) on a real film's regions, and the
per-zone agreement of readers' zones with the maps' top zones (zone_agreement, session_summary["zones"])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xai.anatomy import REGIONS, anatomy_regions
from xai.radiograph import load_radiograph
from xai.review.stats import box_regions, session_summary, zone_agreement

FILM = Path(__file__).resolve().parent.parent / "samples" / "non_covid_nih_pa.png"


@pytest.fixture(scope="module")
def film():
    radiograph = load_radiograph(FILM)
    return radiograph, anatomy_regions(radiograph, ocr=False)


def _inner_box(mask: np.ndarray, side: int) -> tuple[int, int, int, int]:
    """A side x side box wholly inside ``mask`` (the first found scanning the mask's centre rows)."""
    ys, xs = np.nonzero(mask)
    for y, x in zip(ys, xs, strict=True):
        if mask[y:y + side, x:x + side].all():
            return int(x), int(y), side, side
    raise AssertionError("no box fits")


@pytest.mark.parametrize("zone", ["right middle zone", "left lower zone", "heart and mediastinum"])
def test_a_box_inside_one_region_is_all_that_region(film, zone: str) -> None:
    radiograph, regions = film
    box = _inner_box(regions[zone], 12)
    shares = box_regions(box, radiograph.shape, regions)
    assert list(shares) == list(REGIONS)
    assert shares[zone] == pytest.approx(1.0) and sum(shares.values()) == pytest.approx(1.0)


def test_a_box_across_two_zones_splits_by_area_and_survives_a_shrunk_grid(film) -> None:
    radiograph, regions = film
    top, cut1, _, _ = regions.zone_rows["right"]
    cols = np.nonzero(regions["right upper zone"][cut1 - 1] & regions["right middle zone"][cut1])[0]
    x = int(cols[len(cols) // 2]) - 3
    box = (x, cut1 - 6, 6, 12)  # 6 rows in the upper zone, 6 in the middle
    shares = box_regions(box, radiograph.shape, regions)
    assert shares["right upper zone"] == pytest.approx(0.5, abs=0.1)
    assert shares["right middle zone"] == pytest.approx(0.5, abs=0.1)
    small = anatomy_regions(radiograph, ocr=False, max_side=256)  # the regions on a grid half the film's side
    big_box = (x - 40, cut1 - 60, 80, 120)
    full, shrunk = box_regions(big_box, radiograph.shape, regions), box_regions(big_box, radiograph.shape, small)
    assert max(abs(full[r] - shrunk[r]) for r in REGIONS) < 0.08


def test_zone_agreement_per_method_and_zone_by_hand() -> None:
    rows = [
        {"method": "gradcam", "reader_zone": "right lower zone", "map_zones": ["right lower zone", "heart and mediastinum"]},
        {"method": "gradcam", "reader_zone": "right lower zone", "map_zones": ["left lower zone", "chest wall"]},
        {"method": "gradcam", "reader_zone": "left upper zone", "map_zones": ["left upper zone", "left middle zone"]},
        {"method": "gradcam++", "reader_zone": "right lower zone", "map_zones": ["heart and mediastinum", "chest wall"]},
        {"method": "gradcam", "reader_zone": "", "map_zones": []},  # no lung field: left out
    ]
    out = zone_agreement(rows)
    assert out == {"gradcam": {"right lower zone": {"boxes": 2, "agree": 0.5},
                               "left upper zone": {"boxes": 1, "agree": 1.0}},
                   "gradcam++": {"right lower zone": {"boxes": 1, "agree": 0.0}}}
    summary = session_summary([{"case": "c1", "reader": "a", "diagnosis": "covid19"}], ["gradcam", "gradcam++"],
                              box_scores=[{**r, "case": "c1", "reader": "a", "hit": 1.0, "energy_inside": 0.5,
                                           "iou_otsu": 0.1, "area_share": 0.1} for r in rows], n_boot=10)
    assert summary["zones"] == out
