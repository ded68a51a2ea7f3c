"""The Streamlit app driven headless with ``streamlit.testing.v1.AppTest`` on the bundled model.

Real radiographs only (bundled samples, ../shared/data). The engine is never mocked: the page's single
engine entry point, ``pages._service().run_engine``, counts its calls, which proves that display-only
changes compute no map. Downloads are generated on click, so their callables are captured from
``MediaFileManager.add_deferred`` and run here to check what a user would download.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest
from test_panel_figures import prediction_rows

import pages._explanations as app_explanations
import pages._ingest as ingest
import pages._lungs as app_lungs
import pages._models as app_models
import pages._state as app_state
import pages._warmup as warmup
from xai.export import DISCLAIMER

APP = Path(__file__).resolve().parents[1] / "app.py"


def service() -> app_explanations.ExplanationService:
    """The server's one explanation service (AppTest runs the pages in this process)."""
    return app_explanations.explanation_service()


TIMEOUT = 180  # the CPU is shared with other jobs: be generous, the assertions are not about speed
METHOD_TITLES = ("Grad-CAM", "Grad-CAM++", "Guided Backprop", "Guided Grad-CAM")

# Identifiers planted in a real DICOM to prove that none of them leaves the app unless asked.
PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID-98765",
    "PatientBirthDate": "19700314",
    "InstitutionName": "Test General Hospital",
    "AccessionNumber": "ACC-4242",
    "StudyDate": "20200314",
}
PHI_VALUES = ("DOE^JANE", "PID-98765", "19700314", "Test General Hospital", "ACC-4242", "20200314")


def new_app() -> AppTest:
    """The app's first run in a new session, with the start-up warm-up it may have started finished."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    app_models.wait_for_warm_up()
    return at


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def panel_spec(at: AppTest) -> dict:
    """The side-by-side panel's plotly figure (the chart keyed ``panel_chart``)."""
    charts = [c for c in at.get("plotly_chart") if "panel_chart" in c.proto.id]
    assert len(charts) == 1, "expected exactly one overlay panel"
    return json.loads(charts[0].proto.spec)


def open_display(at: AppTest) -> AppTest:
    """Open the Display expander (it draws its controls only while open) and rerun."""
    at.session_state["disp_open"] = True
    return run(at)


def held_out_chart(at: AppTest, key: str) -> dict:
    charts = [c for c in at.get("plotly_chart") if key in c.proto.id]
    assert len(charts) == 1, f"expected the chart {key}"
    return json.loads(charts[0].proto.spec)


def prediction_html(at: AppTest) -> str:
    """The prediction's bars as the page drew them (pages._panel.prediction_bars_html)."""
    bodies = [e.proto.body for e in at.get("html") if 'class="xai-prediction"' in e.proto.body]
    assert len(bodies) == 1, f"expected one prediction, found {len(bodies)}"
    return bodies[0]


def image_titles(at: AppTest) -> list[str]:
    return [a["text"] for a in panel_spec(at)["layout"]["annotations"]]


def panel_layers(at: AppTest) -> list[dict[str, str]]:
    """Each panel's image layers by role: ``base`` (the radiograph), ``heat`` (a map's gray heat index, coloured
    and blended by the page's style) and ``lines`` (outlines on top), from the traces named ``"<i>[ role]"``."""
    panels: dict[str, dict[str, str]] = {}
    for t in panel_spec(at)["data"]:
        if t["type"] == "image":
            index, _, role = t["name"].partition(" ")
            panels.setdefault(index, {})[role or "base"] = t["source"]
    return list(panels.values())


def image_sources(at: AppTest) -> list[str]:
    """One string per panel: all its layers' sources (equal when the panel's pixels are)."""
    return ["|".join(f"{k}={v}" for k, v in sorted(p.items())) for p in panel_layers(at)]


def heat_styles(at: AppTest) -> list[str]:
    """The page's style rules for the heat layers (opacity and colour filter), in page order."""
    return [h.proto.body for h in at.get("html") if h.proto.body.startswith("<style>") and "--xai-heat-opacity:" in h.proto.body]


def choose_sample(at: AppTest, fragment: str) -> AppTest:
    box = at.selectbox(key="sample")
    box.set_value(next(o for o in box.options if fragment in o))
    return run(at)


def disclaimer_shown(at: AppTest) -> bool:
    return any(DISCLAIMER in w.value for w in at.warning)


@pytest.fixture
def deferred(monkeypatch: pytest.MonkeyPatch) -> dict[str, Callable[[], bytes]]:
    """file name -> the callable a download button would run when clicked."""
    captured: dict[str, Callable[[], bytes]] = {}

    def add_deferred(self, data_callable, mimetype, coordinates, file_name=None, *, element_id=""):  # noqa: ANN001
        captured[str(file_name)] = data_callable
        return f"deferred-{len(captured)}"

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    return captured


def dicom_with_phi(dicom_dir: Path) -> bytes:
    ds = pydicom.dcmread(dicom_dir / "siim_cr_pa_mono2_jpeg_baseline.dcm")
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- tests
def test_password_gate_blocks_every_page_until_the_secret_is_given() -> None:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.secrets["auth"] = {"password": "correct horse"}
    run(at)
    assert disclaimer_shown(at)
    assert not at.file_uploader and not at.multiselect  # no page content behind the gate
    at.text_input(key="_access_password").set_value("wrong")
    at.button[0].click()
    run(at)
    assert any("Wrong password" in e.value for e in at.error)
    assert not at.file_uploader
    at.text_input(key="_access_password").set_value("correct horse")
    at.button[0].click()
    run(at)
    assert at.file_uploader, "the Explain page should render after the right password"


def test_oidc_sign_in_is_required_when_configured() -> None:
    oidc = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "s" * 32,
            "client_id": "xai", "client_secret": "x",
            "server_metadata_url": "https://login.example.org/.well-known/openid-configuration"}
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.secrets["auth"] = oidc
    at.user = {}
    run(at)
    assert at.button(key="_oidc_login").label == "Log in" and not at.file_uploader
    signed_in = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    signed_in.secrets["auth"] = oidc
    signed_in.user = {"is_logged_in": True, "email": "reader@example.org"}
    run(signed_in)
    assert signed_in.file_uploader and not [b for b in signed_in.button if b.key == "_oidc_login"]


def test_a_deep_link_on_a_fresh_server_still_meets_the_gate() -> None:
    # Streamlit runs a deep link in its legacy pages/ mode until app.py has called st.navigation once;
    # AppTest starts every run in that state, as a freshly started server does.
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.secrets["auth"] = {"password": "correct horse"}
    run(at.switch_page("pages/model.py"))
    assert disclaimer_shown(at)
    assert at.text_input(key="_access_password") is not None
    assert not at.header and not at.metric, "the Model page rendered behind the gate"


def test_starts_with_disclaimer_and_model_page_renders_the_card() -> None:
    import models

    at = new_app()
    assert disclaimer_shown(at)
    assert at.file_uploader[0].allowed_type == []  # no extension filter: DICOMs often have none
    # The invisible chart that has the browser load plotly's code goes out once, at the end of the session's first
    # run (after the page, model included), and is gone with the next run.
    assert at.session_state[app_state.Key.CHART_CODE_SENT] is True
    preload = [c for c in at.get("plotly_chart") if "chart_code_preload" in c.proto.id]
    assert len(preload) == 1
    run(at)
    assert not [c for c in at.get("plotly_chart") if "chart_code_preload" in c.proto.id]
    assert at.multiselect(key="methods").value == ["gradcam", "gradcam++", "guided_backprop", "guided_gradcam"]
    card = models.load(app_models.DEFAULT_MODEL).card
    # Before any radiograph: the model's held-out record, per source, straight from its card.
    landing = held_out_chart(at, "landing_performance")
    test = card.metrics["test"]
    expected = {"sensitivity": {f"all test (n={test['n']})": test["sensitivity"]},
                "specificity": {f"all test (n={test['n']})": test["specificity"]}}
    for source, m in test["per_source"].items():
        for rate in expected:
            if m.get(rate) is not None:
                expected[rate][f"{source} (n={m['n']})"] = m[rate]
    for source, check in card.cross_source.items():  # sources left out of training: the new-hospital estimate
        m = check["all_splits"]
        for rate in expected:
            if m.get(rate) is not None:
                expected[rate][f"{source}, never seen in training (n={m['n']})"] = m[rate]
    assert "COVID-CXNet (multi-source), never seen in training (n=840)" in expected["sensitivity"]
    silent = {f"all test (n={test['n']})": test["silent_errors"]} | {  # wrong with no warning, beside the rates
        f"{s} (n={m['n']})": m for s, m in test["silent_errors"]["per_source"].items()} | {
        f"{s}, never seen in training (n={c['all_splits']['n']})": c["silent_errors"]["all_splits"]
        for s, c in card.cross_source.items()}
    expected["silent error rate (wrong, no warning)"] = {g: m["silent_errors"] / m["n"] for g, m in silent.items()}
    assert {t["name"]: dict(zip(t["y"], t["x"], strict=True)) for t in landing["data"]} == expected
    run(at.switch_page("pages/model.py"))
    assert disclaimer_shown(at)
    assert held_out_chart(at, "card_performance")["data"] == landing["data"]
    text = " ".join(h.value for h in at.header) + " ".join(c.value for c in at.caption)
    assert card.name in text and card.sha256 in text
    assert any(m.label.startswith("Threshold on P(") and m.value == f"{card.threshold:.3f}" for m in at.metric)
    # What was tried, as the card records it (held-out figures included), one row per recipe.
    recipes = card.training["recipes_compared"]
    tables = [d.value for d in at.dataframe if "recipe" in d.value.columns]
    assert len(tables) == 1 and tables[0]["recipe"].tolist() == [r["recipe"] for r in recipes]
    assert tables[0]["NIH held out (spec.)"].tolist() == [r.get("NIH held out (spec.)", "–") for r in recipes]


def test_model_page_says_how_a_source_adversary_and_mixstyle_were_trained() -> None:
    script = """
from types import SimpleNamespace
import pages.model as page
page._training(SimpleNamespace(training={"train_images": 4, "val_images": 2, "seed": 1, "mixstyle": 0.5,
    "source_adversary": {"weight": 1.0, "sources": ["Shenzhen", "NIH"], "val_within_class_source_accuracy": 0.4626}}))
"""
    at = run(AppTest.from_string(script, default_timeout=TIMEOUT))
    text = " ".join(m.value for m in at.markdown)
    assert ("**Source adversary**: gradient-reversal weight 1.0 against naming the hospital within a class "
            "(Shenzhen, NIH); its accuracy on val afterwards: 0.46.") in text
    assert ("**MixStyle across sources**: in 0.50 of the batches, each film's features took channel statistics "
            "mixed with a film's from another source.") in text


def test_the_explain_page_needs_no_torch_before_it_loads_the_model() -> None:
    """A fresh server's first run imports torch and loads the model (seconds). The Explain page draws what needs
    neither first (the uploader, the model's record from its card: tests/test_browser.py checks the order the
    browser gets them in), so its own imports and the card must not import torch."""
    import ast
    import subprocess
    import sys

    script = APP.parent / "pages" / "explain.py"
    imports = [node for node in ast.parse(script.read_text(encoding="utf-8")).body
               if isinstance(node, ast.Import | ast.ImportFrom) and getattr(node, "module", "") != "__future__"]
    assert any(isinstance(n, ast.ImportFrom) and n.module == "pages._models" for n in imports)
    code = "\n".join(ast.unparse(node) for node in imports) + (
        "\nimport sys\nimport models\ncard = models.read_card(app_models.DEFAULT_MODEL)\n"
        "print(card.name, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", "import pages._models as app_models\n" + code],
                         capture_output=True, text=True, check=True, cwd=APP.parent)
    assert out.stdout.split()[-1] == "False", out.stdout


class _Payload:
    """A pickle that would create a file if anything unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_own_model_is_per_session_and_a_pickle_is_never_executed(tmp_path: Path) -> None:
    import torch

    import models
    from models.bundle import bundle_bytes_from_state

    at = new_app()
    run(at.switch_page("pages/model.py"))
    marker = tmp_path / "pwned"
    hostile = io.BytesIO()
    torch.save({"state_dict": _Payload(marker)}, hostile)
    at.file_uploader(key="own_weights").set_value(("checkpoint.pt", hostile.getvalue(), "application/octet-stream"))
    at.button[-1].click()
    run(at)
    assert any("Could not load the weights" in e.value for e in at.error)
    assert not marker.exists(), "the uploaded pickle was executed"

    torch.manual_seed(0)
    weights = bundle_bytes_from_state(models.build_model("resnet18", 3))
    at.selectbox(key="own_arch").set_value("resnet18")
    at.text_input(key="own_classes").set_value("alpha, beta, gamma")
    at.file_uploader(key="own_weights").set_value(("my-resnet.safetensors", weights, "application/octet-stream"))
    at.button[-1].click()
    run(at)
    assert not at.error and any("Using my-resnet" in m.value for m in at.success)
    assert at.header[0].value.startswith("my-resnet")
    run(at.switch_page("pages/explain.py"))
    target_box = next(s for s in at.selectbox if s.label == "Target class")
    assert target_box.options[1:] == ["alpha", "beta", "gamma"]
    other_session = new_app()
    other_box = next(s for s in other_session.selectbox if s.label == "Target class")
    assert other_box.options[1:] == list(app_models.default_model().class_names), "another session's model changed"


def test_sample_gives_four_overlays_and_display_changes_compute_no_map(monkeypatch: pytest.MonkeyPatch) -> None:
    service().explain_cached.clear()
    service().clear_prefetches()
    at = new_app()
    calls, prefetch_start = service().engine_calls, service().prefetch_calls
    choose_sample(at, "NIH")
    service().wait_for_prefetches()  # (a prefetch that meets a waiting user skips: keep the count exact)
    assert calls + 1 == service().engine_calls
    titles = image_titles(at)
    assert titles[0].startswith("<b>Original</b>")
    assert [t.split("</b>")[0].removeprefix("<b>") for t in titles[1:]] == list(METHOD_TITLES)
    card_name = app_models.default_model().card.name
    assert all(card_name in t and "class " in t and " ms" in t for t in titles[1:])
    assert len(image_sources(at)) == 5

    before = image_sources(at)
    open_display(at)
    at.slider(key="disp_alpha").set_value(0.9)
    at.selectbox(key="disp_cmap").set_value("viridis")
    at.toggle(key="disp_contours").set_value(True)
    at.radio(key="disp_scale").set_value("per_image")
    run(at)
    after = image_sources(at)
    assert after[0] == before[0] and all(a != b for a, b in zip(after[1:], before[1:], strict=True))
    # plotly's own PNG export would miss the page's colours: the panel's mode bar does not offer it.
    chart = next(c for c in at.get("plotly_chart") if "panel_chart" in c.proto.id)
    assert json.loads(chart.proto.config)["modeBarButtonsToRemove"] == ["toImage"]
    # Opacity and colormap are the page's style, not new images: one rule, on the four heat layers.
    style = heat_styles(at)[-1]
    assert "--xai-heat-opacity: 0.900;" in style and "--xai-heat-filter: url(#xai-cmap-viridis)" in style
    assert all(f"g.subplot.x{i}y{i} " in style for i in range(2, 6)) and "g.subplot.xy " not in style
    at.slider(key="disp_alpha").set_value(0.3)
    run(at)
    assert image_sources(at) == after and "--xai-heat-opacity: 0.300;" in heat_styles(at)[-1]
    at.toggle(key="disp_overlay").set_value(False)
    at.select_slider(key="disp_zoom").set_value(2.0)
    run(at)
    assert "--xai-heat-opacity: 0.000;" in heat_styles(at)[-1]
    at.slider(key="disp_cx").set_value(25)
    run(at)
    layout = panel_spec(at)["layout"]
    width = Image.open(io.BytesIO(base64.b64decode(panel_layers(at)[0]["base"].split(",")[1]))).width
    assert layout["xaxis"]["range"] == pytest.approx([0.0, width / 2])  # 2x around 25 % from the left
    assert all(layout[f"xaxis{i}"]["matches"] == "x" for i in range(2, 6))  # every panel follows the zoom
    assert calls + 1 == service().engine_calls, "a display-only change recomputed the maps"

    at.multiselect(key="methods").set_value(["gradcam", "guided_backprop"])
    run(at)
    assert calls + 2 == service().engine_calls
    assert [t.split("</b>")[0].removeprefix("<b>") for t in image_titles(at)[1:]] == ["Grad-CAM", "Guided Backprop"]

    classes = app_models.default_model().class_names
    predicted = next(t for t in image_titles(at)[1:]).split("class ")[1].split(" ")[0]
    other = next(c for c in classes if c != predicted)
    service().wait_for_prefetches()  # the other class was explained in the background after each first result
    assert prefetch_start + 2 == service().prefetch_calls  # once per set of methods, never for display changes
    from xai import render

    layers_made: list[object] = []
    layers = render.layers
    monkeypatch.setattr(render, "layers", lambda *a: layers_made.append(a) or layers(*a))
    target_box = next(s for s in at.selectbox if s.label == "Target class")
    target_box.set_value(other)
    run(at)
    assert calls + 2 == service().engine_calls, "the target switch waited for an engine pass"
    assert not layers_made, "the switched class's screen layers were not prefetched"
    assert all(f"class {other}" in t for t in image_titles(at)[1:])
    # The prefetched maps are the engine's own for that class (same pipeline as a direct call).
    image = at.session_state[app_state.Key.IMAGE]
    direct = service().run_engine(image.radiograph, app_models.default_model(), classes.index(other),
                               ("gradcam", "guided_backprop"), count=False)
    shown = app_explanations.explain(image, app_models.default_model(), classes.index(other), ("gradcam", "guided_backprop"))
    assert shown.target == other
    for m in direct.maps:
        np.testing.assert_allclose(shown.maps[m], direct.maps[m], atol=1e-5)


def test_display_changes_recompose_cached_layers_and_pages_share_one_loaded_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from xai import render

    at = new_app()  # the server's start-up warm-up draws a view too: count from here
    service().wait_for_prefetches()  # nothing left over in the background…
    service().clear_prefetches()  # …and this film's other classes are prefetched afresh below
    made: list[tuple[int, render.DisplaySettings]] = []  # (explained class, settings) of each maps' shrink
    display_maps = render.display_maps

    def counting_maps(result, settings):  # noqa: ANN001, ANN202
        made.append((int(result.target_index), settings))
        return display_maps(result, settings)

    monkeypatch.setattr(render, "display_maps", counting_maps)
    loads: list[str] = []
    load_sample = ingest.load_bytes

    def counting_load(data, label, source):  # noqa: ANN001, ANN202
        loads.append(label)
        return load_sample(data, label, source)

    monkeypatch.setattr(ingest, "load_bytes", counting_load)
    ingest.load_sample.clear()
    service().clear_screen_caches()
    choose_sample(at, "NIH")
    # The other classes' layers are drawn in the background as now (prefetch): wait, so that they are
    # counted here and not taken for a rebuild by a later display change.
    service().wait_for_prefetches()
    from xai import display_scale

    typical = tuple(display_scale.from_card(app_models.default_model().card).vmax.items())
    default_layers = render.DisplaySettings(scale="fixed")  # the model's typical range: vmax is not in the key
    assert typical
    shown = made[0][0]  # the page draws its own class before it queues the others
    assert [s for t, s in made if t == shown] == [default_layers]  # the layers' key: nothing but layer fields
    assert [s for t, s in made if t != shown] == [default_layers] * (len(app_models.default_model().class_names) - 1)
    drawn = len(made)
    open_display(at)
    at.slider(key="disp_alpha").set_value(0.8)
    at.selectbox(key="disp_cmap").set_value("cividis")
    at.toggle(key="disp_contours").set_value(True)
    run(at)
    at.select_slider(key="disp_zoom").set_value(3.0)
    run(at)
    at.toggle(key="disp_lungs").set_value(True)
    run(at)
    assert len(made) == drawn, "a colour, contour, zoom or lung-outline change rebuilt the maps' layers"
    at.select_slider(key="disp_side").set_value("1024 px")
    run(at)
    assert made[drawn] == (shown, replace(default_layers, side=1024))  # the page's class first
    service().wait_for_prefetches()  # then the other classes follow the display in the background
    classes = len(app_models.default_model().class_names)
    assert [s for _, s in made[drawn:]] == [replace(default_layers, side=1024)] * classes
    assert {t for t, _ in made[drawn:]} == set(range(classes)), "a target switch would wait for its layers"
    at.select_slider(key="disp_side").set_value("768 px (fast)")
    run(at)
    service().wait_for_prefetches()
    assert len(made) == drawn + classes, "the first layers should still be cached"
    image = at.session_state[app_state.Key.IMAGE]
    assert isinstance(image, ingest.LoadedImage) and "NIH" in image.label
    run(at.switch_page("pages/trust.py"))  # the Trust page shows the same radiograph, loaded once
    assert at.session_state[app_state.Key.IMAGE] is image
    assert len(loads) == 1


def test_page_text_reads_right_and_no_method_still_shows_the_prediction() -> None:
    import re

    at = new_app()
    choose_sample(at, "NIH")
    open_display(at)
    at.radio(key="disp_scale").set_value("session")
    run(at)
    captions = [c.value for c in at.caption if "scroll to zoom" in c.value]
    assert len(captions) == 1 and "fixed on this session's first image" in captions[0]
    assert re.search(r"(^|[.!?] )Click a panel, then scroll to zoom", captions[0]), captions[0]  # a full stop
    rows = prediction_rows(prediction_html(at))
    classes = [r["class"] for r in rows]
    target = next(sb for sb in at.selectbox if sb.label == "Target class")
    assert classes == [c for c in target.options if c != "Predicted class"]  # every class, in the model's order
    assert all(re.fullmatch(r"\d\.\d{3}", r["printed"]) and r["printed"] == f"{float(r['p']):.3f}" for r in rows)
    assert sum(r["decided"] for r in rows) == 1  # each bar labelled by name and probability, one decided
    assert "threshold" in prediction_html(at)

    at.multiselect(key="methods").set_value([])
    run(at)
    assert [r["class"] for r in prediction_rows(prediction_html(at))] == classes, "the prediction went away"
    assert not [c for c in at.get("plotly_chart") if "panel_chart" in c.proto.id]
    assert any("No method chosen" in w.value for w in at.warning)


def test_flat_map_notices_use_the_methods_names(tmp_path: Path) -> None:
    import torch
    from test_pipeline import make_bundle

    import models
    from xai.pipeline import explain_radiograph
    from xai.radiograph import load_radiograph

    loaded = models.load(make_bundle(tmp_path / "bundle"))
    with torch.no_grad():
        loaded.module.fc.weight.zero_()  # no class depends on the features: every map is flat
    film = load_radiograph(next(iter(sorted((ingest.SAMPLES_DIR).glob("*.png")))))
    notices = explain_radiograph(film, loaded, name="x", methods=("gradcam", "gradcam++")).notices
    flat = [n for n in notices if "the map is flat" in n]
    assert [n.split(":")[0] for n in flat] == ["Grad-CAM", "Grad-CAM++"] and all(n.endswith(".") for n in flat)


def test_the_display_controls_are_drawn_only_while_open_and_keep_their_values_when_closed() -> None:
    """The Display expander draws its ~20 controls only while open (off every result's path). Closed, the page
    uses the values they held when last drawn; reopened, they show those values."""
    at = new_app()
    choose_sample(at, "NIH")
    assert not [w for w in (*at.slider, *at.select_slider, *at.toggle, *at.radio) if w.key.startswith("disp_")]
    default_layout = panel_spec(at)["layout"]
    open_display(at)
    at.slider(key="disp_alpha").set_value(0.35)
    at.selectbox(key="disp_cmap").set_value("magma")
    at.select_slider(key="disp_zoom").set_value(2.0)
    at.slider(key="disp_per_row").set_value(2)
    run(at)
    opened = panel_spec(at)["layout"]
    assert opened != default_layout
    at.session_state["disp_open"] = False
    run(at)
    run(at)  # a second closed run: Streamlit has dropped the widgets' own state by now
    assert not at.slider and "disp_alpha" not in at.session_state
    assert "--xai-heat-opacity: 0.350;" in heat_styles(at)[-1] and "url(#xai-cmap-magma)" in heat_styles(at)[-1]
    assert panel_spec(at)["layout"] == opened  # zoom and panels per row kept
    open_display(at)
    assert at.slider(key="disp_alpha").value == 0.35 and at.selectbox(key="disp_cmap").value == "magma"
    assert at.select_slider(key="disp_zoom").value == 2.0 and at.slider(key="disp_per_row").value == 2
    assert not [w.value for w in at.warning if "Session State" in w.value]


def test_default_scale_is_the_models_calibration_and_weak_evidence_is_flagged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from xai import display_scale, render

    at = new_app()
    choose_sample(at, "NIH")
    open_display(at)
    assert at.radio(key="disp_scale").value == "model"
    stored = display_scale.from_card(app_models.default_model().card)
    assert stored is not None
    spec = panel_spec(at)
    assert "typical peak" in json.dumps(spec["data"][-1]["marker"]["colorbar"])  # the colour bar says which
    assert any("Scale: the model's typical range" in c.value for c in at.caption)
    # The overlays are the calibrated view: raw magnitude / the card's typical peak, not a per-image stretch.
    image = at.session_state[app_state.Key.IMAGE]
    model = app_models.default_model()
    result = app_explanations.explain(image, model, None, tuple(warmup.METHODS_FOR_WARM_UP))
    expected = render.layers(image.radiograph, result, render.DisplaySettings(
        scale="fixed", vmax=tuple((m, stored.vmax[m]) for m in result.methods)))
    from pages._panel import screen_heat_uri

    assert panel_layers(at)[1]["heat"] == screen_heat_uri(expected.heat["gradcam"])
    assert panel_layers(at)[1]["heat"].startswith("data:image/png;")  # a smooth CAM map: lossless
    stretched = render.layers(image.radiograph, result, render.DisplaySettings())
    assert panel_layers(at)[1]["heat"] != screen_heat_uri(stretched.heat["gradcam"])

    # Explaining covid19 on a normal NIH film: weak evidence, said so.
    weak = [w.value for w in at.warning if w.value.startswith("Weak evidence")]
    predicted = result.predicted
    target_box = next(s for s in at.selectbox if s.label == "Target class")
    target_box.set_value("covid19" if predicted != "covid19" else "non_covid")
    run(at)
    flagged = [w.value for w in at.warning if w.value.startswith("Weak evidence")]
    assert len(flagged) == 1 and "probability" in flagged[0] and not weak

    # Per-image stretch is an explicit choice; a card without a calibration falls back to it and says so.
    at.radio(key="disp_scale").set_value("per_image")
    run(at)
    assert any("Scale: per image" in c.value for c in at.caption) and not any("no calibrated" in i.value for i in at.info)
    monkeypatch.setattr(display_scale, "from_card", lambda card: None)
    at.radio(key="disp_scale").set_value("model")
    run(at)
    assert any("has no calibrated display scale" in i.value for i in at.info)
    assert any("Scale: per image" in c.value for c in at.caption)


def test_dicom_window_presets_reset_and_slider_steps(dicom_dir: Path) -> None:
    from xai import render

    at = new_app()
    at.file_uploader(key="upload").set_value(("film.dcm", dicom_with_phi(dicom_dir), "application/dicom"))
    run(at)
    open_display(at)
    image = at.session_state[app_state.Key.IMAGE]
    values = image.radiograph.modality_values
    step = render.nice_step(float(values.max() - values.min()))
    centre, width = (next(s for s in at.slider if s.label == f"Window {n}") for n in ("centre", "width"))
    assert centre.step == width.step == step  # an arrow key moves ~1/200 of the range
    start, shown = (centre.value, width.value), image_sources(at)[0]
    for preset in ("lung", "bone"):
        at.button(key=f"win_{preset}").click()
        run(at)
        c, w = render.window_preset(image.radiograph, preset)
        now = tuple(next(s for s in at.slider if s.label == f"Window {n}").value for n in ("centre", "width"))
        assert now == pytest.approx((c, w), abs=step)
        assert image_sources(at)[0] != shown
    at.button(key="win_reset").click()
    run(at)
    assert tuple(next(s for s in at.slider if s.label == f"Window {n}").value
                 for n in ("centre", "width")) == pytest.approx(start, abs=step)


def test_lungs_share_in_each_caption_outline_toggle_and_outside_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from xai.anatomy import (
        anatomy_regions,
        anatomy_regions_from_masks,
        evidence_by_region,
        visible_lung_share,
    )

    at = new_app()
    choose_sample(at, "NIH")
    image = at.session_state[app_state.Key.IMAGE]
    regions = anatomy_regions(image.radiograph, max_side=app_lungs.REGIONS_SIDE, markers_side=app_lungs.REGIONS_SIDE, ocr=False)
    assert regions.found
    result = app_explanations.explain(image, app_models.default_model(), None, tuple(warmup.METHODS_FOR_WARM_UP))
    for title, m in zip(image_titles(at)[1:], result.methods, strict=True):  # the share, independently computed
        shown = re.search(r"· (\d+)% in lungs", title)  # the visible lung fields (six zones)
        assert shown, title
        assert int(shown.group(1)) == round(100 * visible_lung_share(evidence_by_region(result.maps[m], regions)))
    assert not [w for w in at.warning if "No lung field" in w.value]

    before = image_sources(at)
    open_display(at)
    at.toggle(key="disp_lungs").set_value(True)
    run(at)
    after = image_sources(at)
    assert all(a != b for a, b in zip(after, before, strict=True))  # the outline on every panel
    lines = panel_layers(at)[0]["lines"]
    outline = np.asarray(Image.open(io.BytesIO(base64.b64decode(lines.split(",")[1]))).convert("RGBA")).astype(int)
    green = (outline[..., 3] > 128) & (outline[..., 1] > 200) & (outline[..., 0] < 190) & (outline[..., 2] < 180)
    assert green.sum() > 500  # the light-green outline over the radiograph

    # A lung field in the top-left corner only: every map lies mostly outside it, and the page says where.
    corner = np.zeros(image.radiograph.shape, bool)
    corner[: corner.shape[0] // 5, : corner.shape[1] // 5] = True
    corner_regions = anatomy_regions_from_masks(image.radiograph.pixels, corner, corner)
    monkeypatch.setattr(app_lungs, "film_anatomy", lambda sha, radiograph: corner_regions)
    app_lungs.readouts.clear()
    at.toggle(key="disp_lungs").set_value(False)
    run(at)
    boxes = [w.value for w in (*at.warning, *at.error) if "outside the visible lung fields" in w.value]
    assert len(boxes) == 1 and len(boxes[0].split("\n\n")) == len(result.methods)
    assert all(re.search(r"mainly (on the |)(below the lungs|chest wall|above the lungs)", line)
               for line in boxes[0].split("\n\n")), boxes
    app_lungs.readouts.clear()


def test_a_prefetch_gives_way_to_a_user_waiting_for_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = ingest.list_samples()
    image = ingest.load_sample(samples[next(t for t in samples if "NIH" in t)])
    model = app_models.default_model()
    result = service().run_engine(image.radiograph, model, None, ("gradcam",), count=False)
    service().clear_prefetches()
    monkeypatch.setattr(service(), "foreground", 1)  # someone's explanation is being computed
    before, calls = service().prefetch_calls, service().engine_calls
    assert service().prefetch_targets(image, model, result) == len(model.class_names) - 1
    service().wait_for_prefetches()
    assert before == service().prefetch_calls  # skipped, not computed
    monkeypatch.setattr(service(), "foreground", 0)
    other = 1 - result.target_index
    service().explain_cached.clear()
    switched = app_explanations.explain(image, model, other, ("gradcam",))  # the page computes it itself
    assert switched.target_index == other and calls + 1 == service().engine_calls
    assert service().prefetch_targets(image, model, result) == 0  # once per film: not queued again


def test_png_upload_then_bad_upload_keeps_the_previous_result(
    chestcovnet_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xai.sandboxed_decoder

    decoded_in_workers: list[int] = []
    isolated = xai.sandboxed_decoder.load_radiograph_isolated

    def counting_isolated(source, **kwargs):  # uploads must go through the worker-process decoder
        decoded_in_workers.append(len(source))
        return isolated(source, **kwargs)

    monkeypatch.setattr(xai.sandboxed_decoder, "load_radiograph_isolated", counting_isolated)
    jpeg = next(iter(sorted((chestcovnet_dir / "images").glob("nih_*.jpg"))))
    buffer = io.BytesIO()
    Image.open(jpeg).save(buffer, format="PNG")  # lossless re-encoding of a real radiograph
    at = new_app()
    at.file_uploader(key="upload").set_value(("film.png", buffer.getvalue(), "image/png"))
    run(at)
    assert not at.error
    assert decoded_in_workers == [len(buffer.getvalue())]
    shown = image_sources(at)
    assert len(shown) == 5

    at.file_uploader(key="upload").set_value(("broken.dcm", b"this is not a radiograph" * 10, "application/dicom"))
    run(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "broken.dcm" in errors[0] and "not a recognised image" in errors[0]
    assert image_sources(at) == shown, "the previous result should stay on screen"

    open_display(at)
    at.slider(key="disp_alpha").set_value(0.2)  # still usable after the bad file
    run(at)
    assert len(image_sources(at)) == 5


def test_dicom_upload_windowing_and_exports_carry_no_identifiers(
    dicom_dir: Path, deferred: dict[str, Callable[[], bytes]]
) -> None:
    import pypdf

    data = dicom_with_phi(dicom_dir)
    at = new_app()
    at.file_uploader(key="upload").set_value(("DOE_JANE_PID-98765.dcm", data, "application/dicom"))
    run(at)
    assert not at.error
    page_text = " ".join(str(e.value) for e in at.markdown) + " ".join(
        str(e.value) for e in at.subheader) + json.dumps(panel_spec(at)["layout"])
    assert not any(v in page_text for v in (*PHI_VALUES, "DOE_JANE")), "identifiers shown with details off"

    open_display(at)
    calls = service().engine_calls
    before = image_sources(at)[0]
    centre = next(s for s in at.slider if s.label == "Window centre")
    centre.set_value(float(centre.value) + 40.0)
    run(at)
    assert image_sources(at)[0] != before and calls == service().engine_calls  # re-windowed, nothing recomputed

    names = set(deferred)
    assert any(n.endswith("_sc_pacs.zip") for n in names) and any(n.endswith("_report.pdf") for n in names)
    assert len([n for n in names if n.endswith(".png") and "_report" not in n]) == 4
    assert any(n.endswith("_gradcampp.png") for n in names), "Grad-CAM++ file name"
    assert not any("DOE" in n or "PID" in n for n in names), "file names must not carry the upload's name"
    files = {name: make() for name, make in deferred.items()}
    pacs = files.pop(next(n for n in files if n.endswith("_sc_pacs.zip")))  # says it carries identifiers
    for name, blob in files.items():
        assert not any(v.encode() in blob for v in PHI_VALUES), f"{name} carries an identifier"
    pdf_text = pypdf.PdfReader(io.BytesIO(files[next(n for n in files if n.endswith(".pdf"))])).pages[0].extract_text()
    assert "not for diagnosis" in pdf_text and not any(v in pdf_text for v in PHI_VALUES)
    assert "methods Grad-CAM, Grad-CAM++, Guided Backprop, Guided Grad-CAM" in pdf_text.replace("\n", " ")
    assert "No out-of-distribution warning" in pdf_text.replace("\n", " ")  # the OOD verdict
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    for archive, same_patient in ((pacs, True), (files[next(n for n in files if n.endswith("_deidentified.zip"))], False)):
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            members = sorted(z.namelist())
            assert len(members) == 4 and not any("DOE" in n or "PID" in n for n in members)
            scs = [pydicom.dcmread(io.BytesIO(z.read(n))) for n in members]
        for sc in scs:
            assert (sc.PatientID == PHI["PatientID"]) is same_patient
            assert (sc.StudyInstanceUID == source.StudyInstanceUID) is same_patient
            assert (sc.Rows, sc.Columns) > (source.Rows, source.Columns - 1)  # the film's own grid + label
            assert sc.Columns == source.Columns
    overlay = Image.open(io.BytesIO(files[next(n for n in files if n.endswith("_gradcam.png"))]))
    assert overlay.width >= 1024  # exported at full resolution (plus the caption band below)

    # Switched on, the details appear in the report: the check above could have failed.
    deferred.clear()
    at.toggle(key="show_patient").set_value(True)
    run(at)
    report = deferred[next(n for n in deferred if n.endswith("_report.pdf"))]()
    assert "DOE^JANE" in pypdf.PdfReader(io.BytesIO(report)).pages[0].extract_text()
    assert np.any([PHI["PatientID"] in str(t.value) for t in at.table]) or any(
        PHI["PatientID"] in str(d.value) for d in at.dataframe)


def test_report_is_drawn_at_export_resolution_not_from_screen_pixels(
    deferred: dict[str, Callable[[], bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    from xai.export import provenance

    monkeypatch.setattr(provenance, "_utc_now", lambda: datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    at = new_app()
    choose_sample(at, "NIH")

    def report_pixels() -> np.ndarray:
        made = deferred[next(n for n in deferred if n.endswith("_report.png"))]()
        return np.asarray(Image.open(io.BytesIO(made)).convert("RGB"))

    first = report_pixels()
    assert provenance.Provenance("m", "0", "gradcam", "c", "l").date_text == "2026-12-01 12:00 UTC"  # the fixed clock
    open_display(at)
    at.select_slider(key="disp_side").set_value("1536 px (fine)")
    run(at)
    np.testing.assert_array_equal(report_pixels(), first)
    at.slider(key="disp_alpha").set_value(0.9)  # a display setting that is part of the report does change it
    run(at)
    assert not np.array_equal(report_pixels(), first)


def test_a_missing_model_bundle_gives_a_clear_message_and_the_server_keeps_serving(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(app_models, "DEFAULT_MODEL", str(tmp_path / "no-such-bundle"))
    app_models.forget_bundled_model()
    try:
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        at.run()
        assert not at.exception, [e.value for e in at.exception]  # a message, not a traceback
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and "model could not be loaded" in errors[0] and "no-such-bundle" in errors[0]
        assert disclaimer_shown(at)  # the page still serves its frame
    finally:
        app_models.forget_bundled_model()  # the next test loads the real bundle again


def test_explain_page_warns_when_the_input_is_unlike_the_training_data() -> None:
    from test_ood import _document  # one home for the synthetic non-chest picture

    page = io.BytesIO()
    Image.fromarray((_document() * 255).astype(np.uint8)).save(page, format="PNG")
    at = new_app()
    at.file_uploader(key="upload").set_value(("page.png", page.getvalue(), "image/png"))
    run(at)
    warnings = [w.value for w in at.warning if "Unlike the training data" in w.value]
    assert len(warnings) == 1 and "Mahalanobis distance" in warnings[0]
    # No lung field on a page of text: said so, and no share of evidence "in the lungs" is given.
    lungs = [w.value for w in at.warning if "No lung field found" in w.value]
    assert len(lungs) == 1 and "may not be a frontal chest radiograph" in lungs[0]
    assert not any("in lungs" in t for t in image_titles(at))

    calls = service().engine_calls
    open_display(at)
    at.slider(key="disp_alpha").set_value(0.3)  # a display change: the verdict is cached, no map recomputed
    run(at)
    assert calls == service().engine_calls
    assert [w.value for w in at.warning if "Unlike the training data" in w.value] == warnings


def test_a_chest_film_gets_no_out_of_distribution_warning(chestcovnet_dir: Path) -> None:
    film = (chestcovnet_dir / "images" / "nih_00008727_009.jpg").read_bytes()
    at = new_app()
    at.file_uploader(key="upload").set_value(("film.jpg", film, "image/jpeg"))
    run(at)
    assert not [w.value for w in at.warning if "Unlike the training data" in w.value]
    assert any("No out-of-distribution warning" in c.value and "never saw" in c.value for c in at.caption)


def test_held_out_chart_draws_recorded_rates_only() -> None:
    from pages._panel import source_metrics_figure

    fig = source_metrics_figure({"n": 10, "sensitivity": 0.5, "specificity": None,
                                 "per_source": {"A": {"n": 3, "specificity": 0.0}, "B": {"n": 2}}},
                                cross_source={"C": {"all_splits": {"n": 7, "sensitivity": 0.25}}, "D": {}})
    bars = {t.name: dict(zip(t.y, t.x, strict=True)) for t in fig.data}
    # A rate of 0.0 is a result (all negatives called positive) and is drawn; a missing rate is not.
    assert bars == {"sensitivity": {"all test (n=10)": 0.5, "C, never seen in training (n=7)": 0.25},
                    "specificity": {"A (n=3)": 0.0}}
    assert "spec. 0.00" in fig.data[1].text  # written out, since a zero bar has no length
    assert source_metrics_figure({"n": 5, "per_source": {"A": {"n": 5}}}) is None


def test_the_bundled_model_is_usable_while_its_warm_up_runs() -> None:
    """default_model returns once the model is loaded, and the page warm-up (~0.5 s) goes on in the background. A
    film explained meanwhile shares the model with it (the engine's lock): its maps are those of a film explained
    once the warm-up is over."""
    samples = ingest.list_samples()
    image = ingest.load_sample(samples[next(t for t in samples if "NIH" in t)])
    app_models.forget_bundled_model()
    model = app_models.default_model()
    with pytest.raises(TimeoutError):  # returned before its warm-up finished
        app_models.wait_for_warm_up(timeout_s=0)
    methods = tuple(warmup.METHODS_FOR_WARM_UP)
    during = service().run_engine(image.radiograph, model, None, methods, count=False)
    app_models.wait_for_warm_up()
    after = service().run_engine(image.radiograph, model, None, methods, count=False)
    assert during.predicted == after.predicted
    assert during.probabilities == pytest.approx(after.probabilities, abs=1e-6)
    for method in methods:
        np.testing.assert_allclose(during.maps[method], after.maps[method], atol=1e-5)


def test_a_failing_warm_up_is_logged_and_the_model_still_serves(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The warm-up runs in the background: when it fails, the server's log says so (no traceback on a page, no
    patient data: it runs on a bundled film) and the page serves the model all the same."""
    def broken(model):  # noqa: ANN001, ANN202
        raise RuntimeError("no kernels today")

    monkeypatch.setattr(app_models, "warm_up_page", broken)
    app_models.forget_bundled_model()
    try:
        with caplog.at_level("WARNING", logger=app_models.__name__):
            model = app_models.default_model()
            app_models.wait_for_warm_up()  # the failed warm-up is over, and reported
        assert "start-up warm-up failed (RuntimeError: no kernels today)" in caplog.text
        at = new_app()
        assert at.selectbox(key=app_state.explain_target_key(model.key)).options[1:] == list(model.class_names)
    finally:
        monkeypatch.undo()
        app_models.forget_bundled_model()  # the next test loads the real bundle (and warms it up) again


def test_a_fresh_servers_first_page_draws_the_models_widgets_before_the_model_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bundled model's load (torch's import: ~1.5-2 s of CPU) starts once a session's first page has run
    (app.py). The page's model widgets come from the card meanwhile; a film chosen while the load goes on waits for
    it and gets the loaded model's maps."""
    import models

    real_load, started, release = models.load, threading.Event(), threading.Event()

    def held_load(name):  # noqa: ANN001, ANN202
        started.set()
        if not release.wait(120):
            raise TimeoutError("the test never released the load")
        return real_load(name)

    monkeypatch.setattr(models, "load", held_load)
    app_models.forget_bundled_model()
    try:
        at = run(AppTest.from_file(str(APP), default_timeout=TIMEOUT))
        assert started.wait(30), "the first page's run did not start the model's load"
        loading = app_models.bundled_model_loading().model
        assert not loading.done()
        card = models.read_card(app_models.DEFAULT_MODEL)
        target_box = at.selectbox(key=app_state.explain_target_key(app_models.model_key(card)))
        assert target_box.options[1:] == list(card.class_names)
        assert any(card.name in c.value and "bundled" in c.value for c in at.sidebar.caption)

        threading.Timer(0.5, release.set).start()  # the load ends while the film's run waits for it
        film = (APP.parent / "samples" / "non_covid_nih_pa.png").read_bytes()
        at.file_uploader(key="upload").set_value(("film.png", film, "image/png"))
        run(at)
        model = app_models.default_model()
        assert loading.done() and loading.result() is model
        assert model.key == app_models.model_key(card)  # the widgets' key is the loaded model's
        titles = image_titles(at)[1:]  # after the film's own
        assert len(titles) == len(warmup.METHODS_FOR_WARM_UP) and all("% in lungs" in t for t in titles), titles
        from xai.radiograph import load_radiograph

        direct = service().run_engine(load_radiograph(APP.parent / "samples" / "non_covid_nih_pa.png"), model, None,
                                      tuple(warmup.METHODS_FOR_WARM_UP), count=False)
        shown = {r["class"]: float(r["p"]) for r in prediction_rows(prediction_html(at))}
        assert shown == pytest.approx(dict(direct.probabilities), abs=1e-6)
    finally:
        release.set()
        monkeypatch.undo()
        app_models.wait_for_warm_up()
        app_models.forget_bundled_model()  # the next test loads the real bundle (and warms it up) again


def test_a_page_that_needs_the_model_starts_its_load_without_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the first page has run, the bundled model's load waits a moment (LOAD_AFTER_PAGE_S) so the page's last
    messages go out before torch's import holds the interpreter's lock; a page that needs the model cuts it short."""
    monkeypatch.setattr(app_models, "LOAD_AFTER_PAGE_S", 3600.0)  # the wait alone would outlast the test
    app_models.forget_bundled_model()
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        run(AppTest.from_file(str(APP), default_timeout=TIMEOUT))  # the landing page: the load starts, and waits
        load = app_models.bundled_model_loading()
        assert not load.wanted.is_set() and not load.model.done()
        model = pool.submit(app_models.default_model).result(timeout=120)  # a page that needs it
        assert load.model.result() is model and model.origin == "bundled"
    finally:
        app_models.bundled_model_loading().wanted.set()  # never leave the start-up thread waiting
        pool.shutdown(wait=False)
        app_models.wait_for_warm_up()
        app_models.forget_bundled_model()


def test_the_start_up_heap_is_kept_out_of_full_garbage_collections() -> None:
    """Full collections re-scanning the start-up heap (torch, plotly, the model) stalled every session for
    100-200 ms at a time; the server freezes that heap once the model is loaded."""
    import gc

    new_app()
    assert gc.get_freeze_count() > 100_000


def test_the_lung_field_started_early_is_the_one_the_page_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """start_film_anatomy runs the lung model in the background (beside the engine), through the film's anatomical
    regions; the page's own calls then find both in the cache: one lung-model run per film, the same objects, and
    the lung field is the regions' V7 field."""
    import xai.anatomy
    from xai.radiograph import load_radiograph

    radiograph = load_radiograph(APP.parent / "samples" / "non_covid_nih_pa.png")
    runs: list[int] = []
    real = app_lungs.anatomy_regions
    lung_model = xai.anatomy.find_lungs

    def counted(r, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if r is radiograph:  # an earlier test's background work may still look at its own films
            runs.append(1)
        return real(r, **kwargs)

    def never(r, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if r is radiograph:
            runs.append(2)  # a second lung-model run for the same film
        return lung_model(r, **kwargs)

    service().wait_for_prefetches()  # an earlier test's class prefetch would meet the cleared cache
    monkeypatch.setattr(app_lungs, "anatomy_regions", counted)
    monkeypatch.setattr(xai.anatomy, "find_lungs", never)  # the library's single-convention entry
    app_lungs.lung_field.clear()
    app_lungs.film_anatomy.clear()
    app_lungs.start_film_anatomy("early-film", radiograph)
    app_lungs.lung_worker().submit(lambda: None).result(timeout=120)  # the one worker has finished the film
    assert runs == [1]
    field = app_lungs.lung_field("early-film", radiograph)
    regions = app_lungs.film_anatomy("early-film", radiograph)
    assert runs == [1] and field.found and app_lungs.lung_field("early-film", radiograph) is field
    assert field is regions.lungs and field.convention == "v7"


def test_a_first_result_makes_no_film_sized_map() -> None:
    """On a 1024² DICOM the page draws its panels (768 px) and reads the anatomy (on its regions' grid) straight
    from the model's grid: no film-sized map is made until an export asks for one (xai.pipeline.FilmMaps)."""
    at = new_app()
    choose_sample(at, "DICOM")
    assert not at.exception and len(image_titles(at)) == 5
    image = at.session_state[app_state.Key.IMAGE]
    result = app_explanations.explain(image, app_models.default_model(), None, tuple(warmup.METHODS_FOR_WARM_UP))
    assert max(result.radiograph.shape) > 768
    assert result.methods and not any(result.maps.made(m) for m in result.methods)
