"""engine/propagate.py: mask -> prompt geometry, first-step prompt, stop rules, directions, errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mobilesam._progress import drive
from napari_mobilesam.engine.predictor import Prompt
from napari_mobilesam.engine.propagate import iter_propagate, mask_to_logits


@pytest.fixture(scope="module")
def frame(cell_image) -> np.ndarray:
    return np.ascontiguousarray(cell_image[::4, ::4][:96, :120])  # non-square on purpose


@pytest.fixture(scope="module")
def start_mask(frame) -> np.ndarray:
    m = np.zeros(frame.shape, bool)
    m[30:70, 40:90] = True
    return m


def run_all(gen):
    steps = []
    return steps, drive(gen, steps.append)


def test_mask_to_logits_follows_the_frame_geometry(predictor, frame, start_mask):
    predictor.set_image(frame)
    logits = mask_to_logits(start_mask, predictor)
    assert logits.shape == (256, 256) and logits.dtype == np.float32
    back = predictor._upsampler().full_mask(logits, 0.0)  # the decoder's own low-res -> frame mapping
    iou = (back & start_mask).sum() / (back | start_mask).sum()
    assert iou > 0.9
    # the padded region (outside the resized frame) is background
    h, w = predictor.input_size
    assert (logits[int(np.ceil(h / 4)) + 1 :, :] < 0).all() and (logits[:, int(np.ceil(w / 4)) + 1 :] < 0).all()


def test_first_step_is_box_plus_mask_prompt(predictor, frame, start_mask):
    steps, result = run_all(iter_propagate(predictor, lambda i: frame, 3, 1, start_mask, min_score=-np.inf, min_overlap=0.0, min_area=0))
    assert [s.index for s in steps] == [2, 0]  # forward, then backward
    predictor.set_image(frame)
    direct = predictor.predict_objects([Prompt(box=[30, 40, 70, 90], mask_input=mask_to_logits(start_mask, predictor))])[0]
    assert np.array_equal(result[2], direct.full()) and np.array_equal(result[0], direct.full())
    assert steps[0].score == pytest.approx(direct.score, abs=1e-5)
    overlap = (direct.full() & start_mask).sum() / (direct.full() | start_mask).sum()
    assert steps[0].overlap == pytest.approx(overlap)


def test_stops_on_low_score_low_overlap_or_vanishing(predictor, frame, start_mask):
    steps, result = run_all(iter_propagate(predictor, lambda i: frame, 4, 0, start_mask, min_score=2.0))
    assert len(steps) == 1 and steps[0].mask is None and "predicted IoU" in steps[0].stopped and result == {}
    steps, result = run_all(iter_propagate(predictor, lambda i: frame, 4, 0, start_mask, min_score=-np.inf, min_overlap=1.01))
    assert len(steps) == 1 and "overlap" in steps[0].stopped and result == {}
    steps, result = run_all(iter_propagate(predictor, lambda i: frame, 4, 3, start_mask, min_score=-np.inf, min_area=10**9))
    assert [s.index for s in steps] == [2] and "vanished" in steps[0].stopped


def test_directions_and_limits(predictor, frame, start_mask):
    steps, result = run_all(
        iter_propagate(predictor, lambda i: frame, 5, 0, start_mask, min_score=-np.inf, min_overlap=0.0, min_area=0, max_frames=2)
    )
    assert [s.index for s in steps] == [1, 2] and sorted(result) == [1, 2]
    assert steps[-1].done == 2 and steps[-1].total == 2
    steps, _ = run_all(iter_propagate(predictor, lambda i: frame, 5, 4, start_mask, directions=(-1,), min_score=-np.inf, min_overlap=0.0, min_area=0))
    assert [s.index for s in steps] == [3, 2, 1, 0]


def test_bad_input(predictor, frame, start_mask):
    with pytest.raises(ValueError, match="non-empty"):
        next(iter_propagate(predictor, lambda i: frame, 3, 0, np.zeros_like(start_mask)))
    with pytest.raises(ValueError, match="outside the stack"):
        next(iter_propagate(predictor, lambda i: frame, 3, 5, start_mask))
