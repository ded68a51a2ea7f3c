"""The engine leaves a shared model exactly as it found it, and is safe under concurrent use.

Checked on every module after success and after injected failures: no forward/backward (pre-)hooks, no
``.grad``, same ``requires_grad`` flags, same train/eval flags, bit-identical parameters and buffers, no
torch-function mode left active, no guided hook left on later graphs. Concurrency: 8 threads with different inputs and targets on one model give
the results of serial calls, while another thread runs plain inference on the same model.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from xai import METHODS, Explainer

SIZE = 48


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything about a model that an explanation must not change."""
    modules = dict(model.named_modules())
    return {
        "hooks": {
            name: (
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(m._backward_pre_hooks),
                len(getattr(m, "_forward_hooks_with_kwargs", {})),
                len(getattr(m, "_state_dict_hooks", {})),
            )
            for name, m in modules.items()
        },
        "training": {name: m.training for name, m in modules.items()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grad": {name: p.grad for name, p in model.named_parameters()},
        "state": {name: t.detach().clone() for name, t in model.state_dict().items()},
        "modules": {name: (id(m), type(m)) for name, m in modules.items()},
        "global_hooks": (
            len(nn.modules.module._global_forward_hooks),
            len(nn.modules.module._global_forward_pre_hooks),
            len(nn.modules.module._global_backward_hooks),
        ),
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["hooks"] == before["hooks"]
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grad"].values())
    assert after["modules"] == before["modules"]
    assert after["global_hooks"] == before["global_hooks"]
    for name, value in before["state"].items():
        assert torch.equal(after["state"][name], value), name
    # Nothing global left: a ReLU's backward on this thread is the plain one.
    assert torch._C._len_torch_function_stack() == 0
    z = torch.tensor([1.0, -1.0], requires_grad=True)
    (grad,) = torch.autograd.grad((torch.relu(z) * torch.tensor([-2.0, 3.0])).sum(), z)
    assert grad.tolist() == [-2.0, 0.0]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return small_resnet()


def inputs(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_no_trace_after_success_and_caller_tensor_untouched(model: nn.Module) -> None:
    before = snapshot(model)
    x = inputs(2, 0)
    x_copy = x.clone()
    Explainer(model).explain(x, target=[0, 2])
    assert_unchanged(model, before)
    assert torch.equal(x, x_copy) and not x.requires_grad and x.grad is None


def test_partly_frozen_model_keeps_its_flags_and_gets_no_grad() -> None:
    model = small_resnet()
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    before = snapshot(model)
    Explainer(model, "layer3").explain(inputs(1, 1))
    assert_unchanged(model, before)


class FailAfterTarget(nn.Module):
    """A resnet whose forward raises after the target layer (after the capture hook fired)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.fail = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.inner
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        if self.fail:
            raise RuntimeError("injected failure after the target layer")
        return m.fc(torch.flatten(m.avgpool(x), 1))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_no_trace_after_injected_failures(model: nn.Module, train: bool) -> None:
    wrapper = FailAfterTarget(model)
    wrapper.train(train)
    before = snapshot(wrapper)
    explainer = Explainer(wrapper, "inner.layer4")
    with pytest.raises(RuntimeError, match="injected failure"):
        explainer.explain(inputs(1, 2))
    assert_unchanged(wrapper, before)
    # Failures after the forward pass (bad target) and before it (bad method) leave no trace either.
    wrapper.fail = False
    with pytest.raises(ValueError, match="out of range"):
        explainer.explain(inputs(1, 2), target=7)
    assert_unchanged(wrapper, before)
    with pytest.raises(ValueError, match="unknown method"):
        explainer.explain(inputs(1, 2), methods=["gradcam", "occlusion"])
    assert_unchanged(wrapper, before)
    # ...and the model still explains correctly afterwards (same as the plain resnet, in eval mode).
    if not train:
        ours = explainer.explain(inputs(1, 2), target=1)
        plain = Explainer(model, fold_batchnorm=False).explain(inputs(1, 2), target=1)  # same arithmetic
        for m in METHODS:
            np.testing.assert_array_equal(ours.raw[m], plain.raw[m])
    wrapper.eval()


def test_failure_inside_a_hooked_forward_with_a_non_tensor_target_output() -> None:
    class TupleLayer(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.pair = TupleLayer()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, _ = self.pair(torch.relu(self.conv(x)))
            return self.fc(a.mean(dim=(2, 3)))

    net = Net().eval()
    before = snapshot(net)
    with pytest.raises(ValueError, match=r"target layer 'pair' must return a 4-D feature map"):
        Explainer(net, "pair").explain(inputs(1, 3))
    assert_unchanged(net, before)


def test_training_mode_is_kept_and_buffers_restored() -> None:
    model = small_resnet().train()
    before = snapshot(model)
    e = Explainer(model).explain(inputs(2, 4), target=[0, 1])
    assert_unchanged(model, before)
    assert model.training and any("training mode" in n for n in e.notes)


def test_no_grad_and_inference_mode_callers_get_the_same_result(model: nn.Module) -> None:
    x = inputs(1, 5)
    explainer = Explainer(model)
    reference = explainer.explain(x, target=2)
    with torch.no_grad():
        under_no_grad = explainer.explain(x, target=2)
    with torch.inference_mode():
        x_inference = x.clone()  # an inference tensor, as an app's preprocessing may produce
        under_inference = explainer.explain(x_inference, target=2)
    for e in (under_no_grad, under_inference):
        for m in METHODS:
            np.testing.assert_array_equal(e.raw[m], reference.raw[m])


def test_eight_threads_on_one_model_equal_serial_calls(model: nn.Module) -> None:
    explainer = Explainer(model)
    jobs = [
        (inputs(1 + i % 2, 10 + i), [i % 3] * (1 + i % 2), METHODS if i % 3 else ("gradcam",))
        for i in range(8)
    ]
    serial = [explainer.explain(x, target=t, methods=m) for x, t, m in jobs]
    before = snapshot(model)

    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs) + 1)
    stop = threading.Event()
    plain_x = inputs(1, 99)
    with torch.no_grad():
        plain_logits = model(plain_x)
    plain_mismatch: list[float] = []

    def work(i: int) -> None:
        try:
            start.wait()
            # Each thread builds its own Explainer on the shared model: the lock is per model.
            x, t, m = jobs[i]
            results[i] = Explainer(model).explain(x, target=t, methods=m)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def plain_inference() -> None:
        start.wait()
        while not stop.is_set():
            with torch.no_grad():
                diff = (model(plain_x) - plain_logits).abs().max().item()
            plain_mismatch.append(diff)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    bystander = threading.Thread(target=plain_inference)
    for thread in (*threads, bystander):
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    stop.set()
    bystander.join(timeout=300)

    assert not errors, errors
    assert plain_mismatch and max(plain_mismatch) <= 1e-5
    for got, want in zip(results, serial, strict=True):
        assert got.methods == want.methods
        np.testing.assert_array_equal(got.target, want.target)
        np.testing.assert_allclose(got.logits, want.logits, rtol=1e-5, atol=1e-6)
        for m in want.methods:
            np.testing.assert_allclose(
                got.raw[m], want.raw[m], rtol=1e-4, atol=1e-6 * np.abs(want.raw[m]).max()
            )
            np.testing.assert_allclose(got.maps[m], want.maps[m], atol=1e-4)
    assert_unchanged(model, before)
