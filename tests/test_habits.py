"""The project's habits hold: one version, CI runs README's test command, gui tests are marked."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    return next(ln for ln in lines if ln.startswith("apt-get update") and "pytest" in ln)


def test_ci_runs_the_readmes_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_test_command() in ci


def test_ci_fails_on_ruff_and_mypy():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    assert "\nruff check .\n" in ci and "\nmypy\n" in ci


def test_the_version_is_written_once():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    import napari_mobilesam

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" in project  # the one place; the package reads it from the installed metadata
    assert napari_mobilesam.__version__ == project["version"]
    hits = [p for p in (ROOT / "src").rglob("*.py") if project["version"] in p.read_text()]
    assert not hits


def test_every_test_with_a_viewer_or_qtbot_is_marked_gui(request):
    items = request.session.items
    viewers = [it for it in items if {"make_napari_viewer", "qtbot"} & set(getattr(it, "fixturenames", ()))]
    if not viewers:
        pytest.skip("run with the gui tests collected")
    assert all(it.get_closest_marker("gui") for it in viewers)
