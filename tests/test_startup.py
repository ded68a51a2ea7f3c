"""xai.boot() sets the OpenMP wait policy before torch loads and numpy's huge-page switch (before or after numpy
loads), keeps what the environment sets, and runs early enough in the app and the command line for the settings
to take effect. Each case runs in a fresh interpreter: the runtimes read the variables once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "NUMPY_MADVISE_HUGEPAGE")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=300)
    return out.stdout.strip().splitlines()[-1]


def test_boot_makes_idle_torch_threads_sleep_unless_told_otherwise() -> None:
    probe = "import os, xai; xai.boot(); import torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _run(probe) == "PASSIVE"
    assert _run(probe, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"  # an operator's choice is kept


HUGEPAGE = "from numpy._core.multiarray import _get_madvise_hugepage as on; "


def test_boot_asks_numpy_for_no_huge_pages_in_this_process_and_its_workers_unless_told_otherwise() -> None:
    before_numpy = "import os, xai; xai.boot(); import numpy; " + HUGEPAGE + "print(on(), os.environ['NUMPY_MADVISE_HUGEPAGE'])"
    after_numpy = "import os, numpy; " + HUGEPAGE + "was = on(); import xai; xai.boot(); print(was, on())"
    assert _run(before_numpy) == "False 0"  # numpy read the variable boot set; a child process inherits it
    assert _run(after_numpy) == "True False"  # numpy was on (its default here), boot switched it off
    assert _run(after_numpy, NUMPY_MADVISE_HUGEPAGE="1") == "True True"  # an operator's choice is kept
    worker = ("import xai; xai.boot(); from xai.sandboxed_decoder import run_isolated; "
              "from numpy._core.multiarray import _get_madvise_hugepage as on; print(run_isolated(on))")
    assert _run(worker) == "False"  # the decoders' fork server and its workers


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
