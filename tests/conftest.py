"""Shared fixtures: the real model on the reference checkpoint (random values, official layout).

The reference data (a seeded official-layout checkpoint and the official code's outputs for it) is
built live by :func:`napari_mobilesam.testing.reference.build_reference` with the official MobileSAM
package (``mobilesam-mirror``), once, and cached in pytest's cache folder; nothing outside the
repository is needed. ``NAPARI_MOBILESAM_REFERENCE=DIR`` keeps that cache in another folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest


def pytest_configure(config):
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(config.rootpath) / ".pytest_cache" / "ultralytics"))
    os.environ.setdefault("YOLO_OFFLINE", "1")


_GUI_FIXTURES = {"make_napari_viewer", "qtbot"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses napari's viewer or qtbot (directly or through a fixture) as ``gui``, so
    ``pytest -m "not slow and not gui"`` is the quick loop without a display."""
    for item in items:
        if _GUI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)


@pytest.fixture(scope="session")
def reference_dir(request, tmp_path_factory) -> Path:
    from napari_mobilesam.testing.reference import build_reference

    folder = os.environ.get("NAPARI_MOBILESAM_REFERENCE")
    if not folder:
        cache = getattr(request.config, "cache", None)
        folder = cache.mkdir("napari-mobilesam-reference") if cache else tmp_path_factory.mktemp("reference")
    return build_reference(folder)


@pytest.fixture(scope="session")
def checkpoint(reference_dir) -> Path:
    return reference_dir / "mobile_sam_random.pt"


@pytest.fixture(scope="session")
def cases(reference_dir) -> dict:
    return json.loads((reference_dir / "cases.json").read_text())


@pytest.fixture(scope="session")
def sam(checkpoint):
    from napari_mobilesam import build_mobilesam

    return build_mobilesam(checkpoint, device="cpu")


@pytest.fixture(scope="session")
def predictor(sam):
    from napari_mobilesam import Predictor

    return Predictor(sam)


@pytest.fixture(scope="session")
def cell_image(reference_dir) -> np.ndarray:
    from skimage.io import imread

    return imread(reference_dir / "cell.png")


# ---------------------------------------------------------------------- the functional test model
@pytest.fixture(scope="session")
def fcheckpoint(tmp_path_factory) -> Path:
    """The functional test checkpoint (trained on synthetic cells; napari_mobilesam.testing)."""
    from napari_mobilesam.testing import synthetic_checkpoint

    return synthetic_checkpoint(tmp_path_factory.mktemp("synthetic_model"))


@pytest.fixture(scope="session")
def fsam(fcheckpoint):
    from napari_mobilesam import build_mobilesam

    return build_mobilesam(fcheckpoint, device="cpu")


@pytest.fixture(scope="session")
def fpredictor(fsam):
    from napari_mobilesam import Predictor

    return Predictor(fsam)
