"""Synthetic cells and a functional test model (never imported by the package's main path).

- :func:`synthetic_cells`, :func:`synthetic_stack`: synthetic microscopy with exact labels
  (see :mod:`.synthetic`).
- :func:`synthetic_checkpoint`: an official-layout MobileSAM state dict trained here on
  synthetic cells, so that prompts give the right cell. It is a *test model*, not MobileSAM's
  weights: it knows bright or dark roundish cells and nothing else.
- :func:`synthetic_detector`: a YOLOv8n trained on the same cells, for the object-aware sampler.

The files are committed under ``testing/data/`` and checked against their SHA-256 on use.

Training: two seeded, scripted stages (:mod:`.train_synthetic`; the commands, the log, the wall
times and why stage 2 exists are in docs/training.md). Stage 1 trained the whole model from a
seeded random initialisation (4,985 steps, 57 min on one core, 2026-12-02). Stage 2 starts from
it, calibrates TinyViT's BatchNorm statistics and trains with them frozen (stage 1 trained with
per-crop statistics, so its inference-mode network was not the one it trained), with half the
crops brightfield-like, SAM's iterative mask-input rounds and a negative-click prompt over two
touching cells (724 steps, 39 min wall, 9.4 CPU-minutes at nice 15 with 1 torch thread, 2026-12-05, on this busy 2-core CPU).

Held-out numbers (``python -m napari_mobilesam.testing.metrics``; stage 1 in brackets): clicks
IoU >= 0.8 for 23% (13%), median 0.65 (0.24); boxes IoU >= 0.85 for 9% (4%), median 0.67 (0.27);
dark frames now segment (click median 0.57-0.67, was 0.06-0.10); a negative click removes 94% of
a spill (none before) but leaves the clicked cell at median IoU 0.26; everything blobs recall
0.31 / precision 0.33 (0.25 / 0.22), object-aware 0.31 / 0.45 (0.38 / 0.46), grid 0 labels. Still a
weak model for the issue's targets: see docs/training.md.

Detector (``python -m napari_mobilesam.testing.train_detector --out A --epochs 20 --images 96
--imgsz 256``, then ``--out B --epochs 30 --images 64 --imgsz 256 --seed 1 --init A``): YOLOv8n
from scratch, 50 epochs in all (66 min wall on the shared CPU); validation mAP50 0.79,
mAP50-95 0.37.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .synthetic import render_cells, sample_cells, synthetic_cells, synthetic_stack

__all__ = [
    "CHECKPOINT_SHA256",
    "DETECTOR_SHA256",
    "render_cells",
    "sample_cells",
    "synthetic_cells",
    "synthetic_checkpoint",
    "synthetic_detector",
    "synthetic_stack",
]

DATA = Path(__file__).with_name("data")
CHECKPOINT_FILE = "mobilesam_synthetic_fp16.pt"
CHECKPOINT_SHA256 = "8ee29b6644b2b9459d204dcefc4413337ca1d5eda937abe62f0e29e5b99bdc6f"
DETECTOR_FILE = "synthetic_yolov8n.pt"
DETECTOR_SHA256 = "0cd4df829870e4bca5b39872c89ccbd89f640284ee85a26146f9792005eab603"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(name: str, sha256: str) -> Path:
    path = DATA / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the functional test model is part of the source tree (napari_mobilesam/testing/data); "
            "reinstall from a full checkout, or remake it with `python -m napari_mobilesam.testing.train_synthetic`."
        )
    digest = _sha256(path)
    if digest != sha256:
        raise ValueError(f"{path} has SHA-256 {digest}, expected {sha256}: the file is damaged or was replaced; restore it.")
    return path


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    try:
        import pooch

        return Path(pooch.os_cache("napari-mobilesam")) / "testing"
    except Exception:  # noqa: BLE001  # pragma: no cover - pooch is a dependency
        return Path(tempfile.gettempdir()) / "napari-mobilesam-testing"


def synthetic_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The functional test checkpoint as an fp32 official-layout state dict; returns its path.

    The committed fp16 file is verified, converted to float32 once and cached in ``cache_dir``
    (default: the user cache folder, ``.../napari-mobilesam/testing``). ``build_mobilesam(path)``
    loads it strictly.
    """
    import torch

    src = _verified(CHECKPOINT_FILE, CHECKPOINT_SHA256)
    folder = _cache_dir(cache_dir)
    dst = folder / f"mobilesam_synthetic_{CHECKPOINT_SHA256[:12]}_fp32.pt"
    if dst.is_file():
        return dst
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / "napari-mobilesam-testing"
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / dst.name
    state = torch.load(src, map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    tmp = dst.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, dst)  # atomic: a concurrent reader never sees half a file
    return dst


def synthetic_detector() -> Path:
    """The synthetic-cells YOLOv8n (an ordinary ultralytics detect checkpoint, fp16, ~6 MB).

    For ``segment_everything(..., sampler="object-aware", detector=synthetic_detector())``; it was
    trained at ``imgsz`` 256 on frames of 256..512 px; the file records that size, so ``Detector.imgsz``
    is 256 and detection runs at it by default.
    """
    return _verified(DETECTOR_FILE, DETECTOR_SHA256)
