"""Every DICOM object the project writes passes David Clunie's validator (``dciodvfy -new``) with no error.

Sources: every DICOM file in ``../shared/data/dicom`` and ``samples/``, plus a real file with its 128-byte
preamble and "DICM" prefix stripped (which the app loads and explains). Objects: the Secondary Captures
(``xai.export``), the TID 1500 structured report and the parametric maps (``xai.dicom_results``), in both
modes (filed with the source's study, and de-identified). Each is also read back by pydicom and parsed by
highdicom as its own SOP class. The warnings that stay are listed in README.md with their reasons.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import highdicom
import numpy as np
import pydicom
import pytest

from xai import export, render
from xai.radiograph import load_radiograph

REPO = Path(__file__).resolve().parents[1]
MODES = ("pacs", "deidentified")


def _sources(dicom_dir: Path, tmp: Path) -> dict[str, Path]:
    files = {p.name: p for p in [*sorted(dicom_dir.glob("*.dcm")), *sorted((REPO / "samples").glob("*.dcm"))]}
    real = (REPO / "samples" / "cr_pa_siim.dcm").read_bytes()
    assert real[128:132] == b"DICM"
    bare = tmp / "no_preamble.dcm"
    bare.write_bytes(real[132:])  # the data set alone: no preamble, no "DICM", no file meta
    files[bare.name] = bare
    assert len(files) >= 5
    return files


def dciodvfy(data: bytes, tmp: Path, name: str) -> list[str]:
    """The validator's ``Error -`` and ``Warning -`` lines for one object."""
    path = tmp / name
    path.write_bytes(data)
    run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=300)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error -", "Warning -"))]


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("Error -")]


@pytest.fixture(scope="module")
def validator() -> str:
    path = shutil.which("dciodvfy")
    assert path, "dciodvfy missing: `make dicom3tools` installs it (Debian package dicom3tools)"
    return path


@pytest.fixture(scope="module")
def provenance() -> export.Provenance:
    return export.Provenance(model_name="chestcovnet", model_sha256="5e" * 32, method="gradcam",
                             target_class="covid19", target_layer="features.denseblock4",
                             settings={"colormap": "inferno"}, created=datetime(2026, 12, 1, 9, 30, tzinfo=UTC))


@pytest.fixture(scope="module")
def films(dicom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, np.ndarray]]:
    """name -> (file bytes, the film's display pixels as the app loads them)."""
    tmp = tmp_path_factory.mktemp("sources")
    return {name: (path.read_bytes(), load_radiograph(path.read_bytes()).pixels)
            for name, path in _sources(dicom_dir, tmp).items()}


def test_the_validator_finds_an_error_it_should(validator, films, provenance, tmp_path):
    """Positive control: the same check flags a capture with a Type 1 attribute removed."""
    data, pixels = films["cr_pa_siim.dcm"]
    (sc,) = export.secondary_captures({"gradcam": render.overlay(pixels[::8, ::8], pixels[::8, ::8])}, data,
                                      provenance, mode="pacs")
    ds = pydicom.dcmread(io.BytesIO(sc))
    del ds.ConversionType
    broken = io.BytesIO()
    ds.save_as(broken, enforce_file_format=True)
    assert any("ConversionType" in line for line in errors(dciodvfy(broken.getvalue(), tmp_path, "broken.dcm")))


@pytest.mark.parametrize("mode", MODES)
def test_secondary_captures_validate_from_every_source(validator, films, provenance, tmp_path, mode):
    for name, (data, pixels) in films.items():
        small = pixels[::4, ::4]  # the IOD does not depend on the size; keeps the validator quick
        files = export.secondary_captures({"gradcam": render.overlay(small, small)}, data, provenance, mode=mode)
        for i, sc in enumerate(files):
            found = dciodvfy(sc, tmp_path, f"{name}.{mode}.sc{i}.dcm")
            assert not errors(found), f"{name} ({mode}): {errors(found)}"
            image = highdicom.Image.from_dataset(pydicom.dcmread(io.BytesIO(sc)), copy=False)
            assert image.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
