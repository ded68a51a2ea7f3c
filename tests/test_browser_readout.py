"""The anatomical readout in a real browser (``streamlit run app.py`` + headless Debian chromium, as
tests/test_browser.py): on a real film, each panel's title names its regions, the stacked bar chart of every
region is drawn, the caption says what "in lungs" counts, and the "Zone boundaries" toggle draws thin
near-white lines on every panel. A full-page screenshot is saved to /tmp/explain_readout.png (and the test's
tmp folder) for a person to look at."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_browser import (  # noqa: F401 - the fixtures
    PANEL,
    REPO,
    RESULT_S,
    SERVER_START_S,
    UPLOADER,
    browser,
    error_texts,
    overlay_count_js,
    panel_images,
    server,
    wait_idle,
)

from xai.anatomy import REGIONS
from xai.render import ZONE_COLOR, ZONE_OPACITY

pytestmark = pytest.mark.browser

READOUT = ".st-key-readout_chart"


def test_readout_titles_chart_and_zone_boundaries_in_the_browser(server, browser, tmp_path) -> None:  # noqa: F811
    film = REPO / "samples" / "non_covid_nih_pa.png"
    context = browser.new_context(viewport={"width": 1600, "height": 1400})
    page = context.new_page()
    try:
        page.goto(server, wait_until="domcontentloaded")
        page.wait_for_selector(UPLOADER, state="attached", timeout=SERVER_START_S * 1000)
        page.locator(UPLOADER).set_input_files(str(film))
        page.wait_for_function(overlay_count_js(4), timeout=RESULT_S * 1000, polling=250)
        page.wait_for_selector(f"{READOUT} .xai-readout", timeout=60_000)
        wait_idle(page)
        assert error_texts(page) == [] or all("the evidence lies" in t for t in error_texts(page))

        titles = page.locator(f"{PANEL} .annotation-text").all_text_contents()
        assert sum("% in lungs" in t for t in titles) == 4, titles
        assert all(any(r in t for r in REGIONS) for t in titles[1:]), titles
        rows = page.evaluate(  # per method bar: its segments' regions and drawn widths (px) against the bar's
            f"() => Array.from(document.querySelectorAll('{READOUT} .xai-bar')).map(b => ({{"
            "width: b.getBoundingClientRect().width, segments: Array.from(b.querySelectorAll('.xai-seg')).map(s => "
            "[s.dataset.region, Number(s.dataset.share), s.getBoundingClientRect().width])}))")
        assert len(rows) == 4
        for row in rows:
            assert [r for r, _, _ in row["segments"]] == [r for r in REGIONS if r in {x for x, _, _ in row["segments"]}]
            assert sum(share for _, share, _ in row["segments"]) == pytest.approx(1.0, abs=1e-4)
            for _, share, width in row["segments"]:  # each segment as wide as its share of the bar
                assert width == pytest.approx(share * row["width"], abs=1.5)
        assert page.get_by_text("counts the visible lung fields only").first.is_visible()

        before = panel_images(page)
        page.locator('[data-testid="stExpander"] summary', has_text="Display").first.click()
        toggle = page.locator(".st-key-disp_zones label")
        toggle.wait_for(state="visible", timeout=30_000)
        wait_idle(page)
        toggle.click()
        page.wait_for_function(  # an outline layer on top of every panel: 2 layers on the original, 3 on a map's
            f"() => Array.from(document.querySelectorAll('{PANEL} g.subplot')).every("
            "(s, i) => s.querySelectorAll('.imagelayer image').length >= (i === 0 ? 2 : 3))", timeout=60_000)
        wait_idle(page)
        after = panel_images(page)
        assert len(after) == len(before) == 5
        for old, new in zip(before, after, strict=True):
            changed = np.abs(new - old).max(axis=2) > 20
            assert 0.002 < changed.mean() < 0.05  # thin lines, not a wash over the film
            # xai.render's zone colour at its opacity over what was there: near-white lines, drawn thin.
            expected = (1 - ZONE_OPACITY) * old[changed] + ZONE_OPACITY * np.asarray(ZONE_COLOR)
            assert (np.abs(new[changed] - expected).max(axis=1) <= 3).mean() > 0.95
        for name, anchor in (("explain_readout_panels.png", '[data-testid="stMainBlockContainer"] h3'),
                             ("explain_readout.png", READOUT)):
            page.locator(anchor).first.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            shot = tmp_path / name
            page.screenshot(path=str(shot))
            shutil.copy(shot, f"/tmp/{name}")
            print(f"screenshot: {shot}")
    finally:
        context.close()
