"""The anatomical readout (xai.anatomy.anatomy_regions, evidence_by_region, evidence_periphery) on real films.

References are independent of the code under test wherever the question allows: zones and the cardiac
position are taken from the HUMAN lung masks of ``../shared/data/lungs`` (thirds of each manual lung's height,
the gap between the manual lungs), shares are recomputed here from their definition with boolean masks, and
laterality is checked on a real film written into a DICOM file with and without PatientOrientation.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from xai.anatomy import (
    LUNG_ZONES,
    REGIONS,
    anatomy_readout,
    anatomy_regions,
    anatomy_regions_from_masks,
    evidence_by_region,
    evidence_periphery,
    find_lung_fields,
    find_lungs,
    readout_sentence,
    visible_lung_share,
    zone_outlines,
)
from xai.radiograph import load_radiograph

EXPECTED_NAMES = (
    "right upper zone", "right middle zone", "right lower zone",
    "left upper zone", "left middle zone", "left lower zone",
    "heart and mediastinum", "above the lungs", "below the lungs", "chest wall",
    "outside the body", "film border", "text and markers",
)


def _test_rows(shared_data: Path) -> list[dict[str, str]]:
    with open(shared_data / "lungs" / "manifest.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "test"]


def _human(shared_data: Path, row: dict[str, str]) -> np.ndarray:
    return cv2.imread(str(shared_data / "lungs" / row["mask"]), cv2.IMREAD_GRAYSCALE) > 127


def _gaussian(shape: tuple[int, int], y: float, x: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)).astype(np.float32)


def _smooth_random(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A smooth random map: a 6 x 6 grid of random values, squared, upsampled bicubically."""
    return cv2.resize((rng.random((6, 6)) ** 2).astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _human_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two largest components of a human mask, (viewer-left, viewer-right)."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    two = sorted(range(1, n), key=lambda i: -stats[i, cv2.CC_STAT_AREA])[:2]
    a, b = sorted(two, key=lambda i: centroids[i, 0])
    return labels == a, labels == b


@pytest.fixture(scope="module")
def nlm_films(shared_data: Path) -> list[tuple[object, np.ndarray, object]]:
    """Four NLM test films (Shenzhen and Montgomery): (radiograph, human mask, regions)."""
    rows = [r for r in _test_rows(shared_data) if "exclude the heart" in r["convention"]]
    picked = [r for r in rows if "CHNCXR" in r["image"]][:2] + [r for r in rows if "MCUCXR" in r["image"]][:2]
    out = []
    for r in picked:
        film = load_radiograph(shared_data / "lungs" / r["image"])
        out.append((film, _human(shared_data, r), anatomy_regions(film)))
    return out


# ------------------------------------------------------------------------------------ the regions
def test_regions_have_the_names_and_are_disjoint_and_cover(nlm_films, chestcovnet_dir: Path):
    extra = [load_radiograph(chestcovnet_dir / "images" / name)
             for name in sorted(p.name for p in (chestcovnet_dir / "images").glob("mhh_*.jpg"))[:2]]
    for film, regions in [(f, r) for f, _, r in nlm_films] + [(f, anatomy_regions(f)) for f in extra]:
        assert tuple(regions) == EXPECTED_NAMES
        assert regions.found, regions.reason
        count = sum(regions[name].astype(np.int32) for name in regions)
        assert count.shape == film.pixels.shape
        assert (count == 1).all()  # disjoint and covering
        for name in LUNG_ZONES + ("heart and mediastinum", "film border", "chest wall"):
            assert regions[name].any(), name


def test_both_conventions_from_one_pass_equal_find_lungs(nlm_films):
    film = nlm_films[0][0]
    fields = find_lung_fields(film)
    for convention in ("nlm", "v7"):
        assert np.array_equal(fields[convention].mask, find_lungs(film, convention=convention).mask)


def test_film_border_and_markers_take_precedence(nlm_films):
    from xai.markers import text_and_marker_mask

    for film, _, regions in nlm_films:
        H, W = film.shape
        bh, bw = round(0.05 * H), round(0.05 * W)
        marks = text_and_marker_mask(film)
        assert regions.markers == "xai.markers.text_and_marker_mask"
        assert np.array_equal(regions["text and markers"], marks)
        border = np.ones((H, W), bool)
        border[bh:H - bh, bw:W - bw] = False
        assert np.array_equal(regions["film border"], border & ~marks)


def test_text_and_markers_get_every_marker_pixel_on_a_marked_film(chestcovnet_dir: Path):
    """An MHH film with burned-in marks: whatever the marker finder returns is exactly the region."""
    from xai.markers import text_and_marker_mask

    for name in sorted(p.name for p in (chestcovnet_dir / "images").glob("mhh_*.jpg"))[:6]:
        film = load_radiograph(chestcovnet_dir / "images" / name)
        marks = text_and_marker_mask(film)
        if marks.any():
            assert np.array_equal(anatomy_regions(film)["text and markers"], marks)
            return
    pytest.fail("none of six MHH films has a mark found by xai.markers")


# ------------------------------------------------------------------------------------ the shares
def test_shares_match_their_definition_and_sum_to_one(nlm_films):
    rng = np.random.default_rng(1)
    for film, _, regions in nlm_films:
        for signed in (False, True):
            s = _smooth_random(rng, film.shape) - (0.3 if signed else 0.0)
            shares = evidence_by_region(s, regions)
            assert tuple(shares) == EXPECTED_NAMES
            total = np.abs(s).astype(np.float64).sum()
            for name in EXPECTED_NAMES:
                assert shares[name] == pytest.approx(np.abs(s)[regions[name]].sum() / total, abs=1e-6)
            assert math.fsum(shares.values()) == pytest.approx(1.0, abs=1e-6)
            assert visible_lung_share(shares) == pytest.approx(sum(shares[z] for z in LUNG_ZONES), abs=1e-12)


def test_flat_map_and_no_lung_field_give_nan(nlm_films):
    film, _, regions = nlm_films[0]
    shares = evidence_by_region(np.full(film.shape, 0.4, np.float32), regions)
    assert all(math.isnan(v) for v in shares.values()) and len(shares) == 13
    assert all(math.isnan(v) for v in evidence_periphery(np.zeros(film.shape), regions).values())
    assert readout_sentence(shares) == ""
    noise = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    empty = anatomy_regions(noise)
    assert not empty.found and empty.reason
    assert (sum(empty[n].astype(int) for n in empty) == 1).all()
    assert all(math.isnan(v) for v in evidence_by_region(_gaussian((256, 256), 128, 128, 20), empty).values())


def test_a_map_on_a_shrunk_grid_reads_the_same(nlm_films):
    film, _, regions = nlm_films[0]
    s = _smooth_random(np.random.default_rng(2), film.shape)
    H, W = film.shape
    small = cv2.resize(s, (W // 2, H // 2), interpolation=cv2.INTER_AREA)
    full, half = evidence_by_region(s, regions), evidence_by_region(small, regions)
    assert max(abs(full[k] - half[k]) for k in full) < 0.01


def test_bad_maps_are_refused_with_a_message(nlm_films):
    film, _, regions = nlm_films[0]
    H, W = film.shape
    with pytest.raises(ValueError, match="aspect"):
        evidence_by_region(np.ones((H, W // 3), np.float32), regions)
    bad = np.ones((H, W), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evidence_by_region(bad, regions)


def test_readout_sentence():
    shares = dict.fromkeys(EXPECTED_NAMES, 0.0)
    shares.update({"heart and mediastinum": 0.58, "left lower zone": 0.22, "outside the body": 0.2})
    assert readout_sentence(shares) == "58% heart and mediastinum · 22% left lower zone"
    assert readout_sentence(shares, top=1) == "58% heart and mediastinum"
    assert readout_sentence({**shares, "chest wall": float("nan")}, top=3) == (
        "58% heart and mediastinum · 22% left lower zone · 20% outside the body")


# ------------------------------------------------------------------ maps placed by the human masks
def _zones_of(lung: np.ndarray) -> list[np.ndarray]:
    rows = np.flatnonzero(lung.any(axis=1))
    top, bottom = rows[0], rows[-1] + 1
    cuts = [top, top + (bottom - top) / 3, top + 2 * (bottom - top) / 3, bottom]
    r = np.arange(lung.shape[0])[:, None]
    return [lung & (r >= cuts[i]) & (r < cuts[i + 1]) for i in range(3)]


def test_a_gaussian_in_each_zone_reads_that_zone_first(nlm_films):
    """Zones from the HUMAN mask (thirds of each manual lung's height); the Gaussian sits at the deepest point
    of the manual zone; the readout (from the lung model's masks) must name that zone first."""
    for film, human, regions in nlm_films:
        viewer_left, viewer_right = _human_lungs(human)
        for patient, lung in (("right", viewer_left), ("left", viewer_right)):
            for level, zone in zip(("upper", "middle", "lower"), _zones_of(lung), strict=True):
                depth = cv2.distanceTransform(zone.astype(np.uint8), cv2.DIST_L2, 5)
                y, x = np.unravel_index(int(depth.argmax()), depth.shape)
                s = _gaussian(film.shape, y, x, max(2.0, 0.4 * float(depth.max())))
                shares = evidence_by_region(s, regions)
                top = max(shares, key=shares.get)
                assert top == f"{patient} {level} zone", (patient, level, readout_sentence(shares, 3))


def test_a_gaussian_on_the_cardiac_silhouette_reads_heart_and_mediastinum(nlm_films):
    """Cardiac position from the HUMAN mask: at 75 % of the lungs' height, midway across the gap between them."""
    for film, human, regions in nlm_films:
        viewer_left, viewer_right = _human_lungs(human)
        rows = np.flatnonzero(human.any(axis=1))
        y = int(rows[0] + 0.75 * (rows[-1] - rows[0]))
        inner_left = np.flatnonzero(viewer_left[y]).max()
        inner_right = np.flatnonzero(viewer_right[y]).min()
        gap = inner_right - inner_left
        s = _gaussian(film.shape, y, (inner_left + inner_right) / 2, max(2.0, 0.25 * gap))
        shares = evidence_by_region(s, regions)
        assert max(shares, key=shares.get) == "heart and mediastinum", readout_sentence(shares, 3)
        assert visible_lung_share(shares) < 0.5


def test_periphery_outer_against_inner_third(nlm_films):
    """A Gaussian at the lateral edge of a manual lower zone reads peripheral, one at its medial edge central."""
    for film, human, regions in nlm_films:
        viewer_left, _ = _human_lungs(human)
        middle = _zones_of(viewer_left)[1]
        y = int(np.flatnonzero(middle.any(axis=1)).mean())
        xs = np.flatnonzero(viewer_left[y])
        width = xs.max() - xs.min()
        outer = evidence_periphery(_gaussian(film.shape, y, xs.min() + 0.1 * width, 0.05 * width), regions)
        inner = evidence_periphery(_gaussian(film.shape, y, xs.max() - 0.2 * width, 0.05 * width), regions)
        assert outer["peripheral"] > 0.8 and inner["central"] > 0.8
        assert outer["peripheral"] + outer["central"] == pytest.approx(1.0, abs=1e-9)


def test_zone_outlines_lie_on_zone_boundaries(nlm_films):
    _, _, regions = nlm_films[0]
    edge = zone_outlines(regions)
    labels = regions.labels.astype(int)
    padded = np.pad(labels, 1, mode="edge")
    differs = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy:dy + labels.shape[0], dx:dx + labels.shape[1]] != labels
    assert edge.any()
    assert (labels[edge] < 6).all() and differs[edge].all()


# ------------------------------------------------------------------------------------ laterality
def _dicom(pixels: np.ndarray, path: Path, orientation: list[str] | None) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    if orientation is not None:
        ds.PatientOrientation = orientation
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_flipped_film_swaps_sides_only_when_the_file_says_so(shared_data: Path, tmp_path: Path):
    row = [r for r in _test_rows(shared_data) if "CHNCXR" in r["image"]][0]
    gray = cv2.imread(str(shared_data / "lungs" / row["image"]), cv2.IMREAD_GRAYSCALE)
    plain = anatomy_regions(load_radiograph(_dicom(gray, tmp_path / "plain.dcm", None)), markers=False)
    conventional = anatomy_regions(load_radiograph(_dicom(gray, tmp_path / "lf.dcm", ["L", "F"])), markers=False)
    flipped_said = anatomy_regions(load_radiograph(_dicom(gray[:, ::-1], tmp_path / "rf.dcm", ["R", "F"])),
                                   markers=False)
    flipped_unsaid = anatomy_regions(load_radiograph(_dicom(gray[:, ::-1], tmp_path / "flip.dcm", None)),
                                     markers=False)
    assert plain.laterality_rule == "display convention" and plain.right_on_viewer_left
    assert conventional.laterality_rule == "PatientOrientation" and conventional.right_on_viewer_left
    assert flipped_said.laterality_rule == "PatientOrientation" and not flipped_said.right_on_viewer_left
    assert flipped_unsaid.laterality_rule == "display convention"
    W = gray.shape[1]
    for zone in LUNG_ZONES:
        other = zone.replace("right", "LEFT").replace("left", "right").replace("LEFT", "left")
        assert np.array_equal(conventional[zone], plain[zone])
        # same pixels, only the statement differs: the names swap and nothing else
        assert np.array_equal(flipped_unsaid[zone], flipped_said[other])
        # the file says it is flipped: the zone is the same anatomy as on the unflipped film (mirrored back; the
        # lung model sees a mirrored chest, so the masks agree only roughly)
        ys, xs = np.nonzero(flipped_said[zone][:, ::-1])
        y0, x0 = (float(v.mean()) for v in np.nonzero(plain[zone]))
        assert abs(xs.mean() - x0) < 0.08 * W and abs(ys.mean() - y0) < 0.08 * gray.shape[0], zone
        assert _iou(flipped_said[zone][:, ::-1], plain[zone]) > 0.5, zone
    # the patient's right lung is on the viewer's right when the file says the film is flipped
    ys, xs = np.nonzero(flipped_said["right lower zone"])
    assert xs.mean() > gray.shape[1] / 2


# ------------------------------------------------------------------ accuracy against the human masks
def test_zones_from_the_lung_model_match_zones_from_the_human_masks(shared_data: Path):
    """Every test film with a manual mask: the regions with the model's two lung masks against the regions with
    the human mask put in place of the model's mask of the same convention (the model's other mask kept);
    three smooth random maps per film; per convention and region, the median absolute difference of shares
    must be <= 0.05."""
    rng = np.random.default_rng(0)
    diffs: dict[str, list[list[float]]] = {"nlm": [], "v7": []}
    for row in _test_rows(shared_data):
        film = load_radiograph(shared_data / "lungs" / row["image"])
        human = _human(shared_data, row)
        fields = find_lung_fields(film)
        convention = "nlm" if "exclude the heart" in row["convention"] else "v7"
        model = anatomy_regions_from_masks(film.pixels, fields["nlm"], fields["v7"])
        by_human = (anatomy_regions_from_masks(film.pixels, human, fields["v7"]) if convention == "nlm"
                    else anatomy_regions_from_masks(film.pixels, fields["nlm"], human))
        maps = {str(i): _smooth_random(rng, film.shape) for i in range(3)}
        a, b = anatomy_readout(maps, model), anatomy_readout(maps, by_human)
        for k in maps:
            diffs[convention].append([abs(a[k].shares[n] - b[k].shares[n]) for n in REGIONS])
    assert len(diffs["nlm"]) == 3 * 186 and len(diffs["v7"]) == 3 * 7
    for convention, d in diffs.items():
        medians = dict(zip(REGIONS, np.median(np.array(d), axis=0), strict=True))
        print(convention, {k: round(float(v), 4) for k, v in medians.items()})
        assert all(v <= 0.05 for v in medians.values()), (convention, medians)
