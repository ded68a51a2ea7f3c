"""A method added with ``xai.engine.register_method`` appears in the app: the pages list the method table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from xai import method_names
from xai.engine import Method, Passes, cam_view, register_method
from xai.engine import methods as method_table

APP = Path(__file__).resolve().parents[1] / "app.py"


def layer_cam(passes: Passes) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): ``ReLU(sum_k ReLU(g_k) * A_k)``, pixel by pixel."""
    return torch.relu((torch.relu(passes.gradients) * passes.activations).sum(dim=1))


def test_a_registered_method_is_offered_by_the_explain_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(method_table, "_TABLE", dict(method_table._TABLE))  # both tables restored after the test
    monkeypatch.setattr(method_names, "_IDENTITIES", dict(method_names._IDENTITIES))
    register_method("layercam", Method(layer_cam, cam_view, needs_target_gradient=True),
                    method_names.MethodIdentity("layercam", "LayerCAM"))
    at = AppTest.from_file(str(APP), default_timeout=300)
    at.run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    box = at.multiselect(key="methods")
    assert box.options == ["Grad-CAM", "Grad-CAM++", "Guided Backprop", "Guided Grad-CAM", "LayerCAM"]
    assert box.value == list(method_names.METHODS)  # the default stays the built-in four
