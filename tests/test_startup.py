"""xai.boot() sets the OpenMP wait policy before torch loads, keeps a policy the environment sets, and runs
early enough in the app and the command line for the setting to take effect. Each case runs in a fresh
interpreter: the OpenMP runtime reads the variable once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=300)
    return out.stdout.strip().splitlines()[-1]


def test_boot_makes_idle_torch_threads_sleep_unless_told_otherwise() -> None:
    probe = "import os, xai; xai.boot(); import torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _run(probe) == "PASSIVE"
    assert _run(probe, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"  # an operator's choice is kept


def test_boot_after_torch_changes_nothing_it_could_not_apply() -> None:
    assert _run("import os, torch, xai; xai.boot(); print(os.environ.get('OMP_WAIT_POLICY'))") == "None"


def test_the_app_and_the_command_line_boot_before_torch_loads() -> None:
    # app.py imports these, then calls xai.boot(): torch must not be loaded by then.
    assert _run("import sys, streamlit, xai, pages._access, pages._models, pages._ood; print('torch' in sys.modules)") == "False"
    # The command line boots first thing in main(); --help exits before any model work.
    code = ("import os, xai.cli\n"
            "try:\n    xai.cli.main(['--help'], stdout=open(os.devnull, 'w'))\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    assert _run(code) == "PASSIVE"
