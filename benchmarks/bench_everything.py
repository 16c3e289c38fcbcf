"""Segment everything on one frame: the official MobileSAM grid vs our object-aware boxes, blobs and grid.

    python benchmarks/bench_everything.py [--checkpoint PATH] [--detector YOLO.pt] [--size 1024]
                                          [--points-per-side 32] [--repeats 2] [--skip-official] [--tile PX]

One synthetic fluorescence-like frame (``size``², ~300 bright cells), the same random-valued MobileSAM
weights loaded into the official model (``mobile_sam`` = mobilesam-mirror, byte-identical to the official
package) and into ours; each run from a cold embedding cache (end-to-end includes the image encoder):

- official grid: ``mobile_sam.SamAutomaticMaskGenerator(points_per_side=32)`` (its defaults: 64 points
  per batch, IoU 0.88, stability 0.95) on the stock ``SamPredictor``, on the frame as RGB uint8;
  "embed" is a separate ``SamPredictor.set_image`` of the same frame, "decode" the rest;
- object-aware: a YOLO detector's boxes (conf 0.4, NMS IoU 0.9, imgsz 1024, max 320), decoded in
  batches, single-mask mode, by ``Predictor.predict_objects``. Without ``--detector`` a random-weight
  YOLOv8n (``yolov8n.yaml``, class biases zeroed so that it proposes 320 boxes) is built and used:
  it times the real detector + decoder path, its boxes are arbitrary;
- blobs: scikit-image LoG boxes on the same frame (diameter given), decoded the same way;
- grid: our grid sampler (same point grid and filters as the official one) on the fast decoder.

Phases come from the generator's own progress reports: embed, sample (detector / blobs), decode,
labels (filtering, painting). Our runs are repeated ``--repeats`` times, interleaved, and reported as
min-max ranges (the CPU may be shared). ``peak_MiB``: resident memory above the start of the run.
Ratios > 1 mean faster than the official grid. ``--tile PX`` adds a blobs run tile by tile.
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
from _runtime import add_runtime_args, apply_runtime_args

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


def checkpoint_path(arg: str, folder: Path) -> Path:
    """``arg`` if it exists, else a seeded random state dict of the official model class saved in ``folder``."""
    if Path(arg).is_file():
        return Path(arg)
    from napari_mobilesam.testing.reference import official_sam, perturbed_state_dict

    path = folder / "mobile_sam_random.pt"
    torch.save(perturbed_state_dict(official_sam().state_dict()), path)
    print(f"{arg} not found: seeded random weights from the official model class -> {path}")
    return path


def official_model(checkpoint: Path):
    """The official MobileSAM (``mobile_sam`` package, vit_t = TinyViT) on the same state dict."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm deprecation / registry warnings
        from mobile_sam import sam_model_registry

        sam = sam_model_registry["vit_t"]()
    missing, unexpected = sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), strict=False)
    # the project's functional test model has no TinyViT classification head (SAM never runs it)
    assert not unexpected and all(k.startswith(("image_encoder.head.", "image_encoder.norm_head.")) for k in missing), (missing, unexpected)
    return sam.eval()


def official_grid(osam, rgb: np.ndarray, points_per_side: int) -> dict[str, float]:
    """The official SamAutomaticMaskGenerator end to end, plus a separate encoder run for the embed column."""
    from mobile_sam import SamAutomaticMaskGenerator, SamPredictor

    pred = SamPredictor(osam)
    t = time.perf_counter()
    with torch.no_grad():
        pred.set_image(rgb)
    embed = time.perf_counter() - t
    gen = SamAutomaticMaskGenerator(osam, points_per_side=points_per_side)
    mem = PeakRSS().__enter__()
    t = time.perf_counter()
    masks = gen.generate(rgb)
    total = time.perf_counter() - t
    mem.__exit__()
    nan = float("nan")
    return {"prompts": points_per_side**2, "objects": len(masks), "embed": embed, "sample": 0.0, "decode": total - embed,
            "labels": nan, "total": total, "peak_MiB": mem.extra}


COLS = ("prompts", "objects", "embed", "sample", "decode", "labels", "total", "peak_MiB")


def _cell(values: list) -> str:
    if isinstance(values[0], int):
        return f"{values[0]:>11d}"
    lo, hi = min(values), max(values)
    return f"{lo:>11.2f}" if len(values) == 1 or hi - lo < 0.005 else f"{lo:>5.2f}-{hi:<5.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    ap.add_argument("--detector", default=None, help="YOLO .pt (default: a random-weight YOLOv8n built here)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each of our samplers (interleaved)")
    ap.add_argument("--skip-official", action="store_true", help="no official grid run (ratios then missing)")
    ap.add_argument("--skip-grid", action="store_true", help="no run of our grid sampler")
    ap.add_argument("--tile", type=int, default=0, help="also run blobs tile by tile with tiles of PX pixels")
    add_runtime_args(ap)
    args = ap.parse_args()
    apply_runtime_args(args)

    torch.manual_seed(0)
    image = cells(args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; frame {image.shape} {image.dtype}")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint_path(args.checkpoint, Path(tmp))
        sam = build_mobilesam(ckpt, device="cpu")
        detector = args.detector or random_yolo(Path(tmp))
        if not args.detector:
            print("object-aware: random-weight YOLOv8n (class biases zeroed) -> 320 arbitrary boxes; real detector + decoder path")
        # untimed warm-up of every path (thread pools, ultralytics' first-call setup)
        small = cells(128, 5)
        for smp, o in (("object-aware", dict(detector=detector, max_det=2)), ("blobs", dict(max_det=2, diameter=8)), ("grid", dict(points_per_side=1))):
            timed_run(sam, small, smp, **o)
        plans = [("object-aware", dict(detector=detector)), ("blobs", dict(diameter=26 * args.size / 1024))]
        if not args.skip_grid:
            plans.append(("grid", dict(points_per_side=args.points_per_side)))
        if args.tile:
            plans.append(("blobs, tiled", dict(diameter=26 * args.size / 1024, tile=args.tile)))
        runs: dict[str, list[dict]] = {name: [] for name, _ in plans}
        print(f"{'sampler':>14} " + " ".join(f"{c:>11}" for c in COLS) + "   (seconds)", flush=True)

        def show(name: str, rs: list[dict]) -> None:
            print(f"{name:>14} " + " ".join(_cell([r[c] for r in rs]) for c in COLS), flush=True)

        official = None
        for rep in range(args.repeats):
            for name, opts in plans:
                runs[name].append(timed_run(sam, image, name.split(",")[0], **opts))
                show(f"{name} #{rep + 1}", runs[name][-1:])
            if rep == 0 and not args.skip_official:  # between our repeats: the official run sees the same CPU
                from napari_mobilesam import to_rgb_uint8

                official = official_grid(official_model(ckpt), to_rgb_uint8(image), args.points_per_side)
                show("official grid", [official])
        print("summary (min-max over repeats):")
        for name, _ in plans:
            show(name, runs[name])
        if args.tile:
            from napari_mobilesam.engine.tiles import tile_boxes, tile_settings

            n = len(tile_boxes(image.shape, *tile_settings(args.tile)))
            t_tile = min(r["total"] for r in runs["blobs, tiled"]) / min(r["total"] for r in runs["blobs"])
            print(f"blobs tiled ({n} tiles of <= {args.tile} px) / untiled: {t_tile:.2f}x the time")
    if official:
        o = official
        show("official grid", [o])
        for name, _ in plans:
            tot = [r["total"] for r in runs[name]]
            dec = [r["decode"] for r in runs[name]]
            per = [r["decode"] / max(r["prompts"], 1) * 1000 for r in runs[name]]
            print(
                f"official grid {args.points_per_side}x{args.points_per_side} / ours {name}: end-to-end x{o['total'] / max(tot):.1f}-x{o['total'] / min(tot):.1f}, "
                f"decode phase x{o['decode'] / max(dec):.1f}-x{o['decode'] / min(dec):.1f}; our decode {min(per):.1f}-{max(per):.1f} ms per prompt"
            )
        print("(target: object-aware >= x25 end to end; peak memory for 320 boxes <= +400 MiB)")


if __name__ == "__main__":
    main()
