"""The linker alone, on ground-truth-derived 2D masks with 10% of them dropped at random.

Per-frame inputs get fresh, shuffled ids on every frame (nothing of the ground truth's ids is
left), so only overlaps can link them. Tracking scores are py-ctcmetrics' (the CTC's own code).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_mobilesam.engine.link import Linker, link_labels
from napari_mobilesam.engine.tracks import ctc_tracks, write_ctc
from napari_mobilesam.testing.stacks import (
    synthetic_timelapse,
    synthetic_volume,
    write_ctc_gt,
)


def per_frame(gt: np.ndarray, drop: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """2D masks from ``gt`` with per-frame random ids (unique over the stack) and a fraction
    ``drop`` of the (frame, object) masks removed; returns (frames, kept (frame, gt id) mask)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(gt.shape, np.uint32)
    nxt = 1
    kept = np.zeros((len(gt), int(gt.max()) + 1), bool)
    for t, frame in enumerate(gt):
        ids = np.unique(frame)[1:]
        ids = ids[rng.random(len(ids)) >= drop]
        new = rng.permutation(len(ids)) + nxt
        nxt += len(ids)
        for i, n in zip(ids, new):
            out[t][frame == i] = n
        kept[t, ids] = True
    return out, kept


def whole_and_merged(linked: np.ndarray, gt: np.ndarray) -> tuple[float, int]:
    """(fraction of gt objects whose labelled pixels carry one id, ids covering > 1 gt object)."""
    whole = []
    for i in np.unique(gt)[1:]:
        ids = np.unique(linked[(gt == i) & (linked > 0)])
        whole.append(len(ids) == 1)
    merged = sum(len(np.unique(gt[(linked == j) & (gt > 0)])) > 1 for j in np.unique(linked)[1:])
    return float(np.mean(whole)), int(merged)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_3d_nuclei_whole_with_dropped_masks(seed):
    _, gt = synthetic_volume(seed=seed)
    frames, _ = per_frame(gt, 0.1, seed)
    linked, links = link_labels(frames, "3d")
    whole, merged = whole_and_merged(linked, gt)
    assert whole >= 0.98, whole
    assert merged == 0
    assert len(links.tracks) == len(np.unique(gt)) - 1
    assert not links.parents  # no divisions in 3d
    assert set(np.unique(linked)[1:]) == set(range(1, len(links.tracks) + 1))  # consecutive from 1


def test_3d_without_linking_is_broken():
    """The baseline the issue measured: per-slice labels are not whole."""
    _, gt = synthetic_volume(seed=0)
    frames, _ = per_frame(gt, 0.0, 0)
    assert whole_and_merged(frames, gt)[0] == 0.0


def score(tmp_path, gt, tracks, linked, links, name="r"):
    from ctc_metrics.scripts.evaluate import evaluate_sequence

    res = write_ctc(tmp_path / name / "01_RES", linked, links)
    g = write_ctc_gt(tmp_path / name / "01_GT", gt, tracks)
    return evaluate_sequence(str(res), str(g), metrics=["TRA", "DET", "LNK"], threads=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_time_tracks_and_division_with_dropped_masks(tmp_path, seed):
    _, gt, tracks = synthetic_timelapse(seed=seed)
    frames, _kept = per_frame(gt, 0.1, seed + 10)
    linked, links = link_labels(frames, "time")
    whole, merged = whole_and_merged(linked, gt)
    assert merged == 0
    assert whole >= 0.98
    # the division: the two daughters' tracks have the mother's track as parent
    mother = int(tracks[tracks[:, 3] > 0][0, 3])
    daughters = tracks[tracks[:, 3] == mother][:, 0]
    assert len(daughters) == 2
    d_ids = {int(np.unique(linked[gt == d])[-1]) for d in daughters}
    m_id = int(np.unique(linked[gt == mother])[-1])
    assert len(d_ids) == 2
    assert {links.parents.get(d) for d in d_ids} == {m_id}
    m = score(tmp_path, gt, tracks, linked, links)
    assert m["LNK"] >= 0.95, m
    assert m["DET"] >= 0.85, m  # 10% of the masks are gone
    assert m["TRA"] >= 0.85, m


def test_time_perfect_masks_score_one(tmp_path):
    _, gt, tracks = synthetic_timelapse(seed=3)
    frames, _ = per_frame(gt, 0.0, 3)
    linked, links = link_labels(frames, "time")
    m = score(tmp_path, gt, tracks, linked, links)
    assert m["LNK"] == pytest.approx(1.0) and m["DET"] == pytest.approx(1.0) and m["TRA"] == pytest.approx(1.0), m
    assert len(links.tracks) == len(tracks) and len(links.parents) == 2


def test_gap_is_filled_or_split_in_ctc():
    """An object missing on one frame keeps its id; the gap is filled with its mask moved half
    way to where it reappears, or (fill_gaps=False) the CTC table, which has no gaps, continues
    it as a new track whose parent is the part before the gap."""
    a = np.zeros((4, 20, 20), np.int32)
    for t in range(4):
        a[t, 5:12, 2 + 2 * t : 9 + 2 * t] = 1
    a[2] = 0  # missing on frame 2
    linked, links = link_labels(a, "time")
    assert links.tracks.tolist() == [[1, 0, 3, 0]] and links.gaps == []
    assert np.array_equal(linked[2] == 1, np.roll(a[1] == 1, 2, axis=1))  # half of 4 px
    assert ctc_tracks(links)[0].tolist() == [[1, 0, 3, 0]]
    linked, links = link_labels(a, "time", fill_gaps=False)
    assert not linked[2].any() and links.gaps == [(1, 2)]
    table, remap = ctc_tracks(links)
    assert table.tolist() == [[1, 0, 1, 0], [2, 3, 3, 1]]
    assert remap == {3: {1: 2}}


def test_merge_and_split_rules():
    """One mask covering two objects continues the better overlap, the other ends; in 3d a
    split starts a new id, never a parent."""
    a = np.zeros((2, 20, 30), np.int32)
    a[0, 5:15, 2:12] = 1
    a[0, 5:15, 14:20] = 2
    a[1, 5:15, 2:20] = 7  # covers both; more of object 1
    linked, links = link_labels(a, "3d")
    assert linked[1, 6, 6] == linked[0, 6, 6] != linked[0, 6, 15]
    b = a[::-1].copy()  # one object then two: the bigger part keeps the id
    linked, links = link_labels(b, "3d")
    assert linked[1, 6, 6] == linked[0, 6, 6] and linked[1, 6, 15] not in (0, linked[0, 6, 6])
    assert not links.parents


def test_linker_keeps_only_recent_frames():
    lk = Linker("time", max_gap=1)
    for t in range(6):
        f = np.zeros((8, 8), np.int32)
        f[2:5, 2:5] = t + 1
        lk.add(f)
    assert len(lk._recent) == 2 and lk.n_frames == 6


def test_bad_input():
    with pytest.raises(ValueError, match="'3d' or 'time'"):
        Linker("none")
    lk = Linker("3d")
    with pytest.raises(ValueError, match=r"one \(H, W\) label frame"):
        lk.add(np.zeros((2, 3, 3), np.int32))
    lk.add(np.zeros((3, 3), np.int32))
    with pytest.raises(ValueError, match="previous one"):
        lk.add(np.zeros((4, 3), np.int32))
