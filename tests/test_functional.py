"""Behaviour tests with a model whose masks mean something: the functional test checkpoint
(``napari_mobilesam.testing.synthetic_checkpoint``, trained here on synthetic cells) on held-out
synthetic frames (seeds 101-112; training draws its frames from seeds >= 1,000,000).

Each check measures what a microscopist needs (the right cell from a click or a box, a neighbour
taken out by a negative click, every cell from "segment everything", whole cells across tiles, a
cell followed through a time-lapse) against the frames' exact labels, with the measures of
:mod:`napari_mobilesam.testing.metrics` (``python -m napari_mobilesam.testing.metrics`` prints
them all). Each ``check_*`` below is used twice: the test model must pass it, and the random
reference checkpoint (official layout, random values) must FAIL the very same code, so no
threshold here is one a model that knows nothing passes.

The thresholds are what the committed test model reaches on these frames, with a margin (the
measured numbers are in the comments and in docs/training.md); where that is short of the issue's
target (click IoU >= 0.8 and box IoU >= 0.85 in 80% of cells, 80% of a spill removed, recall and
precision >= 0.8, IoU >= 0.7 along a track) the target itself is a strict xfail.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from napari_mobilesam.testing import synthetic_cells, synthetic_stack
from napari_mobilesam.testing.metrics import (
    bbox,
    box_ious,
    cells_of,
    click_ious,
    everything,
    interior_point,
    iou,
    negative_click,
    prompt_frames,
    propagation,
    right_cell,
    track_cells,
)

# What the committed model reaches (stage 3, measured 2026-12-05, see docs/training.md) minus a margin.
# clicks: right cell 0.90-1.00 per frame, median IoU 0.726, IoU >= 0.8 for 0.33 of 140 clicks
CLICK = {"iou": 0.8, "share": 0.25, "median": 0.65, "right": 0.85}
# boxes: right cell 0.94-1.00 per frame, median IoU 0.750, IoU >= 0.85 for 0.23
BOX = {"iou": 0.85, "share": 0.15, "median": 0.65, "right": 0.85}
# negative click (box + click over a touching pair): spill mean 0.15, 0.95 of it removed, IoU with the clicked cell 0.51
NEGATIVE = {"spill": 0.1, "removed": 0.8, "kept": 0.4}
# everything on a 256² frame: blobs recall 0.38 precision 0.38, object-aware 0.19 / 0.27 (grid: 0 labels, a target below)
EVERYTHING = {"blobs": (0.3, 0.3), "object-aware": (0.12, 0.18)}
# tiling 2048², tile 1024: recall 0.96, precision 0.93; propagation (seed 106): IoU 0.68, 0.41, 0.24, 0.10, ...
TILING = {"recall": 0.85, "precision": 0.85, "split": 0.15}
TRACK = {"frames": 2, "iou": 0.33}
CLICK_IOU = 0.45  # the widget test: each label is its clicked cell (click median IoU on 256² frames 0.59-0.65)
# The issue's targets, strict xfails where the model falls short.
TARGET = {"click": 0.8, "box": 0.8, "removed": 0.8, "everything": 0.8, "track": 0.7}
WEAK = "the committed test model falls short of the issue's target (see docs/training.md)"


# fcheckpoint, fsam, fpredictor: the functional test model; predictor: the random reference model (tests/conftest.py)


@pytest.fixture(scope="module")
def frames():
    """Held-out frames: 256², 512², 1024²; fluorescence and brightfield-like; uint8 and uint16."""
    return prompt_frames()


# ------------------------------------------------------------------------------------- checks
def check_clicks(pred, frames, share: float = CLICK["share"]) -> None:
    ious, right = click_ious(pred, frames)
    print(f"clicks: n={len(ious)} right {right.mean():.2f} median {np.median(ious):.3f} >=0.8 {(ious >= 0.8).mean():.2f}")
    assert len(ious) >= 80
    assert right.mean() >= CLICK["right"], f"the mask lies mostly on the clicked cell for {right.mean():.2f} of the clicks"
    assert np.median(ious) >= CLICK["median"], f"click IoU: median {np.median(ious):.3f}"
    assert (ious >= CLICK["iou"]).mean() >= share, f"click IoU >= {CLICK['iou']} for {(ious >= CLICK['iou']).mean():.2f}"


def check_boxes(pred, frames, share: float = BOX["share"]) -> None:
    ious, right = box_ious(pred, frames)
    print(f"boxes: n={len(ious)} right {right.mean():.2f} median {np.median(ious):.3f} >=0.85 {(ious >= 0.85).mean():.2f}")
    assert right.mean() >= BOX["right"], f"the mask lies mostly on the boxed cell for {right.mean():.2f} of the boxes"
    assert np.median(ious) >= BOX["median"], f"box IoU: median {np.median(ious):.3f}"
    assert (ious >= BOX["iou"]).mean() >= share, f"box IoU >= {BOX['iou']} for {(ious >= BOX['iou']).mean():.2f}"


def check_negative_click(pred, removed: float = NEGATIVE["removed"]) -> None:
    """A box over two touching cells and a click on one; a negative click on the neighbour takes
    the spill out and keeps the cell."""
    img, lab = synthetic_cells((256, 256), 24, seed=103, radius=(10, 22), touching=0.8)
    r = negative_click(pred, img, lab, click=True)
    print(f"negative click: spill {r['spill'].mean():.2f} removed {r['removed'].mean():.2f} kept {np.median(r['kept']):.2f}")
    assert len(r["spill"]) >= 8
    assert r["spill"].mean() > NEGATIVE["spill"], f"without the negative click the neighbour is covered by {np.round(r['spill'], 2)}"
    assert r["removed"].mean() >= removed, f"share of the spill removed {np.round(r['removed'], 2)}"
    assert np.median(r["kept"]) >= NEGATIVE["kept"], f"IoU with the clicked cell {np.round(r['kept'], 2)}"


def check_everything(pred, sampler: str, floor: tuple[float, float] | None = None) -> None:
    img, lab = synthetic_cells((256, 256), 16, seed=104, radius=(10, 20))
    low_r, low_p = floor or EVERYTHING[sampler]
    recall, precision = everything(pred, sampler, img, lab)
    print(f"everything {sampler}: recall {recall:.2f} precision {precision:.2f}")
    assert recall >= low_r and precision >= low_p, f"{sampler}: recall {recall:.2f}, precision {precision:.2f}"


def check_tiling(pred) -> None:
    from napari_mobilesam import segment_everything
    from napari_mobilesam.engine.tiles import tile_boxes
    from napari_mobilesam.testing.metrics import match

    img, lab = synthetic_cells((2048, 2048), 70, seed=105, radius=(10, 24))
    ids = cells_of(lab, 100)
    assert len(ids) >= 40
    out = segment_everything(img, pred, "blobs", diameter=34, tile=1024)
    recall, precision = match(out, lab)
    print(f"tiling: recall {recall:.2f} precision {precision:.2f}")
    assert recall >= TILING["recall"] and precision >= TILING["precision"], f"tiling: recall {recall:.2f}, precision {precision:.2f}"
    # no cell on a tile's inner edge is split between two labels
    boxes = tile_boxes(lab.shape, 1024, 256)
    edges = sorted({v for b in boxes for v in (b[0], b[2], b[1], b[3])} - {0, lab.shape[0]})  # square frame
    crossing, split = 0, 0
    for c in ids:
        m = lab == c
        rows, cols = bbox(m).reshape(2, 2).T
        crossing += any(rows[0] < e < rows[1] or cols[0] < e < cols[1] for e in edges)
        k, counts = np.unique(out[m], return_counts=True)
        split += int(((k > 0) & (counts >= 0.15 * m.sum())).sum() >= 2)
    assert crossing >= 5  # the frame does test tile edges
    assert split <= TILING["split"] * len(ids), f"{split} of {len(ids)} cells split into two labels"


def check_propagation(pred, frames: int = TRACK["frames"], floor: float = TRACK["iou"]) -> None:
    """A cell that stays in view is followed for ``frames`` frames with IoU >= ``floor`` on each;
    one that leaves is not followed past the frame where it is gone."""
    stack, labels = synthetic_stack(seed=106)
    stays, leaves = track_cells(labels)
    assert stays and leaves
    ious, _ = propagation(pred, stack, labels, stays[0])
    print(f"propagation cell {stays[0]}: {ious}")
    got = ious[:frames]
    assert all(v is not None and v >= floor for v in got), f"cell {stays[0]}: IoU per frame {got}"
    if frames >= len(stack) - 1:
        n = len(stack)
        cid = leaves[0]
        ious, _ = propagation(pred, stack, labels, cid)
        gone = [t for t in range(1, n) if not (labels[t] == cid).any()]
        present = [t for t in range(1, n) if (labels[t] == cid).sum() >= 30]
        assert all(ious[t - 1] is not None and ious[t - 1] >= floor for t in present), f"cell {cid}: IoU per frame {ious}"
        assert all(ious[t - 1] is None for t in gone[1:]), f"cell {cid} followed after it left: {ious}"


SLOW = pytest.mark.slow
CHECKS: dict[str, tuple[Callable, tuple, list]] = {
    "clicks": (check_clicks, ("frames",), []),
    "boxes": (check_boxes, ("frames",), []),
    "negative click": (check_negative_click, (), []),
    "everything blobs": (lambda p: check_everything(p, "blobs"), (), [SLOW]),
    "everything object-aware": (lambda p: check_everything(p, "object-aware"), (), [SLOW]),
    "tiling": (check_tiling, (), [SLOW]),
    "propagation": (check_propagation, (), [SLOW]),
}


# ------------------------------------------------------------------------------- the test model
@pytest.mark.parametrize("name", [pytest.param(k, marks=v[2]) for k, v in CHECKS.items()])
def test_the_test_model_passes(fpredictor, request, name):
    check, needs, _ = CHECKS[name]
    check(fpredictor, *(request.getfixturevalue(f) for f in needs))


@pytest.mark.parametrize("name", [pytest.param(k, marks=v[2]) for k, v in CHECKS.items()])
def test_the_random_model_fails(predictor, request, name):
    """The random reference checkpoint fails every check the test model passes."""
    check, needs, _ = CHECKS[name]
    with pytest.raises(AssertionError):
        check(predictor, *(request.getfixturevalue(f) for f in needs))


# ------------------------------------------------------------------------ the issue's targets
TARGETS = {
    "clicks": lambda p, f: check_clicks(p, f, share=TARGET["click"]),
    "boxes": lambda p, f: check_boxes(p, f, share=TARGET["box"]),
    "negative click": lambda p, f: check_negative_click(p, removed=TARGET["removed"]),
    "everything blobs": lambda p, f: check_everything(p, "blobs", (TARGET["everything"],) * 2),
    "everything object-aware": lambda p, f: check_everything(p, "object-aware", (TARGET["everything"],) * 2),
    "everything grid": lambda p, f: check_everything(p, "grid", (TARGET["everything"],) * 2),
    "propagation": lambda p, f: check_propagation(p, frames=7, floor=TARGET["track"]),
}
MISSED: dict[str, str] = {  # target -> what the committed model reaches
    "clicks": "click IoU >= 0.8 for 0.33 of the clicks (median 0.73)",
    "boxes": "box IoU >= 0.85 for 0.23 of the boxes (median 0.75)",
    "everything blobs": "recall 0.38, precision 0.38",
    "everything object-aware": "recall 0.19, precision 0.27",
    "everything grid": "0 labels (every grid mask scores below the thresholds)",
    "propagation": "IoU 0.68, 0.41, 0.24 on frames 1-3: the mask drifts off the cell",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(k, marks=[pytest.mark.xfail(strict=True, reason=f"{WEAK}: {MISSED[k]}")] if k in MISSED else [])
    for k in TARGETS
])
def test_the_issue_target(fpredictor, frames, name):
    TARGETS[name](fpredictor, frames)


@pytest.mark.gui
def test_widget_three_clicks_three_cells(make_napari_viewer, qtbot, fsam, fcheckpoint):
    pytest.importorskip("pytestqt")
    from napari_mobilesam.gui.widget import CHOOSE_FILE, MobileSAMWidget

    img, lab = synthetic_cells((256, 256), 14, seed=107, radius=(10, 22))
    ids = cells_of(lab, 300)[:3]
    viewer = make_napari_viewer()
    viewer.add_image(img, name="cells")
    w = MobileSAMWidget(viewer)
    w.model_box.value = CHOOSE_FILE
    w.model_file.value = str(fcheckpoint)
    w.device_box.value = "cpu"
    w.set_model(fsam, (str(fcheckpoint), "cpu"))
    w.points_box.value.add([interior_point(lab == c) for c in ids])
    w.segment()
    qtbot.waitUntil(lambda: not w.busy, timeout=180_000)
    out = w.labels_box.value.data
    got = [i for i in np.unique(out) if i]
    assert len(got) == 3
    for k, c in enumerate(ids, start=1):  # label k (k-th click) lies mostly on the k-th clicked cell
        assert right_cell(out == k, lab, c) and iou(out == k, lab == c) >= CLICK_IOU
