"""Segment everything on one frame: SAM's 32x32 grid vs MobileSAMv2's object-aware boxes vs blobs.

    python benchmarks/bench_everything.py [--checkpoint PATH] [--detector YOLO.pt] [--size 1024]
                                          [--points-per-side 32] [--points-per-batch 32] [--tile PX]

One synthetic fluorescence-like frame (``size``², ~300 bright cells), the same MobileSAM model, one run
per sampler, each from a cold embedding cache (end-to-end includes the image encoder):

- grid: ``SamAutomaticMaskGenerator`` (points_per_side², 3 masks per point, stock decoder and
  full-resolution post-processing) driven batch by batch on our Predictor;
- object-aware: a YOLO detector's boxes (conf 0.4, NMS IoU 0.9, imgsz 1024, max 320), decoded in
  batches, single-mask mode, by ``Predictor.predict_objects``. Without ``--detector`` a random-weight
  YOLOv8n (``yolov8n.yaml``, class biases zeroed so that it proposes 320 boxes) is built and used:
  it times the real detector + decoder path, its boxes are arbitrary;
- blobs: scikit-image LoG boxes on the same frame, decoded the same way.

Phases come from the generator's own progress reports: embed, sample (detector / blobs), decode,
labels (filtering, painting). Ratios > 1 mean faster than the grid. ``--tile PX`` adds a blobs run
tile by tile (total time only; its cost against the untiled blobs run is printed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from napari_mobilesam import Predictor, build_mobilesam, iter_segment_everything

DEFAULT_CKPT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mobile_sam_random.pt"


def cells(size: int, n: int = 300, seed: int = 0) -> np.ndarray:
    """uint16 frame with up to ``n`` non-overlapping bright disks of 12-40 px diameter."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 300.0)
    rr, cc = np.mgrid[:size, :size]
    placed: list[tuple[float, float, float]] = []
    for _ in range(20 * n):
        if len(placed) == n:
            break
        r = rng.uniform(6, 20) * size / 1024
        y, x = rng.uniform(r, size - r, 2)
        if all((y - py) ** 2 + (x - px) ** 2 > (r + pr + 2) ** 2 for py, px, pr in placed):
            placed.append((y, x, r))
            img[(rr - y) ** 2 + (cc - x) ** 2 <= r * r] = rng.uniform(1500, 4000)
    img += rng.normal(0, 60, img.shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def random_yolo(folder: Path) -> Path:
    os.environ.setdefault("YOLO_CONFIG_DIR", str(folder / "ultralytics"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from napari_mobilesam.model.detector import _import_yolo  # ultralytics, imported by the package's guard

    model = _import_yolo()("yolov8n.yaml")
    for branch in model.model.model[-1].cv3:
        branch[-1].bias.data.zero_()
    path = folder / "random_yolov8n.pt"
    model.save(path)
    return path


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


class PeakRSS:
    """Peak resident memory above the level at start, sampled every 20 ms (Linux)."""

    def __enter__(self):
        self.base = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.extra = self.peak - self.base


def timed_run(sam, image: np.ndarray, sampler: str, **options) -> dict[str, float]:
    """One cold run; phase times from progress messages."""
    pred = Predictor(sam)  # cold cache: end-to-end includes the encoder
    stamps: list[tuple[float, str]] = []
    mem = PeakRSS().__enter__()
    t0 = time.perf_counter()
    gen = iter_segment_everything(image, pred, sampler, **options)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            labels = stop.value
            break
        stamps.append((time.perf_counter(), p.message))
    end = time.perf_counter()
    mem.__exit__()
    if options.get("tile"):  # phases repeat per tile: only the total is meaningful
        nan = float("nan")
        return {"prompts": 0, "objects": int(len(np.unique(labels)) - 1), "embed": nan, "sample": nan, "decode": nan,
                "labels": nan, "total": end - t0, "peak_MiB": mem.extra}

    def last(word: str) -> float:
        return max(t for t, m in stamps if word in m)

    embedded = last("embedded")
    if sampler == "grid":
        sampled, decoded = embedded, last("point batch")
        n_prompts = options.get("points_per_side", 32) ** 2
    else:
        t_s, msg = next((t, m) for t, m in stamps if m.endswith(" boxes") and "decoded" not in m)
        sampled, n_prompts = t_s, int(msg.split(": ")[1].split()[0])
        decoded = max([sampled] + [t for t, m in stamps if "decoded" in m])
    return {
        "prompts": n_prompts,
        "objects": int(len(np.unique(labels)) - 1),
        "embed": embedded - t0,
        "sample": sampled - embedded,
        "decode": decoded - sampled,
        "labels": end - decoded,
        "total": end - t0,
        "peak_MiB": mem.extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    ap.add_argument("--detector", default=None, help="YOLO .pt (default: a random-weight YOLOv8n built here)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--points-per-batch", type=int, default=32, help="grid batch (official default 64; same masks)")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--tile", type=int, default=0, help="also run blobs tile by tile with tiles of PX pixels")
    args = ap.parse_args()

    torch.manual_seed(0)
    sam = build_mobilesam(args.checkpoint, device="cpu")
    image = cells(args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; frame {image.shape} {image.dtype}")
    with tempfile.TemporaryDirectory() as tmp:
        detector = args.detector or random_yolo(Path(tmp))
        if not args.detector:
            print("object-aware: random-weight YOLOv8n (class biases zeroed) -> 320 arbitrary boxes; real detector + decoder path")
        # untimed warm-up of every path (thread pools, ultralytics' first-call setup)
        small = cells(128, 5)
        for s, o in (("object-aware", dict(detector=detector, max_det=2)), ("blobs", dict(max_det=2)), ("grid", dict(points_per_side=1))):
            timed_run(sam, small, s, **o)
        cols = ("prompts", "objects", "embed", "sample", "decode", "labels", "total", "peak_MiB")
        print(f"{'sampler':>14} " + " ".join(f"{c:>9}" for c in cols) + "   (seconds; peak_MiB: RSS above the start of the run)")
        plans = [
            ("object-aware", dict(detector=detector)),
            ("blobs", dict(diameter=26 * args.size / 1024)),
            ("grid", dict(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch)),
        ]
        plans = plans[: 2 if args.skip_grid else 3]
        if args.tile:
            plans.append(("blobs, tiled", dict(diameter=26 * args.size / 1024, tile=args.tile)))
        runs = {}
        for name, opts in plans:
            r = runs[name] = timed_run(sam, image, name.split(",")[0], **opts)
            print(f"{name:>14} " + " ".join(f"{r[c]:>9d}" if isinstance(r[c], int) else f"{r[c]:>9.2f}" for c in cols), flush=True)
        if args.tile:
            from napari_mobilesam.engine.tiles import tile_boxes, tile_settings

            n = len(tile_boxes(image.shape, *tile_settings(args.tile)))
            print(f"blobs tiled ({n} tiles of <= {args.tile} px) / untiled: {runs['blobs, tiled']['total'] / runs['blobs']['total']:.2f}x the time")
    if "grid" in runs:
        g = runs["grid"]
        for name in ("object-aware", "blobs"):
            r = runs[name]
            print(
                f"grid {args.points_per_side}x{args.points_per_side} / {name}: end-to-end {g['total'] / r['total']:.1f}x, "
                f"decode phase {g['decode'] / r['decode']:.1f}x (target object-aware >= 16x end-to-end)"
            )
    oa, bl = runs["object-aware"], runs["blobs"]
    print(f"blobs vs object-aware end-to-end: {oa['total'] / bl['total']:.2f}x (>= 1 means blobs at least as fast)")


if __name__ == "__main__":
    main()
