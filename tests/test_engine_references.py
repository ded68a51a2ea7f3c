"""The engine against independent references on torchvision models with seeded random weights.

* Grad-CAM raw == captum ``LayerGradCam(relu_attributions=True)`` on the same tensor.
* Grad-CAM++ == eq. 19 computed here in float64 numpy from a plain-autograd gradient.
* Guided backprop == captum ``GuidedBackprop`` on a copy with ``inplace=False`` ReLUs (captum is only
  guaranteed without in-place ReLUs). For DenseNet-121 captum needs a module for the functional
  ``F.relu(features)`` of ``DenseNet.forward``: :class:`DenseNetPostReLU` is the same computation with that
  ReLU as a module (``post_relu``), so captum's LayerGradCam gets the post-ReLU map that feeds the pooling
  and its GuidedBackprop guides that ReLU too. EfficientNet-B0 has no ReLU (SiLU): guided == plain gradient.

Small inputs (64 px) keep this fast; no weights are downloaded.
"""

from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedBackprop, LayerActivation, LayerGradCam, LayerGradientXActivation
from torch import nn

from xai import METHODS, Explainer

SIZE = 64
TARGETS = [1, 3]


class DenseNetPostReLU(nn.Module):
    """torchvision DenseNet's forward with its functional ReLU as a module, so references can see it."""

    def __init__(self, densenet: torchvision.models.DenseNet) -> None:
        super().__init__()
        self.features = densenet.features
        self.post_relu = nn.ReLU(inplace=False)
        self.classifier = densenet.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.post_relu(self.features(x))
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


@functools.cache
def seeded(name: str) -> nn.Module:
    """Seeded random weights (cached: the engine never changes a model, tests share it)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=4).eval()
    # Random BN statistics, so that batch norm is not the identity and ReLU masks are non-trivial; smaller
    # variances for EfficientNet, whose signal otherwise vanishes at random initialisation.
    var_scale = 0.1 if name.startswith("efficientnet") else 1.0
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(
                    (torch.rand(module.num_features, generator=generator) + 0.5) * var_scale
                )
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model


def not_in_place(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            module.inplace = False
    return clone


def reference_model(name: str, model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(reference copy without in-place ReLUs, its module whose output is our target map)``."""
    clone = not_in_place(model)
    if name == "densenet121":
        wrapper = DenseNetPostReLU(clone).eval()
        return wrapper, wrapper.post_relu
    if name == "resnet18":
        return clone, clone.layer4
    return clone, clone.features


def plain_layer_gradient(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Activations and d(sum_i logit_i[t_i])/dA by plain autograd with a hook of our own (float64 numpy)."""
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    score = logits[torch.arange(len(targets)), torch.tensor(targets)].sum()
    (grad,) = torch.autograd.grad(score, store["a"])
    return store["a"].detach().double().numpy(), grad.double().numpy()


def gradcam_plus_plus_alphas_eq19(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Eq. 19 (Chattopadhyay et al. 2018), exponential score: alpha = g^2 / (2 g^2 + sum_ab A g^3), 0 where
    the denominator is 0."""
    denominator = 2 * g**2 + a.sum(axis=(2, 3), keepdims=True) * g**3
    safe = np.where(denominator == 0, 1.0, denominator)
    return np.where(denominator == 0, 0.0, g**2 / safe)


def gradcam_plus_plus_weights_eq19(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """w_k = sum_ab alpha * ReLU(g)."""
    return (gradcam_plus_plus_alphas_eq19(a, g) * np.maximum(g, 0)).sum(axis=(2, 3))


def gradcam_plus_plus_eq19(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The Grad-CAM++ map ReLU(sum_k w_k A_k)."""
    return np.maximum(np.einsum("nk,nkhw->nhw", gradcam_plus_plus_weights_eq19(a, g), a), 0)


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """Elementwise ``rtol`` plus an absolute floor of ``rtol`` times the reference's largest magnitude."""
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert scale > 0, "degenerate reference (all zero)"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_b0"])
def test_cams_and_guided_backprop_match_references(name: str, x: torch.Tensor) -> None:
    # The method definitions, on the same arithmetic as the references (no batch-norm folding: folding
    # reorders float32 rounding; tests/test_folding.py bounds what that changes against float64).
    model = seeded(name)
    explanation = Explainer(model, fold_batchnorm=False).explain(x, target=TARGETS)
    assert explanation.target_layer == {"resnet18": "layer4", "densenet121": "features"}.get(name, "features")
    ref_model, ref_layer = reference_model(name, model)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # captum: "input did not require gradients", ...
        gradcam = LayerGradCam(ref_model, ref_layer).attribute(x, target=TARGETS, relu_attributions=True)
        guided = GuidedBackprop(ref_model).attribute(x.clone(), target=TARGETS)
    assert_close(explanation.raw["gradcam"], gradcam[:, 0].detach().numpy())

    a, g = plain_layer_gradient(ref_model, ref_layer, x, TARGETS)
    assert_close(explanation.raw["gradcam++"], gradcam_plus_plus_eq19(a, g))

    assert_close(explanation.raw["guided_backprop"], guided.detach().numpy())
    upsampled = F.interpolate(gradcam.detach(), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    assert_close(explanation.raw["guided_gradcam"], (guided * upsampled).detach().numpy())

    one_pass = not any("two backward passes" in n for n in explanation.notes)
    assert one_pass, explanation.notes
    for m in METHODS:
        maps, flat = explanation.maps[m], explanation.flat[m]
        assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
        assert not flat[0]  # image 0 has real maps for every method
        raw = explanation.raw[m].reshape(2, -1)
        np.testing.assert_array_equal(
            flat, (raw.max(axis=1) == raw.min(axis=1)) | (np.abs(raw).max(axis=1) == 0)
        )
        for i in range(2):
            assert maps[i].max() == (0.0 if flat[i] else pytest.approx(1.0)) and maps[i].min() >= 0.0


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_details_match_captum_layer_activations_and_gradients(name: str, x: torch.Tensor) -> None:
    # The engine as users run it (batch-norm folding on for resnet18; the target layer keeps its exact
    # output) against captum's LayerActivation and layer gradients (LayerGradientXActivation without the
    # multiplication by the activations) on the same post-ReLU tensor of a copy without in-place ReLUs.
    model = seeded(name)
    e = Explainer(model).explain(x, target=TARGETS, methods=["gradcam"], details=True)
    ref_model, ref_layer = reference_model(name, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a = LayerActivation(ref_model, ref_layer).attribute(x).detach().double().numpy()
        g = LayerGradientXActivation(ref_model, ref_layer, multiply_by_inputs=False).attribute(
            x, target=TARGETS
        ).detach().double().numpy()
    d = e.details
    assert d["activations"].shape == d["gradients"].shape == a.shape and a.shape[0] == 2
    assert d["gradcam_weights"].shape == d["gradcam++_weights"].shape == a.shape[:2]
    assert_close(d["activations"], a)
    assert_close(d["gradients"], g)
    assert_close(d["gradcam_weights"], g.mean(axis=(2, 3)))
    assert_close(d["gradcam++_weights"], gradcam_plus_plus_weights_eq19(a, g))
    # Alphas: 1 / (2 + S g) for g != 0, ill-conditioned where 2 + S g is near 0 (float32 against float64);
    # compared where the denominator is not within 1e-3 of cancelling, which must be nearly everywhere.
    reference = gradcam_plus_plus_alphas_eq19(a, g)
    well_posed = np.abs(2 * g**2 + a.sum(axis=(2, 3), keepdims=True) * g**3) > 1e-3 * 2 * g**2
    assert well_posed.mean() > 0.999
    assert_close(np.where(well_posed, d["gradcam++_alphas"], 0.0), np.where(well_posed, reference, 0.0))
    # The map is the documented function of these quantities.
    cam = np.maximum(np.einsum("nk,nkhw->nhw", d["gradcam_weights"], d["activations"]), 0)
    assert_close(e.raw["gradcam"], cam, rtol=1e-5)


def test_guided_backprop_differs_from_the_plain_gradient_on_relu_networks(x: torch.Tensor) -> None:
    # Guards against a guided rule that silently does nothing (e.g. missing the functional DenseNet ReLU
    # would still differ somewhere, but a no-op rule would give exactly the plain gradient).
    model = seeded("densenet121")
    e = Explainer(model).explain(x, target=TARGETS, methods=["guided_backprop"])
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    (plain,) = torch.autograd.grad(logits[torch.arange(2), torch.tensor(TARGETS)].sum(), xr)
    assert np.abs(e.raw["guided_backprop"] - plain.numpy()).max() > 0.1 * np.abs(plain.numpy()).max()


def test_densenet_functional_relu_is_guided(x: torch.Tensor) -> None:
    # Reference that guides every ReLU module but NOT the functional F.relu of DenseNet.forward: a wrapper
    # whose post-ReLU is an opaque function captum cannot hook. Our result must equal the fully guided
    # reference (previous test) and differ from this partial one.
    model = seeded("densenet121")
    clone = not_in_place(model)

    class Unhooked(DenseNetPostReLU):
        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            out = torch.clamp(self.features(inp), min=0)  # not a ReLU call: neither we nor captum guide it
            return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        partial = GuidedBackprop(Unhooked(clone).eval()).attribute(x.clone(), target=TARGETS).numpy()
    ours = Explainer(model).explain(x, target=TARGETS, methods=["guided_backprop"]).raw["guided_backprop"]
    assert np.abs(ours - partial).max() > 1e-3 * np.abs(partial).max()


def test_efficientnet_guided_backprop_is_the_plain_gradient_and_says_so(x: torch.Tensor) -> None:
    model = seeded("efficientnet_b0")
    e = Explainer(model, fold_batchnorm=False).explain(x, target=TARGETS, methods=["guided_backprop"])
    xr = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(xr)[torch.arange(2), torch.tensor(TARGETS)].sum(), xr)
    assert_close(e.raw["guided_backprop"], plain.numpy())
    assert any("no ReLU" in n for n in e.notes)
    assert any("SiLU x49" in n for n in e.notes)


def test_table_names_for_other_torchvision_families() -> None:
    torch.manual_seed(0)
    assert Explainer(torchvision.models.mobilenet_v3_small(weights=None)).target_layer_name == "features"
    assert Explainer(torchvision.models.resnet18(weights=None)).target_layer_name == "layer4"
    # An unknown family: the fallback finds the last 4-D map that is not a pooling output, by a dry run.
    vgg_like = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 2),
    ).eval()
    explainer = Explainer(vgg_like)
    assert explainer.target_layer_name == "4"
    e = explainer.explain(torch.randn(1, 3, 16, 16))
    # A ReLU in the head runs after the target: two backward passes, both correct.
    assert any("two backward passes" in n for n in e.notes)


def test_chestcovnet_architecture_declared_target_relu6_guided_one_pass(x: torch.Tensor) -> None:
    # Our EfficientNet-Lite0 (models/) declares default_target_layer = "head_act" (the post-ReLU6 map feeding
    # the pooling) and uses ReLU6 everywhere: Grad-CAM == captum on that layer, one backward pass, and guided
    # backprop == the guided rule applied by independent tensor hooks on every ReLU6 output (captum's
    # GuidedBackprop only hooks nn.ReLU, so it cannot serve as the reference here).
    from models.efficientnet_lite import EfficientNetLite0

    torch.manual_seed(0)
    model = EfficientNetLite0(num_classes=3).eval()
    e = Explainer(model).explain(x, target=[2, 0])
    assert e.target_layer == "head_act"
    assert not any("two backward passes" in n or "non-ReLU" in n for n in e.notes), e.notes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        gradcam = LayerGradCam(model, model.head_act).attribute(x, target=[2, 0], relu_attributions=True)
    assert_close(e.raw["gradcam"], gradcam[:, 0].detach().numpy())

    # Reference guided backprop: every ReLU6 module's output gets a tensor hook that keeps the positive
    # part of the incoming gradient (autograd then applies the plain 0 < x < 6 mask): exactly the rule.
    handles = []

    def clamp_grad(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        out.register_hook(lambda g: g.clamp(min=0))

    for module in model.modules():
        if isinstance(module, nn.ReLU6):
            handles.append(module.register_forward_hook(clamp_grad))
    try:
        xr = x.clone().requires_grad_(True)
        (reference,) = torch.autograd.grad(model(xr)[torch.arange(2), torch.tensor([2, 0])].sum(), xr)
    finally:
        for handle in handles:
            handle.remove()
    assert_close(e.raw["guided_backprop"], reference.numpy())
