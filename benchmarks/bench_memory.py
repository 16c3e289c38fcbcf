"""Peak memory (RSS) of `mobilesam everything` on long uint16 stacks: it must not grow with the frame count.

Two measurements, each in a fresh child process (peak RSS from ``os.wait4``):

1. ``io``: the CLI's data path alone on the full stack (default 200 frames of 1024 x 1024 uint16,
   400 MiB): every frame read lazily from the TIFF (``ImageSource.read``), a label frame written
   incrementally (``LabelWriter``) and the TIFF assembled at the end. No model: this isolates the
   streaming claim at full size in seconds.
2. ``cli``: the real command (``mobilesam everything --sampler blobs``) with the model, on the
   first N frames for several N (default 4 and 16, as a full 200-frame CPU run takes hours on a
   shared 2-core machine; pass ``--cli-frames 200`` for the full run). Bounded memory shows as the
   same peak RSS for every N.

Run: ``python benchmarks/bench_memory.py [--frames 200] [--size 1024] [--cli-frames 4 16]``
(``--checkpoint`` defaults to the reference checkpoint, which has the official layout.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

IO_SCRIPT = """
import sys, numpy as np
from napari_mobilesam.engine.io import LabelWriter, open_image
src = open_image(sys.argv[1])
w = LabelWriter(sys.argv[2], src.leading_shape, src.hw, {"bench": 1}, overwrite=True)
for t in w.todo():
    frame = src.read(t)
    w.write(t, (frame > np.percentile(frame, 99)).astype(np.uint32) * (t + 1))
w.finish()
"""


def write_stack(path: Path, frames: int, size: int, seed: int = 0) -> None:
    """A ``(frames, size, size)`` uint16 TIFF of noisy bright disks, written frame by frame."""
    import tifffile

    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:size, :size]
    base = np.full((size, size), 200.0)
    for r, c in rng.integers(size // 16, size - size // 16, (40, 2)):
        base[(rr - r) ** 2 + (cc - c) ** 2 <= (size // 64) ** 2] = 1200.0

    def gen():
        for t in range(frames):
            yield np.clip(np.roll(base, t, axis=1) + rng.normal(0, 30, base.shape), 0, None).astype(np.uint16)

    tifffile.imwrite(path, gen(), shape=(frames, size, size), dtype=np.uint16, photometric="minisblack")


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--cli-frames", type=int, nargs="*", default=[4, 16])
    ap.add_argument("--checkpoint", default=None, help="default: the seeded random test checkpoint")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if args.checkpoint is None:
        from napari_mobilesam.testing.reference import random_checkpoint

        args.checkpoint = str(random_checkpoint())
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        stack = tmp / "stack.tif"
        write_stack(stack, args.frames, args.size)
        mib = args.frames * args.size**2 * 2 / 2**20
        print(f"stack: {args.frames} x {args.size}^2 uint16 = {mib:.0f} MiB on disk")
        base, _ = peak_rss([sys.executable, "-c", "import napari_mobilesam, tifffile, zarr"])
        print(f"baseline (python + torch + package imports): peak RSS {base:.0f} MiB")
        rss, wall = peak_rss([sys.executable, "-c", IO_SCRIPT, str(stack), str(tmp / "io_labels.tif")])
        print(f"io  : {args.frames} frames read + labels written + TIFF assembled: peak RSS {rss:.0f} MiB "
              f"({rss - base:+.0f} over baseline; full stack {mib:.0f} MiB, labels {2 * mib:.0f} MiB), {wall:.0f} s")
        for n in args.cli_frames:
            sub = tmp / f"stack{n}.tif"
            write_stack(sub, n, args.size)
            cmd = [sys.executable, "-m", "napari_mobilesam.cli", "everything", str(sub), "-o", str(tmp / f"labels{n}.tif"),
                   "--sampler", "blobs", "--max-det", "16", "--weights", args.checkpoint, "--device", "cpu", "-q"]
            rss, wall = peak_rss(cmd)
            print(f"cli : everything on {n:3d} frames: peak RSS {rss:.0f} MiB, {wall:.0f} s ({wall / n:.1f} s/frame)")


if __name__ == "__main__":
    main()
