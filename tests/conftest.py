"""Shared test fixtures: where the real radiographs live, and the app's start-up settled before each test.

The data set is read from ``../shared/data`` (next to the repository), never downloaded.
``CHESTCOVNET_DATA`` overrides the location.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHESTCOVNET_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
CHESTCOVNET_DIR = SHARED_DATA / "chestcovnet"
DICOM_DIR = SHARED_DATA / "dicom"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared data folder; a missing folder is an error, never a skip."""
    assert SHARED_DATA.is_dir(), f"shared data not found at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def dicom_dir(shared_data: Path) -> Path:
    return shared_data / "dicom"


@pytest.fixture(scope="session")
def chestcovnet_dir(shared_data: Path) -> Path:
    return shared_data / "chestcovnet"


@pytest.fixture(autouse=True)
def _start_up_settled() -> None:
    """Each test starts once the app's start-up work has finished (the bundled model's load and warm-up, on a
    background thread: ``pages._models.bundled_model_loading``), so no test counts or meets that work as its own."""
    models_page = sys.modules.get("pages._models")
    if models_page is not None:
        models_page.wait_for_warm_up()
