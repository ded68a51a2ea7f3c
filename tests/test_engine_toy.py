"""The engine on tiny networks with hand-set weights, against values computed by hand.

1. ``OneLayer`` (conv 1x1 -> ReLU -> GAP -> linear): every expected number is written out literally and
   derived in the comments (Grad-CAM, Grad-CAM++ with a zero denominator, guided backprop with a
   negative gradient and negative inputs, guided Grad-CAM, display maps).
2. ``Chain`` (1x1 convs with an in-place ReLU module used twice, a functional ``F.relu``, ReLU6): a numpy
   reference applies the chain rule by hand, pixel by pixel, with the guided rule of Springenberg et al.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xai import METHODS, Explainer, Explanation
from xai.engine import guided_display, upper_quantile

# ---------------------------------------------------------------------------------------------- OneLayer


class OneLayer(nn.Module):
    """x (N,1,2,2) -> conv 1x1 (u = [1, -1]) -> [block: ReLU] -> GAP -> linear (hand-set weights)."""

    def __init__(self, fc_weight: list[list[float]], relu_target: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.act = nn.ReLU() if relu_target else nn.Identity()
        self.fc = nn.Linear(2, len(fc_weight))
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor(fc_weight))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.conv(x))
        return self.fc(a.mean(dim=(2, 3)))


X1 = torch.tensor([[[[1.0, -2.0], [3.0, -2.0]]]])  # (1, 1, 2, 2)


def test_one_layer_all_four_methods_by_hand() -> None:
    # z = [x, -x]; A_1 = ReLU(x) = [[1,0],[3,0]] (sum 4), A_2 = ReLU(-x) = [[0,2],[0,2]] (sum 4).
    # logit_0 = 2 mean(A_1) - 2 mean(A_2) -> g_1 = 2/4 = 0.5, g_2 = -0.5 (constant over the map).
    model = OneLayer([[2.0, -2.0], [0.0, 1.0]]).eval()
    e = Explainer(model, "act").explain(X1, target=0)
    assert e.target_layer == "act"
    np.testing.assert_array_equal(e.target, [0])
    np.testing.assert_allclose(e.logits, [[2.0 * 1.0 - 2.0 * 1.0, 1.0]], atol=1e-7)

    # Grad-CAM: w = [0.5, -0.5]; ReLU(0.5 A_1 - 0.5 A_2) = ReLU([[0.5,-1],[1.5,-1]]) = [[0.5,0],[1.5,0]].
    np.testing.assert_allclose(e.raw["gradcam"][0], [[0.5, 0.0], [1.5, 0.0]], rtol=1e-6)
    # Grad-CAM++: channel 1: 2 g^2 + S g^3 = 0.5 + 4 * 0.125 = 1 -> alpha = 0.25, w_1 = 4 * 0.25 * 0.5 = 0.5.
    # channel 2: 2 g^2 + S g^3 = 0.5 + 4 * (-0.125) = 0 -> alpha = 0 exactly (not inf * 0 = NaN), w_2 = 0.
    np.testing.assert_allclose(e.raw["gradcam++"][0], [[0.5, 0.0], [1.5, 0.0]], rtol=1e-6)
    # Guided backprop: dx = sum_k u_k g_k [z_k > 0] [g_k > 0]: only channel 1 (g_1 > 0) where x > 0:
    # [[0.5, 0], [0.5, 0]]. The plain gradient would be 0.5 everywhere (channel 2 passes -0.5 * -1 at x < 0).
    np.testing.assert_allclose(e.raw["guided_backprop"][0, 0], [[0.5, 0.0], [0.5, 0.0]], rtol=1e-6)
    # Guided Grad-CAM: guided * Grad-CAM (same 2x2 size: bilinear upsampling is the identity).
    np.testing.assert_allclose(e.raw["guided_gradcam"][0, 0], [[0.25, 0.0], [0.75, 0.0]], rtol=1e-6)

    # Display: CAM / max = [[1/3, 0], [1, 0]].
    np.testing.assert_allclose(e.maps["gradcam"][0], [[1 / 3, 0.0], [1.0, 0.0]], rtol=1e-6)
    # Guided: |.| = [[.5,0],[.5,0]]; 99.5th percentile of [0,0,.5,.5] = .5 -> [[1,0],[1,0]].
    np.testing.assert_allclose(e.maps["guided_backprop"][0], [[1.0, 0.0], [1.0, 0.0]], rtol=1e-6)
    # Guided Grad-CAM: sorted [0, 0, .25, .75], position 0.995 * 3 = 2.985 -> .25 + .985 * .5 = .7425.
    np.testing.assert_allclose(e.maps["guided_gradcam"][0], [[0.25 / 0.7425, 0.0], [1.0, 0.0]], rtol=1e-6)
    for m in METHODS:
        assert e.maps[m].dtype == np.float32 and e.maps[m].shape == (1, 2, 2)
        assert not e.flat[m][0]


def test_gradcam_plus_plus_zero_denominator_with_positive_gradient() -> None:
    # Target = conv output (no ReLU): A_1 = x, A_2 = -x. x = -1 everywhere -> A_1 = -1 (sum -4), A_2 = 1 (sum 4).
    # logit = 2 mean(A_1) + 2 mean(A_2) -> g_1 = g_2 = 0.5.
    # channel 1: 2 * 0.25 + (-4) * 0.125 = 0 -> alpha = 0 exactly (an unguarded division gives inf * 0.5 = inf).
    # channel 2: 0.5 + 4 * 0.125 = 1 -> alpha = 0.25, w_2 = 4 * 0.25 * 0.5 = 0.5; map = ReLU(0.5 * 1) = 0.5.
    # Grad-CAM: ReLU(0.5 * -1 + 0.5 * 1) = 0 -> all zero, flat.
    model = OneLayer([[2.0, 2.0]], relu_target=False).eval()
    e = Explainer(model, "conv").explain(-torch.ones(1, 1, 2, 2), methods=["gradcam", "gradcam++"])
    np.testing.assert_allclose(e.raw["gradcam++"][0], np.full((2, 2), 0.5), rtol=1e-6)
    assert np.isfinite(e.raw["gradcam++"]).all()
    np.testing.assert_array_equal(e.raw["gradcam"][0], np.zeros((2, 2)))
    assert e.flat["gradcam"].tolist() == [True]
    np.testing.assert_array_equal(e.maps["gradcam"], np.zeros((1, 2, 2), np.float32))
    # gradcam++ is constant 0.5 over the map: flat too (no spatial information), shown as zeros.
    assert e.flat["gradcam++"].tolist() == [True]
    np.testing.assert_array_equal(e.maps["gradcam++"], np.zeros((1, 2, 2), np.float32))
    assert set(e.maps) == {"gradcam", "gradcam++"} and e.methods == ("gradcam", "gradcam++")


def test_flat_guided_map_when_the_input_does_not_matter() -> None:
    # Class 1 has weights [0, 0]: every gradient is zero -> all four maps flat and all-zero for display.
    model = OneLayer([[2.0, -2.0], [0.0, 0.0]]).eval()
    e = Explainer(model, "act").explain(X1, target=1)
    for m in METHODS:
        assert e.flat[m].tolist() == [True], m
        np.testing.assert_array_equal(e.maps[m], np.zeros((1, 2, 2), np.float32))


def test_batch_with_different_targets_equals_single_images() -> None:
    model = OneLayer([[2.0, -2.0], [-1.0, 3.0]]).eval()
    x = torch.cat([X1, -X1 * 0.5])
    explainer = Explainer(model, "act")
    batch = explainer.explain(x, target=[0, 1])
    np.testing.assert_array_equal(batch.target, [0, 1])
    for i, t in enumerate([0, 1]):
        single = explainer.explain(x[i : i + 1], target=t)
        for m in METHODS:
            np.testing.assert_allclose(batch.raw[m][i], single.raw[m][0], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(batch.maps[m][i], single.maps[m][0], rtol=1e-6, atol=1e-7)
    # Image 1 (x = [[-.5, 1], [-1.5, 1]]), class 1: logit = -mean(A_1) + 3 mean(A_2), g = [-.25, .75];
    # A_1 = [[0,1],[0,1]], A_2 = [[.5,0],[1.5,0]] -> Grad-CAM ReLU(-.25 A_1 + .75 A_2) = [[.375,0],[1.125,0]].
    np.testing.assert_allclose(batch.raw["gradcam"][1], [[0.375, 0.0], [1.125, 0.0]], rtol=1e-6)


def test_predicted_class_is_the_default_target_and_probabilities_are_softmax() -> None:
    model = OneLayer([[2.0, -2.0], [0.0, 1.0]]).eval()  # logits [0, 1] -> class 1
    e = Explainer(model, "act").explain(X1)
    np.testing.assert_array_equal(e.target, [1])
    np.testing.assert_allclose(e.probabilities[0], np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum(), rtol=1e-6)


# ------------------------------------------------------------------------------------------------- Chain


class Chain(nn.Module):
    """1x1 convs: conv1 -> relu (in place by default, module) -> conv2 -> F.relu -> conv3 -> ReLU6 -> block[conv4, relu
    (the same module again)] -> GAP -> fc. ``relu_tail`` adds ``torch.relu`` after the block (a ReLU above
    the target layer when the target is ``block``)."""

    def __init__(self, weights: dict[str, np.ndarray], relu_tail: bool = False, inplace: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 1)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.conv3 = nn.Conv2d(3, 3, 1)
        self.relu6 = nn.ReLU6()
        self.conv4 = nn.Conv2d(3, 3, 1)
        self.block = nn.Sequential(self.conv4, self.relu)
        self.fc = nn.Linear(3, 2)
        self.relu_tail = relu_tail
        self.double()  # before copying: float64 weights, exact to the numpy reference
        with torch.no_grad():
            for i, conv in enumerate([self.conv1, self.conv2, self.conv3, self.conv4], start=1):
                conv.weight.copy_(torch.from_numpy(weights[f"W{i}"])[:, :, None, None])
                conv.bias.copy_(torch.from_numpy(weights[f"b{i}"]))
            self.fc.weight.copy_(torch.from_numpy(weights["Wfc"]))
            self.fc.bias.copy_(torch.from_numpy(weights["bfc"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = self.relu6(self.conv3(h))
        a = self.block(h)
        if self.relu_tail:
            a = torch.relu(a - 0.2)
        return self.fc(a.mean(dim=(2, 3)))


def chain_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    w = {
        "W1": rng.normal(size=(3, 2)) * 1.5,
        "b1": rng.normal(size=3) * 0.3,
        "W2": rng.normal(size=(3, 3)),
        "b2": np.array([0.5, 0.8, 0.3]),
        "W3": rng.normal(size=(3, 3)) * 4.0,  # large enough to saturate ReLU6 somewhere
        "b3": np.array([2.0, 4.5, 4.0]),
        "W4": rng.normal(size=(3, 3)),
        "b4": rng.normal(size=3) * 0.3 + 0.5,
        "Wfc": np.array([[1.0, -0.7, 0.4], [-0.5, 0.9, 0.3]]),
        "bfc": np.array([0.1, -0.1]),
    }
    return w


def chain_reference(
    w: dict[str, np.ndarray], x: np.ndarray, target: int, relu_tail: bool
) -> dict[str, object]:
    """Forward and backward by hand, per pixel (x: (2, H, W)). Returns every intermediate we assert on."""
    px = x.reshape(2, -1)  # (channels, pixels)
    z1 = w["W1"] @ px + w["b1"][:, None]
    h1 = np.maximum(z1, 0)
    z2 = w["W2"] @ h1 + w["b2"][:, None]
    h2 = np.maximum(z2, 0)
    z3 = w["W3"] @ h2 + w["b3"][:, None]
    h3 = np.clip(z3, 0, 6)
    z4 = w["W4"] @ h3 + w["b4"][:, None]
    a = np.maximum(z4, 0)  # target "block"
    p = a.shape[1]
    if relu_tail:
        t = a - 0.2
        top = np.maximum(t, 0)
    else:
        top = a
    logits = w["Wfc"] @ top.mean(axis=1) + w["bfc"]
    d_top = np.repeat(w["Wfc"][target][:, None], p, axis=1) / p  # d logit / d top, per pixel

    def backward(guided: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        def gate(grad: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return grad * mask * (grad > 0) if guided else grad * mask

        d_a = gate(d_top, t > 0) if relu_tail else d_top
        d_z4 = gate(d_a, z4 > 0)
        d_h3 = w["W4"].T @ d_z4
        d_z3 = gate(d_h3, (z3 > 0) & (z3 < 6))
        d_h2 = w["W3"].T @ d_z3
        d_z2 = gate(d_h2, z2 > 0)
        d_h1 = w["W2"].T @ d_z2
        d_z1 = gate(d_h1, z1 > 0)
        return w["W1"].T @ d_z1, d_a, d_z4

    dx_guided, _, _ = backward(True)
    dx_plain, d_a_plain, d_z4_plain = backward(False)
    return {
        "logits": logits,
        "a": a,
        "z4": z4,
        "z3": z3,
        "dx_guided": dx_guided.reshape(x.shape),
        "dx_plain": dx_plain.reshape(x.shape),
        "d_a": d_a_plain,
        "d_z4": d_z4_plain,
    }


def cams_by_hand(a: np.ndarray, g: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM and Grad-CAM++ (eq. 19) from (K, pixels) activations and gradients, written out per channel."""
    k_channels = a.shape[0]
    gradcam = np.zeros(a.shape[1])
    gradcam_pp = np.zeros(a.shape[1])
    for k in range(k_channels):
        gradcam += g[k].mean() * a[k]
        s = a[k].sum()
        weight = 0.0
        for j in range(a.shape[1]):
            denominator = 2 * g[k, j] ** 2 + s * g[k, j] ** 3
            alpha = g[k, j] ** 2 / denominator if denominator != 0 else 0.0
            weight += alpha * max(g[k, j], 0.0)
        gradcam_pp += weight * a[k]
    return np.maximum(gradcam, 0).reshape(shape), np.maximum(gradcam_pp, 0).reshape(shape)


CHAIN_X = np.random.default_rng(3).normal(size=(2, 2, 4, 5)) * 1.2  # two images: negative and positive inputs


@pytest.mark.parametrize("relu_tail", [False, True], ids=["one-backward", "relu-above-target"])
def test_chain_guided_rule_through_every_relu_kind(relu_tail: bool) -> None:
    w = chain_weights()
    model = Chain(w, relu_tail=relu_tail).eval()
    targets = [0, 1]
    e = Explainer(model, "block").explain(torch.from_numpy(CHAIN_X), target=targets)
    two_passes = any("two backward passes" in note for note in e.notes)
    assert two_passes == relu_tail
    for i, t in enumerate(targets):
        ref = chain_reference(w, CHAIN_X[i], t, relu_tail)
        np.testing.assert_allclose(e.logits[i], ref["logits"], rtol=1e-12)
        np.testing.assert_allclose(e.raw["guided_backprop"][i], ref["dx_guided"], rtol=1e-9, atol=1e-12)
        # The guided rule really acted: the plain gradient differs.
        assert np.abs(ref["dx_guided"] - ref["dx_plain"]).max() > 1e-3
        gradcam, gradcam_pp = cams_by_hand(ref["a"], ref["d_a"], (4, 5))
        np.testing.assert_allclose(e.raw["gradcam"][i], gradcam, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(e.raw["gradcam++"][i], gradcam_pp, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            e.raw["guided_gradcam"][i], ref["dx_guided"] * gradcam[None], rtol=1e-9, atol=1e-12
        )
    # The data exercises every case of the rule: ReLU6 saturated, in range and off; negative inputs.
    z3 = np.concatenate([chain_reference(w, CHAIN_X[i], 0, relu_tail)["z3"].ravel() for i in range(2)])
    assert (z3 > 6).any() and ((z3 > 0) & (z3 < 6)).any() and (z3 < 0).any()
    assert (CHAIN_X < 0).any()


def test_chain_target_before_a_relu_uses_the_plain_gradient_there() -> None:
    # Target conv4 with an out-of-place ReLU after it: the CAM map is the pre-ReLU z4 and its gradient the
    # plain one (d logit / d z4 = W_fc[t] / P * [z4 > 0]), from a separate plain pass; the input gradient is
    # still fully guided.
    w = chain_weights()
    model = Chain(w, inplace=False).eval()
    e = Explainer(model, model.conv4).explain(torch.from_numpy(CHAIN_X[:1]), target=1)
    assert e.target_layer == "conv4" and any("two backward passes" in n for n in e.notes)
    ref = chain_reference(w, CHAIN_X[0], 1, relu_tail=False)
    gradcam, gradcam_pp = cams_by_hand(ref["z4"], ref["d_z4"], (4, 5))
    np.testing.assert_allclose(e.raw["gradcam"][0], gradcam, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(e.raw["gradcam++"][0], gradcam_pp, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(e.raw["guided_backprop"][0], ref["dx_guided"], rtol=1e-9, atol=1e-12)


def test_chain_target_made_post_relu_in_place_is_the_post_relu_map() -> None:
    # The DenseNet case: the model applies an in-place ReLU to conv4's output, so the captured tensor IS the
    # post-ReLU map; activations and gradients both come from it, and one backward pass suffices.
    w = chain_weights()
    model = Chain(w, inplace=True).eval()
    x = torch.from_numpy(CHAIN_X[:1])
    e = Explainer(model, "conv4").explain(x, target=1)
    assert not any("two backward passes" in n for n in e.notes)
    ref = chain_reference(w, CHAIN_X[0], 1, relu_tail=False)
    gradcam, gradcam_pp = cams_by_hand(ref["a"], ref["d_a"], (4, 5))
    np.testing.assert_allclose(e.raw["gradcam"][0], gradcam, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(e.raw["gradcam++"][0], gradcam_pp, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(e.raw["guided_backprop"][0], ref["dx_guided"], rtol=1e-9, atol=1e-12)


def test_only_cams_or_only_guided_give_the_same_maps_as_all_four() -> None:
    w = chain_weights()
    model = Chain(w).eval()
    x = torch.from_numpy(CHAIN_X)
    explainer = Explainer(model, "block")
    full = explainer.explain(x, target=[1, 0])
    cams = explainer.explain(x, target=[1, 0], methods=("gradcam++", "gradcam"))
    guided = explainer.explain(x, target=[1, 0], methods=["guided_backprop"])
    assert cams.methods == ("gradcam", "gradcam++") and guided.methods == ("guided_backprop",)
    for m in cams.methods:
        np.testing.assert_allclose(cams.raw[m], full.raw[m], rtol=1e-12)
    np.testing.assert_allclose(guided.raw["guided_backprop"], full.raw["guided_backprop"], rtol=1e-12)


def test_guided_rule_also_for_torch_relu_and_tensor_methods() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1, bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
            self.fc = nn.Linear(2, 1, bias=False)
            with torch.no_grad():
                self.fc.weight.copy_(torch.tensor([[2.0, -2.0]]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.conv(x)
            a = torch.cat([torch.relu(z[:, :1]), z[:, 1:].relu()], dim=1)
            return self.fc(a.mean(dim=(2, 3)))

    e = Explainer(Functional().eval(), "conv").explain(X1, methods=["guided_backprop"])
    # Same network as OneLayer: only the x > 0 positions of the positive-gradient channel pass.
    np.testing.assert_allclose(e.raw["guided_backprop"][0, 0], [[0.5, 0.0], [0.5, 0.0]], rtol=1e-6)
    assert e.notes == ("single-logit model: probabilities are sigmoid(logit)",)


def test_silu_network_notes_that_guided_backprop_is_the_plain_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    x = torch.randn(1, 3, 6, 6)
    e = Explainer(model).explain(x, target=2)
    assert e.target_layer == "3"  # fallback: last 4-D map before pooling (the GELU output)
    assert any("no ReLU" in n for n in e.notes)
    assert any("SiLU x1" in n and "GELU x1" in n for n in e.notes)
    xr = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(xr)[0, 2], xr)
    np.testing.assert_allclose(e.raw["guided_backprop"], plain.numpy(), rtol=1e-5, atol=1e-8)


def test_explanation_is_read_only_and_frozen() -> None:
    e = Explainer(OneLayer([[2.0, -2.0]]).eval(), "act").explain(X1)
    assert isinstance(e, Explanation)
    for array in (e.logits, e.probabilities, e.target, *e.maps.values(), *e.raw.values(), *e.flat.values()):
        with pytest.raises(ValueError):
            array.flat[0] = 1
    with pytest.raises(AttributeError):
        e.target_layer = "x"  # type: ignore[misc]
    assert set(e.timings) >= {"forward", "backward", "cams", "guided", "total"}
    assert all(v >= 0 for v in e.timings.values())
    assert set(e.versions) >= {"torch", "xai"}


# ---------------------------------------------------------------------------------- layers and bad input


def test_target_layer_by_module_name_declared_default_and_errors() -> None:
    model = OneLayer([[1.0, 1.0]])
    assert Explainer(model, model.conv).target_layer_name == "conv"
    assert Explainer(model, "act").target_layer_name == "act"
    with pytest.raises(ValueError, match=r"unknown target layer 'nope'.*valid names: conv, act, fc"):
        Explainer(model, "nope")
    with pytest.raises(ValueError, match="not a submodule"):
        Explainer(model, nn.ReLU())
    model.default_target_layer = "conv"  # type: ignore[assignment]
    assert Explainer(model).target_layer_name == "conv"
    model.default_target_layer = "missing"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="unknown target layer 'missing'"):
        Explainer(model)


def test_bad_inputs_raise_clear_errors() -> None:
    explainer = Explainer(OneLayer([[2.0, -2.0], [0.0, 1.0]]).eval(), "act")
    with pytest.raises(ValueError, match=r"out of range: the model has 2 classes"):
        explainer.explain(X1, target=2)
    with pytest.raises(ValueError, match="target has 2 entries but the batch has 1"):
        explainer.explain(X1, target=[0, 1])
    with pytest.raises(ValueError, match="unknown method"):
        explainer.explain(X1, methods=["gradcam", "lime"])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        explainer.explain(X1[0])
    with pytest.raises(ValueError, match="NaN"):
        explainer.explain(torch.full_like(X1, float("nan")))
    with pytest.raises(TypeError, match="float"):
        explainer.explain(X1.long())
    with pytest.raises(TypeError):
        explainer.explain(X1, target=True)


def test_upper_quantile_matches_numpy_percentile() -> None:
    v = torch.rand(3, 1000, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(
        upper_quantile(v, 0.995).numpy(), np.percentile(v.numpy(), 99.5, axis=1), rtol=1e-6
    )
    # A map with one hot pixel: the percentile is 0, the maximum scales instead (no division by zero).
    raw = torch.zeros(1, 3, 10, 10)
    raw[0, 1, 4, 4] = -3.0
    display, flat = guided_display(raw)
    assert not flat[0] and display[0, 4, 4] == 1.0 and display.sum() == 1.0


def test_every_spelling_of_relu_and_relu6_gets_the_guided_rule() -> None:
    # The same network written with different ReLU/ReLU6 spellings must give the guided input gradient of
    # the module version (which test_chain_* checks against the hand-computed reference).
    spellings = {
        "modules": (lambda z: nn.ReLU()(z), lambda z: nn.ReLU6()(z)),
        "functional": (lambda z: F.relu(z), lambda z: F.relu6(z)),
        "in-place": (lambda z: F.relu(z, inplace=True), lambda z: F.relu6(z, inplace=True)),
        "torch": (lambda z: torch.relu_(z * 1), lambda z: F.hardtanh(z, 0.0, 6.0)),
        "tensor-methods": (lambda z: (z * 1).relu_(), lambda z: F.hardtanh_(z * 1, min_val=0.0, max_val=6.0)),
        "threshold": (lambda z: F.threshold(z, 0.0, 0.0), lambda z: nn.Hardtanh(0.0, 6.0)(z)),
    }

    class Spelled(nn.Module):
        def __init__(self, relu: object, relu6: object) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            with torch.no_grad():
                self.conv2.weight.mul_(8.0)  # some pre-ReLU6 values above 6
            self.fc = nn.Linear(4, 2)
            self.relu, self.relu6 = relu, relu6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.relu6(self.conv2(self.relu(self.conv1(x))))  # type: ignore[operator]
            return self.fc(a.mean(dim=(2, 3)))

    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    results = {
        name: Explainer(Spelled(*fns).eval(), "conv2").explain(x, target=[0, 1], methods=["guided_backprop"])
        for name, fns in spellings.items()
    }
    expected = results["modules"].raw["guided_backprop"]
    xr = x.clone().requires_grad_(True)
    plain_model = Spelled(*spellings["modules"]).eval()
    (plain,) = torch.autograd.grad(plain_model(xr)[torch.arange(2), torch.tensor([0, 1])].sum(), xr)
    assert np.abs(expected - plain.numpy()).max() > 1e-3  # the guided rule changed something
    for name, e in results.items():
        np.testing.assert_allclose(e.raw["guided_backprop"], expected, rtol=1e-6, atol=1e-9, err_msg=name)
        assert not any("no ReLU" in n for n in e.notes), name
    # Each activation matters on its own: hiding either one from the rule (clamp is not a ReLU call)
    # changes the result, so every spelling above was really guided.
    hidden = {
        "relu hidden": (lambda z: z.clamp(min=0), spellings["modules"][1]),
        "relu6 hidden": (spellings["modules"][0], lambda z: z.clamp(0, 6)),
    }
    for name, fns in hidden.items():
        e = Explainer(Spelled(*fns).eval(), "conv2").explain(x, target=[0, 1], methods=["guided_backprop"])
        assert np.abs(e.raw["guided_backprop"] - expected).max() > 1e-3 * np.abs(expected).max(), name


def test_custom_autograd_functions_are_reported_as_opaque() -> None:
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, z: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(z)  # type: ignore[attr-defined]
            return z * z

        @staticmethod
        def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
            (z,) = ctx.saved_tensors  # type: ignore[attr-defined]
            return 2 * z * g

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = F.relu(self.conv(x))
            return self.fc(Square.apply(a).mean(dim=(2, 3)))

    e = Explainer(Net().eval(), "conv").explain(torch.randn(1, 3, 4, 4), methods=["guided_backprop"])
    assert any("opaque autograd nodes (SquareBackward x1)" in n for n in e.notes), e.notes
