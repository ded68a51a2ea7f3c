"""The whole reading flow in a real browser: ``streamlit run app.py`` driven by headless Debian chromium.

Two readers on one session (a real SQLite review database in a temporary folder): blinding (no model
output, no map before the read is recorded), anonymised maps in each reader's own stored order, a box
drawn with the mouse (checked against plotly's own pixel-to-data conversion), keyboard shortcuts (← / →), a
reader who sees nothing of the other's answers, resume after a reload and after a server restart, the
owner's results and the CSV download. Server and browser helpers come from ``tests/test_browser.py``.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from tests.test_browser import (
    SERVER_START_S,
    click_key,
    error_texts,
    free_port,
    start_server,
    stop_server,
    wait_healthy,
    wait_idle,
)
from tests.test_browser import browser as browser  # noqa: PLC0414 - the shared fixture, re-exported for pytest
from xai.export import METHOD_TITLES
from xai.render import downsample_for_display
from xai.review import ReviewStore, map_letters

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FILMS = ("mhh_a4318ac9.jpg", "cxnet_001.jpg")
NAME = "browser study"
RESULT_MS = 300_000
FILM_SIDE = 1024
SECRET = "olga's owner secret"


class Server:
    """One ``streamlit run app.py`` on a free port with the test's review database; restartable."""

    def __init__(self, tmp: Path, db_url: str) -> None:
        self.tmp, self.env, self.process, self.url, self.starts = tmp, {"XAI_DB_URL": db_url}, None, "", 0

    def start(self) -> str:
        self.starts += 1
        log, port = self.tmp / f"server{self.starts}.log", free_port()
        self.process = start_server(log, port, self.env)
        self.url = f"http://127.0.0.1:{port}"
        wait_healthy(self.url, self.process, log, SERVER_START_S)
        return self.url

    def stop(self) -> None:
        if self.process is not None:
            stop_server(self.process)


def sign_in(page, url: str, reader: str) -> None:
    page.goto(f"{url}/review?session={NAME.replace(' ', '+')}", wait_until="domcontentloaded")
    field = page.locator(".st-key-review_reader_name input")
    field.wait_for(timeout=SERVER_START_S * 1000)
    field.fill(reader)
    field.press("Enter")
    page.wait_for_selector('[data-testid="stProgress"]', timeout=RESULT_MS)
    wait_idle(page)


def main_text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


def progress_text(page) -> str:
    return page.locator('[data-testid="stProgress"]').inner_text()


def wait_for_case(page, number: int) -> None:
    page.wait_for_function(f"() => document.querySelector('[data-testid=\"stProgress\"]')"
                           f".innerText.includes('Case {number} of 2')", timeout=60_000)
    wait_idle(page)


def choose(page, key: str, option: str) -> None:
    page.locator(f".st-key-{key}").get_by_text(option, exact=True).click()
    wait_idle(page)


def wait_for_maps(page) -> list[str]:
    """Wait until the four anonymised maps are drawn; their titles in drawing order."""
    page.wait_for_function("""() => {
        const c = document.querySelector('.st-key-review_maps');
        return c && c.querySelectorAll('image').length >= 4;
    }""", timeout=RESULT_MS, polling=250)
    return page.eval_on_selector_all(".st-key-review_maps .annotation-text", "els => els.map(e => e.textContent)")


def film_plot(page, sid: str, case: str) -> str:
    return f"[class*='st-key-review_film_{sid}_{case}_'] .js-plotly-plot"


def film_shapes(page, sid: str, case: str) -> list[dict]:
    page.wait_for_selector(film_plot(page, sid, case), timeout=RESULT_MS)
    return page.eval_on_selector(film_plot(page, sid, case), "gd => (gd.layout.shapes || []).map(s => "
                                 "({x0: s.x0, y0: s.y0, x1: s.x1, y1: s.y1}))")


def drag_box(page, sid: str, case: str, start: tuple[float, float], end: tuple[float, float]) -> list[float]:
    """Drag from ``start`` to ``end`` (fractions of the plot area); returns the box in screen-image data
    coordinates as plotly converts those mouse positions ([x0, y0, x1, y1])."""
    selector = film_plot(page, sid, case)
    page.wait_for_selector(selector + " .nsewdrag", timeout=RESULT_MS)
    area = page.locator(selector + " .nsewdrag").bounding_box()
    points = [(area["x"] + fx * area["width"], area["y"] + fy * area["height"]) for fx, fy in (start, end)]
    data = page.eval_on_selector(selector, """(gd, pts) => {
        const r = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return pts.map(([x, y]) => [xa.p2d(x - r.left - xa._offset), ya.p2d(y - r.top - ya._offset)]);
    }""", points)
    page.mouse.move(*points[0])
    page.mouse.down()
    page.mouse.move((points[0][0] + points[1][0]) / 2, (points[0][1] + points[1][1]) / 2, steps=5)
    page.mouse.move(*points[1], steps=5)
    page.mouse.up()
    wait_idle(page)
    page.wait_for_function(f"""() => {{
        const gd = document.querySelector("{selector}");
        return gd && (gd.layout.shapes || []).length === 1;
    }}""", timeout=60_000)
    (x0, y0), (x1, y1) = data
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


def rate_maps(page, sid: str, case: str, order: tuple[str, ...], values: tuple[int, ...]) -> None:
    from xai.review.questions import PLAUSIBILITY_LABELS

    assert len(map_letters(order)) == len(values)
    for i, value in enumerate(values):
        choose(page, f"review_pl_{sid}_{case}_{i}", f"{value} {PLAUSIBILITY_LABELS[value]}")


def _olgas_session(chestcovnet_dir: Path, tmp_path: Path) -> tuple[str, ReviewStore, str]:
    """A fresh SQLite store holding one session of :data:`FILMS` owned by olga (with :data:`SECRET`)."""
    db_url = f"sqlite:///{tmp_path / 'review.sqlite3'}"
    store = ReviewStore(db_url)
    sid = store.create_session(NAME, [str(chestcovnet_dir / "images" / f) for f in FILMS], owner="olga",
                               owner_secret=SECRET)
    return db_url, store, sid


def test_two_readers_blinded_anonymised_box_resume_and_results(browser, chestcovnet_dir, tmp_path):
    db_url, store, sid = _olgas_session(chestcovnet_dir, tmp_path)
    first, second = store.cases(sid)
    methods = store.session(sid).methods
    server = Server(tmp_path, db_url)
    url = server.start()
    ann_ctx = browser.new_context(viewport={"width": 1600, "height": 1300}, accept_downloads=True)
    ben_ctx = browser.new_context(viewport={"width": 1600, "height": 1300})
    try:
        ann = ann_ctx.new_page()
        sign_in(ann, url, "ann")
        assert "Case 1 of 2" in progress_text(ann) and "completed 0 of 2" in progress_text(ann)
        # blinded: the read first, no model output and no map on the page
        ann.locator(".st-key-review_record button").wait_for()
        assert ann.locator(".st-key-review_maps").count() == 0 and "Model (" not in main_text(ann)
        # a box drawn with the mouse on the film
        drawn = drag_box(ann, sid, first, (0.30, 0.35), (0.55, 0.70))
        ann.get_by_text(re.compile(r"Box: x \d+, y \d+, \d+ × \d+ px")).wait_for(timeout=60_000)
        choose(ann, f"review_dx_{sid}_{first}", "COVID-19")
        choose(ann, f"review_conf_{sid}_{first}", "4")
        click_key(ann, "review_record")
        # revealed: the prediction and Map A-D; no method name in the main area
        assert wait_for_maps(ann) == ["Map A", "Map B", "Map C", "Map D"]
        text = main_text(ann)
        assert "Model (chestcovnet)" in text and "Your read: COVID-19, confidence 4" in text
        assert not any(title in text for title in METHOD_TITLES.values())
        ann_order = store.map_order(sid, first, "ann")
        rate_maps(ann, sid, first, ann_order, (5, 3, 2, 1))
        ann.locator(f".st-key-review_note_{sid}_{first} textarea").fill("patchy opacity right mid zone")
        ann.locator(f".st-key-review_note_{sid}_{first} textarea").blur()
        wait_idle(ann)
        click_key(ann, "review_save")
        wait_for_case(ann, 2)

        (row,) = store.export(sid)
        assert (row["reader"], row["diagnosis"], row["confidence"]) == ("ann", "covid19", 4)
        assert row["plausibility"] == dict(zip(ann_order, (5, 3, 2, 1), strict=True))
        assert row["note"] == "patchy opacity right mid zone"
        shape = store.case_info(sid, first)
        factor = shape["width"] / downsample_for_display(store.pixels(sid, first), FILM_SIDE).shape[1]
        expected = [drawn[0] * factor, drawn[1] * factor, (drawn[2] - drawn[0]) * factor, (drawn[3] - drawn[1]) * factor]
        assert row["box"] == pytest.approx(expected, abs=1.5 * factor)  # rounding of the drag to whole pixels
        assert row["box"][2] > 0.15 * shape["width"]

        # keyboard shortcuts: ← back to the first case, → forward again
        ann.locator("body").press("ArrowLeft")
        wait_for_case(ann, 1)
        assert len(film_shapes(ann, sid, first)) == 1  # her saved box is drawn
        ann.locator("body").press("ArrowRight")
        wait_for_case(ann, 2)

        # the second reader: blinded again on case 1, none of ann's answers, his own map order
        ben = ben_ctx.new_page()
        sign_in(ben, url, "ben")
        assert "Case 1 of 2" in progress_text(ben)
        ben.locator(".st-key-review_record button").wait_for()
        assert ben.locator(".st-key-review_maps").count() == 0
        assert film_shapes(ben, sid, first) == [] and "Box:" not in main_text(ben)
        assert "patchy opacity" not in main_text(ben)
        choose(ben, f"review_dx_{sid}_{first}", "Uncertain")
        choose(ben, f"review_conf_{sid}_{first}", "2")
        click_key(ben, "review_record")
        assert wait_for_maps(ben) == ["Map A", "Map B", "Map C", "Map D"]
        ben_order = store.map_order(sid, first, "ben")
        rate_maps(ben, sid, first, ben_order, (4, 4, 1, 2))
        click_key(ben, "review_save")
        wait_for_case(ben, 2)
        ben_row = next(r for r in store.export(sid) if r["reader"] == "ben")
        assert ben_row["plausibility"] == dict(zip(ben_order, (4, 4, 1, 2), strict=True)) and ben_row["box"] is None

        # resume after a reload: the name is kept in the address, the first unfinished case is shown
        ann.reload(wait_until="domcontentloaded")
        ann.wait_for_selector('[data-testid="stProgress"]', timeout=RESULT_MS)
        wait_idle(ann)
        assert ann.locator(".st-key-review_reader_name input").input_value() == "ann"
        assert "Case 2 of 2" in progress_text(ann) and "completed 1 of 2" in progress_text(ann)

        # resume after a server restart: nothing saved is lost
        server.stop()
        url = server.start()
        sign_in(ann, url, "ann")
        assert "Case 2 of 2" in progress_text(ann) and "completed 1 of 2" in progress_text(ann)
        click_key(ann, "review_prev")
        wait_for_case(ann, 1)
        assert len(film_shapes(ann, sid, first)) == 1
        assert wait_for_maps(ann) == ["Map A", "Map B", "Map C", "Map D"]  # read recorded: maps at once
        assert len(store.history(sid)) == 4 and error_texts(ann) == []

        # the owner's results and the CSV export
        olga = ann_ctx.new_page()
        sign_in(olga, url, "olga")
        olga.locator('[data-testid="stButtonGroup"] button', has_text="Results").click()
        wait_idle(olga)
        olga.locator(f".st-key-review_owner_secret_{sid} input").fill(SECRET)
        click_key(olga, "review_owner_unlock")
        olga.wait_for_selector(".st-key-review_plausibility_chart .js-plotly-plot", timeout=RESULT_MS)
        olga.wait_for_selector('[data-testid="stMetric"]', timeout=60_000)
        metrics = olga.eval_on_selector_all('[data-testid="stMetric"]', "els => els.map(e => e.innerText)")
        assert any(m.startswith("Readers") and m.strip().endswith("2") for m in metrics), metrics
        assert error_texts(olga) == []
        with olga.expect_download() as download:
            olga.locator(".st-key-review_csv button").click()
        rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text("utf-8"))))
        assert sorted(r["reader"] for r in rows) == ["ann", "ben"]
        assert {r["diagnosis"] for r in rows} == {"covid19", "uncertain"}
        assert "file" not in rows[0] and not any(f in Path(download.value.path()).read_text("utf-8") for f in FILMS)
        assert {m: rows[0][f"plausibility_{m}"] for m in methods} in (
            {m: str(v) for m, v in row["plausibility"].items()}, {m: str(v) for m, v in ben_row["plausibility"].items()})
    finally:
        ann_ctx.close()
        ben_ctx.close()
        server.stop()


# ------------------------------------------------------------------- losing nothing, blinding, theme
def relative_luminance(rgb: tuple[float, float, float]) -> float:
    """WCAG 2.x relative luminance of an sRGB colour (0-255 channels)."""
    def linear(c: float) -> float:
        c /= 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """WCAG contrast ratio (L1 + 0.05) / (L2 + 0.05), lighter over darker."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def parse_rgb(css: str) -> tuple[float, float, float]:
    values = [float(v) for v in re.findall(r"[\d.]+", css)[:3]]
    assert len(values) == 3, css
    return values[0], values[1], values[2]


#: JS: the rendered fill of each map title and colour-bar tick label, and the colour actually behind the
#: chart (the first ancestor with an opaque background: plotly's paper is transparent).
RENDERED_COLOURS_JS = """() => {
    const chart = document.querySelector('.st-key-review_maps');
    const fills = (sel) => [...chart.querySelectorAll(sel)].map(e => getComputedStyle(e).fill);
    let node = chart, background = null;
    while (node && node !== document.documentElement) {
        const bg = getComputedStyle(node).backgroundColor;
        if (bg && bg !== 'transparent' && !/rgba\\(.*,\\s*0\\)$/.test(bg)) { background = bg; break; }
        node = node.parentElement;
    }
    return {titles: fills('.annotation-text'), ticks: fills('.colorbar text'),
            background: background || getComputedStyle(document.body).backgroundColor};
}"""


def test_ratings_during_a_relayout_owner_name_reload_and_light_theme_contrast(browser, chestcovnet_dir, tmp_path):
    """On a cold server (the first case's maps are computed and laid out right after "Record my read"):
    four ratings clicked at once, with a window change re-laying the page out between them, then Save at
    once — all four are stored, or the page says which were not. A second browser typing the owner's name
    sees no other reader's answer or note. A reload keeps the reader. On the light theme the map titles
    and colour-bar ticks are drawn with contrast >= 4.5:1 against what is behind them (WCAG AA)."""
    from xai.review.questions import PLAUSIBILITY_LABELS

    db_url, store, sid = _olgas_session(chestcovnet_dir, tmp_path)
    first, second = store.cases(sid)
    methods = store.session(sid).methods
    store.save_case(sid, first, "ann", {"diagnosis": "covid19", "confidence": 5, "note": "ann's private note",
                                        "plausibility": {m: 1 for m in methods}, "box": [40, 50, 300, 280]})
    server = Server(tmp_path, db_url)
    url = server.start()
    ben_ctx = browser.new_context(viewport={"width": 1600, "height": 1300}, color_scheme="light")
    eve_ctx = browser.new_context(viewport={"width": 1600, "height": 1300})
    try:
        ben = ben_ctx.new_page()
        sign_in(ben, url, "ben")
        choose(ben, f"review_dx_{sid}_{first}", "Not COVID-19")
        choose(ben, f"review_conf_{sid}_{first}", "3")
        click_key(ben, "review_record")
        # no waiting for the page to settle: click as soon as the ratings are on the page
        ben.wait_for_selector(f".st-key-review_pl_{sid}_{first}_3", timeout=RESULT_MS)
        values = (4, 4, 2, 1)
        for i, value in enumerate(values):
            ben.locator(f".st-key-review_pl_{sid}_{first}_{i}").get_by_text(
                f"{value} {PLAUSIBILITY_LABELS[value]}", exact=True).click()
            if i == 1:  # a window change reruns the page and redraws the film between two clicks
                ben.locator(f".st-key-review_wl_{sid} input[type=range]").press("ArrowRight")
        click_key(ben, "review_save")
        row = next((r for r in store.export(sid, reader="ben") if r["case"] == first), None)
        order = store.map_order(sid, first, "ben")
        expected = dict(zip(order, values, strict=True))
        shown = main_text(ben)
        if row is not None and row["plausibility"] == expected:
            wait_for_case(ben, 2)
            assert "4 of 4 map ratings" in shown
        else:  # not stored whole: the page must say so, naming the maps left out, and store nothing partial
            missing = [label for label, m in map_letters(order).items() if (row or {}).get("plausibility", {}).get(m) != expected[m]]
            assert "no rating for" in shown and all(name in shown for name in missing), shown
            assert row is None or row["plausibility"] == {}  # only the recorded read, no partial ratings
        assert store.progress(sid, "ben")["done"] == (1 if row and row["plausibility"] == expected else 0)

        # the light theme: map titles and colour-bar ticks readable (rendered colours, WCAG contrast)
        if "Case 2 of 2" in progress_text(ben):
            click_key(ben, "review_prev")
        wait_for_maps(ben)
        colours = ben.evaluate(RENDERED_COLOURS_JS)
        assert len(colours["titles"]) == 4 and colours["ticks"], colours
        background = parse_rgb(colours["background"])
        assert relative_luminance(background) > 0.8, colours  # the light theme really is on
        for fill in colours["titles"] + colours["ticks"]:
            assert contrast_ratio(parse_rgb(fill), background) >= 4.5, (fill, colours["background"])
        # the maps are at least half the film's size on screen
        film = ben.locator(film_plot(ben, sid, first) + " image").first.bounding_box()
        one_map = ben.locator(".st-key-review_maps .js-plotly-plot image").first.bounding_box()
        assert one_map["width"] >= 0.5 * film["width"] and one_map["height"] >= 0.5 * film["height"], (one_map, film)

        # reload: the reader is kept (in the address) and resumes at the first unfinished case
        ben.reload(wait_until="domcontentloaded")
        ben.wait_for_selector('[data-testid="stProgress"]', timeout=RESULT_MS)
        wait_idle(ben)
        assert "reader=ben" in ben.url
        assert ben.locator(".st-key-review_reader_name input").input_value() == "ben"
        nxt = store.progress(sid, "ben")["next"]
        assert f"Case {nxt + 1} of 2" in progress_text(ben)

        # a second browser typing the owner's name: nothing of ann's, no results without the secret
        eve = eve_ctx.new_page()
        sign_in(eve, url, "olga")
        eve.locator(f".st-key-review_dx_{sid}_{first}").wait_for(timeout=RESULT_MS)
        assert "ann's private note" not in main_text(eve)
        assert eve.locator("input[type=radio]:checked").count() == 0  # no answer pre-filled
        assert film_shapes(eve, sid, first) == []  # ann's box is not drawn
        eve.locator('[data-testid="stButtonGroup"] button', has_text="Results").click()
        wait_idle(eve)
        eve.locator(f".st-key-review_owner_secret_{sid} input").fill("olga")
        click_key(eve, "review_owner_unlock")
        eve.get_by_text("not this session's owner secret").wait_for(timeout=60_000)
        text = main_text(eve)
        assert "ann's private note" not in text
        assert eve.locator('[data-testid="stMetric"]').count() == 0
        assert eve.locator('[data-testid="stDataFrame"]').count() == 0
        assert error_texts(ben) == []
    finally:
        ben_ctx.close()
        eve_ctx.close()
        server.stop()
