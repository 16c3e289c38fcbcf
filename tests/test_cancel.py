"""Issue 24 item 6: Cancel keeps what is done: a tiled frame cancelled mid-way is written with its
finished tiles (a partial frame, said in its message), and no further tile or frame is started."""

from __future__ import annotations

import re

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


def test_cancel_an_untiled_grid_stops_within_one_batch(predictor, cell_image):
    """Issue 24 item 6: Cancel on an untiled grid run took 104 s (the whole grid) to take effect. The
    grid now polls stop before each batch of points: no batch starts after Cancel, and the frame is
    written with the batches done (a partial frame, said in its message); the next frame never starts."""
    frame = np.ascontiguousarray(cell_image[:96, :128])
    stack = np.stack([frame, frame[::-1]])
    flag = {"stop": False}
    batches, frames = [], []
    gen = iter_segment_everything(stack, predictor, sampler="grid", points_per_side=8, points_per_batch=8, min_score=0.0,
                                  min_stability=0.0, min_visible=0.0, stop=lambda: flag["stop"], out=False)
    for msg in gen:
        found = re.search(r"point batch (\d+/\d+)", msg.message)
        if found:
            batches.append(found.group(1))
            if len(batches) == 2:
                flag["stop"] = True  # the user pressed Cancel during the grid's third batch of 8
        if msg.labels is not None:
            frames.append(msg)
    assert batches == ["1/8", "2/8"]  # counted in batches, not seconds: none after Cancel
    assert [m.index for m in frames] == [(0,)]  # frame 1 never started
    assert "(partial: 2 of 8 point batches done before Cancel)" in frames[0].message
    # the partial frame holds masks of the first two rows of points only (8 points a row, top to bottom)
    assert frames[0].labels.any()
    assert int(frames[0].labels.max()) < 2 * 8 * 3 + 1


def test_cancel_before_anything_is_decoded_leaves_the_frame_as_it_was(predictor, cell_image):
    """A frame cancelled before its first batch of prompts is not reported as written (its labels are
    untouched), rather than as an empty partial frame."""
    frame = np.ascontiguousarray(cell_image[:96, :128])
    calls = {"n": 0}

    def stop() -> bool:  # False before the frame starts, True from the sampler's first batch on
        calls["n"] += 1
        return calls["n"] > 1

    items = list(iter_segment_everything(frame, predictor, sampler="grid", points_per_side=4, stop=stop, out=False))
    assert [m.labels for m in items if m.labels is not None] == []
