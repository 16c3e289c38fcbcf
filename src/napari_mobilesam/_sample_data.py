"""Sample data for trying the plugin at once (File → Open Sample → MobileSAM)."""

from __future__ import annotations

import numpy as np

__all__ = ["cell", "cell_stack"]


def cell() -> list[tuple]:
    """scikit-image's ``cell`` (660 x 550, uint8, brightfield)."""
    from skimage import data

    return [(data.cell(), {"name": "cell"}, "image")]


def cell_stack() -> list[tuple]:
    """A small time-lapse-like stack: 5 drifting 256 x 256 windows of ``cell`` (5 x 256 x 256 uint8, no download)."""
    from skimage import data

    img = data.cell()
    frames = [img[200 + 4 * t : 456 + 4 * t, 150 + 6 * t : 406 + 6 * t] for t in range(5)]
    return [(np.stack(frames), {"name": "cell stack"}, "image")]
