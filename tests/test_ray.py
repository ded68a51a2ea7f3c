"""``python -m xai report --engine ray``: the same report as the local run, on a real local Ray.

One Ray session for the whole module (2 CPUs, no dashboard), shut down at the end; real films from the
shared data set and the tiny seeded bundle of the pipeline tests.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_pipeline import make_bundle

from xai.cli import main

FILMS = ("nih_00008727_009.jpg", "mhh_b343e657.jpg", "nih_00010120_010.jpg", "nlm_CHNCXR_0001_0.jpg")
NUMBER = re.compile(r"-?\d+\.\d+(?:e-?\d+)?")


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    import ray

    from xai.batch.ray_engine import start_local_ray

    start_local_ray(2)  # what the command starts for itself, here once for every test of the module
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, chestcovnet_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("films")
    for name in FILMS:
        shutil.copy(chestcovnet_dir / "images" / name, folder / name)
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return folder


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _report(bundle: Path, inputs: Path, out: Path, *extra: str) -> tuple[int, str]:
    code, _, stderr = run(["report", str(inputs), "--model", str(bundle), "--methods", "gradcam,gradcam++",
                           "--boxes", str(inputs.parent / "boxes.csv"), "--out", str(out), "--no-progress", *extra])
    return code, stderr


def _same_within_rounding(local: str, distributed: str) -> None:
    """Equal text once numbers are masked, and every number equal within float rounding."""
    assert NUMBER.sub("#", local) == NUMBER.sub("#", distributed)
    for a, b in zip(NUMBER.findall(local), NUMBER.findall(distributed), strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-4, abs=2e-3), (a, b)  # 3-decimal HTML figures: 1 ulp


def test_ray_report_equals_the_local_one_and_resumes(ray_session: None, bundle: Path, inputs: Path,
                                                     tmp_path: Path) -> None:
    (inputs.parent / "boxes.csv").write_text("file,x,y,w,h\nnih_00008727_009.jpg,100,150,200,180\n")
    code, stderr = _report(bundle, inputs, tmp_path / "local", "--batch-size", "2")
    assert code == 1, stderr
    code, stderr = _report(bundle, inputs, tmp_path / "ray", "--engine", "ray", "--workers", "2",
                           "--batch-size", "2")
    assert code == 1, stderr
    assert "zz_broken.png" in stderr and "Token authentication" not in stderr  # Ray's own logs kept quiet

    local_csv = (tmp_path / "local" / "report.csv").read_text("utf-8")
    ray_csv = (tmp_path / "ray" / "report.csv").read_text("utf-8")
    rows = list(csv.DictReader(io.StringIO(ray_csv)))
    assert [Path(r["file"]).name for r in rows] == [*sorted(FILMS), "zz_broken.png"]  # input order kept
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["failed"]
    assert rows[1]["gradcam_hit"] in ("0", "1")  # the boxed film has its agreement figures
    _same_within_rounding(local_csv, ray_csv)
    _same_within_rounding((tmp_path / "local" / "index.html").read_text("utf-8"),
                          (tmp_path / "ray" / "index.html").read_text("utf-8"))
    for stem in (Path(f).stem for f in FILMS):  # the workers wrote each film's files where the local run does
        local = sorted(p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local" / stem).rglob("*"))
        remote = sorted(p.relative_to(tmp_path / "ray").as_posix() for p in (tmp_path / "ray" / stem).rglob("*"))
        assert local == remote and len(local) > 5

    # --resume on Ray: one output deleted -> only that film is explained again; the report is unchanged.
    out = tmp_path / "ray"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("row.json")}
    (out / "mhh_b343e657" / "gradcam++.jpg").unlink()
    code, stderr = _report(bundle, inputs, out, "--engine", "ray", "--workers", "2", "--resume")
    assert code == 1, stderr
    redone = sorted(p.parent.name for p, t in stamps.items() if p.stat().st_mtime_ns != t)
    assert redone == ["mhh_b343e657"]
    assert (out / "mhh_b343e657" / "gradcam++.jpg").is_file()
    # The film is explained again in another batch (its own, not the first run's pair): a batched forward pass
    # may differ in the last float digit, so the region shares agree to rounding, not to the character.
    _same_within_rounding((out / "report.csv").read_text("utf-8"), ray_csv)


def test_ray_run_checks_the_model_before_starting_workers(ray_session: None, inputs: Path, tmp_path: Path) -> None:
    """A model that cannot be loaded stops the run with one clear line before any worker starts."""
    code, _, stderr = run(["report", str(inputs), "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                           "--engine", "ray"])
    assert code == 2 and "cannot load model" in stderr
    assert not (tmp_path / "o").exists()
