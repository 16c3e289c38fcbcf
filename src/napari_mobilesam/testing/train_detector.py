"""Train the synthetic-cells YOLOv8n detector with ultralytics' own trainer (CPU, seeded).

``python -m napari_mobilesam.testing.train_detector --out synthetic_yolov8n.pt``

Synthetic frames (bright and dark cells, uint8 and uint16, sizes 256..512 px) are written in
YOLO's dataset format (``images/``, ``labels/`` with one ``0 xc yc w h`` line per cell, a
``data.yaml``) under a temporary folder; ``YOLO("yolov8n.yaml")`` (random init, no download)
is trained there; the result is saved as a plain ultralytics checkpoint (``{"model": ...,
"train_args": {...}}``, fp16) that :mod:`napari_mobilesam.model.detector` reads with its safe loader.

ultralytics is AGPL-3.0 and is imported only inside :func:`train_detector`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..engine.image import to_rgb_uint8
from .synthetic import synthetic_cells

DETECTOR_SEED_BASE = 2_000_000  # training frames of the detector; tests use small seeds


def write_dataset(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Synthetic frames in YOLO's format under ``root``; returns the ``data.yaml`` path."""
    from PIL import Image

    rng = np.random.default_rng(DETECTOR_SEED_BASE + seed)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            size = int(rng.choice([256, 320, 384, 512]))
            hi = float(rng.choice([16.0, 24.0, 40.0]))
            n = int(size * size / (np.pi * 8 * hi) * rng.uniform(0.2, 0.45)) + 2
            img, lab = synthetic_cells(
                (size, size), n, int(rng.integers(DETECTOR_SEED_BASE, 2 * DETECTOR_SEED_BASE)),
                dtype=np.uint16 if rng.random() < 0.25 else np.uint8,
                polarity="dark" if rng.random() < 0.25 else "bright", radius=(8.0, hi),
            )
            Image.fromarray(to_rgb_uint8(img)).save(root / "images" / split / f"{i:04d}.png")
            lines = []
            for cid in np.unique(lab)[1:]:
                ys, xs = np.nonzero(lab == cid)
                if len(ys) < 16:
                    continue
                x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                lines.append(f"0 {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}")
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: cell\n")
    return data


def train_detector(out: Path, epochs: int = 30, n_train: int = 160, n_val: int = 16, imgsz: int = 320, seed: int = 0,
                   workdir: Path | None = None, init: Path | None = None) -> Path:
    """Train YOLOv8n from scratch (or on from ``init``, an earlier result) on synthetic cells and
    save a small fp16 checkpoint at ``out``."""
    import torch

    with tempfile.TemporaryDirectory(prefix="synthetic_yolo_") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        os.environ.setdefault("YOLO_CONFIG_DIR", str(root / "config"))
        os.environ.setdefault("YOLO_OFFLINE", "1")
        data = write_dataset(root / "data", n_train, n_val, seed)
        from ultralytics import YOLO  # AGPL-3.0: imported here only

        threads = torch.get_num_threads()
        t0 = time.time()
        model = YOLO(str(init) if init is not None else "yolov8n.yaml")
        model.train(
            data=str(data), epochs=epochs, imgsz=imgsz, batch=16, device="cpu", workers=0, seed=seed, deterministic=True,
            project=str(root / "runs"), name="train", exist_ok=True, plots=False, val=True, amp=False, verbose=False,
            pretrained=init is not None, mosaic=1.0, close_mosaic=max(1, epochs // 5), degrees=0.0, fliplr=0.5, flipud=0.5,
            hsv_h=0.0, hsv_s=0.0, hsv_v=0.3, patience=epochs, cache=True,
        )
        torch.set_num_threads(threads)  # ultralytics lowers it
        best = root / "runs" / "train" / "weights" / "best.pt"
        ckpt = torch.load(best, map_location="cpu", weights_only=False)  # our own file, just written
        net = (ckpt.get("ema") or ckpt["model"]).half()
        args = {k: v for k, v in dict(ckpt.get("train_args", {})).items() if isinstance(v, (int, float, str, bool, type(None)))}
        args["data"] = "synthetic cells (napari_mobilesam.testing.train_detector)"
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": net, "train_args": args, "epoch": -1}, out)
        print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB) after {(time.time() - t0) / 60:.1f} min", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, default=None, help="continue from this earlier result")
    a = ap.parse_args(argv)
    train_detector(a.out, a.epochs, a.images, max(4, a.images // 10), a.imgsz, a.seed, init=a.init)


if __name__ == "__main__":
    main()
