"""OpenMP's wait policy is set before torch loads (napari_mobilesam._threads), with overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).parents[1] / "src")
CHECK = "import os, sys, napari_mobilesam.cli, torch; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"


def _run(code: str, **env: str) -> str:
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "NAPARI_MOBILESAM_OMP_WAIT")}
    e.update(env, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize(
    "env,want",
    [({}, "PASSIVE True"), ({"NAPARI_MOBILESAM_OMP_WAIT": "active"}, "ACTIVE True"),
     ({"NAPARI_MOBILESAM_OMP_WAIT": "off"}, "None True"), ({"OMP_WAIT_POLICY": "active"}, "active True"),
     ({"NAPARI_MOBILESAM_OMP_WAIT": "sleepy"}, "None True")],
)
def test_the_cli_sets_the_wait_policy_before_torch(env, want):
    assert _run(CHECK, **env) == want


def test_nothing_changes_once_torch_is_loaded():
    code = "import torch, os; from napari_mobilesam._threads import configure_openmp; print(configure_openmp(), os.environ.get('OMP_WAIT_POLICY'))"
    assert _run(code) == "None None"
