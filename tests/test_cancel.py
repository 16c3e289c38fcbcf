"""Issue 24 item 6: Cancel keeps what is done: a tiled frame cancelled mid-way is written with its
finished tiles (a partial frame, said in its message), and no further tile or frame is started."""

from __future__ import annotations

import numpy as np

from napari_mobilesam.engine.everything import iter_segment_everything
from napari_mobilesam.testing import synthetic_stack


def test_cancel_mid_frame_keeps_the_tiles_done(fpredictor):
    stack, _ = synthetic_stack(n_frames=2, shape=(512, 512), n=40, seed=3)
    flag = {"stop": False}
    seen, frames = [], []
    gen = iter_segment_everything(stack, fpredictor, sampler="blobs", tile=256, diameter=30, stop=lambda: flag["stop"], out=False)
    for msg in gen:
        seen.append(msg.message)
        if "tile 2/" in msg.message:
            flag["stop"] = True  # the user pressed Cancel during tile 2 of frame 0
        if msg.labels is not None:
            frames.append(msg)
    assert [m.index for m in frames] == [(0,)]  # frame 1 never started
    assert "(partial: 2 of " in frames[0].message and "tiles done before Cancel" in frames[0].message
    assert not any("tile 3/" in m for m in seen)
    got = frames[0].labels
    assert got.any()
    # only the finished tiles' area (rows/cols of tiles 1-2) holds labels
    rows, cols = np.nonzero(got)
    assert rows.max() < 256 + 64 + 40  # tiles 1-2 are the first row of tiles (overlap a quarter)
