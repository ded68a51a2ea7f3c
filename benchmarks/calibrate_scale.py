"""Calibrate a bundle's default display scale on its validation films and store it on the card.

    .venv/bin/python benchmarks/calibrate_scale.py [--model chestcovnet] [--per-source 12] [--write]

Explains films of the ``val`` split (an equal number per source, in manifest order, so no hospital
dominates) for their predicted class with the bundle's explainer and prints
:func:`xai.display_scale.calibrate_scale`'s per-method typical peak; ``--write`` adds it to the bundle's
``card.json`` under ``saliency_scale`` (the only key it changes). One torch thread: it runs beside others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "chestcovnet"


def val_films(per_source: int) -> list[Path]:
    from models.data import read_manifest

    chosen: dict[str, list[Path]] = {}
    for record in read_manifest(DATA):
        if record.split == "val" and len(chosen.setdefault(record.source, [])) < per_source:
            chosen[record.source].append(DATA / "images" / record.file)
    return [path for paths in chosen.values() for path in paths]


def batches(paths: list[Path], preprocessing, size: int = 4) -> Iterator:  # noqa: ANN001 - models.Preprocessing
    import torch

    from xai.preprocessing import prepare
    from xai.radiograph import load_radiograph

    for start in range(0, len(paths), size):
        yield torch.cat([prepare(load_radiograph(p), preprocessing)[0] for p in paths[start:start + size]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="chestcovnet")
    parser.add_argument("--per-source", type=int, default=12)
    parser.add_argument("--write", action="store_true", help="store the result in the bundle's card.json")
    args = parser.parse_args(argv)

    import torch

    import models
    from xai.display_scale import CARD_KEY, calibrate_scale
    from xai.pipeline import make_explainer

    torch.set_num_threads(1)
    loaded = models.load(args.model)
    paths = val_films(args.per_source)
    started = time.perf_counter()
    result = calibrate_scale(make_explainer(loaded), batches(paths, loaded.card.preprocessing), split="val")
    print(f"{result.n} val films in {time.perf_counter() - started:.0f} s")
    for method, vmax in result.vmax.items():
        lo, hi = result.spread[method]
        print(f"  {method:<16} vmax {vmax:.4g}   (per-film peaks p10 {lo:.4g}, p90 {hi:.4g})")
    if args.write:
        card_path = models.BUNDLES_DIR / args.model / "card.json"
        card = json.loads(card_path.read_text(encoding="utf-8"))
        card[CARD_KEY] = result.card_entry(
            per_source=args.per_source, date=datetime.now(UTC).strftime("%Y-%m-%d"),
            command=f"python benchmarks/calibrate_scale.py --model {args.model} --per-source {args.per_source} --write")
        card_path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {CARD_KEY} to {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
