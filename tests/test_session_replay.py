"""A session replays write by write (issue 24's replay-order bug): objects the widget wrote in an earlier
*Segment* keep their pixels where a later object's mask reaches them, as in the widget; a session saved
before writes were recorded (version 1) still loads and replays as one write (smaller masks on top).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_mobilesam import ObjectMask, Prompt
from napari_mobilesam.cli import main
from napari_mobilesam.engine.labels import paint_writes
from napari_mobilesam.engine.session import SessionError, load_session, object_generations, save_session
from napari_mobilesam.testing import synthetic_cells
from napari_mobilesam.testing.metrics import interior_point


def _obj(full: np.ndarray) -> ObjectMask:
    rows, cols = np.nonzero(full)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return ObjectMask(full[r0:r1, c0:c1], (r0, c0), full.shape, 0.9, 0.9, 0, np.zeros((256, 256), np.float32))


def _disk(centre, radius, shape=(40, 40)):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def test_replay_paints_write_by_write_as_the_widget_writes():
    """Two writes whose masks overlap: the replay equals the widget's two writes pixel by pixel."""
    napari = pytest.importorskip("napari")
    from napari_mobilesam.gui.writer import write_masks

    big, small, late = _disk((20, 20), 12), _disk((20, 20), 4), _disk((20, 32), 7)
    assert (late & big & ~small).sum() > 20  # the later object reaches the older one
    # the widget: one Segment writes 1 and 2, a later one writes 3 (background only)
    layer = napari.layers.Labels(np.zeros((40, 40), np.uint32))
    write_masks(layer, (), [_obj(big), _obj(small)], [1, 2])
    write_masks(layer, (), [_obj(late)], [3])
    widget = np.asarray(layer.data)
    replay = paint_writes([_obj(big), _obj(small), _obj(late)], [1, 2, 3], (40, 40), generations=[0, 0, 1])
    np.testing.assert_array_equal(replay, widget)
    want = np.zeros((40, 40), np.uint32)  # by hand: within a write smaller on top; the later write fills background
    want[big], want[small] = 1, 2
    want[late & (want == 0)] = 3
    np.testing.assert_array_equal(replay, want)
    # one write (a version 1 session): the smaller mask 3 on top of 1
    one = paint_writes([_obj(big), _obj(small), _obj(late)], [1, 2, 3], (40, 40))
    assert (one == 3).sum() == late.sum() and (one != replay).sum() == (late & big & ~small).sum()
    # a later write with 'overwrite' ticked covers the older labels, in the widget and the replay
    layer = napari.layers.Labels(np.zeros((40, 40), np.uint32))
    write_masks(layer, (), [_obj(big), _obj(small)], [1, 2])
    write_masks(layer, (), [_obj(late)], [3], overwrite=True, replace_ids=[3])
    over = paint_writes([_obj(big), _obj(small), _obj(late)], [1, 2, 3], (40, 40), generations=[0, 0, 1], overwrite=[False, False, True])
    np.testing.assert_array_equal(over, np.asarray(layer.data))
    assert (over == 3).sum() == late.sum()


@pytest.fixture
def two_writes(tmp_path, fpredictor):
    """A 128² image; object 1 a box around a cell, whose mask reaches past it (written first), object 2 a
    click on the cell (written by a later Segment: its smaller mask fills only background).
    Returns ``(tif, session folder, click mask, box mask)``."""
    image, gt = synthetic_cells((128, 128), n=6, seed=3)
    cell = gt == 3  # a cell whose box (4 px around it) gives a mask reaching past it
    tif = tmp_path / "cells.tif"
    tifffile.imwrite(tif, image, photometric="minisblack")
    p = interior_point(cell)
    r, c = np.nonzero(cell)
    box = np.array([max(r.min() - 4, 0), max(c.min() - 4, 0), min(r.max() + 4, 127), min(c.max() + 4, 127)], float)
    fpredictor.set_image(image, key=("replay-test",))
    click = fpredictor.predict_objects([Prompt(points=[p])], multimask_output=True)[0].full()  # a single click: best of three
    boxed = fpredictor.predict_objects([Prompt(box=box)])[0].full()
    assert (click & boxed).sum() > 20 and boxed.sum() > click.sum()  # they overlap; the box's mask is the larger
    corners = np.array([[box[0], box[1]], [box[0], box[3]], [box[2], box[3]], [box[2], box[1]]], float)
    objects = {"1": {"signature": [], "mask": "", "generation": 0, "overwrite": False},
               "2": {"signature": [], "mask": "", "generation": 1, "overwrite": False}}
    folder = save_session(tmp_path / "cells.mobilesam", image={"name": "cells", "shape": [128, 128]}, model={}, preprocess={},
                          points=np.array([p], float), point_features={"label": [1], "object": [0], "label_id": [2], "mask": [0]},
                          shapes=[corners], shape_types=["rectangle"], shape_ids=[1], shape_masks=[0],
                          labels=np.zeros((128, 128), np.uint32), objects=objects)
    return tif, folder, click, boxed


def test_cli_replay_keeps_the_older_write(two_writes, fcheckpoint, tmp_path):
    tif, folder, click, boxed = two_writes
    assert object_generations(load_session(folder)) == {1: (0, False), 2: (1, False)}
    out = tmp_path / "replay.tif"
    assert main(["segment", str(tif), "--session", str(folder), "-o", str(out), "--weights", str(fcheckpoint), "--device", "cpu", "-q"]) == 0
    want = np.zeros((128, 128), np.uint32)  # the box's object first; the click's, smaller, fills only background
    want[boxed] = 1
    want[click & ~boxed] = 2
    np.testing.assert_array_equal(tifffile.imread(out), want)


def test_replay_says_where_it_differs_from_the_saved_labels(two_writes, fcheckpoint, tmp_path, capsys):
    """A hand edit lives only in labels.tif (the prompts do not redo it): the replay says so, naming the label."""
    tif, folder, click, boxed = two_writes
    written = np.zeros((128, 128), np.uint32)  # what the widget wrote (see above)
    written[boxed] = 1
    written[click & ~boxed] = 2
    model = ["--weights", str(fcheckpoint), "--device", "cpu", "-q"]
    tifffile.imwrite(folder / "labels.tif", written, photometric="minisblack")
    assert main(["segment", str(tif), "--session", str(folder), "-o", str(tmp_path / "a.tif"), *model]) == 0
    assert "differs" not in capsys.readouterr().err
    edited = written.copy()
    r, c = np.nonzero(written == 1)
    edited[r[:25], c[:25]] = 0  # 25 px of label 1 erased by hand
    tifffile.imwrite(folder / "labels.tif", edited, photometric="minisblack")
    assert main(["segment", str(tif), "--session", str(folder), "-o", str(tmp_path / "b.tif"), *model]) == 0
    assert "the replay differs from the session's labels.tif (25 px, label 1): what the prompts do not redo (hand edits" in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "b.tif"), written)  # the replay itself is the prompts' labels


def test_version_1_session_without_generations_loads_and_replays_as_one_write(two_writes, fcheckpoint, tmp_path):
    tif, folder, click, boxed = two_writes
    meta = json.loads((folder / "session.json").read_text())
    meta["version"] = 1
    for rec in meta["objects"].values():
        del rec["generation"], rec["overwrite"]
    (folder / "session.json").write_text(json.dumps(meta))
    s = load_session(folder)
    assert object_generations(s) == {} and s.shape_ids == [1]
    out = tmp_path / "replay_v1.tif"
    assert main(["segment", str(tif), "--session", str(folder), "-o", str(out), "--weights", str(fcheckpoint), "--device", "cpu", "-q"]) == 0
    want = np.zeros((128, 128), np.uint32)  # as before generations: one write, the smaller mask (the click's) on top
    want[boxed] = 1
    want[click] = 2
    np.testing.assert_array_equal(tifffile.imread(out), want)


def test_session_from_a_newer_version_is_refused_by_name(tmp_path):
    folder = save_session(tmp_path / "a.mobilesam", image={"name": "x"}, model={}, preprocess={}, labels=np.zeros((4, 4), np.uint32))
    meta = json.loads((folder / "session.json").read_text())
    assert meta["version"] == 2
    meta["version"] = 3
    (folder / "session.json").write_text(json.dumps(meta))
    with pytest.raises(SessionError, match=r"saved by a newer napari-mobilesam \(session version 3; this one reads up to 2\); update the plugin"):
        load_session(folder)
