"""xai.display_scale: the model's typical map peak (the app's default scale) and the weak-evidence notice."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from xai import display_scale
from xai.engine import Explainer


class Tiny(nn.Module):
    """conv-ReLU-pool-linear: Grad-CAM at ``act``; its raw map is ReLU(sum_k w_k A_k)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def _films(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 3, 16, 16, generator=g) for _ in range(n)]


def test_calibration_is_the_median_of_each_maps_robust_peak() -> None:
    torch.manual_seed(0)
    model = Tiny().eval()
    films = _films(3)
    result = display_scale.calibrate_scale(Explainer(model, target_layer="act"), films,
                                         methods=("gradcam", "guided_backprop"), split="val")
    # Independent reference: the same percentile of each raw map, straight from the engine's raw arrays.
    explainer = Explainer(model, target_layer="act")
    cam_peaks, guided_peaks = [], []
    for batch in films:
        e = explainer.explain(batch, methods=("gradcam", "guided_backprop"))
        cam_peaks += [np.percentile(e.raw["gradcam"][i], 99.5) for i in range(2)]
        guided_peaks += [np.percentile(np.abs(e.raw["guided_backprop"][i]).max(axis=0), 99.5) for i in range(2)]
    assert result.n == 6 and result.split == "val"
    assert result.vmax["gradcam"] == pytest.approx(np.median(cam_peaks), rel=1e-6)
    assert result.vmax["guided_backprop"] == pytest.approx(np.median(guided_peaks), rel=1e-6)
    lo, hi = result.spread["gradcam"]
    assert lo == pytest.approx(np.percentile(cam_peaks, 10)) and hi == pytest.approx(np.percentile(cam_peaks, 90))
    with pytest.raises(ValueError, match="no film"):
        display_scale.calibrate_scale(Explainer(model, target_layer="act"), [], methods=("gradcam",))


def test_card_round_trip_and_cards_without_it() -> None:
    result = display_scale.ScaleCalibration(vmax={"gradcam": 0.5, "gradcam++": 14.0}, spread={"gradcam": (0.3, 0.8)},
                                          n=60, split="val")
    entry = json.loads(json.dumps(result.card_entry(command="x")))
    back = display_scale.from_card({display_scale.CARD_KEY: entry})
    assert back is not None and dict(back.vmax) == {"gradcam": 0.5, "gradcam++": 14.0} and back.n == 60
    assert display_scale.from_card(SimpleNamespace(saliency_scale=entry)).vmax == back.vmax  # a ModelCard
    for bad in ({}, {"vmax": {}}, {"vmax": {"gradcam": -1.0}}, {"vmax": {"gradcam": "x"}}, {"vmax": 3}):
        assert display_scale.from_card({display_scale.CARD_KEY: bad}) is None
    assert display_scale.from_card(SimpleNamespace(name="old card")) is None


def test_the_default_bundle_carries_a_calibration() -> None:
    import models

    card = models.load("chestcovnet").card
    stored = display_scale.from_card(card)
    assert stored is not None and stored.split == "val" and stored.n >= 50
    assert set(stored.vmax) == {"gradcam", "gradcam++", "guided_backprop", "guided_gradcam"}


def test_weak_evidence_from_the_probability_or_the_maps_peak() -> None:
    cal = display_scale.ScaleCalibration(vmax={"gradcam": 2.0, "guided_backprop": 1.0})
    strong = {"gradcam": 1.8, "guided_backprop": 0.9}
    assert display_scale.weak_evidence("covid19", 0.9, strong, cal) is None
    low_p = display_scale.weak_evidence("covid19", 0.0008, strong, cal)
    assert low_p.startswith("Weak evidence") and "0.0008" in low_p and "peak" not in low_p
    faint = display_scale.weak_evidence("covid19", 0.9, {"gradcam": 0.2, "guided_backprop": 0.9}, cal,
                                      {"gradcam": "Grad-CAM"})
    assert "Grad-CAM 0.10×" in faint and "guided" not in faint
    assert display_scale.weak_evidence("covid19", 0.9, {"gradcam": 0.2}, None) is None  # no calibration: p only
