"""The trust checks run where the model lives and read its outputs by the one probability rule.

No GPU here, so two stand-ins check the device path on the CPU:

- :class:`DeviceOnly`, a tensor subclass with a CUDA tensor's contract: ``.numpy()`` (and ``np.asarray``)
  refuse, ``.cpu()`` gives a plain tensor. A network whose activations are ``DeviceOnly`` behaves, for the
  code that reads its outputs, like a network on an accelerator: any ``.numpy()`` before ``.cpu()`` fails.
- a float64 copy of a network fed float32 inputs: the checks must move inputs to the model's dtype (the
  same code path as its device), or the convolution refuses the mixed types.

Every figure is compared with the plain float32 network's, computed independently.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from test_trust_methods import PRE, ToyCNN
from torch import nn

from xai.preprocessing import prepare
from xai.trust.faithfulness import faithfulness
from xai.trust.integrated_gradients import integrated_gradients
from xai.trust.model_access import class_probabilities, compute_maps_batch
from xai.trust.ood import extract_features
from xai.trust.stability import DEFAULT_PERTURBATIONS, stability


class DeviceOnly(torch.Tensor):
    """A tensor that, like one on a CUDA device, has no ``.numpy()`` until it is copied with ``.cpu()``."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        if func is torch.Tensor.numpy or getattr(func, "__name__", "") == "__array__":
            raise TypeError("can't convert a device tensor to numpy; use Tensor.cpu() to copy it to the host first")
        out = super().__torch_function__(func, types, args, kwargs or {})
        if func is torch.Tensor.cpu and isinstance(out, torch.Tensor):
            return out.as_subclass(torch.Tensor)
        return out


class Toy(ToyCNN):
    """The trust tests' toy network; ``outputs=1`` swaps in a one-logit head (positive weights, so the
    explained class has evidence and its Grad-CAM is not flat)."""

    def __init__(self, seed: int = 0, outputs: int = 2) -> None:
        super().__init__(seed)
        if outputs != 2:
            self.fc = nn.Linear(16, outputs)
            with torch.no_grad():
                self.fc.weight.abs_()
        self.eval()


class OnDevice(Toy):
    """The same network whose every activation is a :class:`DeviceOnly` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.as_subclass(DeviceOnly))


def _pair(seed: int = 0, outputs: int = 2) -> tuple[Toy, OnDevice]:
    plain = Toy(seed, outputs)
    on_device = OnDevice(seed, outputs)
    on_device.load_state_dict(plain.state_dict())
    return plain, on_device.eval()


def _image(h: int = 40, w: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.2 + 0.6 * np.exp(-(((xx - 0.3 * w) / (0.15 * w)) ** 2 + ((yy - 0.45 * h) / (0.2 * h)) ** 2))
    return np.clip(img, 0, 1).astype(np.float32)


def test_the_stand_in_refuses_numpy_like_a_device_tensor() -> None:
    """The stand-in is only useful if it fails where a CUDA tensor fails."""
    _plain, model = _pair()
    out = model(torch.rand(1, 3, 8, 8))
    assert isinstance(out, DeviceOnly)
    with pytest.raises(TypeError, match="cpu"):
        out.detach().numpy()
    with pytest.raises(TypeError, match="cpu"):
        np.asarray(out.detach())
    assert type(out.detach().cpu()) is torch.Tensor


def test_probabilities_and_features_come_back_from_the_device() -> None:
    plain, model = _pair()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        expected = torch.softmax(plain(x), dim=1).numpy()
    np.testing.assert_allclose(class_probabilities(model, x), expected, rtol=1e-6)
    feats, logits = extract_features(model, x)
    plain_feats, plain_logits = extract_features(plain, x)
    np.testing.assert_allclose(feats, plain_feats, rtol=1e-6)
    np.testing.assert_allclose(logits, plain_logits, rtol=1e-6)
    maps, target, probs = compute_maps_batch(None, model, x, None, (), None)
    assert maps == [{}, {}, {}] and target == int(np.argmax(expected[0]))
    np.testing.assert_allclose(probs, expected, rtol=1e-6)


def test_faithfulness_and_integrated_gradients_on_the_device() -> None:
    plain, model = _pair()
    x, _ = prepare(_image(), PRE)
    heat = np.random.default_rng(0).random((32, 32))
    ours = faithfulness(model, x, {"m": heat}, target=1, steps=5)
    ref = faithfulness(plain, x, {"m": heat}, target=1, steps=5)
    np.testing.assert_allclose(ours.curves["m"].deletion, ref.curves["m"].deletion, rtol=1e-5)
    np.testing.assert_allclose(ours.curves["m"].insertion, ref.curves["m"].insertion, rtol=1e-5)
    ig = integrated_gradients(model, x, target=1, baseline="zero", steps=8)
    ig_ref = integrated_gradients(plain, x, target=1, baseline="zero", steps=8)
    np.testing.assert_allclose(ig.attributions, ig_ref.attributions, rtol=1e-5, atol=1e-7)
    assert ig.score == pytest.approx(ig_ref.score, rel=1e-6)


def test_stability_reads_the_device_outputs() -> None:
    plain, model = _pair()
    second_plain, second = _pair(seed=1)
    pert = DEFAULT_PERTURBATIONS[1:2]
    ours = stability(model, _image(), preprocessing=PRE, methods=("gradcam",), target=1, perturbations=pert,
                     second_model=second)
    ref = stability(plain, _image(), preprocessing=PRE, methods=("gradcam",), target=1, perturbations=pert,
                    second_model=second_plain)
    assert ours.reference_probability == pytest.approx(ref.reference_probability, rel=1e-6)
    assert all(math.isfinite(v) for v in ref.summary()["gradcam"].values())
    assert ours.summary()["gradcam"] == pytest.approx(ref.summary()["gradcam"], rel=1e-5, abs=1e-6)


def test_inputs_follow_the_models_dtype() -> None:
    """A float64 model and float32 prepared inputs (the preprocessing's dtype): the checks convert the
    input as they would move it to the model's device; without that the convolution raises."""
    plain = Toy()
    wide = copy.deepcopy(plain).double()
    x, _ = prepare(_image(), PRE)
    assert x.dtype == torch.float32
    with pytest.raises(RuntimeError):
        wide(x)
    heat = np.random.default_rng(1).random((32, 32))
    a = faithfulness(wide, x, {"m": heat}, target=0, steps=4).curves["m"]
    b = faithfulness(plain, x, {"m": heat}, target=0, steps=4).curves["m"]
    np.testing.assert_allclose(a.deletion, b.deletion, rtol=1e-5)
    np.testing.assert_allclose(extract_features(wide, x)[0], extract_features(plain, x)[0], rtol=1e-5)
    ig = integrated_gradients(wide, x, target=0, steps=4)  # black baseline: no card, so the zero tensor
    assert ig.attributions.dtype == np.float32
    np.testing.assert_allclose(class_probabilities(wide, x), class_probabilities(plain, x), rtol=1e-6)


def test_one_logit_models_use_the_sigmoid_everywhere() -> None:
    """One rule (:func:`xai.scores.probabilities`): a single logit z gives p = sigmoid(z) for its only
    class index 0 in the deletion curve, in stability's reference probability and in the class
    probabilities; a target beyond the model's outputs is a clear error, not an index error."""
    model = Toy(outputs=1)
    x, _ = prepare(_image(), PRE)
    with torch.no_grad():
        z = float(model(x)[0, 0])
    p = 1.0 / (1.0 + math.exp(-z))
    assert class_probabilities(model, x)[0].tolist() == pytest.approx([p], rel=1e-6)
    curve = faithfulness(model, x, {"m": np.ones((32, 32))}, target=0, steps=2).curves["m"]
    assert curve.deletion[0] == pytest.approx(p, rel=1e-6)
    res = stability(model, _image(), preprocessing=PRE, methods=("gradcam",), target=0, perturbations=())
    assert res.reference_probability == pytest.approx(p, rel=1e-5)
    with pytest.raises(ValueError, match="class 1.*1 output"):
        faithfulness(model, x, {"m": np.ones((32, 32))}, target=1, steps=2)
