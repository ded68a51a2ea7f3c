"""The Explain page's figure builders skip plotly's validation at run time (pages/_panel.unvalidated_figure);
here every figure they make is rebuilt WITH validation, which raises on any misspelt or mistyped property,
and must serialise to the same JSON."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from pages._panel import Panel, panel_figure, prediction_figure
from xai import render


def _validated_json(fig: go.Figure) -> dict:
    return json.loads(pio.to_json(go.Figure(fig.to_dict()), validate=True))


def _without_template(spec: dict) -> dict:
    return {**spec, "layout": {k: v for k, v in spec["layout"].items() if k != "template"}}


def _same_as_validated(fig: go.Figure) -> None:
    """Equal JSON but for the template, which validation only normalises (``{}`` gains an empty scatter)."""
    assert _without_template(json.loads(pio.to_json(fig, validate=False))) == _without_template(_validated_json(fig))


@pytest.mark.parametrize("threshold", [None, 0.273])
def test_prediction_figure_is_valid_plotly(threshold: float | None) -> None:
    fig = prediction_figure({"covid19": 0.31, "non_covid": 0.69}, threshold=threshold, positive_class="covid19",
                            decision="covid19")
    _same_as_validated(fig)
    spec = fig.to_dict()
    assert spec["data"][0]["marker"]["color"] == ["#e4572e", "#7f8c9a"]
    assert len(spec["layout"].get("shapes", [])) == (threshold is not None)
    assert spec["layout"]["template"] == go.Figure().to_dict()["layout"]["template"]  # the default, as before


@pytest.mark.parametrize(("per_row", "colorbar", "view"), [(3, True, None), (2, False, (2.0, 0.3, 0.6)), (5, True, None)])
def test_panel_figure_is_valid_plotly(per_row: int, colorbar: bool, view: tuple[float, float, float] | None) -> None:
    rng = np.random.default_rng(1)
    panels = [Panel(f"panel {i}<br>line two", (rng.random((60, 80, 3)) * 255).astype(np.uint8)) for i in range(5)]
    fig = panel_figure(panels, per_row=per_row, row_height=240, uirevision="film:model",
                       colorscale=render.plotly_colorscale("inferno") if colorbar else None,
                       colorbar_title="× the model's typical peak", view=view, light=per_row == 2)
    _same_as_validated(fig)
    images = [t for t in fig.to_dict()["data"] if t["type"] == "image"]
    assert len(images) == 5 and all(t["source"].startswith("data:image/jpeg;base64,") for t in images)
    assert fig.to_dict()["layout"]["template"] == {}  # no template: the panel draws its own dark surround


def test_a_misspelt_property_is_caught_by_the_validation_these_tests_apply() -> None:
    bad = go.Figure(data=[{"type": "bar", "x": [1], "colour": "red"}], layout={}, _validate=False)
    with pytest.raises(ValueError, match="colour"):
        _validated_json(bad)
