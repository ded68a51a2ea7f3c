"""Evaluate the lung U-Net through the library's own path and write its bundle (weights + card).

    python -m models.evaluate_lungs --checkpoint runs/lungs_ft/best.safetensors \
        --history runs/lungs/history.json runs/lungs_ft/history.json --data ../shared/data/lungs --out models/bundles/lungs

Every figure comes from :func:`xai.anatomy.find_lungs` on the original pixel grid (load_radiograph ->
prepare -> U-Net -> post-processing -> resample), compared with the original-size manual mask, each film on
its own convention's output. Dice; Hausdorff distance = 95th percentile of the pooled symmetric boundary
distances (:func:`models.lungs.hausdorff95`), in original pixels and in % of the film's width.

Robustness (test films, each with its truth transformed the same way where geometry changes):
- ``monochrome1``: each film written as an uncompressed 12-bit MONOCHROME1 DICOM (stored = 4095 - value),
  read back by ``load_radiograph``; ``naive_inverted``: the same pixels inverted without the DICOM pipeline
  (what a reader that ignores MONOCHROME1 would feed) — the failure the pipeline prevents;
- ``window_narrow`` (centre 0.45, width 0.5 on the display values), ``gamma_dark`` (pixels ** 2);
- ``rotate_+10`` / ``rotate_-10`` degrees (image and truth rotated about the centre);
- the three real DICOM files in ``../shared/data/dicom`` (no truth: lung field found, area, components);
- lung field found on the classifier's test films (``../shared/data/chestcovnet``, no masks) by source and view.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.lungs import LungRecord, dice, hausdorff95, read_lung_manifest
from xai.anatomy import (
    CONVENTIONS,
    DEFAULT_CONVENTION,
    LUNG_PREPROCESSING,
    LungModel,
    find_lungs,
    load_lung_model,
)
from xai.radiograph import load_radiograph
from xai.unet import DEFAULT_WIDTHS

Transform = Callable[[np.ndarray, np.ndarray], tuple[Any, np.ndarray]]


def _truth(record: LungRecord) -> np.ndarray:
    m = cv2.imread(str(record.mask), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ValueError(f"cannot read mask {record.mask.name}")
    return m > 127


def _rotate(angle: float) -> Transform:
    def f(pixels: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        H, W = pixels.shape
        matrix = cv2.getRotationMatrix2D((W / 2 - 0.5, H / 2 - 0.5), angle, 1.0)
        img = cv2.warpAffine(pixels, matrix, (W, H), flags=cv2.INTER_LINEAR, borderValue=0.0)
        tru = cv2.warpAffine(truth.astype(np.float32), matrix, (W, H), flags=cv2.INTER_LINEAR) >= 0.5
        return np.clip(img, 0, 1), tru
    return f


def monochrome1_dicom(pixels: np.ndarray) -> bytes:
    """An uncompressed 12-bit MONOCHROME1 DX file whose display (after inversion) is ``pixels``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    stored = np.round((1.0 - pixels) * 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


TRANSFORMS: dict[str, Transform] = {
    "monochrome1": lambda p, t: (load_radiograph(monochrome1_dicom(p)), t),
    "naive_inverted": lambda p, t: (1.0 - p, t),
    "window_narrow": lambda p, t: (np.clip((p - 0.45) / 0.5 + 0.5, 0, 1), t),
    "gamma_dark": lambda p, t: (p ** 2, t),
    "rotate_+10": _rotate(10.0),
    "rotate_-10": _rotate(-10.0),
}


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    d = np.array([r["dice"] for r in rows])
    hd = np.array([r["hd95_px"] for r in rows])
    hdw = np.array([r["hd95_pct_width"] for r in rows])
    finite = np.isfinite(hd)
    return {
        "films": len(rows),
        "dice_median": round(float(np.median(d)), 4),
        "dice_mean": round(float(np.mean(d)), 4),
        "dice_p05": round(float(np.percentile(d, 5)), 4),
        "below_0.8": int((d < 0.8).sum()),
        "below_0.8_pct": round(100.0 * float((d < 0.8).mean()), 1),
        "hd95_px_median": round(float(np.median(hd[finite])), 1) if finite.any() else None,
        "hd95_pct_width_median": round(float(np.median(hdw[finite])), 2) if finite.any() else None,
        "no_lung_field": int(sum(not r["found"] for r in rows)),
    }


def score(records: Sequence[LungRecord], model: LungModel, transform: Transform | None = None) -> list[dict[str, Any]]:
    """Per-film Dice / HD95 of the library's mask (own convention) against the manual mask."""
    rows = []
    for r in records:
        radiograph = load_radiograph(r.image)
        truth = _truth(r)
        image: Any = radiograph
        if transform is not None:
            image, truth = transform(radiograph.pixels, truth)
        field = find_lungs(image, convention=CONVENTIONS[r.convention], model=model)
        hd = hausdorff95(field.mask, truth)
        rows.append({"film": r.image.name, "split": r.split, "source": r.source,
                     "convention": CONVENTIONS[r.convention], "dice": dice(field.mask, truth), "hd95_px": hd,
                     "hd95_pct_width": 100.0 * hd / truth.shape[1], "found": field.found})
    return rows


def _group(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[" | ".join(str(r[k]) for k in keys)].append(r)
    return {k: _summary(v) for k, v in sorted(groups.items())}


def real_dicoms(directory: Path, model: LungModel) -> dict[str, Any]:
    out = {}
    for path in sorted(directory.glob("*.dcm")):
        radiograph = load_radiograph(path)
        field = find_lungs(radiograph, model=model)
        out[path.name] = {"photometric": radiograph.photometric, "found": field.found,
                          "area_fraction": round(field.area_fraction, 3), "components": field.components,
                          "reason": field.reason}
    return out


def found_rate(chestcovnet: Path, model: LungModel) -> dict[str, Any]:
    """Share of the classifier's test films (no masks) on which a lung field is found, by source and view."""
    with open(chestcovnet / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        field = find_lungs(load_radiograph(chestcovnet / "images" / r["file"]), model=model)
        groups[f"{r['source']} | view {r['view'] or 'unknown'}"].append(field.found)
    return {k: {"films": len(v), "found_pct": round(100.0 * float(np.mean(v)), 1)} for k, v in sorted(groups.items())}


def write_weights(checkpoint: Path, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, out / "model.safetensors")
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


LICENCE = ("Trained on lung masks under different terms: Shenzhen masks (Stirenko et al., arXiv:1803.01199) "
           "are CC BY-NC-SA 4.0, so these weights, a work derived from them, are for NON-COMMERCIAL use only and "
           "are shared under the same licence (CC BY-NC-SA 4.0, attribution kept). Montgomery masks: NLM, public, "
           "attribution required. V7 Labs COVID-19 lung polygons: CC BY 4.0. Images: NLM Montgomery and Shenzhen "
           "sets (public, attribution required), COVID-CXNet (CC BY 4.0), MHH (CC BY 3.0).")


def _stage(history: dict[str, Any]) -> dict[str, Any]:
    """One training run (``train_lungs`` history.json) as it goes on the card."""
    args = history.get("args", {})
    epochs = history.get("history", [])
    flags = f" --init {args['init']} --narrow-window {args.get('narrow_window')} --lr {args.get('lr')}" \
        if args.get("init") else ""
    return {
        "command": (f"nice -n 10 python -m models.train_lungs --data ../shared/data/lungs --out {args.get('out')} "
                    f"--epochs {args.get('epochs')} --minutes {args.get('minutes')} --threads {args.get('threads')} "
                    f"--seed {args.get('seed')}{flags}"),
        "epochs_run": len(epochs),
        "best_epoch": (max(epochs, key=lambda e: float(np.mean(list(e["val_dice"].values()))))["epoch"]
                       if epochs else None),
        "wall_minutes": round(sum(e["seconds"] for e in epochs) / 60, 1),
        "history": epochs,
    }


def base_card(sha256: str, histories: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The card without figures; ``histories``: the training runs in order (from scratch, then fine-tunes)."""
    stages = [_stage(h) for h in histories]
    return {
        "name": "lungs",
        "version": "1.1",
        "architecture": "lung-unet",
        "widths": list(DEFAULT_WIDTHS),
        "conventions": list(CONVENTIONS),
        "default_convention": DEFAULT_CONVENTION,
        "convention_meaning": {
            "nlm": "Montgomery/Shenzhen manual masks: lungs WITHOUT the heart's shadow",
            "v7": "V7 Labs polygons: lungs INCLUDING the retrocardiac lung behind the heart",
        },
        "convention_choice": (
            "One network with one output channel per convention, trained jointly; each film's loss is taken "
            "on its own convention's channel only. The two conventions share every feature (the V7 set is small "
            "and all COVID-19; the NLM set is large and clean) without either being forced onto the other's "
            "labels. xai.anatomy.lung_mask returns the v7 output by default: lung behind the heart is lung, and "
            "evidence there should count as inside the lungs; convention='nlm' gives the other."),
        "preprocessing": LUNG_PREPROCESSING.to_dict(),
        "preprocessing_text": (
            "xai.radiograph.load_radiograph (bone white, air black whatever the DICOM photometric "
            "interpretation) -> xai.preprocessing.prepare: no crop, letterbox to 128 px (aspect kept, black "
            "padding), global histogram equalisation of the content, (x - 0.5) / 0.25, 1 channel."),
        "postprocessing": (
            "probability > 0.5 on the 128 px grid; the two largest 8-connected components of at least 1 % "
            "of the image; no lung field unless the kept area is 6-65 % of the image, spans >= 30 % of its "
            "width and >= 25 % of its height, and its mean probability is >= 0.80; the kept probability "
            "map is resampled bilinearly to the original grid and thresholded at 0.5."),
        "sha256": sha256,
        "intended_use": (
            "Research and teaching: locating the lung fields so that a saliency map's share inside the lungs "
            "can be measured. NOT a medical device; not for diagnosis or measurement of disease."),
        "licence": LICENCE,
        "training": {
            "data": "../shared/data/lungs (manifest.csv fixed patient-level splits, not re-split)",
            "stages": stages,
            "epochs_run": sum(st["epochs_run"] for st in stages),
            "wall_minutes": round(sum(st["wall_minutes"] for st in stages), 1),
            "hardware": "2-core CPU shared with other jobs, 1 torch thread, nice 10",
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="runs/lungs/best.safetensors")
    p.add_argument("--history", nargs="+", default=["runs/lungs/history.json"],
                   help="history.json of each training run, in order (from scratch, then any fine-tune)")
    p.add_argument("--data", default="../shared/data/lungs")
    p.add_argument("--out", default="models/bundles/lungs")
    p.add_argument("--skip-robustness", action="store_true")
    p.add_argument("--weights-only", action="store_true", help="write weights and the card without figures")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    sha = write_weights(Path(args.checkpoint), out)
    card = base_card(sha, [json.loads(Path(h).read_text()) for h in args.history])
    (out / "card.json").write_text(json.dumps(card, indent=2))
    model = load_lung_model(out)  # the library's own loader: sha256 and shapes checked
    if args.weights_only:
        return 0
    t0 = time.monotonic()
    records = [r for r in read_lung_manifest(args.data) if r.split in ("val", "test")]
    rows = score(records, model)
    card["metrics"] = {
        "definition": ("Dice and HD95 of xai.anatomy.find_lungs (own convention's output) against the manual "
                       "mask on the original grid; HD95 = 95th percentile of the pooled symmetric boundary "
                       "distances, in original pixels (films are 512 px wide, longest side 512) and in % of "
                       "the width."),
        "by_split_convention": _group(rows, ("split", "convention")),
        "by_split_source_convention": _group(rows, ("split", "source", "convention")),
    }
    if not args.skip_robustness:
        test = [r for r in records if r.split == "test"]
        card["robustness"] = {
            "definition": "test films; Dice/HD95 after the transformation (see models/evaluate_lungs.py)",
            **{name: _group(score(test, model, f), ("convention",)) for name, f in TRANSFORMS.items()},
            "real_dicom": real_dicoms(Path(args.data).parent / "dicom", model),
            "found_on_classifier_test_films": found_rate(Path(args.data).parent / "chestcovnet", model),
        }
    card["evaluated"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    card["evaluation_seconds"] = round(time.monotonic() - t0)
    (out / "card.json").write_text(json.dumps(card, indent=2))
    print(json.dumps({k: card[k] for k in ("metrics",) if k in card}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
