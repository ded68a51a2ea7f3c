"""Training smoke run on a handful of real radiographs: the pipeline cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models import cam_penalties
from models import train as train_mod
from models.data import (
    Augmentation,
    augment,
    balanced_weights,
    build_cache,
    mix_styles,
    normalize,
    read_lung_masks,
    read_manifest,
    select,
)
from models.efficientnet_lite import EfficientNetLite0, efficientnet_lite0
from models.evaluate import score_records
from models.metrics import auroc
from models.train.data import _cap
from models.train.preprocessing import CHESTCOVNET_PREPROCESSING
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
    val = _cap(select(records, ["val"], exclude_source="MHH Hannover"), 8)
    scores = score_records(loaded, chestcovnet_dir, val)
    labels = np.array([r.label for r in val])
    assert auroc(labels, scores) == pytest.approx(card.metrics["val"]["auroc"], abs=2e-3)
    # Frozen layers still hold the ImageNet weights; the trained head does not.
    imagenet = efficientnet_lite0(2, imagenet=True).state_dict()
    trained = loaded.module.state_dict()
    torch.testing.assert_close(trained["blocks.3.depthwise_conv.weight"], imagenet["blocks.3.depthwise_conv.weight"])
    assert not torch.equal(trained["head_conv.weight"], imagenet["head_conv.weight"])


def test_unknown_holdout_source_is_a_clear_error(tmp_path: Path, chestcovnet_dir: Path):
    with pytest.raises(SystemExit, match="not a source in the manifest"):
        train_mod.main(["--data", str(chestcovnet_dir), "--out", str(tmp_path / "x"), "--holdout-source", "Mars"])


def test_cache_matches_prepare_and_augment_keeps_range(chestcovnet_dir: Path):
    records = read_manifest(chestcovnet_dir)[:3]
    pre = CHESTCOVNET_PREPROCESSING
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
    negative_sources = {s for (label, s) in share if label == 0}
    assert "ieee8023 case reports (Radiopaedia, Eurorad, journals)" in negative_sources
    for source in negative_sources:  # the 17 case-report pneumonias weigh as much as 310 NIH films
        assert share[(0, source)] == pytest.approx(0.5 / len(negative_sources))


def test_cam_border_share_matches_the_engines_grad_cam():
    """The training penalty's in-forward Grad-CAM equals the engine's raw Grad-CAM (upsampled the same way)."""
    import torch.nn.functional as F

    from xai import Explainer

    torch.manual_seed(0)
    net = EfficientNetLite0(2).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits, feats = net.forward_rest(net.forward_front(x, 15), 15, return_features=True)
    target = logits.argmax(1)
    share = cam_penalties.cam_border_share(net, feats, target)
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
    centre, corner = cam_penalties.cam_border_share(net, toy, torch.tensor([0, 1])).tolist()
    assert centre < 1e-6 and corner > 0.8


def test_whole_network_stage_with_lung_penalty(tmp_path: Path, chestcovnet_dir: Path, shared_data: Path):
    """Stage 1 on cached features, then every weight fine-tuned, with the Grad-CAM-outside-the-lungs penalty
    on films that have a manual lung mask (NIH held out: the negatives come from the NLM sets, which have)."""
    out = tmp_path / "bundle"
    rc = train_mod.main(["--data", str(chestcovnet_dir), "--out", str(out), "--epochs", "1", "--max-images", "8",
                         "--batch-size", "4", "--views", "1", "--cache-dir", "", "--seed", "1",
                         "--holdout-source", "NIH ChestX-ray14", "--name", "smoke2",
                         "--cam-lung-weight", "1", "--lungs", str(shared_data / "lungs"),
                         "--whole-epochs", "1", "--whole-steps", "1", "--whole-batch-size", "4"])
    assert rc == 0
    stage1, final = models.load(out / "stage1"), models.load(out)
    training = final.card.training
    assert training["whole_network"]["epochs_run"] == 1 and training["cam_lung_penalty"] == 1.0
    assert sum(training["lung_masks"]["train_films_with_mask"].values()) > 0
    assert "CC BY-NC-SA 4.0" in " ".join(final.card.data_attribution)
    stages = [h["stage"] for h in json.loads((out / "history.json").read_text())["history"]]
    assert stages == ["top", "whole"]
    # NIH held out: a negative source, so its check is a specificity at the remaining val's threshold
    held = final.card.cross_source["NIH ChestX-ray14"]["all_splits"]
    assert held["sensitivity"] is None and 0.0 <= held["specificity"] <= 1.0 and held["n"] == 8
    imagenet = efficientnet_lite0(2, imagenet=True).state_dict()
    first, last = stage1.module.state_dict(), final.module.state_dict()
    # stage 1 left the front at ImageNet; stage 2 moved it, but kept every batch-norm statistic
    torch.testing.assert_close(first["blocks.3.depthwise_conv.weight"], imagenet["blocks.3.depthwise_conv.weight"])
    assert not torch.equal(last["blocks.3.depthwise_conv.weight"], imagenet["blocks.3.depthwise_conv.weight"])
    for key in ("stem_bn.running_mean", "blocks.3.depthwise_bn.running_var", "head_bn.running_mean"):
        torch.testing.assert_close(last[key], first[key])


def test_outside_weights_match_an_upsampled_cam_against_the_mask():
    """The per-cell weights give, for any CAM, the share of its bilinearly upsampled map outside the mask
    (brute force: upsample, then sum outside); films without a mask fall back to the border band."""
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    masks = np.zeros((3, 224, 224), dtype=np.uint8)
    masks[0, 40:200, 30:100] = 1  # a "left lung"
    masks[1, 60:180, 120:210] = 1
    has = np.array([True, True, False])
    total, outside = cam_penalties.outside_weights(masks, has, 7, 7)
    cam = torch.from_numpy(rng.random((3, 7, 7))).float()
    up = F.interpolate(cam[:, None], size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
    band = np.ones((224, 224), dtype=bool)
    band[22:-22, 22:-22] = False
    regions = [masks[0] == 0, masks[1] == 0, band]
    expected = torch.stack([up[i][torch.from_numpy(regions[i])].sum() / up[i].sum() for i in range(3)])
    got = (cam * outside).sum((1, 2)) / (cam * total).sum((1, 2))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # dilation only grows the region, so the share outside can only fall
    _, wider = cam_penalties.outside_weights(cam_penalties.dilate(masks, 16), has, 7, 7)
    assert ((cam * wider).sum((1, 2)) <= (cam * outside).sum((1, 2)) + 1e-6).all()


def test_lung_masks_follow_the_films_crop_and_lie_on_the_dark_lungs(chestcovnet_dir: Path, shared_data: Path):
    """Manual masks land on the model grid through the film's own body crop: the masked pixels are the
    dark lung fields (air is black in display space), and a mask of the left half of the original maps to
    the left part of the crop."""
    from models.data import build_mask_cache, mask_to_model, read_lung_masks
    from xai.preprocessing import prepare_array

    pre = CHESTCOVNET_PREPROCESSING
    masks = read_lung_masks(shared_data / "lungs")
    records = [r for r in read_manifest(chestcovnet_dir) if r.file in masks][:40:10]
    grid, has = build_mask_cache(chestcovnet_dir, records, pre, masks, None)
    images = build_cache(chestcovnet_dir, records, pre, None, progress=False).astype(np.float32)
    assert has.all() and grid.dtype == np.uint8
    for image, mask in zip(images, grid, strict=True):
        assert 0.1 < mask.mean() < 0.6
        assert image[mask > 0].mean() < image[mask == 0].mean() - 0.1
    film = load_radiograph(chestcovnet_dir / "images" / records[0].file)
    _, geometry = prepare_array(film, pre)
    h, w = geometry.original_size
    half = np.zeros((h, w), dtype=np.float32)
    half[:, : w // 2] = 1
    on_grid = mask_to_model(half, geometry)
    x0, _, x1, _ = geometry.crop_box
    assert on_grid[112].mean() == pytest.approx((w // 2 - x0) / (x1 - x0), abs=0.02)


def test_evaluation_in_parts_equals_one_run_and_refuses_a_gap(tmp_path: Path, chestcovnet_dir: Path, shared_data: Path):
    """``models.evaluate --part I/N`` + ``--merge-parts`` gives the same figures as one run (scores, lung
    evidence with the manual masks, border energy), and a set of parts missing a film is refused."""
    import csv

    from models import evaluate

    rows = list(csv.DictReader((chestcovnet_dir / "manifest.csv").open(encoding="utf-8")))
    masked = set(read_lung_masks(shared_data / "lungs"))
    chosen = ([r for r in rows if r["split"] == "test" and r["label"] == "covid19" and r["file"] in masked][:2]
              + [r for r in rows if r["split"] == "test" and r["label"] == "non_covid"][:2])
    data = tmp_path / "chestcovnet"
    data.mkdir()
    (data / "images").symlink_to(chestcovnet_dir / "images")
    with (data / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    common = ["--model", "chestcovnet", "--data", str(data), "--lung-evidence", "manual", "--lungs",
              str(shared_data / "lungs"), "--border-energy", "4", "--threads", "1"]
    parts = [tmp_path / f"p{i}.json" for i in (1, 2)]
    for i, part in enumerate(parts, 1):
        assert evaluate.main([*common, "--part", f"{i}/2", "--part-out", str(part)]) == 0
    loaded = models.load("chestcovnet")
    args = evaluate.parse_args(common)
    merged, energy = evaluate.combine_parts(loaded, args, [json.loads(p.read_text()) for p in parts], "x")
    whole, whole_energy = evaluate.combine_parts(loaded, args, [evaluate.measure_part(loaded, args, 0, 1)], "x")
    for result in (merged, whole):
        result.pop("date")
    assert merged == whole and energy["n"] == whole_energy["n"] == 4
    assert merged["n"] == 4 and merged["grad_cam_lung_evidence"]["manual"]["all"]["n"] == 2
    with pytest.raises(models.ModelError, match="exactly once"):
        evaluate.combine_parts(loaded, args, [json.loads(parts[0].read_text())], "x")


def test_lung_crop_run_trains_on_what_the_app_prepares(tmp_path: Path, chestcovnet_dir: Path):
    """``--crop lungs``: the card says so, the decoded-image cache is the app's ``prepare`` with the lung crop
    (not the body crop), and the bundle scores val through the app's path as training measured it."""
    out = tmp_path / "bundle"
    rc = train_mod.main(["--data", str(chestcovnet_dir), "--out", str(out), "--epochs", "1", "--max-images", "8",
                         "--batch-size", "4", "--views", "0", "--cache-dir", "", "--seed", "4",
                         "--crop", "lungs", "--name", "smoke-lungs"])
    assert rc == 0
    loaded = models.load(out)
    assert loaded.card.preprocessing.crop == "lungs"
    records = _cap(select(read_manifest(chestcovnet_dir), ["val"]), 8)
    film = load_radiograph(chestcovnet_dir / "images" / records[0].file)
    lungs, body = loaded.card.preprocessing, CHESTCOVNET_PREPROCESSING
    cache = build_cache(chestcovnet_dir, records[:1], lungs, None, progress=False)
    (x_lungs, g_lungs), (_, g_body) = prepare(film, lungs), prepare(film, body)
    torch.testing.assert_close(normalize(torch.from_numpy(cache), lungs), x_lungs, atol=2e-3, rtol=0)
    box, body_box = g_lungs.crop_box, g_body.crop_box
    assert (box[2] - box[0]) * (box[3] - box[1]) < (body_box[2] - body_box[0]) * (body_box[3] - body_box[1])
    scores = score_records(loaded, chestcovnet_dir, records)
    labels = np.array([r.label for r in records])
    assert auroc(labels, scores) == pytest.approx(loaded.card.metrics["val"]["auroc"], abs=2e-3)


def test_mix_styles_keeps_content_and_takes_statistics_between_two_sources():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # six feature maps, each channel with its own mean and spread; sources 0, 0, 1, 1, 2 and a lone 2
    x = torch.randn(6, 3, 4, 4) * torch.arange(1.0, 7.0).view(6, 1, 1, 1) + 10 * torch.arange(6.0).view(6, 1, 1, 1)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    y = mix_styles(x, groups, g, alpha=0.5)

    def stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return t.mean(dim=(2, 3)), (t.var(dim=(2, 3)) + 1e-6).sqrt()

    mu_x, sd_x = stats(x)
    mu_y, sd_y = stats(y)
    # content: each map standardised per channel is unchanged
    torch.testing.assert_close((y - mu_y[..., None, None]) / sd_y[..., None, None],
                               (x - mu_x[..., None, None]) / sd_x[..., None, None], atol=1e-4, rtol=1e-4)
    for i in range(6):
        # the new statistics are one mix λ·own + (1-λ)·partner's, for one partner from another source
        fits = []
        for j in torch.nonzero(groups != groups[i]).flatten().tolist():
            lam = (mu_y[i, 0] - mu_x[j, 0]) / (mu_x[i, 0] - mu_x[j, 0])
            fits.append(bool(0 <= lam <= 1 and torch.allclose(mu_y[i], lam * mu_x[i] + (1 - lam) * mu_x[j], atol=1e-3)
                             and torch.allclose(sd_y[i], lam * sd_x[i] + (1 - lam) * sd_x[j], atol=1e-3)))
        assert any(fits), i
    # a batch from one source has no partner to mix with: unchanged
    torch.testing.assert_close(mix_styles(x, torch.zeros(6, dtype=torch.long), g), x, atol=1e-4, rtol=1e-4)


def test_silent_errors_count_wrong_films_without_a_warning():
    """Hand count: threshold 0.5; films (label, score, warned):
    (1, 0.9, F) right; (1, 0.2, F) wrong, silent; (1, 0.4, T) wrong, warned; (0, 0.7, F) wrong, silent;
    (0, 0.1, T) right, warned; (0, 0.5, F) wrong (0.5 >= 0.5 is positive), silent.
    -> 4 errors, 2 warned, 1 wrong and warned, 3 silent: rate 3/6, warning rate 2/6, precision 1/2."""
    from models.metrics import silent_errors

    out = silent_errors([1, 1, 1, 0, 0, 0], [0.9, 0.2, 0.4, 0.7, 0.1, 0.5], 0.5,
                        [False, False, True, False, True, False])
    assert out["n"] == 6 and out["errors"] == 4 and out["warned"] == 2 and out["errors_warned"] == 1
    assert out["silent_errors"] == 3
    assert out["silent_error_rate"] == pytest.approx(0.5)
    assert out["warning_rate"] == pytest.approx(2 / 6)
    assert out["warning_precision"] == pytest.approx(0.5)
    # a warning on every film leaves nothing silent; no warning at all leaves every error silent
    assert silent_errors([1, 0], [0.1, 0.9], 0.5, [True, True])["silent_error_rate"] == 0.0
    nothing = silent_errors([1, 0], [0.1, 0.9], 0.5, [False, False])
    assert nothing["silent_error_rate"] == 1.0 and nothing["warning_precision"] is None
    assert silent_errors([], [], 0.5, [])["silent_error_rate"] is None
    with pytest.raises(ValueError, match="warnings"):
        silent_errors([1, 0], [0.1, 0.9], 0.5, [True])


def test_nlm_masks_only_and_the_lung_models_visible_lung_fields(chestcovnet_dir: Path, shared_data: Path):
    """``read_lung_masks(convention="nlm")`` keeps only the heart-excluding manual masks (Montgomery,
    Shenzhen); the lung U-Net's NLM fields on the model grid overlap those manual masks closely (Dice), and
    on a V7 film they are smaller than the V7 polygon that includes the lung behind the heart."""
    from models.data import build_mask_cache, build_predicted_mask_cache

    every = read_lung_masks(shared_data / "lungs")
    nlm = read_lung_masks(shared_data / "lungs", "nlm")
    v7 = read_lung_masks(shared_data / "lungs", "v7")
    assert nlm and v7 and set(nlm) | set(v7) == set(every) and not set(nlm) & set(v7)
    assert all(f.startswith("nlm_") for f in nlm) and not any(f.startswith("nlm_") for f in v7)
    with pytest.raises(ValueError, match="convention"):
        read_lung_masks(shared_data / "lungs", "heart")
    pre = CHESTCOVNET_PREPROCESSING
    records = read_manifest(chestcovnet_dir)
    chosen = [r for r in records if r.file in nlm][:30:10] + [r for r in records if r.file in v7][:20:10]
    manual, has = build_mask_cache(chestcovnet_dir, chosen, pre, every, None)
    predicted, found = build_predicted_mask_cache(chestcovnet_dir, chosen, pre, "nlm", None, progress=False)
    assert has.all() and found.all()
    for k in range(3):  # NLM films: predicted vs manual, both heart-excluding
        a, b = manual[k] > 0, predicted[k] > 0
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85
    for k in range(3, 5):  # V7 films: the visible lung fields lie (mostly) inside the larger V7 polygon
        a, b = manual[k] > 0, predicted[k] > 0
        assert b.sum() < a.sum() and (a & b).sum() > 0.8 * b.sum()
