"""Shared fixtures: the real model on the reference checkpoint (random values, official layout)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(os.environ.get("NAPARI_MOBILESAM_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))
CHECKPOINT = REFERENCE / "mobile_sam_random.pt"


def pytest_configure(config):
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(config.rootpath) / ".pytest_cache" / "ultralytics"))
    os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not CHECKPOINT.is_file():
        pytest.fail(f"Reference data missing: {CHECKPOINT}. Set NAPARI_MOBILESAM_REFERENCE to shared/reference.")
    return REFERENCE


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
