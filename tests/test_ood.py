"""Out-of-distribution score (Mahalanobis on penultimate features) and header hints."""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from torch import nn

from xai.trust import ood


def test_mahalanobis_matches_scipy_and_takes_the_nearest_class() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    precision = a @ a.T + np.eye(5)
    means = rng.normal(size=(2, 5))
    f = rng.normal(size=(4, 5))
    got = ood.mahalanobis(f, means, precision)
    for i in range(4):
        expected = min(scipy_mahalanobis(f[i], means[c], precision) for c in range(2))
        assert got[i] == pytest.approx(expected, rel=1e-10)
    assert ood.mahalanobis(means[1], means, precision)[0] == pytest.approx(0.0, abs=1e-7)


def test_fit_gaussian_recovers_means_and_flags_a_far_point() -> None:
    rng = np.random.default_rng(1)
    cov = np.diag([1.0, 4.0, 0.25])
    x0 = rng.multivariate_normal([0, 0, 0], cov, size=400)
    x1 = rng.multivariate_normal([5, 0, 0], cov, size=400)
    feats = np.vstack([x0, x1])
    labels = np.array([0] * 400 + [1] * 400)
    means, precision, shrinkage = ood.fit_gaussian(feats, labels)
    np.testing.assert_allclose(means, [[0, 0, 0], [5, 0, 0]], atol=0.25)
    assert 0.0 <= shrinkage <= 1.0
    # with plenty of data the shrunk covariance is close to the true one
    np.testing.assert_allclose(np.linalg.inv(precision), cov, atol=0.4)
    inlier, outlier = ood.mahalanobis(np.array([[0.5, 1.0, 0.2], [2.5, 0.0, 3.0]]), means, precision)
    assert inlier < 2.0 < 5.0 < outlier  # 3 = 6 sd along the narrow axis


def test_ledoit_wolf_matches_scikit_learn() -> None:
    """Our numpy Ledoit-Wolf (no scikit-learn at run time) against scikit-learn's, with fewer samples than
    dimensions (the OOD case: 1280-d features, a few hundred films) and with more."""
    from sklearn.covariance import LedoitWolf, ledoit_wolf

    rng = np.random.default_rng(3)
    for n, p in ((40, 120), (500, 8)):
        x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) * 0.3
        x -= x.mean(axis=0)
        cov, shrinkage = ood.ledoit_wolf(x)
        ref_cov, ref_shrinkage = ledoit_wolf(x, assume_centered=True)
        assert 0.0 < shrinkage < 1.0 and shrinkage == pytest.approx(ref_shrinkage, rel=1e-9)
        np.testing.assert_allclose(cov, ref_cov, rtol=1e-9, atol=1e-12)
        precision, same = ood.ledoit_wolf_precision(x)  # Woodbury when n < p, a p x p inverse otherwise
        assert same == shrinkage
        np.testing.assert_allclose(precision @ ref_cov, np.eye(p), atol=1e-8)
    labels = rng.integers(0, 3, size=60)
    feats = rng.normal(size=(60, 20)) + labels[:, None]
    means, precision, shrinkage = ood.fit_gaussian(feats, labels)
    reference = LedoitWolf(assume_centered=True).fit(feats - means[labels])
    np.testing.assert_allclose(precision, reference.precision_, rtol=1e-7, atol=1e-9)
    assert shrinkage == pytest.approx(reference.shrinkage_, rel=1e-9)


def _stats(val: np.ndarray) -> ood.OODStats:
    return ood.OODStats(means=np.zeros((2, 3), np.float32), precision=np.eye(3, dtype=np.float32),
                        val_distances=np.sort(val).astype(np.float32), class_names=("a", "b"),
                        model_name="toy", model_sha256="abc", feature_layer="input of fc", n_train=10,
                        shrinkage=0.1)


def test_percentile_threshold_and_roundtrip(tmp_path: Path) -> None:
    stats = _stats(np.arange(1, 101, dtype=np.float32))  # 1..100
    assert stats.percentile(0.5) == 0.0
    assert stats.percentile(50.0) == 50.0
    assert stats.percentile(1000.0) == 100.0
    assert stats.threshold == pytest.approx(np.percentile(np.arange(1, 101), 99))
    path = tmp_path / "ood.safetensors"
    ood.save_ood(stats, path)
    back = ood.load_ood(path)
    np.testing.assert_array_equal(back.val_distances, stats.val_distances)
    np.testing.assert_array_equal(back.precision, stats.precision)
    assert (back.class_names, back.model_sha256, back.n_train) == (("a", "b"), "abc", 10)
    assert back.shrinkage == pytest.approx(0.1)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_extract_features_is_the_pooled_vector_and_leaves_no_hook() -> None:
    model = Toy().eval()
    x = torch.rand(2, 3, 10, 10)
    feats, logits = ood.extract_features(model, x)
    with torch.no_grad():
        expected = model.pool(torch.relu(model.conv(x))).flatten(1)
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(logits, model(x).detach().numpy(), rtol=1e-6)
    assert not model.fc._forward_pre_hooks


def test_extract_features_ignores_other_threads() -> None:
    model = Toy().eval()
    seen: list[np.ndarray] = []
    started, release = threading.Event(), threading.Event()
    original = model.conv.forward

    def slow_conv(x: torch.Tensor) -> torch.Tensor:
        # our forward pauses after the hook is registered; another thread runs a full forward meanwhile
        if threading.current_thread() is threading.main_thread() and not started.is_set():
            started.set()
            release.wait(5)
        return original(x)

    model.conv.forward = slow_conv  # type: ignore[method-assign]

    def other() -> None:
        started.wait(5)
        with torch.no_grad():
            model(torch.full((1, 3, 10, 10), 9.0))
        release.set()

    t = threading.Thread(target=other)
    t.start()
    x = torch.rand(1, 3, 10, 10)
    feats, _ = ood.extract_features(model, x)
    t.join()
    seen.append(feats)
    with torch.no_grad():
        expected = model.pool(torch.relu(original(x))).flatten(1).numpy()
    np.testing.assert_allclose(seen[0], expected, rtol=1e-6)


def test_statistics_are_passed_in_and_must_fit_the_weights() -> None:
    """No statistics: header hints only, said so. Statistics fitted for other weights: a clear error (the
    score would compare against the wrong features)."""
    model = SimpleNamespace(module=Toy().eval(), card=SimpleNamespace(sha256="def", name="toy"))
    x = torch.rand(1, 3, 10, 10)
    bare = ood.score(model, x, None, radiograph=_radiograph(view_position="LL"))
    assert bare.score is None and bare.is_ood and "only header hints" in bare.warnings[-1]
    assert ood.score(model, x, None) == ood.OODResult(None, None, None, False, (), ())
    stats = ood.OODStats(means=np.zeros((2, 4), np.float32), precision=np.eye(4, dtype=np.float32),
                         val_distances=np.arange(1, 101, dtype=np.float32), class_names=("a", "b"),
                         model_name="toy", model_sha256="abc", feature_layer="input of fc", n_train=1,
                         shrinkage=0.0)
    with pytest.raises(ValueError, match="fitted for other weights"):
        ood.score(model, x, stats)
    fitting = SimpleNamespace(module=model.module, card=SimpleNamespace(sha256="abc", name="toy"))
    feats, _ = ood.extract_features(model.module, x)
    result = ood.score(fitting, x, stats)
    expected = float(np.sqrt(np.sum(ood.transform_features(feats[0]) ** 2)))  # identity precision, zero means
    assert result.score == pytest.approx(expected, rel=1e-5)
    assert result.percentile == stats.percentile(expected)


def _write_png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(path)
    return path


def test_fit_ood_on_images_reproduces_the_class_statistics(tmp_path: Path) -> None:
    """fit_ood decodes and prepares each image as the app does, then: class means of the transformed
    features (train), distances of the val images under the fitted Gaussian, and the card's identity."""
    from xai.preprocessing import Preprocessing, prepare
    from xai.radiograph import load_radiograph

    rng = np.random.default_rng(5)
    pre = Preprocessing(input_size=16, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    card = SimpleNamespace(name="toy", sha256="f" * 64, class_names=("dark", "bright"), preprocessing=pre)
    model = SimpleNamespace(module=Toy().eval(), card=card)

    def image(k: int, label: int) -> Path:
        pixels = np.clip(0.25 + 0.5 * label + 0.1 * rng.standard_normal((24, 20)), 0, 1)
        return _write_png(tmp_path / f"{label}_{k}.png", pixels)

    train = [(image(k, k % 2), k % 2) for k in range(12)]
    val = [image(100 + k, k % 2) for k in range(5)]
    seen: list[float] = []
    stats = ood.fit_ood(model, train, val, batch_size=5, progress=lambda f, _m: seen.append(f))

    def feats(path: Path) -> np.ndarray:
        return ood.extract_features(model.module, prepare(load_radiograph(path), pre)[0])[0][0]

    f_train = ood.transform_features(np.stack([feats(p) for p, _ in train]))
    labels = np.array([label for _, label in train])
    np.testing.assert_allclose(stats.means, [f_train[labels == c].mean(axis=0) for c in (0, 1)], rtol=1e-4, atol=1e-6)
    f_val = ood.transform_features(np.stack([feats(p) for p in val]))
    np.testing.assert_allclose(stats.val_distances,
                               np.sort(ood.mahalanobis(f_val, stats.means, stats.precision)), rtol=1e-3)
    assert (stats.model_name, stats.model_sha256, stats.n_train, stats.class_names) == (
        "toy", "f" * 64, 12, ("dark", "bright"))
    assert seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(ValueError, match="train and val"):
        ood.fit_ood(model, train, [])


def test_models_reads_the_statistics_beside_the_bundle_once_and_only_for_its_weights(tmp_path: Path) -> None:
    import models
    from models import ood as bundle_ood

    shipped = models.load("chestcovnet-seed2")
    folder = tmp_path / "mine"
    card = models.save_bundle(folder, shipped.module, {**shipped.card.to_dict(), "name": "mine-test"})
    loaded = models.load(folder)
    assert bundle_ood.stats_path(loaded) == folder / "ood.safetensors"
    assert models.ood_stats(loaded) is None  # no file
    stats = ood.OODStats(means=np.zeros((2, 3), np.float32), precision=np.eye(3, dtype=np.float32),
                         val_distances=np.arange(3, dtype=np.float32), class_names=card.class_names,
                         model_name="mine-test", model_sha256="0" * 64, feature_layer="x", n_train=1, shrinkage=0.0)
    ood.save_ood(stats, folder / "ood.safetensors")
    bundle_ood._CACHE.clear()
    assert models.ood_stats(loaded) is None, "fitted for other weights"
    ood.save_ood(ood.OODStats(**{**stats.__dict__, "model_sha256": card.sha256}), folder / "ood.safetensors")
    bundle_ood._CACHE.clear()
    found = models.ood_stats(loaded)
    assert found is not None and found.model_sha256 == card.sha256
    assert models.ood_stats(loaded) is found


def _radiograph(**meta: str) -> SimpleNamespace:
    patient = {k: meta.pop(k) for k in list(meta) if k[0].isupper()}
    return SimpleNamespace(metadata=meta, patient=patient)


def test_header_hints() -> None:
    assert ood.header_hints(_radiograph(view_position="PA", body_part="CHEST", modality="CR")) == ()
    lateral = ood.header_hints(_radiograph(view_position="LL"))
    assert len(lateral) == 1 and "lateral" in lateral[0]
    assert "body part" in ood.header_hints(_radiograph(body_part="KNEE"))[0]
    assert "not a projection radiograph" in ood.header_hints(_radiograph(modality="CT"))[0]
    child = ood.header_hints(_radiograph(PatientAge="008Y"))
    assert len(child) == 1 and "paediatric" in child[0]
    assert "8" not in child[0]  # the age itself is never echoed
    assert ood.header_hints(_radiograph(PatientAge="045Y")) == ()
    assert "paediatric" in ood.header_hints(_radiograph(PatientBirthDate="20150301", StudyDate="20200415"))[0]
    assert ood.header_hints(_radiograph(PatientAge="garbage")) == ()
    assert ood.header_hints(SimpleNamespace()) == ()


def test_header_hint_from_a_real_dicom_with_lateral_view(dicom_dir: Path, tmp_path: Path) -> None:
    import pydicom

    from xai.radiograph import load_radiograph

    ds = pydicom.dcmread(dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm")
    ds.ViewPosition = "LL"
    path = tmp_path / "lateral.dcm"
    ds.save_as(path)
    hints = ood.header_hints(load_radiograph(path))
    assert any("lateral" in h for h in hints)
    frontal = ood.header_hints(load_radiograph(dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm"))
    assert not any("lateral" in h for h in frontal)


# ------------------------------------------------------------ the shipped default model and its statistics


def _landscape(h: int = 420, w: int = 560) -> np.ndarray:
    """A natural-looking non-radiograph: sky gradient, sun, textured hills, a house."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.85 - 0.4 * yy
    img += 0.3 * (((xx - 0.75) ** 2 + (yy - 0.15) ** 2) < 0.004)
    hills = 0.55 + 0.08 * np.sin(9 * xx) + 0.04 * np.sin(23 * xx + 1)
    ground = yy > hills
    img[ground] = 0.35 + 0.15 * np.sin(60 * xx[ground]) * np.sin(40 * yy[ground])
    img += 0.05 * rng.standard_normal((h, w)) * ground
    img[int(0.45 * h) : int(0.7 * h), int(0.2 * w) : int(0.35 * w)] = 0.15
    return np.clip(img, 0, 1).astype(np.float32)


def _document(h: int = 500, w: int = 380) -> np.ndarray:
    """A scanned text page: white paper with dark text lines."""
    rng = np.random.default_rng(8)
    img = np.full((h, w), 0.95, np.float32)
    for top in range(40, h - 40, 18):
        length = int(rng.integers(w // 2, w - 60))
        img[top : top + 8, 30 : 30 + length] = rng.uniform(0.05, 0.3, size=(8, length))
    return img


@pytest.fixture(scope="module")
def default_model():  # noqa: ANN201 - LoadedModel
    import models

    return models.load("chestcovnet")


@pytest.fixture(scope="module")
def default_stats(default_model):  # noqa: ANN001, ANN201 - OODStats
    import models

    stats = models.ood_stats(default_model)
    assert stats is not None, "fit the statistics: python -m models.ood fit"
    return stats


def test_shipped_statistics_match_the_default_weights(default_model) -> None:  # noqa: ANN001
    import models

    stats = models.ood_stats(default_model)
    assert models.ood_stats(default_model) is stats, "read once per process"
    assert stats is not None, "models/bundles/chestcovnet/ood.safetensors missing or fitted for other weights"
    assert stats.model_sha256 == default_model.card.sha256
    assert stats.means.shape[0] == len(default_model.card.class_names)
    assert stats.val_distances.size > 100


def test_non_chest_images_and_lateral_header_rank_above_chest_pa_films(default_model, default_stats,  # noqa: ANN001
                                                                        chestcovnet_dir: Path) -> None:
    from xai.preprocessing import prepare
    from xai.radiograph import load_radiograph

    with (chestcovnet_dir / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test" and r["view"] == "PA"]
    chest_rows = rows[:: max(1, len(rows) // 6)][:6]
    pre = default_model.card.preprocessing
    chest = []
    for row in chest_rows:
        rad = load_radiograph(chestcovnet_dir / "images" / row["file"])
        result = ood.score(default_model, prepare(rad, pre)[0], default_stats, radiograph=rad)
        assert result.header_hints == ()
        chest.append(result.score)
    others = [ood.score(default_model, prepare(img, pre)[0], default_stats) for img in (_landscape(), _document())]
    assert min(o.score for o in others) > max(chest), (chest, [o.score for o in others])
    assert all(o.is_ood and o.warnings for o in others)
    assert all(o.percentile == 100.0 for o in others)
    # a lateral film: the header says so, whatever the pixels look like
    lateral = SimpleNamespace(metadata={"view_position": "LL"}, patient={})
    flagged = ood.score(default_model, prepare(_landscape(), pre)[0], default_stats, radiograph=lateral)
    assert any("lateral" in w for w in flagged.warnings)


def test_the_explanations_own_forward_pass_gives_the_ood_features(default_model, default_stats,  # noqa: ANN001
                                                                  chestcovnet_dir: Path) -> None:
    """The engine records the last linear layer's input in its forward pass (on the folded copy): the same
    features as a separate no-grad pass, and so the same verdict, without running the model twice."""
    from xai.pipeline import explain_source, make_explainer

    explainer = make_explainer(default_model)
    for name in ("mhh_a4318ac9.jpg", sorted(p.name for p in (chestcovnet_dir / "images").glob("nih_*"))[0]):
        result = explain_source(chestcovnet_dir / "images" / name, default_model, explainer=explainer)
        separate, _ = ood.extract_features(default_model, result.input_tensor)
        ours = result.explanation.features
        assert ours.shape == separate.shape == (1, 1280) and not ours.flags.writeable
        np.testing.assert_allclose(ours, separate, rtol=1e-4, atol=1e-5 * np.abs(separate).max())
        reused = ood.score(default_model, result.input_tensor, default_stats, radiograph=result.radiograph,
                           features=ours)
        again = ood.score(default_model, result.input_tensor, default_stats, radiograph=result.radiograph)
        assert reused.score == pytest.approx(again.score, rel=1e-4) and reused.warnings == again.warnings


def test_a_model_without_a_linear_layer_has_no_features() -> None:
    from xai import Explainer

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    assert Explainer(model, target_layer="1").explain(torch.randn(1, 3, 16, 16)).features is None


def test_the_fit_command_fits_a_bundle_on_the_manifest_splits(chestcovnet_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """``python -m models.ood fit``: train rows fit the Gaussians, val rows calibrate; test rows unused."""
    import models
    from models import ood as bundle_ood
    from xai.preprocessing import prepare
    from xai.radiograph import load_radiograph

    with (chestcovnet_dir / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    chosen = [next(r for r in rows if r["split"] == split and r["label"] == label)
              for split in ("train", "val", "test") for label in ("non_covid", "covid19")]
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    with (data / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    for r in chosen:
        (data / "images" / r["file"]).symlink_to(chestcovnet_dir / "images" / r["file"])
    out = tmp_path / "ood.safetensors"
    assert bundle_ood.main(["fit", "--model", "chestcovnet-seed2", "--data", str(data), "--out", str(out)]) == 0
    assert "saved" in capsys.readouterr().out
    stats = ood.load_ood(out)
    model = models.load("chestcovnet-seed2")
    assert (stats.model_name, stats.model_sha256, stats.n_train) == ("chestcovnet-seed2", model.card.sha256, 2)
    val = [r for r in chosen if r["split"] == "val"]
    feats = np.concatenate([ood.extract_features(model, prepare(load_radiograph(data / "images" / r["file"]),
                                                                model.card.preprocessing)[0])[0] for r in val])
    expected = np.sort(ood.mahalanobis(ood.transform_features(feats, stats.transform), stats.means, stats.precision))
    np.testing.assert_allclose(stats.val_distances, expected, rtol=1e-3)


def test_silent_errors_by_source_splits_the_hand_count_per_source() -> None:
    """Card threshold 0.3, positive class index 1. Source A: (covid, 0.2, not warned) silent error,
    (covid, 0.8, warned) right; source B: (non-COVID, 0.35, warned) wrong but warned, (non-COVID, 0.1, not
    warned) right, (non-COVID, 0.31, not warned) silent error. Overall 2 silent of 5."""
    from models.data import Record
    from models.evaluate import silent_errors_by_source

    loaded = SimpleNamespace(card=SimpleNamespace(threshold=0.3, positive_index=1))
    records = [Record("a1", 1, "test", "A"), Record("a2", 1, "test", "A"), Record("b1", 0, "test", "B"),
               Record("b2", 0, "test", "B"), Record("b3", 0, "test", "B")]
    out = silent_errors_by_source(loaded, records, np.array([0.2, 0.8, 0.35, 0.1, 0.31]),
                                  np.array([False, True, True, False, False]))
    assert out["silent_errors"] == 2 and out["silent_error_rate"] == pytest.approx(2 / 5)
    assert out["warning_rate"] == pytest.approx(2 / 5) and out["errors"] == 3
    a, b = out["per_source"]["A"], out["per_source"]["B"]
    assert (a["n"], a["errors"], a["silent_errors"], a["warned"]) == (2, 1, 1, 1)
    assert (b["n"], b["errors"], b["silent_errors"], b["errors_warned"]) == (3, 2, 1, 1)
    assert b["silent_error_rate"] == pytest.approx(1 / 3) and b["warning_precision"] == pytest.approx(1.0)


def test_ood_warned_is_the_distance_above_the_threshold() -> None:
    """``models.evaluate.ood_warned`` against scipy's Mahalanobis distance to the nearer class mean."""
    from models.evaluate import ood_warned

    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [4.0, 0.0]])
    precision = np.array([[2.0, 0.3], [0.3, 1.0]])
    stats = SimpleNamespace(transform="none", means=means, precision=precision, threshold=1.5)
    features = rng.normal(size=(50, 2)) * 2
    expected = np.array([min(scipy_mahalanobis(f, m, precision) for m in means) > 1.5 for f in features])
    assert expected.any() and not expected.all()
    assert np.array_equal(ood_warned(stats, features), expected)


def test_candidate_warning_scores_match_hand_values() -> None:
    """Energy -log(e^a + e^b): logits (0, 0) -> -log 2, (log 3, 0) -> -log 4; 1 - max softmax: 0.5 and
    0.25; standardising by a reference [1, 3] (mean 2, std 1): 4 -> 2."""
    from models.ood import energy, low_confidence, standardised

    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [1000.0, 0.0]])
    assert energy(logits) == pytest.approx([-np.log(2), -np.log(4), -1000.0])  # no overflow at large logits
    assert low_confidence(logits) == pytest.approx([0.5, 0.25, 0.0])
    assert standardised(np.array([4.0, 2.0]), np.array([1.0, 3.0])) == pytest.approx([2.0, 0.0])
    assert standardised(np.array([4.0]), np.array([2.0, 2.0])) == pytest.approx([2.0])  # flat reference: shift only


def test_judge_scores_counts_warnings_and_silent_errors_by_hand() -> None:
    """Three judged films (threshold 0.5): a positive scored 0.27 (wrong), a negative scored 0.73 (wrong),
    a negative scored 0.27 (right). A score that is highest on the two wrong films has AUROC 1 for
    "misclassified"; with its limit at the val films' maximum (percentile 100) it warns on exactly the films
    above it."""
    from models.ood import judge_scores

    one = np.log(0.27 / 0.73)  # logit difference giving P(class 1) = 0.27
    films = {"label": np.array([1, 0, 0, 0, 1]), "val": np.array([0, 0, 0, 1, 1]),
             "logits": np.array([[0.0, one], [0.0, -one], [0.0, one], [0.0, -5.0], [0.0, 5.0]])}
    judged = np.array([True, True, True, False, False])
    score = np.array([5.0, 3.0, 1.0, 2.0, 0.0])  # val max 2: films 1 and 2 warned, film 3 not
    out = judge_scores(films, {"s": score}, 0.5, judged, 100.0)["s"]
    assert out["auroc_misclassified"] == pytest.approx(1.0)
    assert out["errors"] == 2 and out["n"] == 3
    assert out["warning_rate"] == pytest.approx(2 / 3) and out["silent_error_rate"] == pytest.approx(0.0)
    reverse = judge_scores(films, {"s": -score}, 0.5, judged, 100.0)["s"]
    assert reverse["auroc_misclassified"] == pytest.approx(0.0) and reverse["silent_error_rate"] == pytest.approx(2 / 3)
