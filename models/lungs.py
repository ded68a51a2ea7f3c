"""Lung-field data for the segmentation model: the manifest, the pixel cache, augmentation, Dice and Hausdorff.

The network itself is :class:`xai.unet.LungUNet` (the library needs it without importing ``models``); the
input pipeline is the project's own: :func:`xai.radiograph.load_radiograph` then
:func:`xai.preprocessing.prepare_array` with :data:`xai.anatomy.LUNG_PREPROCESSING`, so training and inference
see the same pixels. Masks go through the same letterbox resize (area interpolation, threshold 0.5).

Conventions (``../shared/data/lungs/README``): ``nlm`` = manual Montgomery/Shenzhen masks, lungs exclude the
heart; ``v7`` = V7 Labs polygons on COVID-19 films, lungs include the retrocardiac area. The model has one
output channel per convention (:data:`xai.anatomy.CONVENTIONS` gives the order).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray

from xai.anatomy import CONVENTIONS, LUNG_PREPROCESSING
from xai.preprocessing import EQUALIZE_MODES, Preprocessing, _equalize, prepare_array
from xai.radiograph import load_radiograph

__all__ = [
    "LungRecord",
    "build_cache",
    "convention_of",
    "dice",
    "hausdorff95",
    "read_lung_manifest",
    "augment_pair",
    "random_non_chest",
]


@dataclass(frozen=True)
class LungRecord:
    """One manifest row: absolute image and mask paths, split, source, convention index."""

    image: Path
    mask: Path
    split: str
    source: str
    convention: int


def convention_of(text: str) -> int:
    """Index into :data:`xai.anatomy.CONVENTIONS` from the manifest's ``convention`` wording."""
    low = text.lower()
    if "exclude the heart" in low:
        return CONVENTIONS.index("nlm")
    if "retrocardiac" in low:
        return CONVENTIONS.index("v7")
    raise ValueError(f"unknown mask convention {text!r}")


def read_lung_manifest(data_dir: str | Path) -> list[LungRecord]:
    """Rows of ``lungs/manifest.csv`` (paths resolved against ``data_dir``)."""
    root = Path(data_dir)
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [LungRecord(image=(root / r["image"]).resolve(), mask=(root / r["mask"]).resolve(), split=r["split"],
                       source=r["source"], convention=convention_of(r["convention"])) for r in rows]


def _plain(preprocessing: Preprocessing) -> Preprocessing:
    """The same geometry without equalisation or normalisation (display pixels on the model grid)."""
    return dataclasses.replace(preprocessing, equalize="none", mean=(0.0,), std=(1.0,), channels=1)


def build_cache(records: Sequence[LungRecord], path: str | Path,
                preprocessing: Preprocessing = LUNG_PREPROCESSING) -> dict[str, np.ndarray]:
    """Decode every film and mask once onto the model grid; saved as ``.npz`` at ``path`` (re-used if present).

    Arrays: ``image`` uint8 (N, S, S) before equalisation, ``mask`` uint8 (N, S, S) 0/1, ``content`` int
    (N, 4) content box on the grid, ``original`` int (N, 2) original (H, W).
    """
    path = Path(path)
    if path.exists():
        with np.load(path) as z:
            cached = {k: z[k] for k in z.files}
        if len(cached["image"]) == len(records):
            return cached
    plain = _plain(preprocessing)
    images, masks, content, original = [], [], [], []
    for r in records:
        radiograph = load_radiograph(r.image)
        canvas, geometry = prepare_array(radiograph, plain)
        m = cv2.imread(str(r.mask), cv2.IMREAD_GRAYSCALE)
        if m is None or m.shape != radiograph.shape:
            raise ValueError(f"mask {r.mask.name} is missing or not the size of its image")
        mcanvas, _ = prepare_array((m > 127).astype(np.float32), plain)
        images.append(np.clip(canvas[0] * 255 + 0.5, 0, 255).astype(np.uint8))
        masks.append((mcanvas[0] >= 0.5).astype(np.uint8))
        content.append(geometry.content_box)
        original.append(geometry.original_size)
    out = {"image": np.stack(images), "mask": np.stack(masks), "content": np.array(content),
           "original": np.array(original)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=out["image"], mask=out["mask"], content=out["content"], original=out["original"])
    return out


def finish_input(content_pixels: np.ndarray, content_box: Sequence[int], size: int,
                 preprocessing: Preprocessing = LUNG_PREPROCESSING) -> np.ndarray:
    """Float content in [0, 1] on the grid -> equalised, normalised (S, S) float32, exactly as ``prepare_array``."""
    if preprocessing.equalize not in EQUALIZE_MODES:
        raise ValueError(preprocessing.equalize)
    x0, y0, x1, y1 = content_box
    canvas = np.zeros((size, size), np.float32)
    region = content_pixels[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1] = _equalize(region, preprocessing.equalize) if preprocessing.equalize != "none" else region
    return (canvas - np.float32(preprocessing.mean[0])) / np.float32(preprocessing.std[0])


def augment_pair(image: np.ndarray, mask: np.ndarray, content_box: Sequence[int], rng: np.random.Generator,
                 preprocessing: Preprocessing = LUNG_PREPROCESSING, *,
                 narrow_window: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: uint8 grid image + 0/1 mask -> (normalised float32 (S, S), float32 mask (S, S)).

    Intensity (before equalisation, as a different window or exposure would act): random window over the
    stored range (low end 0-0.15, high end 0.85-1; with probability ``narrow_window`` a narrow one: low end
    0-0.35, high end 0.55-1, clipping dark lungs or bright bone), gamma 0.6-1.6; then the card's equalisation; then geometry: rotation +-10 degrees, scale
    0.9-1.1, shift +-6 % (no flips: left/right matters); then mild Gaussian blur or noise.
    """
    S = image.shape[0]
    x = image.astype(np.float32) / 255.0
    if rng.uniform() < narrow_window:
        lo, hi = rng.uniform(0.0, 0.35), rng.uniform(0.55, 1.0)
    else:
        lo, hi = rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0) ** rng.uniform(0.6, 1.6)
    x = finish_input(x, content_box, S, _plain(preprocessing) if preprocessing.equalize == "none" else
                     dataclasses.replace(preprocessing, mean=(0.0,), std=(1.0,)))
    angle, scale = rng.uniform(-10, 10), rng.uniform(0.9, 1.1)
    matrix = cv2.getRotationMatrix2D((S / 2 - 0.5, S / 2 - 0.5), angle, scale)
    matrix[:, 2] += rng.uniform(-0.06, 0.06, size=2) * S
    x = cast(NDArray[np.float32], cv2.warpAffine(x, matrix, (S, S), flags=cv2.INTER_LINEAR, borderValue=0.0))
    y = cv2.warpAffine(mask.astype(np.float32), matrix, (S, S), flags=cv2.INTER_LINEAR, borderValue=0.0)
    u = rng.uniform()
    if u < 0.2:
        x = cast(NDArray[np.float32], cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5)))
    elif u < 0.4:
        x = np.clip(x + rng.normal(0, rng.uniform(0.01, 0.04), x.shape).astype(np.float32), 0, 1)
    x = (x - np.float32(preprocessing.mean[0])) / np.float32(preprocessing.std[0])
    return x.astype(np.float32), (y >= 0.5).astype(np.float32)


def random_non_chest(rng: np.random.Generator, size: int,
                     preprocessing: Preprocessing = LUNG_PREPROCESSING) -> np.ndarray:
    """A normalised (S, S) image that is not a chest film (target: no lung field).

    Smooth random fields, gradients, rectangles, ellipses and rendered text: what a wrong upload looks like
    (a screenshot, a document, a photo-like blur). Equalised like a film.
    """
    x = np.zeros((size, size), np.float32)
    kind = rng.integers(0, 4)
    if kind == 0:  # smooth random field
        low = rng.uniform(0, 1, (rng.integers(2, 9),) * 2).astype(np.float32)
        x = cast(NDArray[np.float32], cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC))
    elif kind == 1:  # gradient
        t = np.linspace(0, 1, size, dtype=np.float32)
        a = rng.uniform(0, 2 * np.pi)
        x = np.cos(a) * t[None, :] + np.sin(a) * t[:, None]
    x = x + rng.uniform(0, 0.5)
    for _ in range(int(rng.integers(0, 8))):  # shapes
        c = float(rng.uniform(0, 1))
        p = rng.integers(0, size, 4)
        if rng.uniform() < 0.5:
            cv2.rectangle(x, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), c, -1)
        else:
            cv2.ellipse(x, (int(p[0]), int(p[1])), (int(p[2]) // 3 + 2, int(p[3]) // 3 + 2), float(rng.uniform(0, 180)),
                        0, 360, c, -1)
    if kind == 3 or rng.uniform() < 0.3:  # text (OpenCV draws text on 8-bit images only)
        ink = np.zeros((size, size), np.uint8)
        for row in range(int(rng.integers(1, 14))):
            cv2.putText(ink, "".join(chr(int(c)) for c in rng.integers(65, 122, rng.integers(3, 20))),
                        (int(rng.integers(0, size // 3)), 12 + row * int(rng.integers(14, 30))),
                        cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.3, 0.9)), 255, 1)
        x = np.where(ink > 0, np.float32(rng.uniform(0, 1)), x)
    x = np.clip(x - x.min(), 0, None)
    x = x / max(float(x.max()), 1e-6)
    if preprocessing.equalize != "none":
        x = _equalize(x, preprocessing.equalize)
    return ((x - np.float32(preprocessing.mean[0])) / np.float32(preprocessing.std[0])).astype(np.float32)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice = 2|P and T| / (|P| + |T|); 1.0 when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


def _surface(m: np.ndarray) -> np.ndarray:
    eroded = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return m & ~eroded.astype(bool)


def hausdorff95(pred: np.ndarray, truth: np.ndarray) -> float:
    """95th-percentile symmetric Hausdorff distance between the masks' boundaries, in pixels of their grid.

    Pooled over both directions (distances from each boundary pixel of one mask to the nearest boundary pixel
    of the other), as in the Medical Segmentation Decathlon. inf when exactly one mask is empty; 0 when both are.
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("inf")
    sp, st = _surface(p), _surface(t)
    dt_t = cv2.distanceTransform((~st).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dt_p = cv2.distanceTransform((~sp).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return float(np.percentile(np.concatenate([dt_t[sp], dt_p[st]]), 95))
