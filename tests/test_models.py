"""models: registry, EfficientNet-Lite0 port, safe bundles and cards, user weights, metrics."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn import metrics as skm

import models
from models.bundle import CARD_FILE, WEIGHTS_FILE, export_zip, save_bundle
from models.efficientnet_lite import (
    EfficientNetLite0,
    convert_lukemelas_state_dict,
    imagenet_weights_path,
)
from models.metrics import auroc, binary_metrics, expected_calibration_error, youden_threshold
from xai.preprocessing import Preprocessing

PRE = Preprocessing(input_size=64, channels=3, resize="stretch", equalize="hist", crop="body")


def _card_fields(**over):
    fields = {
        "name": "tiny", "version": "t1", "architecture": "chestcovnet", "class_names": ["non_covid", "covid19"],
        "preprocessing": PRE.to_dict(), "target_layer": "head_act", "threshold": 0.4,
        "threshold_rule": "test", "intended_use": "tests only",
    }
    fields.update(over)
    return fields


@pytest.fixture(scope="module")
def small_net() -> EfficientNetLite0:
    torch.manual_seed(0)
    return EfficientNetLite0(2).eval()


@pytest.fixture()
def bundle(tmp_path: Path, small_net: EfficientNetLite0) -> Path:
    save_bundle(tmp_path / "b", small_net, _card_fields())
    return tmp_path / "b"


# ----------------------------------------------------------------------------------------- registry
def test_registry_builds_every_architecture_with_the_class_count():
    assert set(models.ARCHITECTURES) == {"chestcovnet", "densenet121", "resnet18", "resnet50",
                                         "efficientnet_b0", "mobilenet_v3_large"}
    x = torch.rand(1, 3, 64, 64)
    for name, arch in models.ARCHITECTURES.items():
        net = models.build_model(name, 3)
        assert not net.training
        assert net.get_submodule(arch.classifier).out_features == 3
        net.get_submodule(arch.target_layer)  # the default target layer exists
        assert arch.target_layer == getattr(net, "default_target_layer", arch.target_layer), name  # one name
        with torch.no_grad():
            assert net(x).shape == (1, 3), name


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(KeyError, match="resnet18"):
        models.build_model("vgg16", 2)


# --------------------------------------------------------------------------------- EfficientNet-Lite0
def test_imagenet_port_loads_every_key_and_recognises_a_photo():
    raw = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    converted = convert_lukemelas_state_dict(raw)
    net = EfficientNetLite0(1000).eval()
    result = net.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(converted) == len(net.state_dict()) == len(raw)
    # Grace Hopper in uniform (matplotlib's sample photo): ImageNet class 652 "military uniform".
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        img = Image.open(fh).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224))
    x = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255 - 0.498) / 0.502
    with torch.no_grad():
        probs = torch.softmax(net(x), 1)[0]
    assert int(probs.argmax()) == 652
    assert float(probs.max()) < 0.99  # not a degenerate one-hot output


def test_every_activation_is_its_own_module():
    net = EfficientNetLite0(2)
    acts = [m for m in net.modules() if isinstance(m, torch.nn.ReLU6)]
    assert len(acts) == len({id(m) for m in acts}) == 2 + 15 * 2 + 1  # stem, blocks, head
    assert all(not m.inplace for m in acts)
    assert net.default_target_layer == "head_act"
    with torch.no_grad():
        feats = net.features(torch.rand(1, 3, 64, 64))
    assert feats.shape == (1, 1280, 2, 2) and float(feats.min()) >= 0 and float(feats.max()) <= 6


def test_front_and_rest_compose_to_forward(small_net):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(small_net.forward_rest(small_net.forward_front(x, 7), 7), small_net(x))


def test_conversion_names_an_unknown_key():
    with pytest.raises(KeyError, match="_mystery"):
        convert_lukemelas_state_dict({"_mystery.weight": torch.zeros(1)})


# -------------------------------------------------------------------------------------------- bundles
def test_bundle_round_trip_folder_and_zip(bundle, small_net, tmp_path):
    loaded = models.load(str(bundle))
    assert not loaded.module.training
    assert loaded.card.sha256 == models.sha256_file(bundle / WEIGHTS_FILE)
    assert loaded.card.positive_class == "covid19" and loaded.card.positive_index == 1
    assert loaded.card.preprocessing == PRE
    assert models.ModelCard.from_dict(loaded.card.to_dict()) == loaded.card
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), small_net(x))
    zpath = tmp_path / "b.zip"
    zpath.write_bytes(export_zip(bundle))
    from_zip = models.load(zpath)
    assert from_zip.card == loaded.card
    with torch.no_grad():
        torch.testing.assert_close(from_zip.module(x), small_net(x))


def test_default_name_resolves_to_a_shipped_bundle():
    assert "chestcovnet" in models.available_bundles()
    with pytest.raises(models.ModelError, match="no model bundle 'nope'"):
        models.load("nope")


def test_missing_card_field_is_named(bundle):
    card = json.loads((bundle / CARD_FILE).read_text())
    del card["threshold"]
    (bundle / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(models.ModelError, match="missing field.*threshold"):
        models.load(bundle)


def test_bad_card_value_is_named(bundle):
    card = json.loads((bundle / CARD_FILE).read_text())
    card["architecture"] = "alexnet"
    (bundle / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(models.ModelError, match="architecture.*alexnet"):
        models.load(bundle)


def test_sha256_mismatch_is_refused(bundle):
    card = json.loads((bundle / CARD_FILE).read_text())
    card["sha256"] = "0" * 64
    (bundle / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(models.ModelError, match="sha256 mismatch"):
        models.load(bundle)


def test_tampered_weights_are_refused(bundle):
    data = bytearray((bundle / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (bundle / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(models.ModelError, match="sha256 mismatch"):
        models.load(bundle)


def test_zip_with_path_traversal_is_refused(bundle, tmp_path):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(bundle / CARD_FILE, CARD_FILE)
        zf.write(bundle / WEIGHTS_FILE, WEIGHTS_FILE)
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(models.ModelError, match=r"unsafe paths.*\.\./escaped\.txt"):
        models.load(zpath)
    with pytest.raises(models.ModelError, match=r"unsafe paths.*\.\./escaped\.txt"):
        models.read_card(zpath)
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_zip_without_weights_is_refused(bundle, tmp_path):
    zpath = tmp_path / "half.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(bundle / CARD_FILE, CARD_FILE)
    with pytest.raises(models.ModelError, match="exactly one model.safetensors"):
        models.load(zpath)


def test_read_card_gives_the_checked_card_alone(bundle, tmp_path):
    """read_card: the card load() would give, from a folder or a zip, without the weights; checked the same way."""
    loaded = models.load(bundle)
    zpath = tmp_path / "b.zip"
    zpath.write_bytes(export_zip(bundle))
    assert models.read_card(bundle) == loaded.card
    assert models.read_card(zpath) == loaded.card
    (bundle / WEIGHTS_FILE).unlink()  # the card alone still reads; the model does not
    assert models.read_card(bundle) == loaded.card
    with pytest.raises(models.ModelError, match="bundle file missing"):
        models.load(bundle)
    card = json.loads((bundle / CARD_FILE).read_text())
    card["architecture"] = "alexnet"
    (bundle / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(models.ModelError, match="architecture.*alexnet"):
        models.read_card(bundle)
    (bundle / CARD_FILE).write_text("{not json")
    with pytest.raises(models.ModelError, match="not valid JSON"):
        models.read_card(bundle)
    with pytest.raises(models.ModelError, match="no model bundle 'nope'"):
        models.read_card("nope")


def test_reading_the_shipped_card_imports_no_torch():
    """The app shows the bundled model's record while torch loads: reading a card must not import it (and the
    architectures' registry, which checks the card, builds networks only when asked)."""
    import subprocess
    import sys

    code = ("import sys, models; card = models.read_card('chestcovnet'); "
            "print(card.target_layer, card.architecture, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(models.__file__).resolve().parents[1])
    assert out.stdout.split() == [EfficientNetLite0.default_target_layer, "chestcovnet", "False"]


# ------------------------------------------------------------------------------------- user weights
def test_load_weights_pt_safetensors_and_wrappers(small_net, tmp_path):
    state = small_net.state_dict()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = small_net(x)
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "dp.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("plain.pt", "wrapped.pth", "dp.pt", "w.safetensors"):
        loaded = models.load_weights(tmp_path / name, "chestcovnet", ("a", "b"), PRE)
        assert loaded.card.sha256 == models.sha256_file(tmp_path / name)
        assert loaded.card.target_layer == "head_act"
        assert "not calibrated" in loaded.card.threshold_rule
        with torch.no_grad():
            torch.testing.assert_close(loaded.module(x), expected)


def test_class_count_mismatch_is_named(small_net, tmp_path):
    torch.save(small_net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(models.ModelError, match=r"3 class names.*'classifier.weight' has 2 outputs"):
        models.load_weights(tmp_path / "w.pt", "chestcovnet", ("a", "b", "c"), PRE)


def test_wrong_shape_names_key_and_both_shapes(small_net, tmp_path):
    state = dict(small_net.state_dict())
    state["head_conv.weight"] = torch.zeros(1280, 321, 1, 1)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(models.ModelError,
                       match=r"head_conv.weight: w.pt \(1280, 321, 1, 1\) vs model \(1280, 320, 1, 1\)"):
        models.load_weights(tmp_path / "w.pt", "chestcovnet", ("a", "b"), PRE)


def test_missing_and_unexpected_keys_are_named(small_net, tmp_path):
    state = dict(small_net.state_dict())
    del state["blocks.3.depthwise_bn.running_var"]
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(models.ModelError) as err:
        models.load_weights(tmp_path / "w.pt", "chestcovnet", ("a", "b"), PRE)
    assert "missing keys (1): blocks.3.depthwise_bn.running_var" in str(err.value)
    assert "unexpected keys (1): extra.weight" in str(err.value)


def test_wrong_architecture_for_weights(small_net, tmp_path):
    torch.save(small_net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(models.ModelError, match="does not fit the architecture"):
        models.load_weights(tmp_path / "w.pt", "resnet18", ("a", "b"), PRE)


class _CreatesFile:
    """Unpickling this calls open(path, 'w'): arbitrary code execution in a plain pickle."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, writer):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "x": _CreatesFile(marker)}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    # Sanity: the payload is real — a plain pickle load would create the file.
    if writer == "pickle":
        probe = tmp_path / "probe.pt"
        probe.write_bytes(pickle.dumps(_CreatesFile(tmp_path / "probe.txt"), protocol=2))
        pickle.loads(probe.read_bytes()).close()
        assert (tmp_path / "probe.txt").exists()
    with pytest.raises(models.ModelError, match="refused to load evil.pt"):
        models.load_weights(evil, "chestcovnet", ("a", "b"), PRE)
    assert not marker.exists()


def test_bare_weights_passed_to_load_points_to_load_weights(small_net, tmp_path):
    torch.save(small_net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(models.ModelError, match="load_weights"):
        models.load(tmp_path / "w.pt")


def test_garbage_files_are_model_errors(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "x.pt").write_bytes(b"\x00\x01junk")
    (tmp_path / "x.zip").write_bytes(b"PK junk")
    for name in ("x.safetensors", "x.pt"):
        with pytest.raises(models.ModelError):
            models.load_weights(tmp_path / name, "chestcovnet", ("a", "b"), PRE)
    with pytest.raises(models.ModelError, match="not a readable zip"):
        models.load(tmp_path / "x.zip")


# -------------------------------------------------------------------------------------------- metrics
def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1), 2)  # rounding creates ties
    assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    m = binary_metrics(y, s, 0.5)
    pred = (s >= 0.5).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["n"] == 300
    # Youden's J at our threshold equals the maximum over sklearn's ROC curve.
    fpr, tpr, _ = skm.roc_curve(y, s)
    t = youden_threshold(y, s)
    j = ((s >= t) & (y == 1)).sum() / y.sum() - ((s >= t) & (y == 0)).sum() / (1 - y).sum()
    assert j == pytest.approx((tpr - fpr).max())


def test_youden_threshold_sits_mid_gap_for_separable_scores():
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.5)


def test_ece_by_hand_and_undefined_cases():
    # bins: [0.1, 0.15] -> 0.1 bin: mean p 0.125, mean y 0.5 ; [0.95] -> last bin: p 0.95, y 1
    assert expected_calibration_error([0, 1, 1], [0.1, 0.15, 0.95]) == pytest.approx(
        2 / 3 * abs(0.5 - 0.125) + 1 / 3 * abs(1 - 0.95))
    only_pos = binary_metrics([1, 1], [0.9, 0.2], 0.5)
    assert only_pos["auroc"] is None and only_pos["specificity"] is None and only_pos["sensitivity"] == 0.5
