"""Stability, faithfulness, agreement and Integrated Gradients on toy models with known answers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from xai.preprocessing import Preprocessing, prepare
from xai.trust import metrics
from xai.trust.agreement import agreement, agreement_for_maps, boxes_to_mask, mask_from_upload
from xai.trust.faithfulness import faithfulness, make_baseline
from xai.trust.integrated_gradients import black_baseline, integrated_gradients, trapezoid_weights
from xai.trust.stability import DEFAULT_PERTURBATIONS, Perturbation, stability

PRE = Preprocessing(input_size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class ToyCNN(nn.Module):
    default_target_layer = "act2"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)
        with torch.no_grad():
            self.fc.weight[1].abs_()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


def _radiograph_like(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth gray picture in [0, 1] with asymmetric structure (so misalignment shows)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.2 + 0.5 * np.exp(-(((xx - 0.3 * w) / (0.12 * w)) ** 2 + ((yy - 0.4 * h) / (0.2 * h)) ** 2))
    img += 0.3 * np.exp(-(((xx - 0.75 * w) / (0.08 * w)) ** 2 + ((yy - 0.7 * h) / (0.1 * h)) ** 2))
    return np.clip(img, 0, 1).astype(np.float32)


def image_map(_module: nn.Module, x: torch.Tensor, _target: int) -> np.ndarray:
    """A weight-free 'map': the prepared image itself (shifted to be non-negative)."""
    v = x[0, 0].detach().numpy()
    return v - v.min()


# ---------------------------------------------------------------- stability


def test_perturbation_align_inverts_the_geometric_change() -> None:
    img = _radiograph_like(60, 80)
    big = Perturbation("big", shift=(0.08, -0.05), angle=8.0, scale=1.1)
    changed = big.apply(img, np.random.default_rng(0))
    aligned, valid = big.align(changed)
    assert valid.mean() > 0.6
    interior = valid & np.pad(np.ones((56, 76), bool), 2)
    assert np.abs(aligned - img)[interior].max() < 0.03  # bilinear twice: small interpolation error only
    assert np.abs(changed - img)[interior].max() > 0.2  # without the inverse the maps would not line up
    identity = Perturbation("none")
    assert np.array_equal(identity.align(img)[0], img)


def test_default_perturbations_are_the_stated_ones() -> None:
    names = [p.name for p in DEFAULT_PERTURBATIONS]
    assert len(names) == 9
    assert {p.gain for p in DEFAULT_PERTURBATIONS} == {1.0, 0.95, 1.05}
    assert {p.angle for p in DEFAULT_PERTURBATIONS} == {0.0, -3.0, 3.0}
    assert {p.scale for p in DEFAULT_PERTURBATIONS} == {1.0, 0.98, 1.02}
    assert {p.shift for p in DEFAULT_PERTURBATIONS} == {(0.0, 0.0), (-0.02, -0.02), (0.02, 0.02)}


def test_weight_free_map_is_stable_once_aligned() -> None:
    calls: list[float] = []
    res = stability(ToyCNN(), _radiograph_like(), preprocessing=PRE, methods=(), target=1,
                    extra={"image": image_map}, progress=lambda f, _m: calls.append(f))
    by_name = {c.name: c for c in res.comparisons}
    # the image map follows the image: a gain keeps every rank; once aligned, geometric changes agree closely
    for name in ("intensity ×0.95", "intensity ×1.05"):
        assert by_name[name].spearman["image"] == pytest.approx(1.0, abs=1e-3)  # float rounding ties
    for p in DEFAULT_PERTURBATIONS:
        if p.geometric:
            c = by_name[p.name]
            assert c.spearman["image"] > 0.93 and c.ssim["image"] > 0.9 and c.iou_top10["image"] > 0.9, p.name
    # the noise is in the image map itself: lower, not lost
    assert 0.7 < by_name["noise σ=0.02"].spearman["image"] < 1.0
    summary = res.summary()["image"]
    assert summary["spearman_worst"] == min(c.spearman["image"] for c in res.comparisons)
    assert len(res.comparisons) == 9 and calls[-1] == 1.0
    assert [c.name for c in res.comparisons] == [p.name for p in DEFAULT_PERTURBATIONS]


def test_flat_reference_map_gives_undefined_stability() -> None:
    def zeros(_m: nn.Module, x: torch.Tensor, _t: int) -> np.ndarray:
        return np.zeros(x.shape[-2:])

    res = stability(ToyCNN(), _radiograph_like(), preprocessing=PRE, methods=(), target=1, extra={"zeros": zeros},
                    perturbations=DEFAULT_PERTURBATIONS[:2])
    assert all(math.isnan(v) for v in res.summary()["zeros"].values())
    assert any("flat map" in note for note in res.notes)


def test_second_checkpoint_identical_vs_other_seed() -> None:
    model = ToyCNN(seed=0)
    same = stability(model, _radiograph_like(), preprocessing=PRE, methods=("gradcam",), target=1,
                     perturbations=(), second_model=copy.deepcopy(model))
    assert same.checkpoint is not None
    assert same.checkpoint.spearman["gradcam"] == pytest.approx(1.0)
    assert same.checkpoint.ssim["gradcam"] == pytest.approx(1.0)
    assert same.checkpoint.iou_top10["gradcam"] == pytest.approx(1.0)
    other = stability(model, _radiograph_like(), preprocessing=PRE, methods=("gradcam",), target=1,
                      perturbations=(), second_model=ToyCNN(seed=1))
    assert other.checkpoint is not None and other.checkpoint.spearman["gradcam"] < 0.99
    assert "spearman_checkpoint" in other.summary()["gradcam"]


def test_stability_reference_maps_match_own_reference() -> None:
    """Passing the pipeline's maps as reference gives the same figures as computing them."""
    model, img = ToyCNN(), _radiograph_like()
    pert = (DEFAULT_PERTURBATIONS[1], DEFAULT_PERTURBATIONS[7])
    own = stability(model, img, preprocessing=PRE, methods=("gradcam",), target=1, perturbations=pert)
    from xai.engine import Explainer

    x, geometry = prepare(img, PRE)
    ref = {"gradcam": geometry.to_original(Explainer(model).explain(x, target=1, methods=("gradcam",)).maps["gradcam"][0])}
    given = stability(model, img, preprocessing=PRE, target=1, perturbations=pert, reference_maps=ref)
    for a, b in zip(own.comparisons, given.comparisons, strict=True):
        assert a.spearman["gradcam"] == pytest.approx(b.spearman["gradcam"], abs=1e-6)


# ---------------------------------------------------------------- faithfulness


class QuadrantModel(nn.Module):
    """Logit of class 1 = 20 * (mean of channel 0 over the top-left 8x8 quadrant - 0.5); class 0 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 20.0 * (x[:, 0, :8, :8].mean(dim=(1, 2)) - 0.5)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_deletion_insertion_hand_computed() -> None:
    x = torch.zeros(1, 3, 16, 16)
    x[:, :, :8, :8] = 1.0  # mean 0.25: the "mean" baseline is 0.25 everywhere
    good = np.zeros((16, 16))
    good[:8, :8] = 1.0
    bad = 1.0 - good
    res = faithfulness(QuadrantModel(), x, {"good": good, "bad": bad}, target=1, baseline="mean", steps=4)
    hi, lo = _sigmoid(10.0), _sigmoid(-5.0)
    g, b = res.curves["good"], res.curves["bad"]
    np.testing.assert_allclose(g.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(g.deletion, [hi, lo, lo, lo, lo], rtol=1e-5)
    np.testing.assert_allclose(g.insertion, [lo, hi, hi, hi, hi], rtol=1e-5)
    np.testing.assert_allclose(b.deletion, [hi, hi, hi, hi, lo], rtol=1e-5)
    np.testing.assert_allclose(b.insertion, [lo, lo, lo, lo, hi], rtol=1e-5)
    assert g.deletion_auc == pytest.approx(0.25 * ((hi + lo) / 2 + 3 * lo), rel=1e-5)
    assert g.insertion_auc > b.insertion_auc and g.deletion_auc < b.deletion_auc
    assert "mean" in res.baseline
    # the two ends of every curve, reported beside the AUCs: the film scores hi, the mean baseline lo
    assert res.score == pytest.approx(hi, rel=1e-5) and res.baseline_score == pytest.approx(lo, rel=1e-5)
    assert {r["P on the film"] for r in res.table()} == {round(hi, 3)}
    assert {r["P on the baseline"] for r in res.table()} == {round(lo, 3)}


def test_baselines_are_stated_and_shaped() -> None:
    x = torch.rand(1, 3, 32, 32)
    for kind in ("blur", "mean"):
        base, text = make_baseline(x, kind)
        assert base.shape == x.shape and text
    blurred, _ = make_baseline(x, "blur")
    assert blurred.std() < x.std()  # detail removed
    black, _ = make_baseline(x, "black", mean=PRE.mean, std=PRE.std)
    assert torch.allclose(black, prepare(np.zeros((20, 30), np.float32), PRE)[0])
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline(x, "purple")


# ---------------------------------------------------------------- agreement


def test_agreement_hand_computed() -> None:
    heat = np.zeros((10, 12))
    heat[2:4, 3:6] = 1.0
    heat[8, 10] = 0.5
    mask = boxes_to_mask([(3, 2, 3, 3)], heat.shape)  # x 3..5, y 2..4: 9 pixels
    res = agreement("toy", heat, mask)
    assert res.hit is True
    assert res.energy_inside == pytest.approx(6.0 / 6.5)
    # Otsu keeps the 6 hot pixels (0.5 -> 127 falls at/below the threshold? check against the metric)
    seg = metrics.otsu_mask(heat)
    assert res.iou_otsu == pytest.approx(np.logical_and(seg, mask).sum() / np.logical_or(seg, mask).sum())
    assert seg[2:4, 3:6].all()


def test_agreement_on_the_original_grid_through_geometry() -> None:
    img = _radiograph_like(40, 60)  # letterboxed: content rows offset in the model grid
    _, geometry = prepare(img, PRE)
    (u, v), = geometry.to_model(np.array([[45.0, 10.0]]))
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    model_map = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / 2.0)
    near = boxes_to_mask([(40, 5, 10, 10)], img.shape)
    far = boxes_to_mask([(5, 25, 10, 10)], img.shape)
    hit = agreement_for_maps({"m": model_map}, near, geometry=geometry)["m"]
    miss = agreement_for_maps({"m": model_map}, far, geometry=geometry)["m"]
    assert hit.hit is True and miss.hit is False
    assert hit.energy_inside > 0.5 > miss.energy_inside


def test_mask_upload_checks() -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, 2, 1] = 255
    m = mask_from_upload(rgb, (4, 5))
    assert m.sum() == 1 and m[1, 2]
    with pytest.raises(ValueError, match="differs"):
        mask_from_upload(rgb, (5, 4))
    with pytest.raises(ValueError, match="empty"):
        mask_from_upload(np.zeros((4, 5)), (4, 5))


# ---------------------------------------------------------------- integrated gradients


class LinearModel(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x * self.w).flatten(1).sum(1)
        return torch.stack([-z, z], dim=1)


def test_trapezoid_weights() -> None:
    np.testing.assert_allclose(trapezoid_weights(4), [0.125, 0.25, 0.25, 0.25, 0.125])
    assert trapezoid_weights(7).sum() == pytest.approx(1.0)


def test_ig_linear_model_is_exact() -> None:
    torch.manual_seed(0)
    w = torch.randn(1, 3, 8, 8)
    x = torch.rand(1, 3, 8, 8)
    res = integrated_gradients(LinearModel(w), x, target=1, baseline="zero", steps=3)
    np.testing.assert_allclose(res.attributions, (x * w)[0].numpy(), rtol=1e-5, atol=1e-6)
    assert res.delta == pytest.approx(0.0, abs=1e-4)
    assert res.map.shape == (8, 8) and res.map.max() == pytest.approx(1.0)


def test_ig_completeness_and_captum_reference_on_relu_net() -> None:
    from captum.attr import IntegratedGradients

    model = ToyCNN()
    x, _ = prepare(_radiograph_like(), PRE)
    grads_before = [p.grad for p in model.parameters()]
    res = integrated_gradients(model, x, target=1, baseline="zero", steps=64, batch_size=20)
    gap = res.score - res.baseline_score
    assert abs(gap) > 1e-3
    assert abs(res.delta) < 0.02 * abs(gap)  # sum of attributions = F(x) - F(baseline)
    assert res.attributions.sum() == pytest.approx(gap, rel=0.02)
    ref = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=1, n_steps=65,
                                               method="riemann_trapezoid")
    np.testing.assert_allclose(res.attributions, ref[0].detach().numpy(), rtol=1e-3, atol=1e-5)
    assert [p.grad for p in model.parameters()] == grads_before  # no parameter gradients left
    assert all(not m._forward_hooks for m in model.modules())


def test_ig_black_baseline_from_card() -> None:
    class Card:
        preprocessing = PRE

    class Loaded:
        module = ToyCNN()
        card = Card()

    x, _ = prepare(_radiograph_like(), PRE)
    res = integrated_gradients(Loaded(), x, steps=8)
    assert res.baseline == "black image"
    black = black_baseline(x, PRE.mean, PRE.std)
    with torch.no_grad():
        assert res.baseline_score == pytest.approx(float(Loaded.module(black)[0, res.target]), rel=1e-5)
    with pytest.raises(ValueError, match="baseline"):
        integrated_gradients(Loaded(), x, baseline="grey")


# ---------------------------------------------------------------- the Trust page (bundled model, headless)


def _agreement_table(at: object) -> object:
    """The box-agreement table of the Trust page (under "Numbers for modelers", tab "Agreement")."""
    tables = [df.value for df in at.dataframe if "pointing hit" in df.value.columns]  # type: ignore[attr-defined]
    assert len(tables) == 1, [list(df.value.columns) for df in at.dataframe]  # type: ignore[attr-defined]
    return tables[0]


def test_trust_page_agreement_and_integrated_gradients() -> None:
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from pages._explanations import explanation_service
    from pages._models import default_model
    from pages._state import Key
    from xai.engine import METHODS
    app = Path(__file__).resolve().parents[1] / "app.py"
    at = AppTest.from_file(str(app), default_timeout=300)
    at.run()
    at.switch_page("pages/trust.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("not for diagnosis" in w.value for w in at.warning)  # the disclaimer banner
    box = at.selectbox(key="trust_sample")
    box.set_value(next(o for o in box.options if "NIH" in o))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not any("pointing hit" in df.value.columns for df in at.dataframe)  # no finding marked: no table
    # a box typed on the keyboard (x, y, w, h in original pixels) is scored against every map at once
    at.checkbox(key="box_typed").check()
    for name, value in {"box_x": 60, "box_y": 60, "box_w": 200, "box_h": 200}.items():
        at.number_input(key=name).set_value(value)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = _agreement_table(at)
    assert list(table["method"]) == ["Grad-CAM", "Grad-CAM++", "Guided Backprop", "Guided Grad-CAM"]
    # independent check: the same maps from a direct engine call, scored by hand against the same box
    image = at.session_state[Key.IMAGE]
    (target,) = {k[3] for k in at.session_state[Key.STORES]["trust"] if k[0] == "agreement"}
    direct = explanation_service().run_engine(image.radiograph, default_model(), target, tuple(METHODS), count=False)
    inside = np.zeros(image.radiograph.pixels.shape, dtype=bool)
    inside[60:260, 60:260] = True
    for row, heat in zip(table.itertuples(index=False), direct.maps.values(), strict=True):
        heat = np.asarray(heat, dtype=np.float64)
        hit = None if np.ptp(heat) == 0 else bool(inside.flat[int(np.argmax(heat))])
        assert row[1] == {True: "hit", False: "miss", None: "miss"}[hit], row
        positive = np.clip(heat, 0, None)
        share = positive[inside].sum() / positive.sum() if positive.sum() > 0 else 0.0
        assert row[2] == pytest.approx(share, abs=1.5e-3), row  # the page rounds to 3 decimals
        assert 0 <= row[3] <= 1
    at.slider(key="ig_steps").set_value(8)
    at.button(key="run_ig").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("completeness error" in c.value for c in at.caption)
    assert "Integrated Gradients" in list(_agreement_table(at)["method"])  # IG joins the agreement table
