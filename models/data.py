"""The ChestCOVNet data set: manifest, a decoded in-memory cache, class/source balancing, augmentation.

The manifest's split is fixed by patient (``train``/``val``/``test``) and is never re-split here.
Every image is decoded (:func:`xai.radiograph.load_radiograph`) and prepared
(:func:`xai.preprocessing.prepare_array`, crop / resize / equalise exactly as the card's ``Preprocessing``)
ONCE into a float16 cache in display space [0, 1]; augmentation then works on batches of tensors and the
card's mean/std normalisation comes last (:func:`normalize`), so a cached image plus ``normalize`` equals
``prepare(image, preprocessing)`` up to float16 rounding.

Augmentation (all on the prepared square, both classes alike, so none of it can become a class cue):
small affine (±5° rotation, ±5 % scale and shift), brightness / contrast / gamma jitter, occasional
down-and-up sampling and noise (web images are low quality), random erasing of border bands and of small
text-like boxes (burned-in markers, arrows and captions are source cues, not disease).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import xai.anatomy  # noqa: F401 - registers the "lungs" crop a card may name (xai.preprocessing.crop_box)
from xai.preprocessing import Preprocessing, prepare_array

CLASS_NAMES: tuple[str, ...] = ("non_covid", "covid19")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One manifest row (only the fields training and evaluation need; no patient id is kept)."""

    file: str
    label: int
    split: str
    source: str


def read_manifest(data_dir: str | Path, class_names: Sequence[str] = CLASS_NAMES) -> list[Record]:
    """Rows of ``manifest.csv`` as :class:`Record` (labels as indices into ``class_names``)."""
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest.csv in {data_dir}")
    records = []
    with manifest.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["label"] not in class_names:
                raise ValueError(f"manifest label {row['label']!r} is not one of {list(class_names)}")
            if row["split"] not in SPLITS:
                raise ValueError(f"manifest split {row['split']!r} is not one of {SPLITS}")
            records.append(Record(row["file"], class_names.index(row["label"]), row["split"], row["source"]))
    return records


def select(records: Sequence[Record], splits: Sequence[str], *, exclude_source: str | None = None,
           only_source: str | None = None) -> list[Record]:
    """Records in ``splits``, optionally without (or only) one source (exact name)."""
    return [r for r in records if r.split in splits
            and (exclude_source is None or r.source != exclude_source)
            and (only_source is None or r.source == only_source)]


def display_preprocessing(preprocessing: Preprocessing) -> Preprocessing:
    """The same crop/resize/equalise, one channel, no normalisation: pixels stay in [0, 1]."""
    return Preprocessing(input_size=preprocessing.input_size, channels=1, mean=(0.0,), std=(1.0,),
                         resize=preprocessing.resize, equalize=preprocessing.equalize, crop=preprocessing.crop)


def prepare_display(path: str | Path, preprocessing: Preprocessing) -> np.ndarray:
    """Decode one file and prepare it in display space: float32 (S, S) in [0, 1]."""
    from xai.radiograph import load_radiograph

    array, _ = prepare_array(load_radiograph(Path(path)), display_preprocessing(preprocessing))
    return array[0]


def build_cache(data_dir: str | Path, records: Sequence[Record], preprocessing: Preprocessing,
                cache_dir: str | Path | None = None, *, progress: bool = True) -> np.ndarray:
    """float16 (N, S, S) display-space images for ``records``, decoded once (and stored in ``cache_dir``).

    The cache file name hashes the preprocessing spec and the file list, so a changed spec never reuses
    stale pixels.
    """
    data_dir = Path(data_dir)
    key = hashlib.sha256(json.dumps([preprocessing.to_dict(), [r.file for r in records]]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"images-{key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (len(records), preprocessing.input_size, preprocessing.input_size):
            return cached
    from tqdm import tqdm

    S = preprocessing.input_size
    out = np.empty((len(records), S, S), dtype=np.float16)
    for i, rec in enumerate(tqdm(records, desc="decode+prepare", disable=not progress, mininterval=5)):
        out[i] = prepare_display(data_dir / "images" / rec.file, preprocessing)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, out, allow_pickle=False)
        tmp.replace(path)
    return out


def normalize(batch: Tensor, preprocessing: Preprocessing) -> Tensor:
    """(N, S, S) or (N, 1, S, S) display-space batch -> (N, C, S, S) model input with the card's mean/std."""
    if batch.ndim == 3:
        batch = batch.unsqueeze(1)
    batch = batch.float().expand(-1, preprocessing.channels, -1, -1)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (batch - mean) / std


def balanced_weights(records: Sequence[Record], n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """Sampling weights: each class gets an equal share, split equally among its sources, then images.

    With this data set's train split: covid19 1/4 MHH, 1/4 COVID-CXNet; non_covid 1/8 each for NIH,
    Montgomery, Shenzhen and the ieee8023 case-report pneumonias (17 films, so each is drawn about 18 times
    as often as an NIH film) — so neither the class prior nor a large collection dominates what the network
    sees, and the only negatives from the COVID-19 films' kind of source are not drowned out.
    """
    groups = Counter((r.label, r.source) for r in records)
    sources_per_class = Counter(label for label, _ in groups)
    present = len(sources_per_class)
    w = np.array([1.0 / present / sources_per_class[r.label] / groups[(r.label, r.source)] for r in records])
    return w / w.sum()


# ------------------------------------------------------------------------------------------ augmentation
@dataclass(frozen=True)
class Augmentation:
    """Augmentation strengths (recorded in the model card)."""

    rotate_deg: float = 5.0
    scale: float = 0.05
    shift: float = 0.05
    brightness: float = 0.08
    contrast: float = 0.15
    gamma: float = 0.2
    p_degrade: float = 0.25
    p_noise: float = 0.25
    p_border: float = 0.5
    border_max: float = 0.12
    p_boxes: float = 0.5
    max_boxes: int = 3

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def augment(batch: Tensor, aug: Augmentation, generator: torch.Generator | None) -> Tensor:
    """Randomly transform a display-space batch (N, S, S) in [0, 1]; returns a new float32 tensor."""
    x = batch.float().unsqueeze(1)
    n, _, s, _ = x.shape

    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator)

    # Small affine: rotation, isotropic scale, shift (grid_sample, edges replicated).
    angle = (u(n) * 2 - 1) * math.radians(aug.rotate_deg)
    scale = 1 + (u(n) * 2 - 1) * aug.scale
    shift = (u(n, 2) * 2 - 1) * aug.shift * 2  # grid units span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # Intensity: contrast around the image mean, brightness, gamma.
    mean = x.mean(dim=(2, 3), keepdim=True)
    contrast = 1 + (u(n, 1, 1, 1) * 2 - 1) * aug.contrast
    x = (x - mean) * contrast + mean + (u(n, 1, 1, 1) * 2 - 1) * aug.brightness
    x = x.clamp(0, 1)
    gamma = torch.exp((u(n, 1, 1, 1) * 2 - 1) * math.log1p(aug.gamma))
    x = x.clamp_min(1e-6) ** gamma

    # Quality: down-and-up sampling (blur) and sensor noise on a subset.
    degrade = u(n) < aug.p_degrade
    if degrade.any():
        factor = float(0.35 + 0.45 * u(1))
        small = F.interpolate(x[degrade], scale_factor=factor, mode="bilinear", antialias=True, align_corners=False)
        x[degrade] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
    noisy = u(n) < aug.p_noise
    if noisy.any():
        sigma = 0.03 * u(int(noisy.sum()), 1, 1, 1)
        x[noisy] = x[noisy] + sigma * torch.randn(x[noisy].shape, generator=generator)

    # Random erasing of border bands (film edges, collimation, burned-in labels) and text-like boxes.
    for i in range(n):
        if float(u(1)) < aug.p_border:
            for side in range(4):
                if float(u(1)) < 0.5:
                    width = int(float(u(1)) * aug.border_max * s) + 1
                    fill = _fill_value(u)
                    if side == 0:
                        x[i, :, :width, :] = fill
                    elif side == 1:
                        x[i, :, s - width:, :] = fill
                    elif side == 2:
                        x[i, :, :, :width] = fill
                    else:
                        x[i, :, :, s - width:] = fill
        if float(u(1)) < aug.p_boxes:
            for _ in range(1 + int(float(u(1)) * aug.max_boxes)):
                bh = int(s * (0.02 + 0.05 * float(u(1)))) + 1
                bw = int(s * (0.05 + 0.2 * float(u(1)))) + 1
                # markers and captions sit near the edges: one coordinate in the outer quarter
                y0 = int(float(u(1)) * (s - bh))
                x0 = int(float(u(1)) * (s - bw))
                if float(u(1)) < 0.5:
                    y0 = int(float(u(1)) * (s // 4 - bh)) if float(u(1)) < 0.5 else s - bh - int(float(u(1)) * (s // 4 - bh))
                else:
                    x0 = int(float(u(1)) * max(1, s // 4 - bw)) if float(u(1)) < 0.5 else s - bw - int(float(u(1)) * max(1, s // 4 - bw))
                x[i, :, y0:y0 + bh, x0:x0 + bw] = _fill_value(u)
    return x.clamp(0, 1).squeeze(1)


def _fill_value(u) -> float:  # noqa: ANN001 - the local random helper
    """Black, white or a random gray, equally likely."""
    r = float(u(1))
    if r < 1 / 3:
        return 0.0
    if r < 2 / 3:
        return 1.0
    return float(u(1))


def mix_styles(x: Tensor, groups: Tensor, generator: torch.Generator, alpha: float = 0.1) -> Tensor:
    """MixStyle across sources (Zhou et al. 2021, "Domain Generalization with MixStyle", ICLR): each feature
    map ``x[i]`` (N, C, H, W) keeps its normalised content and takes channel statistics mixed with those of a
    film from another group (source) in the batch:

        μ_i, σ_i = mean, std of x[i] over (H, W);  λ_i ~ Beta(α, α);  j = a partner with groups[j] != groups[i]
        out_i = (x_i − μ_i) / σ_i · (λ_i σ_i + (1 − λ_i) σ_j) + (λ_i μ_i + (1 − λ_i) μ_j)

    so the head sees each film in "styles" between its hospital's and another's. A film with no partner of
    another group in the batch is left as it is. Returns a new tensor."""
    n = x.shape[0]
    x = x.float()
    mu = x.mean(dim=(2, 3), keepdim=True)
    sigma = (x.var(dim=(2, 3), keepdim=True) + 1e-6).sqrt()
    content = (x - mu) / sigma
    partner = torch.arange(n)
    for i in range(n):  # a random partner from another group
        others = torch.nonzero(groups != groups[i]).flatten()
        if len(others):
            partner[i] = others[torch.randint(len(others), (1,), generator=generator)]
    # λ ~ Beta(α, α) from torch's global generator (its sampler takes no other; a run seeds it)
    lam = torch.distributions.Beta(alpha, alpha).sample((n, 1, 1, 1))
    lam = torch.where((partner == torch.arange(n)).view(-1, 1, 1, 1), torch.ones_like(lam), lam)
    return content * (lam * sigma + (1 - lam) * sigma[partner]) + lam * mu + (1 - lam) * mu[partner]


# ------------------------------------------------------------------------------------------ lung masks


def mask_to_model(mask: np.ndarray, geometry) -> np.ndarray:  # noqa: ANN001 - xai.preprocessing.Geometry
    """A mask on the original pixel grid -> the model grid (S, S) float32 in [0, 1], through the same crop
    and resize as the image (:class:`xai.preprocessing.Geometry`); letterbox padding is outside."""
    import cv2

    x0, y0, x1, y1 = geometry.crop_box
    px0, py0, px1, py1 = geometry.content_box
    region = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.float32)
    out = np.zeros((geometry.input_size, geometry.input_size), dtype=np.float32)
    out[py0:py1, px0:px1] = cv2.resize(region, (px1 - px0, py1 - py0), interpolation=cv2.INTER_AREA)
    return out


def read_lung_masks(lungs_dir: str | Path, convention: str | None = None) -> dict[str, Path]:
    """{chestcovnet image file name: mask path} from ``lungs/manifest.csv`` (manual and V7 masks; with
    ``convention`` ("nlm" or "v7", :func:`models.lungs.convention_of`) only the masks drawn that way)."""
    from models.lungs import convention_of
    from xai.anatomy import CONVENTIONS

    lungs_dir = Path(lungs_dir)
    manifest = lungs_dir / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest.csv in {lungs_dir}")
    if convention is not None and convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}; got {convention!r}")
    with manifest.open(newline="", encoding="utf-8") as fh:
        return {Path(row["image"]).name: lungs_dir / row["mask"] for row in csv.DictReader(fh)
                if convention is None or CONVENTIONS[convention_of(row["convention"])] == convention}


def _masks_on_model_grid(records: Sequence[Record], preprocessing: Preprocessing, path: Path | None,
                         film_mask: Callable[[Record, Preprocessing], tuple[np.ndarray, Any] | None], *,
                         empty_counts: bool, progress: Callable[[Sequence[Record]], Iterable[Record]] | None = None,
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, S, S) masks on the model grid (0/1), bool (N,) whether each film has one), read from ``path``
    when it exists, else computed and stored there atomically (a temporary file renamed into place: a killed
    run leaves no half file). ``film_mask(record, display_preprocessing)`` gives a film's float mask on its own
    pixel grid and the film's :class:`~xai.preprocessing.Geometry`, or None for no mask; ``empty_counts``:
    whether a mask that is empty on the model grid still counts as one."""
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["masks"], z["has"]
    S = preprocessing.input_size
    out = np.zeros((len(records), S, S), dtype=np.uint8)
    has = np.zeros(len(records), dtype=bool)
    pre = display_preprocessing(preprocessing)
    for i, rec in enumerate(progress(records) if progress else records):
        found = film_mask(rec, pre)
        if found is None:
            continue
        mask, geometry = found
        out[i] = mask_to_model(mask, geometry) >= 0.5
        has[i] = empty_counts or bool(out[i].any())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, masks=out, has=has)
        tmp.replace(path)
    return out, has


def build_predicted_mask_cache(data_dir: str | Path, records: Sequence[Record], preprocessing: Preprocessing,
                               convention: str = "nlm", cache_dir: str | Path | None = None,
                               *, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, S, S) lung-U-Net masks on the model grid, bool (N,) whether a lung field was found), as
    :func:`build_mask_cache` but from :func:`xai.anatomy.find_lungs` in ``convention`` ("nlm": the visible
    lung fields, heart and mediastinum outside). Stored in ``cache_dir`` under a key of the spec, the file
    list, the convention and the lung model's sha256."""
    from tqdm import tqdm

    from xai.anatomy import find_lungs, load_lung_model
    from xai.radiograph import load_radiograph

    model = load_lung_model()
    data_dir = Path(data_dir)
    key = hashlib.sha256(json.dumps([preprocessing.to_dict(), [r.file for r in records], convention,
                                     model.card.get("sha256", "")]).encode()).hexdigest()[:16]

    def predicted(rec: Record, pre: Preprocessing) -> tuple[np.ndarray, Any] | None:
        radiograph = load_radiograph(data_dir / "images" / rec.file)
        field = find_lungs(radiograph, convention=convention, model=model)
        if not field.found:
            return None
        return field.mask.astype(np.float32), prepare_array(radiograph, pre)[1]

    return _masks_on_model_grid(
        records, preprocessing, Path(cache_dir) / f"lungpred-{key}.npz" if cache_dir else None, predicted,
        empty_counts=False,
        progress=lambda rs: tqdm(rs, desc=f"lung fields ({convention})", disable=not progress, mininterval=10))


def build_mask_cache(data_dir: str | Path, records: Sequence[Record], preprocessing: Preprocessing,
                     masks: dict[str, Path], cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, S, S) lung masks on the model grid (0/1), bool (N,) whether the film has one) for ``records``.

    ``masks`` maps file names to mask images on the film's own pixel grid (0 / nonzero). The crop box is
    recomputed from the film, exactly as :func:`xai.preprocessing.prepare_array` does. Stored in
    ``cache_dir`` under a key of the spec, the file list and the mask paths.
    """
    import cv2

    from xai.radiograph import load_radiograph

    data_dir = Path(data_dir)
    files = [r.file for r in records]
    key = hashlib.sha256(json.dumps([preprocessing.to_dict(), files,
                                     [str(masks.get(f, "")) for f in files]]).encode()).hexdigest()[:16]

    def manual(rec: Record, pre: Preprocessing) -> tuple[np.ndarray, Any] | None:
        mask_path = masks.get(rec.file)
        if mask_path is None:
            return None
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ValueError(f"cannot read lung mask {mask_path}")
        _, geometry = prepare_array(load_radiograph(data_dir / "images" / rec.file), pre)
        if mask.shape != geometry.original_size:
            mask = cv2.resize(mask, geometry.original_size[::-1], interpolation=cv2.INTER_NEAREST)
        return (mask > 0).astype(np.float32), geometry

    return _masks_on_model_grid(records, preprocessing, Path(cache_dir) / f"lungmasks-{key}.npz" if cache_dir
                                else None, manual, empty_counts=True)
