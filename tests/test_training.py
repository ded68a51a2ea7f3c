"""Training smoke run on a handful of real radiographs: the pipeline cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models import train as train_mod
from models.data import (
    Augmentation,
    augment,
    balanced_weights,
    build_cache,
    normalize,
    read_manifest,
    select,
)
from models.evaluate import score_records
from models.metrics import auroc
from xai.preprocessing import prepare
from xai.radiograph import load_radiograph


def test_two_step_training_run_produces_a_loadable_bundle(tmp_path: Path, chestcovnet_dir: Path):
    out = tmp_path / "bundle"
    rc = train_mod.main(["--data", str(chestcovnet_dir), "--out", str(out), "--epochs", "1", "--max-images", "8",
                         "--batch-size", "4", "--views", "1", "--cache-dir", "", "--seed", "3",
                         "--holdout-source", "MHH Hannover", "--name", "smoke", "--cam-border-weight", "1"])
    assert rc == 0
    loaded = models.load(out)
    card = loaded.card
    assert card.name == "smoke" and card.architecture == "chestcovnet"
    assert card.class_names == ("non_covid", "covid19") and card.positive_class == "covid19"
    assert card.sha256 == models.sha256_file(out / "model.safetensors")
    assert 0.0 <= card.threshold <= 1.0 and "Youden" in card.threshold_rule
    assert card.training["seed"] == 3 and card.training["train_images"] == 8
    assert "--max-images 8" in card.training["command"]
    history = json.loads((out / "history.json").read_text())
    assert len(history["history"]) == 1
    assert (out / "train.log").read_text().count("epoch 1:") == 1
    held = card.cross_source["MHH Hannover"]
    assert held["all_splits"]["n"] == 8 and held["all_splits"]["sensitivity"] is not None
    # The cached-feature path used in training scores val exactly like the app's decode + prepare path.
    records = read_manifest(chestcovnet_dir)
    val = train_mod._cap(select(records, ["val"], exclude_source="MHH Hannover"), 8)
    scores = score_records(loaded, chestcovnet_dir, val)
    labels = np.array([r.label for r in val])
    assert auroc(labels, scores) == pytest.approx(card.metrics["val"]["auroc"], abs=2e-3)
    # Frozen layers still hold the ImageNet weights; the trained head does not.
    imagenet = train_mod.efficientnet_lite0(2, imagenet=True).state_dict()
    trained = loaded.module.state_dict()
    torch.testing.assert_close(trained["blocks.3.depthwise_conv.weight"], imagenet["blocks.3.depthwise_conv.weight"])
    assert not torch.equal(trained["head_conv.weight"], imagenet["head_conv.weight"])


def test_unknown_holdout_source_is_a_clear_error(tmp_path: Path, chestcovnet_dir: Path):
    with pytest.raises(SystemExit, match="not a source in the manifest"):
        train_mod.main(["--data", str(chestcovnet_dir), "--out", str(tmp_path / "x"), "--holdout-source", "Mars"])


def test_cache_matches_prepare_and_augment_keeps_range(chestcovnet_dir: Path):
    records = read_manifest(chestcovnet_dir)[:3]
    pre = train_mod.CHESTCOVNET_PREPROCESSING
    cache = build_cache(chestcovnet_dir, records, pre, None, progress=False)
    x, _ = prepare(load_radiograph(chestcovnet_dir / "images" / records[0].file), pre)
    torch.testing.assert_close(normalize(torch.from_numpy(cache[:1]), pre), x, atol=2e-3, rtol=0)
    g = torch.Generator().manual_seed(0)
    out = augment(torch.from_numpy(cache), Augmentation(), g)
    assert out.shape == cache.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    again = augment(torch.from_numpy(cache), Augmentation(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)  # seeded: reproducible views


def test_balanced_weights_give_each_class_half_and_split_sources(chestcovnet_dir: Path):
    train = select(read_manifest(chestcovnet_dir), ["train"])
    w = balanced_weights(train)
    share = {}
    for r, wi in zip(train, w, strict=True):
        share[(r.label, r.source)] = share.get((r.label, r.source), 0) + wi
    assert sum(v for (label, _), v in share.items() if label == 0) == pytest.approx(0.5)
    assert share[(1, "MHH Hannover")] == pytest.approx(0.25)
    assert share[(1, "COVID-CXNet (multi-source)")] == pytest.approx(0.25)


def test_cam_border_share_matches_the_engines_grad_cam():
    """The training penalty's in-forward Grad-CAM equals the engine's raw Grad-CAM (upsampled the same way)."""
    import torch.nn.functional as F

    from xai import Explainer

    torch.manual_seed(0)
    net = train_mod.EfficientNetLite0(2).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits, feats = net.forward_rest(net.forward_front(x, 15), 15, return_features=True)
    target = logits.argmax(1)
    share = train_mod.cam_border_share(net, feats, target)
    raw = torch.from_numpy(np.array(Explainer(net, "head_act").explain(x, target=target.tolist(),
                                                                        methods=("gradcam",)).raw["gradcam"]))
    up = F.interpolate(raw[:, None].float(), size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
    band = round(0.1 * 224)
    expected = 1 - up[:, band:-band, band:-band].sum((1, 2)) / up.sum((1, 2))
    torch.testing.assert_close(share.detach(), expected, atol=1e-4, rtol=1e-4)
    # a map concentrated in the centre has (almost) no border share, one in a corner mostly border
    toy = torch.zeros(2, 1280, 7, 7)
    toy[0, :, 3, 3] = 1
    toy[1, :, 0, 0] = 1
    net.classifier.weight.data.fill_(1.0)
    centre, corner = train_mod.cam_border_share(net, toy, torch.tensor([0, 1])).tolist()
    assert centre < 1e-6 and corner > 0.8
