"""The Trust page for radiologists, driven headless with AppTest on the bundled model and real films.

The verdicts come first (one light and one sentence per check and map), "Run all checks" fills them from
the real library checks, the finding's box is scored against every map, and the raw numbers sit in the
modelers' expander. Also the box-selection plumbing (Plotly event -> box in original pixels).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

from pages._finding import box_figure, box_from_selection
from pages._state import Key
from xai.trust.verdict import CHECKS

APP = Path(__file__).resolve().parents[1] / "app.py"
TIMEOUT = 600  # sanity + stability + faithfulness on a shared 2-core CPU
# The lights as the page writes them: Streamlit's coloured Material icons (an emoji needs an emoji font).
GREEN, AMBER = ":green[:material/check_circle:]", ":orange[:material/warning:]"
RED, GRAY = ":red[:material/error:]", ":gray[:material/radio_button_unchecked:]"
LIGHTS = (GREEN, AMBER, RED, GRAY)
METHOD_TITLES = ("Grad-CAM", "Grad-CAM++", "Guided Backprop", "Guided Grad-CAM")


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def trust_page_with_sample(fragment: str = "NIH") -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    run(at)
    run(at.switch_page("pages/trust.py"))
    box = at.selectbox(key="trust_sample")
    box.set_value(next(o for o in box.options if fragment in o))
    return run(at)


def verdict_lines(at: AppTest) -> list[str]:
    """Markdown lines that carry a light and a check name."""
    lines = []
    for md in at.markdown:
        for line in md.value.splitlines():
            if any(light in line for light in LIGHTS) and any(name in line for name in CHECKS.values()):
                lines.append(line)
    return lines


def lines_for(at: AppTest, check: str) -> list[str]:
    return [line for line in verdict_lines(at) if CHECKS[check] in line]


def test_verdicts_come_first_and_run_all_checks_fills_them() -> None:
    at = trust_page_with_sample("MHH")  # a COVID-19 film: its covid19 maps are not flat
    assert any(b.label == "Run all checks" for b in at.button)
    assert at.get("image"), "a thumbnail of the film"
    # one OOD line for the film, then four per-map lines for each of the four maps
    (ood,) = lines_for(at, "ood")
    assert "No warning — the check misses films from hospitals it never saw" in ood or "Warning:" in ood
    assert not any(ch in md.value for md in at.markdown for ch in "🟢🟡🔴⚪"), "no emoji lights"
    assert not any("looks like the training data" in md.value for md in at.markdown)
    for check in ("sanity", "stability", "faithfulness"):
        lines = lines_for(at, check)
        assert len(lines) == 4 and all(GRAY in line and "Not run yet." in line for line in lines)
    lungs = lines_for(at, "lungs")
    measured = [line for line in lungs if re.search(r"\d+% of the evidence|outside the lungs \(\d+%\)", line)]
    assert len(lungs) == 4 and len(measured) >= 2, lungs
    assert all(line in measured or "The map is flat" in line for line in lungs), lungs
    headers = [md.value for md in at.markdown if md.value.startswith("**") and md.value.split("**")[1] in METHOD_TITLES]
    assert [h.split("**")[1] for h in headers] == list(METHOD_TITLES)
    assert any(e.label == "Numbers for modelers" for e in at.expander)

    next(b for b in at.button if b.label == "Run all checks").click()
    run(at)
    for check in ("sanity", "stability", "faithfulness", "lungs"):
        lines = lines_for(at, check)
        assert len(lines) == 4 and not any("Not run yet." in line for line in lines), lines
    assert any(GREEN in line or AMBER in line or RED in line for line in lines_for(at, "faithfulness"))
    # each randomisation light is the library's own verdict for that map
    sanity = dict(zip(METHOD_TITLES, lines_for(at, "sanity"), strict=True))
    result = next(v for k, v in at.session_state[Key.STORES]["trust"].items() if k[0] == "sanity")
    for method, title in zip(result.methods, METHOD_TITLES, strict=True):
        expected = RED if result.passes[method] is False else AMBER if result.vanished.get(method) else GREEN
        assert expected in sanity[title], (title, sanity[title])
    # the numbers behind the lights are under the modelers' expander
    frames = [json.dumps(df.value.to_dict()) for df in at.dataframe]
    assert any("random order (reference)" in f for f in frames), "faithfulness table with its reference"
    assert any("spearman" in f for f in frames) and any("inside the lungs" in f for f in frames)


def test_a_typed_box_is_scored_against_every_map() -> None:
    at = trust_page_with_sample("NIH")
    assert [c for c in at.get("plotly_chart") if "finding_box" in c.proto.id], "the film to draw on"
    at.checkbox(key="box_typed").check()
    at.number_input(key="box_x").set_value(60)
    at.number_input(key="box_y").set_value(60)
    at.number_input(key="box_w").set_value(200)
    at.number_input(key="box_h").set_value(200)
    run(at)
    scored = [md.value for md in at.markdown if "of its energy is inside" in md.value]
    assert [s.split("**")[1] for s in scored] == list(METHOD_TITLES)
    assert any("IoU (Otsu)" in json.dumps(df.value.to_dict()) for df in at.dataframe)


def test_a_non_chest_upload_gets_no_lung_field_and_a_warning() -> None:
    doc = Image.new("L", (640, 480), 255)
    draw = ImageDraw.Draw(doc)
    for i in range(20):
        draw.text((20, 10 + 23 * i), "Discharge summary, page 2 - medication list and follow-up " * 2, fill=0)
    buffer = io.BytesIO()
    doc.save(buffer, format="PNG")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    run(at)
    run(at.switch_page("pages/trust.py"))
    at.file_uploader(key="trust_upload").set_value(("page.png", buffer.getvalue(), "image/png"))
    run(at)
    lungs = lines_for(at, "lungs")
    assert len(lungs) == 4 and all(GRAY in line and "No lung field found" in line for line in lungs)
    (ood,) = lines_for(at, "ood")
    assert RED in ood and "No lung field was found" in ood


def test_box_selection_event_to_pixels() -> None:
    shape = (1000, 800)
    event = {"selection": {"box": [{"x": [10.4, 300.6], "y": [50.2, 20.0], "xref": "x", "yref": "y"}],
                           "points": [], "point_indices": []}}
    assert box_from_selection(event, shape) == (10, 20, 291, 30)
    clipped = {"selection": {"box": [{"x": [-50, 900], "y": [990, 1200]}]}}
    assert box_from_selection(clipped, shape) == (0, 990, 800, 10)
    assert box_from_selection({"selection": {"box": []}}, shape) is None
    assert box_from_selection(None, shape) is None
    assert box_from_selection({"selection": {"box": [{"x": [5, 5], "y": [1, 9]}]}}, shape) is None


def test_box_figure_axes_are_original_pixels() -> None:
    pixels = np.random.default_rng(0).random((1000, 800)).astype(np.float32)
    fig = box_figure(pixels, (10, 20, 100, 50))
    image = fig.data[0]
    # the 1000 x 800 film is shown at 560 x 448; each screen pixel spans 800 / 448 original pixels
    assert image.x0 == 0 and image.y0 == 0
    assert np.isclose(image.dx * 448, 800) and np.isclose(image.dy * 560, 1000)
    (rect,) = fig.layout.shapes
    assert (rect.x0, rect.y0, rect.x1, rect.y1) == (10, 20, 110, 70)
    assert fig.layout.dragmode == "select"
