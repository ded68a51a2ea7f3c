"""Cascading randomisation (Adebayo et al. 2018) on toy models whose outcome is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from xai.trust.sanity import GUIDED_NOTE, PASS_THRESHOLD, cascade_groups, sanity_check


class ToyCNN(nn.Module):
    """conv-ReLU-conv-ReLU-pool-linear; Grad-CAM target: the second ReLU."""

    default_target_layer = "act2"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


def _toy() -> ToyCNN:
    """Seeded toy whose class-1 evidence is positive (non-negative classifier row), so Grad-CAM is not flat."""
    torch.manual_seed(0)
    model = ToyCNN().eval()
    with torch.no_grad():
        model.fc.weight[1].abs_()
    return model


def _image(size: int = 32) -> torch.Tensor:
    """A structured picture: two bright discs on a gradient (edges the weight-free maps will find)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.3 * xx + np.exp(-((xx - 0.3) ** 2 + (yy - 0.35) ** 2) / 0.01)
    img += 0.8 * np.exp(-((xx - 0.7) ** 2 + (yy - 0.7) ** 2) / 0.02)
    t = torch.tensor(img, dtype=torch.float32)
    return torch.stack([t, t, t]).unsqueeze(0)


def input_itself(_module: nn.Module, x: torch.Tensor, _target: int) -> np.ndarray:
    """A 'map' that ignores the model: the image."""
    return x[0, 0].detach().numpy()


def edge_detector(_module: nn.Module, x: torch.Tensor, _target: int) -> np.ndarray:
    """A 'map' that ignores the model: Sobel gradient magnitude of the image."""
    img = x[0, 0].detach().numpy().astype(np.float64)
    return np.hypot(ndimage.sobel(img, 0), ndimage.sobel(img, 1))


def test_cascade_groups_top_first_and_grouped() -> None:
    groups = cascade_groups(_toy())
    assert [label for label, _ in groups] == ["fc", "conv2", "conv1"]
    from models.efficientnet_lite import EfficientNetLite0

    lite = cascade_groups(EfficientNetLite0(num_classes=2), max_steps=12)
    labels = [label for label, _ in lite]
    assert 8 <= len(lite) <= 12
    assert labels[0] == "classifier" and labels[-1].startswith("stem")
    owned = {id(m) for _, m in EfficientNetLite0(num_classes=2).named_modules()}  # other instance: disjoint
    grouped = [m for _, mods in lite for m in mods]
    assert len(grouped) == len({id(m) for m in grouped})  # every module once
    assert not owned & {id(m) for m in grouped}


def test_weight_free_maps_fail_and_gradcam_passes() -> None:
    model = _toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = sanity_check(
        model, _image(), methods=("gradcam",), target=1,
        extra={"image": input_itself, "edges": edge_detector}, seed=0,
    )
    # maps that ignore the weights are identical after every randomisation step: rank correlation 1
    for name in ("image", "edges"):
        assert result.spearman[name] == pytest.approx((1.0,) * 3)
        assert result.ssim[name] == pytest.approx((1.0,) * 3)
        assert result.passes[name] is False
    # Grad-CAM depends on the learned weights: after randomising everything it no longer ranks alike
    assert result.final_spearman["gradcam"] < PASS_THRESHOLD
    assert result.passes["gradcam"] is True
    assert result.steps == ("fc", "conv2", "conv1")
    assert result.first_change("edges") is None and result.first_change("gradcam") in result.steps
    rows = {row["method"]: row for row in result.table()}
    assert rows["edges"]["changes_at"] == "never" and rows["edges"]["verdict"] == "fails"
    assert rows["gradcam"]["verdict"] == "passes"
    assert result.maps["gradcam"].shape == (4, 32, 32)
    # the caller's model is untouched: same weights, no hooks, eval mode
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not model.training


def test_seeded_and_reproducible_and_progress_reported() -> None:
    calls: list[tuple[float, str]] = []
    a = sanity_check(_toy(), _image(), methods=("gradcam", "guided_backprop"), target=1, seed=3,
                     progress=lambda f, m: calls.append((f, m)))
    b = sanity_check(_toy(), _image(), methods=("gradcam", "guided_backprop"), target=1, seed=3)
    c = sanity_check(_toy(), _image(), methods=("gradcam", "guided_backprop"), target=1, seed=4)
    assert a.spearman == b.spearman
    assert a.spearman != c.spearman
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(calls) == 5
    assert GUIDED_NOTE in a.notes
    assert {row["method"] for row in a.table()} == {"gradcam", "guided_backprop"}


def test_flat_original_map_has_no_verdict() -> None:
    def zeros(_m: nn.Module, x: torch.Tensor, _t: int) -> np.ndarray:
        return np.zeros(x.shape[-2:])

    result = sanity_check(_toy(), _image(), methods=(), extra={"zeros": zeros})
    assert result.passes["zeros"] is None
    assert any("flat" in note for note in result.notes)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        sanity_check(_toy(), torch.zeros(2, 3, 32, 32), methods=("gradcam",))


def test_a_map_that_vanishes_after_randomisation_says_why_it_passes() -> None:
    """A map that turns flat once the model is random "passed" with no word why (Spearman 0 against a
    constant map), next to a note saying guided maps barely change: the verdict now gives the reason."""
    trained_fc = _toy().fc.weight.detach().clone()

    def vanishing(module: nn.Module, x: torch.Tensor, _t: int) -> np.ndarray:  # the image while fc is trained
        same = torch.equal(module.fc.weight.detach(), trained_fc)
        return x[0, 0].detach().numpy() if same else np.zeros(x.shape[-2:])

    result = sanity_check(_toy(), _image(), methods=("gradcam",), target=1, extra={"vanishing": vanishing,
                          "edges": edge_detector}, seed=0)
    assert result.passes["vanishing"] is True and result.spearman["vanishing"] == (0.0, 0.0, 0.0)
    assert result.vanished == {"gradcam": None, "vanishing": "fc", "edges": None}
    assert "vanished" in result.reason("vanishing") and "fc" in result.reason("vanishing")
    assert "vanished" not in result.reason("gradcam") and "depends on the weights" in result.reason("gradcam")
    assert "shows the image" in result.reason("edges")
    rows = {row["method"]: row["verdict"] for row in result.table()}
    assert rows == {"gradcam": "passes", "vanishing": "passes (the map vanished)", "edges": "fails"}
