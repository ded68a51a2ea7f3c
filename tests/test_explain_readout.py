"""The anatomical readout on the Explain page (AppTest, bundled model, a real sample film): each panel's title
names its two largest regions with their shares and the share in the visible lung fields, one stacked bar chart
holds every region per method, the "Zone boundaries" toggle draws the zones over every panel, and maps whose
evidence lies mostly on a suspect region are flagged by name. The references are computed here, independently of
the page, with the library (xai.anatomy) on the same film and maps."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from test_app import choose_sample, image_titles, new_app, open_display, panel_layers, run, service

import pages._lungs as app_lungs
import pages._models as app_models
import pages._state as app_state
import pages._warmup as warmup
from xai.anatomy import (
    REGION_COLOURS,
    REGIONS,
    anatomy_regions,
    evidence_by_region,
    readout_sentence,
    zone_outlines,
)
from xai.method_names import METHODS
from xai.trust.verdict import anatomy_verdict

METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "guided_backprop": "Guided Backprop",
                 "guided_gradcam": "Guided Grad-CAM"}


@pytest.fixture(scope="module")
def page():
    """The Explain page on the NIH sample, the film's regions and each method's shares (references)."""
    at = new_app()
    choose_sample(at, "NIH")
    image = at.session_state[app_state.Key.IMAGE]
    regions = anatomy_regions(image.radiograph, max_side=app_lungs.REGIONS_SIDE, markers_side=app_lungs.REGIONS_SIDE, ocr=False)
    assert regions.found
    result = service().explain(image, app_models.default_model(), None, tuple(warmup.METHODS_FOR_WARM_UP))
    shares = {m: evidence_by_region(result.maps[m], regions) for m in result.methods}
    return at, image, regions, result, shares


def test_each_panel_title_names_its_top_regions_and_the_visible_lung_share(page) -> None:
    at, _, _, result, shares = page
    titles = image_titles(at)[1:]
    assert len(titles) == len(result.methods) == len(METHODS)
    for title, m in zip(titles, result.methods, strict=True):
        expected = readout_sentence(shares[m], 2)
        assert expected and expected in title, (title, expected)
        top = max(shares[m], key=shares[m].get)
        assert f"{shares[m][top]:.0%} {top}" in title
        in_lungs = sum(shares[m][z] for z in REGIONS[:6])
        shown = re.search(r"· (\d+)% in lungs", title)
        assert shown and int(shown.group(1)) == round(100 * in_lungs), title
    assert any("counts the visible lung fields only" in c.value for c in at.caption)


def readout_rows(at) -> dict[str, list[tuple[str, float]]]:
    """The readout chart's rows as drawn: ``{method label: [(region, share), ...]}`` in segment order."""
    bodies = [e.proto.body for e in at.get("html") if 'class="xai-readout"' in e.proto.body]
    assert len(bodies) == 1, len(bodies)
    rows = re.findall(r'<span class="xai-method">([^<]+)</span><span class="xai-bar">(.*?)</span></div>', bodies[0])
    return {method: [(region, float(share)) for region, share in
                     re.findall(r'data-region="([^"]+)" data-share="([\d.]+)"', bar)] for method, bar in rows}


def test_one_stacked_bar_chart_of_every_region_per_method(page) -> None:
    at, _, _, result, shares = page
    rows = readout_rows(at)
    assert list(rows) == [METHOD_TITLES[m] for m in result.methods]  # one bar per method, in the panels' order
    for m in result.methods:
        drawn = rows[METHOD_TITLES[m]]
        expected = [(r, shares[m][r]) for r in REGIONS if shares[m][r] > 0]  # every region with evidence, in order
        assert [r for r, _ in drawn] == [r for r, _ in expected]
        assert [v for _, v in drawn] == pytest.approx([v for _, v in expected], abs=1e-6)
        assert sum(v for _, v in drawn) == pytest.approx(1.0, abs=1e-5)
    body = next(e.proto.body for e in at.get("html") if 'class="xai-readout"' in e.proto.body)
    for region in {r for drawn in rows.values() for r, v in drawn if v >= 0.005}:  # colours and legend
        assert f'data-region="{region}"' in body and REGION_COLOURS[region] in body
        assert f"</i>{region}</span>" in body


def test_suspect_regions_are_flagged_by_name(page) -> None:
    at, _, _, result, shares = page
    boxes = [w for w in (*at.warning, *at.error) if "the evidence lies" in w.value]
    expected = {m: anatomy_verdict(shares[m], True) for m in result.methods}
    concerns = {m: v for m, v in expected.items() if v.light in ("amber", "red")}
    assert concerns  # on this film Guided Backprop's evidence lies mostly outside the visible lung fields
    assert len(boxes) == 1
    lines = boxes[0].value.split("\n\n")
    assert lines == [f"**{METHOD_TITLES[m]}:** {v.sentence}" for m, v in concerns.items()]
    assert (boxes[0] in at.error) == any(v.light == "red" for v in concerns.values())
    assert all(any(region in line for region in REGIONS) for line in lines)  # each names its region


def _rgba(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",")[1]))).convert("RGBA")).astype(int)


def test_zone_boundaries_toggle_draws_the_zones_on_every_panel_without_an_engine_pass(page) -> None:
    at, _, regions, _, _ = page
    assert all("lines" not in p for p in panel_layers(at))  # off by default
    calls = service().engine_calls
    open_display(at)
    at.toggle(key="disp_zones").set_value(True)
    run(at)
    layers = panel_layers(at)
    assert all("lines" in p for p in layers)
    lines = _rgba(layers[0]["lines"])
    drawn = lines[..., 3] > 100
    assert (lines[drawn][:, :3] > 200).all()  # near-white
    # Where the library's zone boundaries are, on the screen grid: the drawn pixels lie on them.
    import cv2

    h, w = drawn.shape
    truth = cv2.resize(zone_outlines(regions).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0
    truth = cv2.dilate(truth.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert drawn.sum() > 500 and (drawn & truth).sum() / drawn.sum() > 0.99
    assert service().engine_calls == calls
    at.toggle(key="disp_zones").set_value(False)
    run(at)
    assert all("lines" not in p for p in panel_layers(at))


def test_report_pdf_png_and_secondary_captures_carry_one_readout_sentence_per_method(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    import pydicom
    import pypdf
    from streamlit.runtime.media_file_manager import MediaFileManager

    from xai.export import READOUT_LABEL

    captured: dict[str, object] = {}

    def add_deferred(self, data_callable, mimetype, coordinates, file_name=None, *, element_id=""):  # noqa: ANN001
        captured[str(file_name)] = data_callable
        return f"deferred-{len(captured)}"

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    at = new_app()
    choose_sample(at, "SIIM")  # the bundled DICOM: Secondary Captures are offered
    image = at.session_state[app_state.Key.IMAGE]
    assert image.radiograph.format == "dicom"
    regions = anatomy_regions(image.radiograph, max_side=app_lungs.REGIONS_SIDE, markers_side=app_lungs.REGIONS_SIDE, ocr=False)
    result = service().explain(image, app_models.default_model(), None, tuple(warmup.METHODS_FOR_WARM_UP))
    sentences = {m: readout_sentence(evidence_by_region(result.maps[m], regions), 2) for m in result.methods}
    assert all(sentences.values())

    def made(suffix: str) -> bytes:
        return captured[next(n for n in captured if n.endswith(suffix))]()  # type: ignore[operator]

    pdf = " ".join(pypdf.PdfReader(io.BytesIO(made("_report.pdf"))).pages[0].extract_text().split())
    assert READOUT_LABEL in pdf
    for m, sentence in sentences.items():
        assert f"{METHOD_TITLES[m]}: {sentence}" in pdf, (sentence, pdf)
    with zipfile.ZipFile(io.BytesIO(made("_sc_deidentified.zip"))) as z:
        comments = [pydicom.dcmread(io.BytesIO(z.read(n))).ImageComments for n in sorted(z.namelist())]
    assert len(comments) == len(result.methods)
    for m, sentence in sentences.items():  # each capture's caption: its own method's sentence
        mine = [c for c in comments if c.startswith(METHOD_TITLES[m] + " ·")]
        assert len(mine) == 1 and f"{READOUT_LABEL}: {sentence}" in mine[0], (m, comments)
    png = Image.open(io.BytesIO(made("_gradcam.png")))
    assert sentences["gradcam"] in json.dumps(dict(png.text), ensure_ascii=False)  # in the PNG's provenance chunk


def test_how_page_explains_the_readout_of_the_film_in_view() -> None:
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from xai.radiograph import load_radiograph

    repo = Path(__file__).resolve().parents[1]
    at = run(AppTest.from_file(str(repo / "app.py"), default_timeout=300))
    run(at.switch_page("pages/how.py"))
    at.selectbox(key="how_sample").set_value("COVID-19, PA (MHH, CC BY 3.0)")
    run(at)
    assert any(h.value.startswith("7 · Where the evidence lies") for h in at.header)
    radiograph = load_radiograph(repo / "samples" / "covid19_mhh_pa.jpg")
    regions = anatomy_regions(radiograph, max_side=app_lungs.REGIONS_SIDE, markers_side=app_lungs.REGIONS_SIDE, ocr=False)
    result = service().explain(at.session_state[app_state.Key.IMAGE], app_models.default_model(), None,
                               tuple(METHODS))
    shares = evidence_by_region(result.maps["gradcam"], regions)
    paragraph = next(m.value for m in at.markdown if "six lung zones" in m.value)
    assert f"Grad-CAM reads “{readout_sentence(shares, 3)}”" in paragraph
    assert f"{sum(shares[z] for z in REGIONS[:6]):.0%} in the visible lung fields" in paragraph
    assert "display convention" in paragraph  # a JPEG says nothing about which side is which
    lungs_area = float(np.isin(regions.labels, range(6)).mean())
    assert f"they cover {lungs_area:.0%} of the image" in paragraph
    pictures = [e for e in at.get("image") if any("regions of this film" in c for c in e.captions)]
    assert len(pictures) == 1


def test_trust_page_verdict_reads_the_readout_and_names_the_region(page) -> None:
    from test_trust_page import lines_for, trust_page_with_sample

    _, _, regions, _, _ = page  # the NIH film's regions (the Trust page explains the card's positive class)
    at = trust_page_with_sample("NIH")
    lines = lines_for(at, "anatomy")
    assert len(lines) == len(METHODS)
    trust_result = service().explain(at.session_state[app_state.Key.IMAGE], app_models.default_model(),
                                     app_models.default_model().class_names.index(
                                         at.selectbox(key="trust_target").value)
                                     if at.selectbox(key="trust_target").value != "predicted" else None,
                                     tuple(METHODS))
    for m in trust_result.methods:
        expected = anatomy_verdict(evidence_by_region(trust_result.maps[m], regions), True)
        assert sum(expected.sentence in line for line in lines) >= 1, (expected.sentence, lines)


@pytest.mark.parametrize("film", ["samples/cr_pa_siim.dcm", "canon_dx_pa_mono1_inverse_j2k_lossless.dcm"])
def test_the_pages_smaller_regions_grid_keeps_the_shares_of_the_full_one(film: str) -> None:
    """The page cuts the regions (and looks for text and markers) on at most REGIONS_SIDE px to keep the first
    result fast; on a 1 MP and a 4 MP DICOM every region's share of every map stays within 0.01 of the shares on
    the 1024 px grid with the marker finder's own work size (measured: <= 0.005)."""
    from pathlib import Path

    from conftest import DICOM_DIR

    from xai.radiograph import load_radiograph

    repo = Path(__file__).resolve().parents[1]
    path = repo / film if film.startswith("samples/") else DICOM_DIR / film
    radiograph = load_radiograph(path)
    assert max(radiograph.shape) >= 2 * app_lungs.REGIONS_SIDE  # the page's grid is really smaller here
    result = service().run_engine(radiograph, app_models.default_model(), None, tuple(METHODS))
    page_regions = app_lungs.film_anatomy(f"grid-{film}", radiograph)  # what the page uses
    assert not isinstance(page_regions, str) and page_regions.found
    assert max(page_regions.shape) == app_lungs.REGIONS_SIDE
    full = anatomy_regions(radiograph, max_side=1024, ocr=False)
    assert max(full.shape) == 1024
    for method in METHODS:
        on_page = evidence_by_region(result.maps[method], page_regions)
        reference = evidence_by_region(result.maps[method], full)
        worst = max(abs(on_page[r] - reference[r]) for r in REGIONS)
        assert worst <= 0.01, (method, worst, on_page, reference)
