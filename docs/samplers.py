"""Draw what each segment-everything sampler asks the decoder about: docs/samplers.png.

    python docs/samplers.py

Prompts only (no model): SAM's 32x32 point grid vs the blobs sampler's boxes on a synthetic
fluorescence frame (the frame used by benchmarks/bench_everything.py). MobileSAMv2's object-aware
sampler proposes boxes like the right panel, from a YOLO detector instead of blob detection.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))

from bench_everything import cells  # noqa: E402

from napari_mobilesam import to_rgb_uint8  # noqa: E402
from napari_mobilesam.engine.samplers import blob_boxes  # noqa: E402


def main() -> None:
    frame = cells(512, n=80)
    rgb = to_rgb_uint8(frame)
    boxes, _ = blob_boxes(rgb, diameter=26)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    for ax in axes:
        ax.imshow(rgb[..., 0], cmap="gray")
        ax.set_axis_off()
    g = (np.arange(32) + 0.5) * 512 / 32
    gy, gx = np.meshgrid(g, g)
    axes[0].plot(gx.ravel(), gy.ravel(), ".", color="#ffcc00", ms=3)
    axes[0].set_title("grid (SAM): 1,024 points x 3 masks, then NMS")
    for r0, c0, r1, c1 in boxes:
        axes[1].add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, ec="#00e5ff", lw=1))
    axes[1].set_title(f"blobs / object-aware: {len(boxes)} boxes x 1 mask")
    fig.tight_layout()
    fig.savefig(HERE / "samplers.png", dpi=80)


if __name__ == "__main__":
    main()
