"""The real app in a real browser: ``streamlit run app.py`` driven by headless Debian chromium (Playwright).

Starts the server on a free localhost port, uploads a real radiograph, waits until the original and the
four overlays are drawn, checks the prediction shown against an in-process forward pass of the same model,
checks that no error box appeared, then uploads a broken file and checks the app says so and keeps the
previous result. A screenshot is saved to the test's tmp folder.

Playwright's own browser download cannot work here: the test uses ``/usr/bin/chromium`` (``make test``
installs it with apt-get). A missing browser FAILS the test (never a skip), in CI and locally.
The model is the app's default (``XAI_APP_MODEL``, else the bundled ChestCOVNet), as ``make run`` uses it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
METHOD_LABELS = ("Grad-CAM", "Grad-CAM++", "Guided Backprop", "Guided Grad-CAM")
UPLOADER = '[data-testid="stFileUploaderDropzoneInput"]'
PANEL = ".st-key-panel_chart"
PREDICTION = ".st-key-prediction_chart"
SERVER_START_S = 180
RESULT_S = 300


# ------------------------------------------------------------------------------ server and browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers_health_check(url: str) -> bool:
    """Whether the Streamlit server at ``url`` answers ``/_stcore/health`` (False while it starts)."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if answers_health_check(url):
            return
        time.sleep(0.2)
    pytest.fail(f"streamlit not healthy within {timeout_s} s:\n{log.read_text()[-3000:]}")


def start_server(log: Path, port: int, extra_env: dict[str, str] | None = None,
                 app_dir: Path = REPO) -> subprocess.Popen:
    """``python -m streamlit run app.py`` from the repo root (or ``app_dir``: another checkout, for benchmarks
    against an earlier commit), bound to localhost (also used by benchmarks)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.headless", "true", "--server.address", "127.0.0.1",
               "--browser.gatherUsageStats", "false"]
    return subprocess.Popen(command, cwd=app_dir, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    port = free_port()
    process = start_server(log, port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log, SERVER_START_S)
        yield url
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} not found: install Debian's chromium (`make browser`, or `apt-get install -y chromium` as "
        "root). The browser test never skips."
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


# ------------------------------------------------------------------------------------- page helpers
def app_page_titles() -> list[str]:
    """The titles of app.py's page list (``_PAGES``) whose scripts exist, in order: the navigation to expect."""
    import ast

    tree = ast.parse((REPO / "app.py").read_text(encoding="utf-8"))
    pages = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_PAGES")
    return [title for script, title, _icon in pages if (REPO / script).is_file()]


def overlay_count_js(n_methods: int) -> str:
    """JS predicate: the panel shows the original + ``n_methods`` images, titled with every method label."""
    labels = list(METHOD_LABELS[:n_methods])
    return f"""() => {{
        const chart = document.querySelector('{PANEL}');
        if (!chart) return false;
        const titles = Array.from(chart.querySelectorAll('.annotation-text')).map(t => t.textContent);
        const labels = {labels!r};
        // "Grad-CAM" must not be satisfied by "Grad-CAM++": the label is followed by anything but '+'.
        const titled = labels.every(l => titles.some(t => t.startsWith(l) && !t.startsWith(l + '+')));
        return titled && chart.querySelectorAll('image').length >= {1 + n_methods};
    }}"""


PANEL_LAYERS_JS = f"""() => Array.from(document.querySelectorAll('{PANEL} g.subplot')).map(subplot =>
    Array.from(subplot.querySelectorAll('.imagelayer image')).map(e => {{
        const s = getComputedStyle(e); return [e.getAttribute('href'), parseFloat(s.opacity), s.filter]; }}))"""


def _decode(href: str, mode: str) -> np.ndarray:
    assert href.startswith("data:image/"), href[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1]))).convert(mode)).astype(np.float64)


def panel_images(page) -> list[np.ndarray]:
    """Each panel as the page draws it, from its layers and their computed style: the radiograph, the heat
    layer (a gray heat index painted by the colour filter named in its CSS ``filter``, at its CSS opacity)
    and the outlines on top — xai.render.compose's formula (int16 RGB, panels in order)."""
    from xai import render

    images = []
    for layers in page.evaluate(PANEL_LAYERS_JS):
        (base_href, _, _), *rest = layers
        out = _decode(base_href, "RGB")
        for href, opacity, css_filter in rest:
            if "xai-cmap-" in css_filter:  # a heat layer
                cmap = css_filter.split("xai-cmap-")[1].split(")")[0].strip("\"'")
                color = render.lut(cmap)[_decode(href, "L").astype(np.uint8)]
                out = (1 - opacity) * out + opacity * color
            else:  # outlines: straight alpha over
                rgba = _decode(href, "RGBA")
                alpha = rgba[..., 3:] / 255.0
                out = (1 - alpha) * out + alpha * rgba[..., :3]
        images.append(np.round(out).astype(np.int16))
    return images


def wait_idle(page, timeout_s: float = 60) -> None:
    """Wait until the script run is over (Streamlit shows its status widget only while running)."""
    page.wait_for_timeout(300)  # the rerun request reaches the server first
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                           timeout=timeout_s * 1000, polling=100)


def click_key(page, key: str, timeout_s: float = 60) -> None:
    """Click the button of the widget with key ``key``, once only one copy of it is drawn (a rerun may briefly
    leave the previous run's copy on the page, marked stale), then wait until the run it starts is over."""
    page.wait_for_function(f"() => document.querySelectorAll('.st-key-{key} button').length === 1",
                           timeout=timeout_s * 1000)
    page.locator(f".st-key-{key} button").click()
    wait_idle(page, timeout_s)


def error_texts(page) -> list[str]:
    exceptions = page.locator('[data-testid="stException"]').all_inner_texts()
    alerts = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    return exceptions + alerts


SHOWN_PROBABILITIES_JS = f"""() => {{
    const rows = Array.from(document.querySelectorAll('{PREDICTION} .xai-prob-row'));
    if (!rows.length) return null;
    return Object.fromEntries(rows.map(r => [r.dataset.class, parseFloat(r.dataset.probability)]));
}}"""
"""JS: ``{class: probability}`` as drawn (each bar's row carries its value in full; the label shows 3 decimals)."""


def shown_probabilities(page) -> dict[str, float]:
    return {str(k): float(v) for k, v in (page.evaluate(SHOWN_PROBABILITIES_JS) or {}).items()}


def model_probabilities(image_path: Path) -> dict[str, float]:
    """The same model's softmax output for the file, computed in this process (independent of the app)."""
    import torch

    import models
    from xai.preprocessing import prepare
    from xai.radiograph import load_radiograph

    loaded = models.load(os.environ.get("XAI_APP_MODEL", "chestcovnet"))
    tensor, _ = prepare(load_radiograph(image_path), loaded.card.preprocessing)
    with torch.no_grad():
        probs = torch.softmax(loaded.module(tensor), dim=1)[0].numpy()
    return dict(zip(loaded.card.class_names, probs.tolist(), strict=True))


# -------------------------------------------------------------------------------------------- test
def test_upload_shows_four_overlays_then_bad_upload_keeps_them(server, browser, chestcovnet_dir, tmp_path):
    image_path = chestcovnet_dir / "images" / "mhh_a4318ac9.jpg"  # a real COVID-19 AP film (MHH, test split)
    context = browser.new_context(viewport={"width": 1600, "height": 1200})
    page = context.new_page()
    try:
        page.goto(server, wait_until="domcontentloaded")
        page.wait_for_selector(UPLOADER, state="attached", timeout=SERVER_START_S * 1000)
        assert page.get_by_text("Research and teaching use — not for diagnosis").first.is_visible()

        page.locator(UPLOADER).set_input_files(str(image_path))
        page.wait_for_function(overlay_count_js(4), timeout=RESULT_S * 1000, polling=250)
        page.wait_for_timeout(500)  # let the last paint land before the screenshot
        shot = tmp_path / "explain_page.png"
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")

        assert error_texts(page) == []
        original, *overlays = panel_images(page)
        assert len(overlays) == 4
        for overlay in overlays:  # each overlay is the radiograph with a colour map on top, not a copy
            assert overlay.shape == original.shape
            assert np.abs(overlay - original).mean() > 5
            assert np.abs(overlay[..., 0] - overlay[..., 2]).mean() > 3  # colour, not gray
        gray = original.std(axis=2).mean()
        assert gray < 3  # the original panel is the gray radiograph
        # The browser really paints the heat layer with the colour filter: colour in its screenshot.
        painted = np.asarray(Image.open(io.BytesIO(page.locator(f"{PANEL} g.subplot.x2y2").screenshot()))
                             .convert("RGB")).astype(np.int16)
        assert np.abs(painted[..., 0] - painted[..., 2]).mean() > 3

        # An opacity change is previewed by the page as the slider moves (the container's custom property),
        # and the server's style then agrees: every heat layer drawn at the new opacity.
        page.locator('[data-testid="stExpander"] summary', has_text="Display").first.click()
        slider = page.locator(".st-key-disp_alpha input[type=range]")
        slider.wait_for(state="attached", timeout=30_000)  # the expander draws its controls once opened
        wait_idle(page)
        slider.focus()
        slider.press("ArrowRight")  # 0.45 -> 0.50
        page.wait_for_function(f"() => document.querySelector('{PANEL}').style"
                               ".getPropertyValue('--xai-heat-opacity') === '0.500'", timeout=10_000)
        wait_idle(page)
        drawn = [layers[1] for layers in page.evaluate(PANEL_LAYERS_JS)[1:]]
        assert len(drawn) == 4 and all(o == pytest.approx(0.5) and "xai-cmap-inferno" in f for _, o, f in drawn)
        # A colormap chosen with the keyboard: previewed at once, then the server's style agrees.
        page.locator('.st-key-disp_cmap input[role="combobox"]').click()
        page.keyboard.press("ControlOrMeta+a")
        page.keyboard.type("viridis")
        page.wait_for_selector('[role="option"]', state="visible", timeout=30_000)
        page.keyboard.press("Enter")
        page.wait_for_function(f"() => document.querySelector('{PANEL}').style"
                               ".getPropertyValue('--xai-heat-filter').includes('xai-cmap-viridis')", timeout=10_000)
        wait_idle(page)
        drawn = [layers[1] for layers in page.evaluate(PANEL_LAYERS_JS)[1:]]
        assert all(o == pytest.approx(0.5) and "xai-cmap-viridis" in f for _, o, f in drawn)
        page.locator('.st-key-disp_cmap input[role="combobox"]').click()  # back to the default for what follows
        page.keyboard.press("ControlOrMeta+a")
        page.keyboard.type("inferno")
        page.wait_for_selector('[role="option"]', state="visible", timeout=30_000)
        page.keyboard.press("Enter")
        wait_idle(page)
        # Enlarged to full screen, the panel keeps its coloured, blended heat layers (the style is scoped to
        # the chart's container, which the full-screen view keeps).
        page.locator(PANEL).hover()
        page.get_by_role("button", name="Fullscreen").first.click()
        page.get_by_role("button", name="Close fullscreen").wait_for(state="visible", timeout=10_000)
        drawn = [layers[1] for layers in page.evaluate(PANEL_LAYERS_JS)[1:]]
        assert len(drawn) == 4 and all(o == pytest.approx(0.5) and "xai-cmap-inferno" in f for _, o, f in drawn)
        page.get_by_role("button", name="Close fullscreen").click()
        wait_idle(page)
        # The Display section closed again: its controls go, the settings made in it stay.
        page.locator('[data-testid="stExpander"] summary', has_text="Display").first.click()
        page.locator(".st-key-disp_alpha input[type=range]").wait_for(state="detached", timeout=30_000)
        wait_idle(page)
        for _ in range(2):  # two more runs: Streamlit has dropped the undrawn widgets' own state after the first
            page.locator(".st-key-show_patient label").click()
            wait_idle(page)
        drawn = [layers[1] for layers in page.evaluate(PANEL_LAYERS_JS)[1:]]
        assert len(drawn) == 4 and all(o == pytest.approx(0.5) and "xai-cmap-inferno" in f for _, o, f in drawn)

        page.wait_for_function(f"() => ({SHOWN_PROBABILITIES_JS})() !== null", timeout=60_000)
        shown = shown_probabilities(page)
        expected = model_probabilities(image_path)
        assert shown.keys() == expected.keys()
        np.testing.assert_allclose([shown[k] for k in expected], list(expected.values()), atol=1e-4)

        shot_pixels = np.asarray(Image.open(shot).convert("L"))
        assert shot_pixels.shape == (1200, 1600) and shot_pixels.std() > 20

        # A file that is not a radiograph: a clear message; the previous result stays on screen.
        wait_idle(page)
        before = panel_images(page)
        page.locator(UPLOADER).set_input_files(
            files=[{"name": "notes.dcm", "mimeType": "application/dicom", "buffer": b"this is not an image" * 50}]
        )
        alert = page.locator('[data-testid="stAlertContentError"]')
        alert.first.wait_for(timeout=60_000)
        message = alert.first.inner_text()
        assert "notes.dcm" in message and "previous image" in message
        assert page.locator('[data-testid="stException"]').count() == 0
        wait_idle(page)
        page.wait_for_function(overlay_count_js(4), timeout=60_000)
        after = panel_images(page)
        assert len(after) == len(before)
        for a, b in zip(after, before, strict=True):  # the same pictures (re-encoding may differ by a level)
            assert a.shape == b.shape and np.abs(a - b).mean() < 1.0
    finally:
        context.close()


@contextlib.contextmanager
def fresh_server_page(browser, tmp_path: Path) -> Iterator[tuple[str, object, list[bytes]]]:
    """A freshly started server (nothing loaded yet) and a new page in ``browser``: (url, page, the server's
    websocket messages in the order the page received them)."""
    log, port = tmp_path / "server.log", free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(log, port)
    context = browser.new_context(viewport={"width": 1600, "height": 1100})
    try:
        wait_healthy(url, process, log, SERVER_START_S)
        page = context.new_page()
        frames: list[bytes] = []
        page.on("websocket", lambda ws: ws.on(
            "framereceived", lambda p: frames.append(p if isinstance(p, bytes) else p.encode())))
        yield url, page, frames
    finally:
        context.close()
        stop_server(process)


def first_frames(frames: list[bytes], keys: tuple[bytes, ...]) -> list[int]:
    """The index of the first message containing each key (-1 where none does)."""
    return [next((i for i, f in enumerate(frames) if key in f), -1) for key in keys]


def test_a_deep_link_on_a_fresh_server_gets_the_apps_own_pages(browser, tmp_path):
    """The first request of a fresh server opening /model: Streamlit's legacy pages/ mode would show its
    own page list (helper modules included) and skip app.py's layout; the app's navigation must show."""
    with fresh_server_page(browser, tmp_path) as (url, page, _frames):
        page.goto(f"{url}/model", wait_until="domcontentloaded")
        page.wait_for_selector(".st-key-card_performance .js-plotly-plot", state="visible",
                               timeout=SERVER_START_S * 1000)
        links = page.locator('[data-testid="stSidebarNavLink"]').all_inner_texts()
        assert [text.split("\n")[-1].strip() for text in links] == app_page_titles()
        assert page.get_by_text("Research and teaching use — not for diagnosis").first.is_visible()
        assert error_texts(page) == []
        # The tab's icon is the app's own picture, served by the app (an emoji needs a font the machine may lack).
        icons = page.evaluate("() => [...document.querySelectorAll('link[rel~=icon]')].map(l => l.href)")
        assert len(icons) == 1 and icons[0].startswith(url), icons
        assert page.request.get(icons[0]).body() == (REPO / "pages" / "favicon.png").read_bytes()


def test_a_fresh_servers_first_visitor_can_choose_a_film_while_the_model_loads(browser, tmp_path):
    """A fresh server imports torch and loads the model (seconds) once the first page has run. The Explain page
    draws the uploader, the model's record in words and the model's widgets from its card alone, so the reader can
    choose a film meanwhile; a film chosen at once is explained as soon as the model is ready. The charts come
    after the widgets: the browser would otherwise run plotly's code (~1.2 s) before drawing them (pages._preload).
    (That the widgets do not wait for the model: tests/test_app.py, with the model's load held.)"""
    with fresh_server_page(browser, tmp_path) as (url, page, frames):
        page.goto(url, wait_until="domcontentloaded")
        page.locator(UPLOADER).locator("..").wait_for(state="visible", timeout=SERVER_START_S * 1000)
        page.locator(UPLOADER).set_input_files(str(REPO / "samples" / "non_covid_nih_pa.png"))
        page.wait_for_function(overlay_count_js(4), timeout=RESULT_S * 1000, polling=250)
        # "Target class" lists the model's classes (from its card).
        order = first_frames(frames, (b"Upload a radiograph", b"held-out radiographs", b"Target class",
                                      b"chart_code_preload", b"landing_performance"))
        assert 0 <= order[0] < order[1] < order[2] < order[3], order
        # The record's chart comes after the model's widgets, or not at all: the film chosen while the model loaded
        # reran the page, which then shows the film instead of the record.
        assert order[4] == -1 or order[4] > order[2], order
        assert error_texts(page) == []


SCROLL_TOP_JS = """() => { const m = document.querySelector('[data-testid="stMain"]');
    return (m ? m.scrollTop : 0) + window.scrollY; }"""
X_RANGE_JS = f"""() => {{ const gd = document.querySelector('{PANEL} .js-plotly-plot');
    return gd && gd._fullLayout ? gd._fullLayout.xaxis.range.slice() : null; }}"""


def test_wheel_zooms_only_after_a_click_and_captions_give_the_share_in_the_lungs(server, browser):
    """The page scrolls under the mouse wheel until the user clicks a panel; then the wheel zooms."""
    context = browser.new_context(viewport={"width": 1400, "height": 800})
    page = context.new_page()
    try:
        page.goto(server, wait_until="domcontentloaded")
        page.wait_for_selector(UPLOADER, state="attached", timeout=SERVER_START_S * 1000)
        page.locator(UPLOADER).set_input_files(str(REPO / "samples" / "non_covid_nih_pa.png"))
        page.wait_for_function(overlay_count_js(4), timeout=RESULT_S * 1000, polling=250)
        wait_idle(page)
        titles = page.locator(f"{PANEL} .annotation-text").all_text_contents()
        assert sum("% in lungs" in t for t in titles) == 4, titles
        panel = page.locator(f"{PANEL} .js-plotly-plot").first
        panel.scroll_into_view_if_needed()
        page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]'); if (m) m.scrollTop += 150; }")
        page.wait_for_timeout(300)
        box = panel.bounding_box()
        x, y = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.6
        page.mouse.move(x, y)
        range0, top0 = page.evaluate(X_RANGE_JS), page.evaluate(SCROLL_TOP_JS)
        page.mouse.wheel(0, -200)
        page.wait_for_timeout(600)
        assert page.evaluate(X_RANGE_JS) == range0, "the wheel zoomed before any click on the panel"
        assert page.evaluate(SCROLL_TOP_JS) < top0, "the page did not scroll"
        box = panel.bounding_box()
        x, y = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.6
        page.mouse.click(x, y)
        page.mouse.wheel(0, -200)
        page.wait_for_timeout(600)
        zoomed = page.evaluate(X_RANGE_JS)
        assert zoomed != range0 and zoomed[1] - zoomed[0] < range0[1] - range0[0], (range0, zoomed)
        assert error_texts(page) == []
    finally:
        context.close()


def test_the_menu_offers_a_light_theme_for_projectors(server, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, color_scheme="dark")
    page = context.new_page()
    try:
        page.goto(server, wait_until="domcontentloaded")
        page.wait_for_selector(UPLOADER, state="attached", timeout=SERVER_START_S * 1000)
        background = "() => getComputedStyle(document.querySelector('.stApp')).backgroundColor"
        assert page.evaluate(background) != "rgb(255, 255, 255)"  # dark on a dark system
        for theme, light in (("Light", True), ("Dark", False)):
            item = page.locator(f'[data-testid="stMainMenuItem-theme-{theme}"]')
            if not item.is_visible():  # the menu may still be open after the previous choice
                page.locator('[data-testid="stMainMenu"] button').first.click()
            item.click()
            page.wait_for_function(f"() => (({background})() === 'rgb(255, 255, 255)') === {str(light).lower()}",
                                   timeout=30_000)
    finally:
        context.close()
