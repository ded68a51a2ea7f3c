"""The "How the maps are made" and Compare pages in a real browser (headless Debian chromium, Playwright).

Reuses the server and browser fixtures of ``tests/test_browser.py``. A bundled sample is picked on the
Explain page; the "How Grad-CAM works" popover's link opens the How page on the same film, whose channel
weights chart must hold the model's own numbers; the Compare page's Spearman bars must equal the rank
correlation of the two bundles' maps computed here with scipy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_browser import SERVER_START_S, browser, error_texts, server, wait_idle  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
SAMPLE = "covid19_mhh_pa.jpg"
SAMPLE_TITLE = "COVID-19, PA (MHH, CC BY 3.0)"
RESULT_S = 300


def chart_data_js(key: str) -> str:
    """JS: the plotly traces (x, y) of the chart with Streamlit key ``key``, or null until drawn."""
    return f"""() => {{
        const gd = document.querySelector('.st-key-{key} .js-plotly-plot');
        if (!gd || !gd.data || !gd.data.length) return null;
        return gd.data.map(t => ({{x: Array.from(t.x || []), y: Array.from(t.y || [])}}));
    }}"""


def chart_data(page, key: str) -> list[dict]:
    page.wait_for_function(f"() => ({chart_data_js(key)})() !== null", timeout=RESULT_S * 1000, polling=250)
    return page.evaluate(chart_data_js(key))


def pick(page, widget_key: str, option: str) -> None:
    """Choose ``option`` in the Streamlit selectbox with key ``widget_key``."""
    page.locator(f".st-key-{widget_key} [role='combobox']").click(timeout=RESULT_S * 1000)
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page, RESULT_S)


def test_how_page_from_the_popover_and_compare_page(server, browser, tmp_path) -> None:  # noqa: F811
    import models
    from xai.compare import to_grid
    from xai.pipeline import explain_source

    bundle = models.load("chestcovnet")
    context = browser.new_context(viewport={"width": 1600, "height": 1200})
    page = context.new_page()
    try:
        page.goto(server, wait_until="domcontentloaded")
        page.wait_for_selector(".st-key-sample [role='combobox']", timeout=SERVER_START_S * 1000)
        wait_idle(page, SERVER_START_S)
        pick(page, "sample", SAMPLE_TITLE)
        page.get_by_role("button", name="How Grad-CAM works").click()
        page.get_by_role("link", name="Step by step on this film").click()
        page.wait_for_url("**/how", timeout=60_000)

        bars = chart_data(page, "how_weights")[0]
        row = bundle.module.classifier.weight.detach().numpy()[1] / 49.0  # covid19, GAP over 7x7 cells
        order = np.argsort(-row, kind="stable")[:8]
        assert bars["x"] == [f"ch {i}" for i in order]
        np.testing.assert_allclose(bars["y"], row[order], rtol=1e-4)
        for key in ("how_gradcam_steps", "how_pp_difference", "how_guided", "how_guided_gradcam"):
            chart_data(page, key)
        assert page.locator("h2", has_text="5 · Guided Grad-CAM").count() == 1
        assert error_texts(page) == []
        page.screenshot(path=str(tmp_path / "how_page.png"), full_page=True)

        page.get_by_role("link", name="Compare").first.click()
        page.wait_for_url("**/compare", timeout=60_000)
        pick(page, "compare_class", "covid19")
        spearman = chart_data(page, "compare_metrics")[0]
        second = models.load("chestcovnet-seed2")
        a = explain_source(REPO / "samples" / SAMPLE, bundle, target=1)
        b = explain_source(REPO / "samples" / SAMPLE, second, target=1)
        expected = [stats.spearmanr(to_grid(a.maps[m]).ravel(), to_grid(b.maps[m]).ravel()).statistic
                    for m in a.maps]
        assert spearman["x"] == ["Grad-CAM", "Grad-CAM++", "Guided Backprop", "Guided Grad-CAM"]
        np.testing.assert_allclose(spearman["y"], expected, atol=1e-6)
        assert error_texts(page) == []
        page.screenshot(path=str(tmp_path / "compare_page.png"), full_page=True)
    finally:
        context.close()
