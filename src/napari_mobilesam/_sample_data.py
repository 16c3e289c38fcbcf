"""Sample data for trying the plugin at once (File → Open Sample → MobileSAM); nothing is downloaded."""

from __future__ import annotations

import numpy as np

__all__ = ["cell", "cell_stack", "nuclei_ihc", "synthetic_timelapse"]


def cell() -> list[tuple]:
    """scikit-image's ``cell`` (660 x 550, uint8, brightfield): one cell, for clicks and boxes."""
    from skimage import data

    return [(data.cell(), {"name": "cell"}, "image")]


def cell_stack() -> list[tuple]:
    """A small time-lapse-like stack: 5 drifting 256 x 256 windows of ``cell`` (5 x 256 x 256 uint8)."""
    from skimage import data

    img = data.cell()
    frames = [img[200 + 4 * t : 456 + 4 * t, 150 + 6 * t : 406 + 6 * t] for t in range(5)]
    return [(np.stack(frames), {"name": "cell stack", "axis_labels": ("t", "y", "x")}, "image")]


def nuclei_ihc() -> list[tuple]:
    """scikit-image's ``immunohistochemistry`` (512 x 512 RGB uint8): many stained nuclei, the
    image to try *Segment everything* on (sampler "blobs", objects "dark")."""
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "nuclei (IHC)", "rgb": True}, "image")]


def synthetic_timelapse() -> list[tuple]:
    """A fluorescence-like time-lapse of many cells drifting through the frame (8 x 256 x 256 uint8,
    ``napari_mobilesam.testing.synthetic_stack``, seed 0): for *Propagate* and *all frames*."""
    from .testing.synthetic import synthetic_stack

    stack, _ = synthetic_stack(n_frames=8, shape=(256, 256), seed=0)
    return [(stack, {"name": "synthetic cells", "axis_labels": ("t", "y", "x")}, "image")]
