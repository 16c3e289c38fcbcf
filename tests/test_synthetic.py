"""The synthetic microscopy generator: what a microscopist's frames have, and exact labels."""

from __future__ import annotations

import time

import numpy as np
import pytest
from skimage.measure import regionprops

from napari_mobilesam.testing import synthetic_cells, synthetic_stack


@pytest.fixture(scope="module")
def frame():
    return synthetic_cells((384, 384), 40, seed=3)


def test_same_seed_same_frame_and_other_seed_differs():
    a = synthetic_cells((128, 160), 10, seed=5)
    b = synthetic_cells((128, 160), 10, seed=5)
    c = synthetic_cells((128, 160), 10, seed=6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert a[0].shape == a[1].shape == (128, 160) and a[1].dtype == np.int32


def test_cells_sizes_shapes_and_brightness(frame):
    img, lab = frame
    props = regionprops(lab, intensity_image=img.astype(float))
    assert len(props) >= 25 and set(np.unique(lab)) == set(range(len(props) + 1))
    inner = [p for p in props if min(p.bbox[:2]) > 0 and p.bbox[2] < lab.shape[0] and p.bbox[3] < lab.shape[1]]
    radius = np.array([np.sqrt(p.area / np.pi) for p in inner])
    assert radius.min() >= 8 * 0.75 and radius.max() <= 40 * 1.1
    aspect = np.array([p.axis_major_length / max(p.axis_minor_length, 1) for p in inner])
    assert aspect.max() <= 2.5 * 1.2 and aspect.max() > 1.6 and aspect.min() < 1.3  # round to elongated
    means = np.array([p.intensity_mean for p in props])
    assert means.max() / means.min() > 2.2  # brightness varies about 3x between cells
    assert means.min() > img[lab == 0].mean()  # bright cells on a dark background


def test_some_cells_touch_and_have_texture(frame):
    img, lab = frame
    right = (lab[:, 1:] != lab[:, :-1]) & (lab[:, 1:] > 0) & (lab[:, :-1] > 0)
    down = (lab[1:] != lab[:-1]) & (lab[1:] > 0) & (lab[:-1] > 0)
    assert right.sum() + down.sum() > 20  # labelled pixels of different cells side by side
    biggest = np.bincount(lab.ravel())[1:].argmax() + 1
    assert img[lab == biggest].std() > 5  # inner texture, not a flat disc


def test_dark_uint16_variant():
    img, lab = synthetic_cells((200, 200), 15, seed=2, polarity="dark", dtype=np.uint16)
    assert img.dtype == np.uint16 and img.max() > 255 and img.min() >= 100
    assert img[lab > 0].mean() < img[lab == 0].mean()  # dark cells on a bright background
    img8, lab8 = synthetic_cells((200, 200), 15, seed=2, polarity="dark")
    assert img8.dtype == np.uint8 and np.array_equal(lab, lab8)


def test_bad_arguments_say_what_to_use():
    with pytest.raises(ValueError, match="polarity"):
        synthetic_cells((64, 64), 3, polarity="grey")
    with pytest.raises(ValueError, match="dtype"):
        synthetic_cells((64, 64), 3, dtype=np.int8)


def test_stack_keeps_ids_while_cells_move_enter_and_leave():
    t0 = time.perf_counter()
    stack, labels = synthetic_stack(seed=0)
    elapsed = time.perf_counter() - t0
    assert stack.shape == labels.shape == (8, 256, 256) and stack.dtype == np.uint8
    again = synthetic_stack(seed=0)
    assert np.array_equal(again[0], stack) and np.array_equal(again[1], labels)
    present = [set(np.unique(f)) - {0} for f in labels]
    assert present[0] - present[-1], "some cell leaves the frame"
    assert present[-1] - present[0], "some cell enters or appears"
    # the same id is the same cell: it moves by a few pixels per frame, never jumps
    steps = []
    for t in range(len(labels) - 1):
        for cid in present[t] & present[t + 1]:
            a, b = labels[t] == cid, labels[t + 1] == cid
            if a.sum() > 200 and b.sum() > 200 and abs(int(a.sum()) - int(b.sum())) < 0.2 * a.sum():  # whole in both
                steps.append(np.hypot(*(np.argwhere(a).mean(0) - np.argwhere(b).mean(0))))
    assert len(steps) > 20 and 1.0 < np.median(steps) < 10 and max(steps) < 15
    assert elapsed < 5  # fast enough for a sample (about 0.5 s here)
