"""xai.pipeline: file -> radiograph -> model input -> explanation -> maps on the original grid."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from xai.pipeline import (
    PREDICTED,
    TargetError,
    explain_source,
    resolve_target,
    result_record,
)
from xai.scores import DecisionRule, predicted_index

CLASSES = ("non_covid", "covid19")


def make_bundle(directory: Path, *, threshold: float = 0.5, bias: tuple[float, float] | None = None) -> Path:
    """A tiny ResNet-18 bundle (64 px input, seeded weights) saved with the models package helpers.

    ``bias`` shrinks the classifier weights and sets its bias, to put the two probabilities where a test
    wants them while keeping non-zero gradients (so maps are not flat).
    """
    from models.architectures import build_model
    from models.bundle import save_bundle
    from xai.preprocessing import Preprocessing

    torch.manual_seed(0)
    module = build_model("resnet18", 2)
    if bias is not None:
        with torch.no_grad():
            module.fc.weight.mul_(0.01)
            module.fc.bias.copy_(torch.tensor(bias))
    save_bundle(
        directory,
        module,
        {
            "name": "tiny-test",
            "version": "test-1",
            "architecture": "resnet18",
            "class_names": list(CLASSES),
            "preprocessing": Preprocessing(input_size=64).to_dict(),
            "target_layer": "layer4",
            "threshold": threshold,
            "threshold_rule": "fixed for a test",
            "intended_use": "tests only",
            "positive_class": "covid19",
        },
    )
    return directory


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - models.LoadedModel
    import models

    return models.load(make_bundle(tmp_path_factory.mktemp("bundle")))


def test_resolve_target() -> None:
    assert resolve_target("covid19", CLASSES) == 1
    assert resolve_target("NON_COVID", CLASSES) == 0
    assert resolve_target("1", CLASSES) == 1
    assert resolve_target(-1, CLASSES) == 1
    assert resolve_target(PREDICTED, CLASSES) is None
    assert resolve_target(None, CLASSES) is None
    with pytest.raises(TargetError, match="unknown target 'pneumonia'"):
        resolve_target("pneumonia", CLASSES)
    with pytest.raises(TargetError, match="out of range"):
        resolve_target(2, CLASSES)


def test_predicted_index_uses_the_threshold_on_the_positive_class() -> None:
    p = np.array([0.7, 0.3])
    assert predicted_index(p) == 0
    assert predicted_index(p, threshold=0.25, positive_index=1) == 1
    assert predicted_index(p, threshold=0.35, positive_index=1) == 0
    assert predicted_index(np.array([0.2, 0.5, 0.3]), threshold=0.1, positive_index=1) == 1  # arg-max
    # The card's rule: a film at P(covid19) = 0.3 is "covid19" at ChestCOVNet's threshold 0.27 (arg-max: not).
    card = SimpleNamespace(threshold=0.27, positive_class="covid19", class_names=("non_covid", "covid19"))
    assert DecisionRule.of(card).decide([0.7, 0.3]) == 1 and DecisionRule.of(None).decide([0.7, 0.3]) == 0


def test_maps_on_the_original_grid_for_jpeg_and_dicom(tiny_model, chestcovnet_dir: Path, dicom_dir: Path) -> None:
    from xai.engine import METHODS

    jpeg = chestcovnet_dir / "images" / "mhh_b343e657.jpg"  # 512 x 419: letterboxed
    dicom = dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm"
    for path, shape in ((jpeg, Image.open(jpeg).size[::-1]), (dicom, (1024, 1024))):
        result = explain_source(path, tiny_model, target="covid19")
        assert result.radiograph.pixels.shape == shape
        assert set(result.maps) == set(METHODS)
        for heat in result.maps.values():
            assert heat.shape == shape and heat.dtype == np.float32
            assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0 + 1e-6
        assert result.target == "covid19" and int(result.explanation.target[0]) == 1
        assert result.file == str(path)

        # Probabilities: an independent forward pass on the same input tensor.
        with torch.no_grad():
            expected = torch.softmax(tiny_model.module(result.input_tensor), dim=1)[0].numpy()
        np.testing.assert_allclose(list(result.probabilities.values()), expected, rtol=1e-4, atol=1e-6)
        assert list(result.probabilities) == list(CLASSES)


def test_letterbox_padding_carries_no_map(tiny_model, chestcovnet_dir: Path) -> None:
    """The Grad-CAM map on the original grid is the model-grid map's content region, resized."""
    import cv2

    result = explain_source(chestcovnet_dir / "images" / "mhh_b343e657.jpg", tiny_model, methods=["gradcam"])
    x0, y0, x1, y1 = result.geometry.content_box
    assert (y0, y1) != (0, 64) or (x0, x1) != (0, 64)  # a non-square film is padded
    model_map = np.asarray(result.explanation.maps["gradcam"][0])
    content = model_map[y0:y1, x0:x1]
    height, width = result.radiograph.pixels.shape
    reference = cv2.resize(content, (width, height), interpolation=cv2.INTER_LINEAR)
    # Same content up to the interpolation convention at the borders of the content box.
    inner = (slice(16, -16), slice(16, -16))
    np.testing.assert_allclose(result.maps["gradcam"][inner], reference[inner], atol=0.08)


def test_predicted_target_follows_the_cards_threshold(tmp_path: Path, chestcovnet_dir: Path) -> None:
    """P(covid19) ~ 0.3 is below the arg-max but above a 0.2 threshold: the decision is covid19."""
    import models

    loaded = models.load(make_bundle(tmp_path / "b", threshold=0.2, bias=(0.0, -0.85)))
    result = explain_source(chestcovnet_dir / "images" / "nih_00008727_009.jpg", loaded, methods=["gradcam"])
    p = result.probabilities["covid19"]
    assert 0.2 < p < 0.5
    assert result.predicted == "covid19" and result.target == "covid19"
    assert int(result.explanation.target[0]) == 1
    # The decision is taken inside the engine's one forward pass, not by explaining the arg-max and then
    # the decision: one forward pass, and the same maps as asking for covid19 outright.
    calls: list[int] = []
    handle = loaded.module.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        again = explain_source(chestcovnet_dir / "images" / "nih_00008727_009.jpg", loaded, methods=["gradcam"])
    finally:
        handle.remove()
    assert calls == [1]
    outright = explain_source(chestcovnet_dir / "images" / "nih_00008727_009.jpg", loaded, methods=["gradcam"],
                              target="covid19")
    np.testing.assert_allclose(again.maps["gradcam"], outright.maps["gradcam"], atol=1e-5)  # float rounding

    record = result_record(result, loaded)
    assert set(record) == {"file", "probabilities", "predicted", "target", "model", "target_layer", "timings_ms",
                           "notices"}
    assert record["model"] == {"name": "tiny-test", "version": "test-1", "sha256": loaded.card.sha256}
    assert record["timings_ms"]["total"] >= record["timings_ms"]["prepare"] >= 0


def test_bad_file_and_bad_target_raise_clear_errors(tiny_model, tmp_path: Path, chestcovnet_dir: Path) -> None:
    from xai.radiograph import RadiographError

    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is text, not a radiograph")
    with pytest.raises(RadiographError):
        explain_source(bad, tiny_model)
    good = (chestcovnet_dir / "images" / "nih_00008727_009.jpg").read_bytes()
    with pytest.raises(TargetError, match="pneumonia"):
        explain_source(good, tiny_model, target="pneumonia")


def test_film_sized_maps_are_made_on_first_use_once_and_equal_the_mapped_engine_maps(tiny_model, dicom_dir: Path) -> None:
    """FilmMaps: nothing film-sized is made by the explanation; a map asked for is Geometry.to_original of the
    engine's map, made once even when eight threads ask at once; ``on_grid`` shrinks from the model's grid with the
    same values as shrinking the film-sized map by area (cv2.INTER_AREA, computed here); a pickle is a plain dict."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    from xai.pipeline import FilmMaps

    result = explain_source(dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm", tiny_model, target="covid19")
    maps = result.maps
    assert isinstance(maps, FilmMaps) and maps.shape == (1024, 1024)
    assert not any(maps.made(m) for m in maps)
    small = maps.on_grid((300, 300))  # before any film-sized map exists: from the model's grid
    assert not any(maps.made(m) for m in maps)
    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(lambda _: maps["gradcam"], range(8)))
    assert all(s is seen[0] for s in seen) and maps.made("gradcam")
    for m in maps:
        film = maps[m]
        np.testing.assert_array_equal(film, result.geometry.to_original(result.explanation.maps[m][0]))
        shrunk = cv2.resize(film, (300, 300), interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(small[m], shrunk, atol=2e-5)
    np.testing.assert_allclose(maps.on_grid((300, 300))["gradcam"], small["gradcam"], atol=2e-5)  # from the made map
    copied = pickle.loads(pickle.dumps(maps))
    assert type(copied) is dict and set(copied) == set(maps)
    np.testing.assert_array_equal(copied["gradcam"], maps["gradcam"])
    with pytest.raises(KeyError):
        maps["no such method"]
