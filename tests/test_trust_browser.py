"""The Trust page in a real browser (the server and chromium of tests/test_browser.py).

1. On a film the out-of-distribution check is silent on, what the reader sees: an orange (amber) icon and the
   words "No warning — the check misses films from hospitals it never saw", with the card's held-out silence
   rate, never "like the training data"; no emoji anywhere; each map drawn beside its verdicts, the pixels
   those of :func:`xai.render.view` with the Explain page's default scale (the card's typical peaks).
2. A model that ignores its input (a bundle built here, uploaded on the Model page as a user would): after
   deletion / insertion, every map's faithfulness line is red and says the model gives this score to a
   blurred film.
"""

from __future__ import annotations

import io
import math
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_browser import SERVER_START_S, browser, click_key, error_texts, server, wait_idle  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
SAMPLE = "covid19_mhh_pa.jpg"
SAMPLE_TITLE = "COVID-19, PA (MHH, CC BY 3.0)"
RESULT_S = 600
METHODS = ("gradcam", "gradcam++", "guided_backprop", "guided_gradcam")
BLIND_P = 0.96
EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF]")


def pick(page, widget_key: str, option: str) -> None:
    page.locator(f".st-key-{widget_key} [role='combobox']").click(timeout=RESULT_S * 1000)
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page, RESULT_S)


def press_until(page, button_key: str, shown: str, timeout_s: float = RESULT_S, tries: int = 3) -> None:
    """Click the button with key ``button_key`` until ``shown`` is on the page.

    A click that lands while a script run is still going can be dropped by Streamlit (the interrupted run
    resets the button's trigger; streamlit/streamlit#7643), and on a slow machine the run started by the
    previous step may not have begun when :func:`wait_idle` looks. A click that led nowhere — the app idle
    again, no progress bar, ``shown`` absent — is repeated; an error on the page ends the wait at once.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    target = page.get_by_text(shown).first
    for _ in range(tries):
        wait_idle(page, timeout_s)
        click_key(page, button_key, timeout_s)
        assert error_texts(page) == []
        if target.is_visible():
            return
        try:  # the result may still be on its way (a rerun after the computation)
            target.wait_for(timeout=10_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"{shown!r} not shown after {tries} clicks on {button_key}")


def line_with(page, words: str):
    """The list item (or paragraph) of the verdicts that holds ``words``."""
    return page.locator("li, p", has_text=words)


def icon_rgb(locator) -> tuple[int, int, int]:
    """The computed colour of the first Material icon inside ``locator`` (Streamlit draws ``:material/x:`` as
    a ``role="img"`` span set in the Material Symbols font, which must have loaded: no empty box)."""
    icon = locator.locator("span[role='img']").first
    font, color = icon.evaluate("e => [getComputedStyle(e).fontFamily, getComputedStyle(e).color]")
    assert "Material Symbols" in font
    assert icon.evaluate("e => document.fonts.check('16px \"Material Symbols Rounded\"', e.textContent)")
    r, g, b = (int(v) for v in re.findall(r"\d+", color)[:3])
    return r, g, b


def is_orange(rgb: tuple[int, int, int]) -> bool:
    r, g, b = rgb
    return r > 120 and r - g > 50 and g - b > 20


def is_red(rgb: tuple[int, int, int]) -> bool:
    r, g, b = rgb
    return r > 120 and r - g > 80 and abs(g - b) < 30


def map_key(method: str) -> str:
    """The class of a map's container, as Streamlit writes its key into a class name."""
    return re.sub(r"[^a-zA-Z0-9_-]", "-", f"trust_map_{method}")


def fetch(base: str, src: str) -> np.ndarray:
    url = src if src.startswith("http") else base + src
    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")).astype(np.int16)


def test_no_warning_wording_and_the_maps_beside_their_verdicts(server, browser, tmp_path) -> None:  # noqa: F811
    import models
    from xai import render
    from xai.display_scale import from_card
    from xai.pipeline import explain_source
    from xai.radiograph import load_radiograph
    from xai.trust import ood
    from xai.trust.held_out import held_out_record

    bundle = models.load("chestcovnet")
    result = explain_source(REPO / "samples" / SAMPLE, bundle, target=1)
    scored = ood.score(bundle, result.input_tensor, models.ood_stats(bundle), radiograph=result.radiograph,
                       features=result.explanation.features)
    assert not scored.warnings, "the film must be one the check is silent on"
    record = held_out_record(bundle.card.cross_source)
    assert record is not None
    context = browser.new_context(viewport={"width": 1600, "height": 1400})
    page = context.new_page()
    try:
        page.goto(f"{server}/trust", wait_until="domcontentloaded")
        page.wait_for_selector(".st-key-trust_sample [role='combobox']", timeout=SERVER_START_S * 1000)
        wait_idle(page, SERVER_START_S)
        pick(page, "trust_sample", SAMPLE_TITLE)
        ood_line = line_with(page, "Out-of-distribution warning").first
        ood_line.wait_for(timeout=RESULT_S * 1000)
        text = ood_line.inner_text()
        assert "No warning — the check misses films from hospitals it never saw" in text
        assert (f"it stayed silent on {record.silent_share:.0%} of the films of hospitals left out of training "
                f"({record.silent} of {record.checked})") in text
        assert is_orange(icon_rgb(ood_line)), icon_rgb(ood_line)  # amber, not green
        body = page.locator("section.main, [data-testid='stMain']").first.inner_text()
        assert "like the training data (no concern)" not in body and "Film like the training data" not in body
        verdicts = [text, *(page.locator(f".st-key-{map_key(m)}").first.inner_text() for m in METHODS)]
        assert not any(EMOJI.search(t) for t in verdicts), [EMOJI.findall(t) for t in verdicts]

        cal = from_card(bundle.card)
        assert cal is not None
        settings = render.DisplaySettings(side=384, scale="fixed", vmax=tuple((m, cal.vmax[m]) for m in METHODS))
        expected = render.view(load_radiograph(REPO / "samples" / SAMPLE), result, settings).overlays
        for m in METHODS:
            image = page.locator(f".st-key-{map_key(m)} img").first
            image.wait_for(timeout=60_000)
            drawn = fetch(server, image.get_attribute("src"))
            want = np.asarray(expected[m], dtype=np.int16)
            assert drawn.shape == want.shape, (m, drawn.shape, want.shape)
            assert np.abs(drawn - want).mean() < 4, m  # JPEG on the wire
        assert error_texts(page) == []
        page.screenshot(path=str(tmp_path / "trust_page.png"), full_page=True)
    finally:
        context.close()


def _blind_zip(folder: Path) -> bytes:
    """The shipped architecture and card, the classifier's weights zero: constant logits, P(covid19) = 0.96."""
    import models
    from models.bundle import export_zip

    shipped = models.load("chestcovnet")
    module = models.build_model(shipped.card.architecture, len(shipped.card.class_names))
    module.load_state_dict(shipped.module.state_dict())
    with torch.no_grad():
        module.classifier.weight.zero_()
        module.classifier.bias.zero_()
        module.classifier.bias[shipped.card.class_names.index("covid19")] = math.log(BLIND_P / (1 - BLIND_P))
    models.save_bundle(folder, module.eval(), {**shipped.card.to_dict(), "name": "blind-test", "cross_source": {},
                                               "saliency_scale": {}})
    return export_zip(folder)


def test_a_model_that_ignores_its_input_is_flagged_red(server, browser, tmp_path) -> None:  # noqa: F811
    zipped = tmp_path / "blind.zip"
    zipped.write_bytes(_blind_zip(tmp_path / "blind"))
    context = browser.new_context(viewport={"width": 1600, "height": 1400})
    page = context.new_page()
    try:
        page.goto(f"{server}/model", wait_until="domcontentloaded")
        page.get_by_text("Bundle zip", exact=True).click(timeout=SERVER_START_S * 1000)
        wait_idle(page, SERVER_START_S)
        page.locator(".st-key-own_bundle input[type=file]").set_input_files(str(zipped))
        wait_idle(page)
        page.get_by_role("button", name="Load bundle").click()
        page.get_by_text("Using blind-test in this session").wait_for(timeout=RESULT_S * 1000)
        page.get_by_role("link", name="Trust").first.click()
        page.wait_for_url("**/trust", timeout=60_000)
        wait_idle(page, RESULT_S)
        pick(page, "trust_sample", SAMPLE_TITLE)
        page.get_by_text("Numbers for modelers").click()
        page.get_by_role("tab", name="Faithfulness").click()
        flag = "The model gives this score to a blurred film: it is not using the film's detail"
        press_until(page, "run_faith", flag)
        wait_idle(page, RESULT_S)
        lines = line_with(page, "Faithful (deletion / insertion)")
        assert lines.count() == 4
        for i in range(4):
            line = lines.nth(i)
            text = line.inner_text()
            assert flag in text and f"probability {BLIND_P:.3f} on the blurred film, {BLIND_P:.3f} on the film" in text
            assert is_red(icon_rgb(line)), icon_rgb(line)
        assert error_texts(page) == []
        page.screenshot(path=str(tmp_path / "trust_blind.png"), full_page=True)
    finally:
        context.close()
