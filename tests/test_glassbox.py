"""xai.glassbox: the steps behind each map, checked against independent computations.

The real bundled ChestCOVNet on real radiographs (the bundled samples): every step the "How the maps are
made" page plots is recomputed here by hand in numpy / OpenCV / scipy from the engine's ``details`` and
must give the engine's own maps. The plain input gradient is checked against captum's ``Saliency`` and,
with the guided rule, on a toy network whose gradients are worked out by hand.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from captum.attr import Saliency
from scipy import stats
from torch import nn

import models
from xai import glassbox
from xai.engine import Explainer
from xai.preprocessing import prepare
from xai.radiograph import load_radiograph

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def bundle() -> models.LoadedModel:
    return models.load("chestcovnet")


@pytest.fixture(scope="module")
def film(bundle: models.LoadedModel) -> torch.Tensor:
    x, _geometry = prepare(load_radiograph(SAMPLES / "covid19_mhh_pa.jpg"), bundle.card.preprocessing)
    return x


@pytest.fixture(scope="module", params=[1, 0], ids=["covid19", "non_covid"])
def explained(request: pytest.FixtureRequest, bundle: models.LoadedModel, film: torch.Tensor):
    """(explanation with details, target) for both classes: the predicted one and the other."""
    target = request.param
    e = Explainer(bundle.module, target_layer=bundle.card.target_layer).explain(film, target=target, details=True)
    return e, target


def upsample(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling with half-pixel centres (OpenCV), the same rule as align_corners=False."""
    return cv2.resize(raw.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def by_max(up: np.ndarray) -> np.ndarray:
    return up / up.max() if up.max() > 0 else np.zeros_like(up)


# ------------------------------------------------------------------------------------- details
def test_details_are_required_and_checked(bundle: models.LoadedModel, film: torch.Tensor) -> None:
    plain = Explainer(bundle.module, target_layer=bundle.card.target_layer).explain(film, methods=("gradcam",))
    with pytest.raises(ValueError, match="details=True"):
        glassbox.image_details(plain)


def test_details_index_out_of_range_is_named(explained) -> None:
    e, _ = explained
    with pytest.raises(ValueError, match="out of range"):
        glassbox.image_details(e, index=1)


# ---------------------------------------------------------------------------------------- Grad-CAM
def test_gradcam_steps_rebuilt_by_hand_give_the_engine_map(explained) -> None:
    e, _ = explained
    d = glassbox.image_details(e)
    a = np.asarray(d.activations, np.float64)
    g = np.asarray(d.gradients, np.float64)
    w = g.mean(axis=(1, 2))
    np.testing.assert_allclose(d.gradcam_weights, w, rtol=1e-5, atol=1e-12)
    weighted = np.einsum("k,khw->hw", w, a)
    relu = np.maximum(weighted, 0)
    np.testing.assert_allclose(e.raw["gradcam"][0], relu, rtol=1e-4, atol=1e-7)
    display = by_max(upsample(relu, (224, 224)))
    np.testing.assert_allclose(e.maps["gradcam"][0], display, atol=2e-5)

    steps = glassbox.cam_steps(d.activations, d.gradcam_weights, (224, 224))
    np.testing.assert_allclose(steps.weighted_sum, weighted, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(steps.relu, relu, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(steps.display, display, atol=2e-5)
    np.testing.assert_allclose(steps.display, e.maps["gradcam"][0], atol=1e-6)
    assert steps.negative_share == pytest.approx(np.mean(weighted < 0))
    assert not steps.display.flags.writeable


def test_behind_pooling_and_a_linear_layer_the_gradient_is_the_classifier_weight(bundle, explained) -> None:
    """ChestCOVNet: head_act -> global average pool -> linear. So dS/dA_kab = W[c, k] / (h w) at every
    pixel: the Grad-CAM weights are the classifier's row (Grad-CAM = CAM, Zhou et al. 2016) and Grad-CAM++'s
    alpha is the same at every pixel of a channel -- what the page says about this model."""
    e, target = explained
    d = glassbox.image_details(e)
    h, w = d.feature_shape
    row = bundle.module.classifier.weight.detach().numpy()[target].astype(np.float64)
    np.testing.assert_allclose(np.asarray(d.gradients), np.broadcast_to((row / (h * w))[:, None, None], d.gradients.shape),
                               rtol=1e-5, atol=1e-10)
    assert d.uniform_gradient
    contrast = glassbox.plus_plus_contrast(d, (224, 224))
    assert np.all(contrast.alpha_spread <= 1e-6 * np.abs(contrast.alphas).max())


def test_top_channels_follow_the_weights(explained) -> None:
    e, _ = explained
    d = glassbox.image_details(e)
    w = np.asarray(d.gradcam_weights, np.float64)
    top = glassbox.top_channels(d.activations, d.gradcam_weights, k=6)
    assert [c.index for c in top] == list(np.argsort(-w, kind="stable")[:6])
    for c in top:
        assert c.weight == pytest.approx(w[c.index])
        assert c.contribution == pytest.approx(w[c.index] * float(np.mean(d.activations[c.index], dtype=np.float64)))
        np.testing.assert_array_equal(c.activation, d.activations[c.index])
    by_contribution = glassbox.top_channels(d.activations, d.gradcam_weights, k=6, by="contribution")
    contributions = w * np.asarray(d.activations, np.float64).mean(axis=(1, 2))
    assert [c.index for c in by_contribution] == list(np.argsort(-contributions, kind="stable")[:6])
    # the contributions add up to the mean of the weighted sum (before the ReLU)
    steps = glassbox.cam_steps(d.activations, d.gradcam_weights, (224, 224))
    assert contributions.sum() == pytest.approx(float(steps.weighted_sum.mean()), rel=1e-4)


# -------------------------------------------------------------------------------------- Grad-CAM++
def test_gradcam_plus_plus_alphas_and_map_by_hand(explained) -> None:
    e, _ = explained
    d = glassbox.image_details(e)
    a = np.asarray(d.activations, np.float64)
    g = np.asarray(d.gradients, np.float64)
    den = 2 * g**2 + a.sum(axis=(1, 2), keepdims=True) * g**3
    alpha = np.where(den != 0, g**2 / np.where(den != 0, den, 1.0), 0.0)
    np.testing.assert_allclose(d.alphas, alpha, rtol=1e-4, atol=1e-9)
    w_pp = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    np.testing.assert_allclose(d.gradcam_pp_weights, w_pp, rtol=1e-4, atol=1e-9)
    display = by_max(upsample(np.maximum(np.einsum("k,khw->hw", w_pp, a), 0), (224, 224)))
    np.testing.assert_allclose(e.maps["gradcam++"][0], display, atol=2e-5)

    c = glassbox.plus_plus_contrast(d, (224, 224), k=4)
    np.testing.assert_allclose(c.gradcam_pp.display, e.maps["gradcam++"][0], atol=1e-6)
    np.testing.assert_allclose(c.gradcam.display, e.maps["gradcam"][0], atol=1e-6)
    # per-pixel weights sum to each method's channel weight
    shown = list(c.channels)
    np.testing.assert_allclose(c.pp_pixel_weights.sum(axis=(1, 2)), w_pp[shown], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(c.cam_pixel_weights.sum(axis=(1, 2)), g.mean(axis=(1, 2))[shown], rtol=1e-4, atol=1e-10)
    assert c.dropped_channels == int(np.sum((w_pp == 0) & (g.mean(axis=(1, 2)) != 0)))
    assert c.weight_spearman == pytest.approx(stats.spearmanr(g.mean(axis=(1, 2)), w_pp).statistic, abs=1e-6)


def test_where_the_two_cams_differ(explained) -> None:
    e, _ = explained
    c = glassbox.plus_plus_contrast(glassbox.image_details(e), (224, 224))
    diff = e.maps["gradcam"][0].astype(np.float32) - e.maps["gradcam++"][0].astype(np.float32)
    np.testing.assert_allclose(c.difference, diff, atol=2e-6)
    # the mask is |Grad-CAM - Grad-CAM++| >= DIFFER_LEVEL (pixels within rounding of the level aside)
    clear = np.abs(np.abs(diff) - glassbox.DIFFER_LEVEL) > 1e-5
    np.testing.assert_array_equal(c.differ[clear], (np.abs(diff) >= glassbox.DIFFER_LEVEL)[clear])
    assert c.differ_share == pytest.approx(np.mean(np.abs(diff) >= glassbox.DIFFER_LEVEL), abs=1e-4)
    assert c.map_spearman == pytest.approx(
        stats.spearmanr(e.maps["gradcam"][0].ravel(), e.maps["gradcam++"][0].ravel()).statistic, abs=1e-6)


@pytest.mark.parametrize("sample", ["covid19_mhh_pa.jpg", "non_covid_nih_pa.png"])
def test_the_rejected_class_parts_the_two_cams_more_than_the_predicted_one(bundle, sample) -> None:
    """Explaining the class the model does NOT predict, more of the weighted sum is negative: Grad-CAM keeps
    only its few positive cells, Grad-CAM++ drops the negative-gradient channels and lights a wider area.
    So on the same film the two maps disagree on more pixels and rank them less alike than for the
    predicted class. The predicted class is read from the model's own logits."""
    x, _ = prepare(load_radiograph(SAMPLES / sample), bundle.card.preprocessing)
    with torch.no_grad():
        predicted = int(bundle.module(x).argmax(dim=1))
    explainer = Explainer(bundle.module, target_layer=bundle.card.target_layer)
    contrast = {t: glassbox.plus_plus_contrast(glassbox.image_details(explainer.explain(x, target=t, details=True)),
                                               (224, 224)) for t in (0, 1)}
    kept, rejected = contrast[predicted], contrast[1 - predicted]
    assert rejected.gradcam.negative_share > kept.gradcam.negative_share
    assert rejected.differ_share > kept.differ_share
    assert rejected.map_spearman < kept.map_spearman


# ------------------------------------------------------------------------------------------ guided
class ToyNet(nn.Module):
    """x (1 channel) -> 1x1 conv to 2 channels with weights (1, 2) -> ReLU -> mean -> linear (1, -1).

    S = mean_p [relu(x_p) - relu(2 x_p)]. Plain: dS/dx_p = (1 - 2) / P = -1/P where x_p > 0. Guided: the
    second channel's incoming gradient (-1/P) is negative and is blocked at its ReLU, the first (+1/P)
    passes: dS/dx_p = +1/P where x_p > 0. Both are 0 where x_p < 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def test_plain_and_guided_gradients_on_a_toy_network_by_hand() -> None:
    net = ToyNet().eval()
    x = torch.tensor([[[[1.0, -2.0], [3.0, -0.5]]]])
    positive = (x[0] > 0).numpy()
    plain = glassbox.plain_input_gradient(net, x, 0)
    np.testing.assert_allclose(plain[0], np.where(positive, -0.25, 0.0))
    guided = Explainer(net, target_layer="act").explain(x, target=0).raw["guided_backprop"]
    np.testing.assert_allclose(guided[0], np.where(positive, 0.25, 0.0))
    c = glassbox.guided_contrast(plain[0], guided[0])
    assert c.plain_negative == 0.5 and c.guided_negative == 0.0
    assert c.plain_zero == 0.5 and c.guided_zero == 0.5


def test_a_spatially_varying_gradient_is_not_called_uniform() -> None:
    """A head that weights the map's cells differently (flatten + linear): the gradient varies per cell."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).eval()
    e = Explainer(net, target_layer="1").explain(torch.randn(1, 1, 2, 2), target=0, details=True)
    d = glassbox.image_details(e)
    assert not d.uniform_gradient
    weight = net[3].weight.detach().numpy()[0].reshape(2, 2, 2)  # dS/dA = the linear row, cell by cell
    np.testing.assert_allclose(d.gradients, weight, rtol=1e-6)


class FunctionalNet(nn.Module):
    """One ReLU module used twice, one F.relu call and one ReLU6: four places for the guided rule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.act = nn.ReLU()
        self.six = nn.ReLU6()
        self.fc = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.six(torch.nn.functional.relu(self.act(self.act(self.conv(x)))))
        return self.fc(torch.sigmoid(y).mean(dim=(2, 3)))


def test_guided_relus_are_counted_however_they_are_written(bundle, film) -> None:
    report = glassbox.guided_relus(FunctionalNet().eval(), torch.randn(1, 1, 4, 4))
    assert report.relus == 4 and dict(report.other_activations) == {"sigmoid": 1}
    # ChestCOVNet: every ReLU6 module call of one forward pass (counted here with forward hooks)
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in bundle.module.modules()
               if isinstance(m, nn.ReLU6)]
    try:
        with torch.no_grad():
            bundle.module(film)
    finally:
        for h in handles:
            h.remove()
    assert glassbox.guided_relus(bundle.module, film).relus == len(calls) > 10
    for m in bundle.module.modules():
        assert not m._forward_hooks


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
    }


def test_plain_gradient_matches_captum_and_leaves_the_model_as_it_was(bundle, film) -> None:
    model = bundle.module
    before = snapshot(model)
    x = film.clone()
    plain = glassbox.plain_input_gradient(model, x, 1)
    assert not plain.flags.writeable and plain.shape == tuple(film.shape)
    after = snapshot(model)
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert before["requires_grad"] == after["requires_grad"] and before["training"] == after["training"]
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, film) and not x.requires_grad and x.grad is None

    reference = Saliency(model).attribute(film.clone().requires_grad_(True), target=1, abs=False)
    for p in model.parameters():  # captum leaves .grad on parameters: clean up after the reference
        p.grad = None
    np.testing.assert_allclose(plain, reference.detach().numpy(), rtol=1e-4, atol=1e-7 * float(np.abs(plain).max()))


def test_plain_gradient_refuses_training_mode_and_bad_targets(bundle, film) -> None:
    net = ToyNet().train()
    with pytest.raises(ValueError, match="training mode"):
        glassbox.plain_input_gradient(net, torch.ones(1, 1, 2, 2), 0)
    with pytest.raises(ValueError, match="out of range"):
        glassbox.plain_input_gradient(bundle.module, film, 5)


def test_guided_beside_plain_and_guided_gradcam_on_a_real_film(bundle, film, explained) -> None:
    e, target = explained
    guided = np.asarray(e.raw["guided_backprop"][0])
    plain = glassbox.plain_input_gradient(bundle.module, film, target)[0]
    c = glassbox.guided_contrast(plain, guided)
    assert c.plain_negative == pytest.approx(np.mean(plain < 0))
    assert c.guided_negative == pytest.approx(np.mean(guided < 0))
    np.testing.assert_allclose(c.guided_display, e.maps["guided_backprop"][0], atol=1e-6)
    assert c.spearman == pytest.approx(
        stats.spearmanr(c.plain_display.ravel(), c.guided_display.ravel()).statistic, abs=1e-6)
    assert not np.allclose(plain, guided)  # the guided rule changes the gradient on the real network

    up = upsample(np.asarray(e.raw["gradcam"][0], np.float64), (224, 224))
    product, display = glassbox.guided_gradcam(guided, up)
    np.testing.assert_allclose(product, guided * up[None], rtol=1e-6)
    np.testing.assert_allclose(product, e.raw["guided_gradcam"][0], rtol=1e-4, atol=1e-5 * float(np.abs(product).max()))
    np.testing.assert_allclose(display, e.maps["guided_gradcam"][0], atol=1e-3)


# ----------------------------------------------------------------------------------- target layer
def test_target_layer_reason_names_the_rule(bundle) -> None:
    assert "model card" in glassbox.target_layer_reason(bundle.module, "head_act", "head_act")
    assert "declares" in glassbox.target_layer_reason(bundle.module, "head_act", None)
    from torchvision.models import resnet18

    assert "table for ResNet" in glassbox.target_layer_reason(resnet18(weights=None), "layer4")
    toy = ToyNet()
    assert "dry run" in glassbox.target_layer_reason(toy, "act")


def test_plain_gradient_beside_concurrent_explanations_on_one_shared_model(bundle, film) -> None:
    """Sessions share one model: plain gradients and engine calls with details in parallel threads give
    the same numbers as one at a time, and leave no hook behind."""
    from concurrent.futures import ThreadPoolExecutor

    explainer = Explainer(bundle.module, target_layer=bundle.card.target_layer)
    other = film.flip(-1)
    expected_plain = {t: glassbox.plain_input_gradient(bundle.module, film, t) for t in (0, 1)}
    expected_weights = explainer.explain(other, target=1, details=True).details["gradcam_weights"]

    def plain(t: int) -> np.ndarray:
        return glassbox.plain_input_gradient(bundle.module, film, t)

    def weights(_: int) -> np.ndarray:
        return np.asarray(explainer.explain(other, target=1, details=True).details["gradcam_weights"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        plains = [pool.submit(plain, t) for t in (0, 1, 0, 1)]
        details = [pool.submit(weights, i) for i in range(2)]
        for t, future in zip((0, 1, 0, 1), plains, strict=True):
            np.testing.assert_allclose(future.result(), expected_plain[t], rtol=1e-5, atol=1e-9)
        for future in details:
            np.testing.assert_allclose(future.result(), expected_weights, rtol=1e-6)
    for m in bundle.module.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
