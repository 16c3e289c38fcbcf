"""Masks -> labels: overlap rule, background-only merge, replacing one's own mask."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mobilesam import ObjectMask
from napari_mobilesam.engine.labels import filter_objects, label_changes, next_free_id, render_labels, write_labels


def _obj(full: np.ndarray, score=0.9, stability=0.95) -> ObjectMask:
    rows, cols = np.nonzero(full)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return ObjectMask(full[r0:r1, c0:c1], (r0, c0), full.shape, score, stability, 0, np.zeros((256, 256), np.float32))


def _disk(shape, centre, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def test_render_largest_first_keeps_small_on_top():
    big, small = _disk((40, 40), (20, 20), 12), _disk((40, 40), (20, 20), 4)
    out = render_labels([_obj(small), _obj(big)], (40, 40), ids=[5, 6])
    assert (out == 5).sum() == small.sum()
    assert ((out == 6) == (big & ~small)).all()
    given = render_labels([_obj(small), _obj(big)], (40, 40), ids=[5, 6], order="given")
    assert (given == 5).sum() == 0


def test_merge_fills_background_only_unless_overwrite():
    existing = np.zeros((10, 10), np.uint16)
    existing[:5] = 3
    new = np.zeros((10, 10), np.uint32)
    new[3:8] = 9
    index, values = label_changes(existing, new)
    assert set(values.tolist()) == {9} and len(values) == 30
    assert (existing[index] == 0).all()
    out = existing.copy()
    write_labels(out, new, overwrite=True)
    assert (out[3:8] == 9).all() and (out[:3] == 3).all()


def test_replace_ids_releases_own_pixels_only():
    existing = np.zeros((10, 10), np.uint32)
    existing[0:4] = 7  # previous mask of the object being re-run
    existing[8:] = 2  # someone else's
    new = np.zeros_like(existing)
    new[2:9] = 7
    write_labels(existing, new, replace_ids=[7])
    assert (existing[0:2] == 0).all() and (existing[2:8] == 7).all() and (existing[8:] == 2).all()


def test_filter_and_next_id():
    a = _obj(_disk((20, 20), (10, 10), 3), score=0.5)
    b = _obj(_disk((20, 20), (10, 10), 6), stability=0.2)
    c = _obj(_disk((20, 20), (10, 10), 8))
    assert filter_objects([a, b, c], min_score=0.6) == [b, c]
    assert filter_objects([a, b, c], min_stability=0.5) == [a, c]
    assert filter_objects([a, b, c], min_area=50, max_area=150) == [b]
    assert next_free_id(np.array([[0, 4], [2, 0]])) == 5 and next_free_id(np.zeros((0,))) == 1


def test_shape_mismatch():
    with pytest.raises(ValueError, match="cannot take results"):
        label_changes(np.zeros((4, 4)), np.zeros((4, 5)))


@pytest.mark.parametrize("dtype, value", [(np.uint8, 300), (np.int16, 70000), (np.uint16, 65536)])
def test_write_labels_refuses_ids_that_do_not_fit(dtype, value):
    """Issue 24 Bad 3: 300 into uint8 left 44, 70000 into int16 left 4464; now refused, nothing written."""
    existing = np.zeros((4, 4), dtype)
    new = np.zeros((4, 4), np.int64)
    new[1, 1] = value
    with pytest.raises(ValueError, match=rf"Label id {value} does not fit labels of dtype {np.dtype(dtype).name}.*uint32"):
        write_labels(existing, new)
    assert not existing.any()
    new[1, 1] = np.iinfo(dtype).max  # the largest id that fits is written as it is
    assert write_labels(existing, new) == 1 and existing[1, 1] == np.iinfo(dtype).max


def test_render_labels_argument_errors():
    """Ids beyond uint32 or below 1, and a shape other than the objects' frame: one clear ValueError each."""
    obj = _obj(_disk((20, 20), (10, 10), 4))
    for ids in ([2**32], [-5], [0], [1.5]):
        with pytest.raises(ValueError, match="Label id|whole numbers"):
            render_labels([obj], (20, 20), ids=ids)
    with pytest.raises(ValueError, match=r"frame of \(20, 20\) pixels, not \(10, 10\)"):
        render_labels([obj], (10, 10))
    assert render_labels([obj], (20, 20), ids=[2**32 - 1]).max() == 2**32 - 1
