"""``explain(details=True)``, the immutable ``Explanation``, the method table and the probability rule.

The intermediate quantities are checked against numbers worked out by hand on ``Pixelwise`` (a 1x1 conv +
ReLU whose eight activations feed a linear layer directly, so that dY/dA is the linear layer's weights,
different at every pixel, with a negative and a zero-denominator Grad-CAM++ alpha); against captum on
torchvision networks in ``tests/test_engine_references.py``.
"""

from __future__ import annotations

import copy
import math
import pickle
from types import MappingProxyType

import numpy as np
import pytest
import torch
from test_engine_toy import X1, OneLayer
from torch import nn

from xai import METHODS, Explainer, Explanation, export, method_names
from xai.engine import DETAILS, METHOD_TABLE, Method, Passes, cam_view, register_method
from xai.engine import methods as method_table
from xai.scores import probabilities


class Pixelwise(OneLayer):
    """OneLayer's conv 1x1 (u = [1, -1]) -> ReLU [target "act"], then flatten (8) -> linear (hand-set)."""

    def __init__(self, fc_weight: list[list[float]]) -> None:
        super().__init__([[0.0, 0.0]])
        self.fc = nn.Linear(8, len(fc_weight))
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(fc_weight))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))


# Class 0: channel 1 weights [[1, 2], [0, -1]], channel 2 [[0.5, 0], [0, 1]]; class 1: channel 1 all 1,
# channel 2 all -1. The logit is linear in A, so dY/dA is exactly these weights, pixel by pixel.
FC = [[1.0, 2.0, 0.0, -1.0, 0.5, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]]
X2 = torch.cat([X1, -0.5 * X1])  # image 2: x = [[-.5, 1], [-1.5, 1]]


def test_details_by_hand() -> None:
    e = Explainer(Pixelwise(FC).eval(), "act").explain(X2, target=[0, 1], details=True)
    d = e.details
    assert d is not None and tuple(d) == DETAILS
    # A = [ReLU(x), ReLU(-x)]: image 1 A_1 = [[1,0],[3,0]] (sum 4), A_2 = [[0,2],[0,2]] (sum 4);
    # image 2 A_1 = [[0,1],[0,1]] (sum 2), A_2 = [[.5,0],[1.5,0]] (sum 2).
    np.testing.assert_array_equal(d["activations"], [[[[1, 0], [3, 0]], [[0, 2], [0, 2]]],
                                                     [[[0, 1], [0, 1]], [[0.5, 0], [1.5, 0]]]])
    np.testing.assert_array_equal(d["gradients"], [[[[1, 2], [0, -1]], [[0.5, 0], [0, 1]]],
                                                   [[[1, 1], [1, 1]], [[-1, -1], [-1, -1]]]])
    # Grad-CAM weights: spatial means: (1 + 2 + 0 - 1) / 4 = .5, 1.5 / 4 = .375; image 2: 1, -1.
    np.testing.assert_allclose(d["gradcam_weights"], [[0.5, 0.375], [1.0, -1.0]], rtol=1e-6)
    # Grad-CAM++ alpha = g^2 / (2 g^2 + S g^3), S = sum of the channel's A (4, 4 | 2, 2):
    #   image 1, channel 1: g = 1 -> 1/(2+4) = 1/6; g = 2 -> 4/(8+32) = .1; g = 0 -> 0/0 -> 0;
    #                       g = -1 -> 1/(2-4) = -.5 (negative alphas are kept; ReLU(g) = 0 there anyway)
    #            channel 2: g = .5 -> .25/(.5+.5) = .25; g = 0 -> 0; g = 1 -> 1/6.
    #   image 2, channel 1: g = 1 -> 1/(2+2) = .25; channel 2: g = -1 -> 1/(2-2): zero denominator -> 0.
    alphas = [[[[1 / 6, 0.1], [0.0, -0.5]], [[0.25, 0.0], [0.0, 1 / 6]]],
              [[[0.25] * 2] * 2, [[0.0] * 2] * 2]]
    np.testing.assert_allclose(d["gradcam++_alphas"], alphas, rtol=1e-6)
    # w = sum alpha * ReLU(g): image 1: 1/6 * 1 + .1 * 2 = 11/30, .25 * .5 + 1/6 * 1 = 7/24; image 2: 4 * .25 = 1, 0.
    np.testing.assert_allclose(d["gradcam++_weights"], [[11 / 30, 7 / 24], [1.0, 0.0]], rtol=1e-6)
    for key in DETAILS:
        assert d[key].dtype == np.float32
    # The maps are made from these very numbers: ReLU(sum_k w_k A_k).
    for method, weights in (("gradcam", "gradcam_weights"), ("gradcam++", "gradcam++_weights")):
        cam = np.maximum(np.einsum("nk,nkhw->nhw", d[weights], d["activations"]), 0)
        np.testing.assert_allclose(e.raw[method], cam, rtol=1e-6)


def test_details_absent_unless_asked_and_the_maps_unchanged() -> None:
    model = Pixelwise(FC).eval()
    plain = Explainer(model, "act").explain(X2, target=[0, 1])
    assert plain.details is None
    detailed = Explainer(model, "act").explain(X2, target=[0, 1], details=True)
    for m in METHODS:
        np.testing.assert_array_equal(detailed.maps[m], plain.maps[m])
        np.testing.assert_array_equal(detailed.raw[m], plain.raw[m])
    # Asked for with a guided map only: the target-layer gradient is taken all the same.
    guided_only = Explainer(model, "act").explain(X2, target=[0, 1], methods="guided_backprop", details=True)
    assert guided_only.methods == ("guided_backprop",)
    np.testing.assert_array_equal(guided_only.details["gradients"], detailed.details["gradients"])


def test_a_target_rule_picks_each_class_from_the_forward_pass_with_no_second_pass() -> None:
    model = Pixelwise(FC).eval()
    seen: list[np.ndarray] = []

    def rule(p: np.ndarray) -> list[int]:  # the least probable class: never the arg-max here
        seen.append(p.copy())
        return [int(np.argmin(row)) for row in p]

    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        ruled = Explainer(model, "act").explain(X2, target=rule)
    finally:
        handle.remove()
    assert calls == [1]  # one forward pass: the rule ran between it and the backward pass
    # The rule saw the batch's probabilities as the explanation reports them (float64, one row per image).
    assert len(seen) == 1 and seen[0].dtype == np.float64
    np.testing.assert_allclose(seen[0], ruled.probabilities, rtol=1e-6)
    chosen = [int(np.argmin(row)) for row in ruled.probabilities]
    assert chosen != [int(np.argmax(row)) for row in ruled.probabilities]
    assert ruled.target.tolist() == chosen
    explicit = Explainer(model, "act").explain(X2, target=chosen)
    for m in METHODS:
        np.testing.assert_array_equal(ruled.maps[m], explicit.maps[m])
    with pytest.raises(ValueError, match="out of range"):
        Explainer(model, "act").explain(X2, target=lambda p: [5] * len(p))
    with pytest.raises(ValueError, match="2 images"):
        Explainer(model, "act").explain(X2, target=lambda p: [0])


@pytest.mark.parametrize("relu_head", [False, True])
def test_details_come_from_the_same_single_forward_pass(relu_head: bool) -> None:
    # relu_head: a ReLU above the target layer forces two backward passes, still over one forward pass.
    model = Pixelwise(FC).eval()
    if relu_head:
        model.fc = nn.Sequential(nn.ReLU(), copy.deepcopy(model.fc))
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        e = Explainer(model, "act").explain(X2, target=[0, 1], details=True)
    finally:
        handle.remove()
    assert calls == [1]
    assert any("two backward passes" in n for n in e.notes) == relu_head
    # The head's ReLU passes the gradient only where A > 0 (A_1 = [[1, 0], [3, 0]]): the plain gradient.
    expected = [[1, 0], [0, 0]] if relu_head else [[1, 2], [0, -1]]
    np.testing.assert_array_equal(e.details["gradients"][0, 0], expected)


def test_details_are_read_only() -> None:
    d = Explainer(Pixelwise(FC).eval(), "act").explain(X2, target=0, details=True).details
    with pytest.raises(TypeError):
        d["gradients"] = np.zeros(1)  # type: ignore[index]
    for key in DETAILS:
        assert not d[key].flags.writeable
        with pytest.raises(ValueError):
            d[key].flat[0] = 1.0


# ---------------------------------------------------------------------------------------- immutability


def test_explanation_is_immutable_all_the_way_down() -> None:
    e = Explainer(OneLayer([[2.0, -2.0]]).eval(), "act").explain(X1, details=True)
    for field in ("maps", "raw", "flat", "timings", "versions", "details"):
        mapping = getattr(e, field)
        assert isinstance(mapping, MappingProxyType), field
        with pytest.raises(TypeError):
            mapping["x"] = 1
    with pytest.raises(TypeError):
        e.timings["total"] = 0.0  # type: ignore[index]
    with pytest.raises(TypeError):
        e.maps["gradcam"] = np.zeros((1, 2, 2))  # type: ignore[index]
    with pytest.raises(AttributeError):
        e.timings.update({"total": 0.0})  # type: ignore[attr-defined]
    for array in (e.logits, e.probabilities, e.target, e.features, *e.maps.values(), *e.raw.values(),
                  *e.flat.values(), *e.details.values()):
        assert not array.flags.writeable


def test_explanation_made_by_hand_copies_what_it_is_given_and_survives_pickle() -> None:
    maps = {"gradcam": np.ones((1, 2, 2), np.float32)}
    timings = {"total": 1.0}
    e = Explanation(logits=np.zeros((1, 2)), probabilities=np.full((1, 2), 0.5), target=np.zeros(1, np.int64),
                    target_layer="act", maps=maps, raw=maps, flat={"gradcam": np.zeros(1, bool)},
                    timings=timings, versions={}, notes=["a note"])
    maps["gradcam"][0, 0, 0] = 5.0  # the caller's array and dicts stay theirs
    timings["total"] = 2.0
    maps["extra"] = np.zeros(1)
    assert e.maps["gradcam"][0, 0, 0] == 1.0 and e.timings["total"] == 1.0 and set(e.maps) == {"gradcam"}
    assert not e.maps["gradcam"].flags.writeable and not e.logits.flags.writeable
    assert e.notes == ("a note",) and e.methods == ("gradcam",) and e.details is None
    for clone in (pickle.loads(pickle.dumps(e)), copy.deepcopy(e)):
        assert isinstance(clone.maps, MappingProxyType) and not clone.maps["gradcam"].flags.writeable
        np.testing.assert_array_equal(clone.maps["gradcam"], e.maps["gradcam"])
        assert clone.timings == {"total": 1.0} and clone.notes == e.notes


# --------------------------------------------------------------------------------------- method table


def layer_cam(passes: Passes) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): ``ReLU(sum_k ReLU(g_k) * A_k)``, pixel by pixel."""
    return torch.relu((torch.relu(passes.gradients) * passes.activations).sum(dim=1))


def test_a_method_added_to_the_table_runs_over_the_shared_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(method_table, "_TABLE", dict(method_table._TABLE))  # restored after the test
    monkeypatch.setattr(method_names, "_IDENTITIES", dict(method_names._IDENTITIES))
    register_method("layercam", Method(layer_cam, cam_view, needs_target_gradient=True),
                    method_names.MethodIdentity("layercam", "LayerCAM", paper="Jiang et al., IEEE TIP 2021."))
    # Its identity is in the one table every list and title is read from (the app, exports, the CLI).
    assert method_names.listed_methods() == (*METHODS, "layercam")
    assert method_names.METHOD_TITLES["layercam"] == "LayerCAM" and export.method_title("layercam") == "LayerCAM"
    with pytest.raises(ValueError, match="already registered"):
        register_method("gradcam", Method(layer_cam, cam_view, needs_target_gradient=True))
    with pytest.raises(ValueError, match="layercam"):  # the valid names listed come from the table
        Explainer(Pixelwise(FC).eval(), "act").explain(X2, methods=["nope"])
    e = Explainer(Pixelwise(FC).eval(), "act").explain(X2, target=[0, 1], methods=["gradcam", "layercam"])
    assert e.methods == ("gradcam", "layercam")
    # Image 1: ReLU(g) = [[1,2],[0,0]] and [[.5,0],[0,1]]; A = [[1,0],[3,0]], [[0,2],[0,2]]:
    # 1*1 + .5*0 = 1, 2*0 + 0*2 = 0, 0*3 + 0*0 = 0, 0*0 + 1*2 = 2.  Image 2: ReLU(g) = 1, 0: A_1 = [[0,1],[0,1]].
    np.testing.assert_allclose(e.raw["layercam"], [[[1, 0], [0, 2]], [[0, 1], [0, 1]]], rtol=1e-6)
    np.testing.assert_allclose(e.maps["layercam"][0], [[0.5, 0], [0, 1]], rtol=1e-6)  # display: / max
    assert not e.flat["layercam"].any() and "layercam" not in METHOD_TABLE  # the module's table is untouched
    with pytest.raises(ValueError, match="names 'other'"):
        register_method("x", Method(layer_cam, cam_view), method_names.MethodIdentity("other", "Other"))


def test_the_table_drives_every_built_in_method(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    table = {}
    for name, method in method_table._TABLE.items():
        def spy(passes: Passes, _raw=method.raw, _name=name) -> torch.Tensor:
            seen.append(_name)
            return _raw(passes)
        table[name] = Method(spy, method.display, method.needs_target_gradient, method.needs_input_gradient)
    monkeypatch.setattr(method_table, "_TABLE", table)
    e = Explainer(OneLayer([[2.0, -2.0]]).eval(), "act").explain(X1)
    assert seen == list(METHODS) and e.methods == METHODS  # each raw map computed once, from the table


# ----------------------------------------------------------------------------------- probability rule


def test_one_probability_rule_softmax_or_sigmoid() -> None:
    log3 = math.log(3.0)
    np.testing.assert_allclose(probabilities(torch.tensor([[0.0, log3]])).numpy(), [[0.25, 0.75]], rtol=1e-6)
    np.testing.assert_allclose(probabilities(torch.tensor([[0.0], [log3]])).numpy(), [[0.5], [0.75]], rtol=1e-6)
    assert probabilities(torch.zeros(2, 3, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        probabilities(torch.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        probabilities(torch.zeros(1, 2, dtype=torch.long))
    # The engine uses it: a single-logit model's probability is sigmoid(logit).
    single = OneLayer([[2.0, 0.0]]).eval()  # logit = 2 * mean(ReLU(x)) = 2 * 4 / 4 = 2
    e = Explainer(single, "act").explain(X1, methods="gradcam")
    np.testing.assert_allclose(e.probabilities, [[1 / (1 + math.exp(-2.0))]], rtol=1e-6)
    assert any("sigmoid" in n for n in e.notes)
