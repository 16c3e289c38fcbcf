"""Segment everything (blobs and grid samplers) on the reference checkpoint: labels, stacks, cancel, merging."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mobilesam import Prompt, iter_segment_everything, segment_everything, to_rgb_uint8
from napari_mobilesam._progress import drive
from napari_mobilesam.engine.everything import objects_to_labels
from napari_mobilesam.engine.labels import filter_objects, write_labels
from napari_mobilesam.engine.predictor import ObjectMask
from napari_mobilesam.engine.samplers import blob_boxes
from test_samplers import CENTRES, RADIUS, disks

BLOBS = dict(sampler="blobs", diameter=2 * RADIUS)
# random weights give noisy masks that cover each other: keep every visible one to test the bookkeeping
KEEP_ALL = dict(BLOBS, min_score=-1.0, min_visible=0.0)


def run(gen):
    items = []
    return items, drive(gen, items.append)


def obj(r0, c0, h, w, score=1.0, shape=(20, 20)) -> ObjectMask:
    return ObjectMask(np.ones((h, w), bool), (r0, c0), shape, score, 1.0, 0, None)


def test_objects_to_labels_rules():
    big, small, dup = obj(0, 0, 10, 10), obj(2, 2, 4, 4), obj(0, 0, 10, 11)
    lab = objects_to_labels([big, small], (20, 20), first_id=5)
    assert lab.dtype == np.uint32
    assert set(np.unique(lab)) == {0, 5, 6} and (lab[2:6, 2:6] == 6).all()  # smaller on top
    assert (lab == 5).sum() == 100 - 16
    # a near-duplicate that stays a sliver is dropped, ids stay consecutive
    lab = objects_to_labels([dup, small, big], (20, 20), first_id=1)
    assert set(np.unique(lab)) == {0, 1, 2} and (lab[:, 10] == 0).all()
    # only free pixels are written; an object mostly on taken pixels is dropped
    free = np.ones((20, 20), bool)
    free[:, :8] = False
    lab = objects_to_labels([big, obj(12, 12, 5, 5)], (20, 20), first_id=3, free=free)
    assert set(np.unique(lab)) == {0, 3} and (lab[12:17, 12:17] == 3).all() and not lab[:, :8].any()
    assert not objects_to_labels([], (20, 20)).any()


def test_blobs_labels_follow_their_boxes(predictor):
    """Every blob box reaches the decoder; the labels are exactly its masks painted by the rule."""
    img = disks()
    labels = segment_everything(img, predictor, **BLOBS)
    boxes, _ = blob_boxes(to_rgb_uint8(img), diameter=2 * RADIUS)
    predictor.set_image(img)
    objs = filter_objects(predictor.predict_objects([Prompt(box=b) for b in boxes]))
    expected = objects_to_labels(objs, img.shape)
    assert labels.shape == img.shape and labels.dtype == np.uint32
    np.testing.assert_array_equal(labels, expected)
    ids = np.unique(labels[labels > 0])
    assert len(ids) <= len(boxes) and np.array_equal(ids, np.arange(1, len(ids) + 1))
    fulls = [o.full() for o in objs]
    for k in ids:  # each visible label lies inside one object's mask (dropped masks take no id, so match by pixels)
        assert any(f[labels == k].all() for f in fulls), k


def test_grid_sampler_valid_labels(predictor):
    img = disks(shape=(96, 112), centres=CENTRES[:2] / 2)
    items, labels = run(iter_segment_everything(img, predictor, "grid", points_per_side=2, min_score=0, min_stability=0))
    assert labels.shape == img.shape and labels.dtype == np.uint32
    assert [p.labels is not None for p in items].count(True) == 1 and items[-1].done == items[-1].total == 100
    np.testing.assert_array_equal(items[-1].labels, labels)
    ids = np.unique(labels[labels > 0])
    assert 0 < len(ids) <= 4 * 3 and np.array_equal(ids, np.arange(1, len(ids) + 1))


def test_stack_ids_unique_cancel_keeps_finished_frame(predictor):
    stack = np.stack([disks(seed=s, centres=CENTRES[:3] + 4 * s) for s in range(3)])
    existing = np.zeros(stack.shape, np.uint16)
    existing[2, :40, :60] = 9  # the user's label: kept, never reused
    items, full = run(iter_segment_everything(stack, predictor, labels=existing, **KEEP_ALL))
    done = [p for p in items if p.labels is not None]
    assert [p.frame for p in done] == [0, 1, 2] and [p.index for p in done] == [(0,), (1,), (2,)]
    assert full.shape == stack.shape and full.dtype == np.uint16 and (existing[2, :40, :60] == 9).all()
    assert (full[2, :40, :60] == 9).all()
    new = [set(np.unique(p.labels)) - {0} for p in done]
    assert all(len(s) > 1 for s in new) and not (new[0] & new[1] or new[1] & new[2] or new[0] & new[2])
    assert min(min(s) for s in new) == 10  # after the user's id 9
    assert all(len(s) == max(s) - min(s) + 1 for s in new)  # consecutive per frame
    for p in done:
        assert p.labels.dtype == np.uint32 and not (p.labels.astype(bool) & (existing[p.index] > 0)).any()
    # the GUI/CLI way: write each finished frame, cancel after the first
    target = existing.copy()
    gen = iter_segment_everything(stack, predictor, labels=target, **KEEP_ALL)
    for p in gen:
        if p.labels is not None:
            write_labels(target[p.index], p.labels)
            gen.close()
    np.testing.assert_array_equal(target[0], full[0])
    np.testing.assert_array_equal(target[1:], existing[1:])
    # frames subset, overwrite: the user's pixels may be taken, their id is still never reused
    sub = segment_everything(stack, predictor, labels=existing, frames=[2], overwrite=True, **KEEP_ALL)
    np.testing.assert_array_equal(sub[:2], existing[:2])
    assert (sub[2, :40, :60] != 9).any()  # overwrite took some of the user's pixels
    assert set(np.unique(sub[2])) - {0, 9} and min(set(np.unique(sub[2])) - {0, 9}) == 10


def test_rgb_frame_out_and_key(predictor):
    grey = disks(centres=CENTRES[:3])
    rgb = np.repeat(grey[..., None], 3, -1)
    keys = []
    out = np.zeros(rgb.shape[:2], np.uint32)
    res = segment_everything(rgb, predictor, key=lambda idx: keys.append(idx) or ("rgb-test", idx), out=out, **KEEP_ALL)
    assert res is out and keys == [()] and ("rgb-test", ()) in predictor.cache
    # the grey frame normalises to the same pixels: with the same key its embedding is reused
    items, ret = run(iter_segment_everything(grey, predictor, key=lambda idx: ("rgb-test", idx), out=False, **KEEP_ALL))
    assert ret is None
    np.testing.assert_array_equal(out, items[-1].labels)
    # a given out with ids in it: new ids start after them
    res = segment_everything(grey, predictor, key=lambda idx: ("rgb-test", idx), out=out.copy(), **KEEP_ALL)
    added = set(np.unique(res)) - set(np.unique(out))
    assert added and min(added) == out.max() + 1


def test_bad_arguments(predictor):
    img = np.zeros((32, 32), np.uint8)
    with pytest.raises(ValueError, match="blobs"):
        iter_segment_everything(img, predictor, "object-aware")
    with pytest.raises(ValueError, match="sampler must be"):
        iter_segment_everything(img, predictor, "watershed")
    with pytest.raises(TypeError, match="points_per_side"):
        iter_segment_everything(img, predictor, "blobs", points_per_side=8)
    with pytest.raises(ValueError, match="labels of shape"):
        iter_segment_everything(img, predictor, "blobs", labels=np.zeros((3, 32, 32), np.uint32))
    with pytest.raises(ValueError, match="Frame 3"):
        iter_segment_everything(np.zeros((2, 32, 32)), predictor, "blobs", frames=[3])
    with pytest.raises(TypeError, match="Predictor"):
        iter_segment_everything(img, "sam", "blobs")


def test_tile_boxes_cover_the_frame_with_overlap():
    from napari_mobilesam.engine.tiles import tile_boxes

    for hw, tile, overlap in (((192, 224), 160, 64), ((1000, 3000), 512, 100), ((100, 90), 128, 32)):
        boxes = tile_boxes(hw, tile, overlap)
        cover = np.zeros(hw, int)
        for r0, c0, r1, c1 in boxes:
            assert 0 < r1 - r0 <= tile and 0 < c1 - c0 <= tile
            cover[r0:r1, c0:c1] += 1
        assert cover.min() >= 1
        rows = sorted({(b[0], b[2]) for b in boxes})
        assert all(a[1] - b[0] >= overlap for a, b in zip(rows, rows[1:]))  # neighbours overlap enough
    assert tile_boxes((100, 90), 128, 32) == [(0, 0, 100, 90)]
    for bad in ((32, 8), (128, 65), (128, -1)):
        with pytest.raises(ValueError, match="tile"):
            tile_boxes((500, 500), *bad)


def test_place_tile_objects_drops_cut_masks():
    from napari_mobilesam.engine.tiles import place_tile_objects

    box, hw = (0, 50, 40, 90), (100, 200)  # top frame edge; inner edges left, right and bottom
    inside, frame_edge = obj(5, 5, 10, 10, shape=(40, 40)), obj(0, 10, 5, 5, shape=(40, 40))
    cut_left, cut_bottom = obj(3, 0, 4, 4, shape=(40, 40)), obj(35, 20, 5, 5, shape=(40, 40))
    empty = ObjectMask(np.zeros((4, 4), bool), (10, 10), (40, 40), 1.0, 1.0, 0, None)
    placed = place_tile_objects([inside, frame_edge, cut_left, cut_bottom, empty], box, hw)
    assert [(o.offset, o.shape) for o in placed] == [((5, 55), hw), ((0, 60), hw)]


def test_everything_tiled(predictor, monkeypatch):
    """tile=160 on a 192 x 224 frame: four tiles, each cropped from the frame and segmented at the
    model's resolution; the labels are the tiles' masks put in place and painted by the usual rule.
    (Random weights give huge masks that every tile cuts, so the placed list itself may be empty:
    what each tile decoded is checked directly.)"""
    from napari_mobilesam.engine import everything
    from napari_mobilesam.engine.tiles import place_tile_objects, tile_boxes

    seen = []
    monkeypatch.setattr(everything, "place_tile_objects", lambda objs, box, hw: seen.append((box, objs)) or place_tile_objects(objs, box, hw))
    img = disks()
    labels = segment_everything(img, predictor, tile=160, tile_overlap=64, **BLOBS)
    rgb = to_rgb_uint8(img)
    assert [box for box, _ in seen] == tile_boxes(img.shape, 160, 64) and len(seen) == 4
    placed = []
    for (r0, c0, r1, c1), objs in seen:
        sub = np.ascontiguousarray(rgb[r0:r1, c0:c1])
        boxes, _ = blob_boxes(sub, diameter=2 * RADIUS)
        predictor.set_image(sub)
        want = predictor.predict_objects([Prompt(box=b) for b in boxes])
        assert len(objs) == len(want) > 0 and all(o.shape == (r1 - r0, c1 - c0) for o in objs)
        assert all(np.array_equal(o.full(), w.full()) for o, w in zip(objs, want))
        placed += place_tile_objects(objs, (r0, c0, r1, c1), img.shape)
    np.testing.assert_array_equal(labels, objects_to_labels(filter_objects(placed), img.shape))
    # a frame no larger than the tile is not tiled
    np.testing.assert_array_equal(segment_everything(img, predictor, tile=256, **BLOBS), segment_everything(img, predictor, **BLOBS))


def test_blobs_automatic_diameter_and_noise(predictor):
    """Without a diameter, the blobs sampler measures one; a noise frame proposes nothing and says so."""
    img = disks()
    items, labels = run(iter_segment_everything(img, predictor, sampler="blobs", min_score=-1.0, min_visible=0.0))
    boxes, _ = blob_boxes(to_rgb_uint8(img))  # automatic diameter: the same boxes the sampler decoded
    assert any(f"{len(boxes)} boxes" in p.message for p in items) and len(boxes) == len(CENTRES)
    assert labels.max() >= 1
    noise = np.random.default_rng(0).normal(1000, 30, (96, 128)).astype(np.uint16)
    items, labels = run(iter_segment_everything(noise, predictor, sampler="blobs"))
    assert not labels.any()
    assert any("0 boxes" in p.message for p in items) and items[-1].message.startswith("frame 0: 0 objects")
