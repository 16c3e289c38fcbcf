"""The same prompts give the same labels in the widget and in ``mobilesam segment`` (issue 13).

A user annotates a time-lapse in napari (single clicks, a mask choice, a point group that follows a
cell over two frames with a negative point, a loose negative point, boxes, a negative point in a box),
presses Segment, saves the layers with napari's own CSV writer and replays them on the command line.
Both paths go through ``engine/prompts.py``; this test checks they give identical label images.
Run under Xvfb: ``xvfb-run -a python -m pytest tests/test_prompt_equality.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_mobilesam.cli import main  # noqa: E402
from napari_mobilesam.gui.widget import CHOOSE_FILE, MobileSAMWidget  # noqa: E402
from napari_mobilesam.testing import synthetic_stack  # noqa: E402
from napari_mobilesam.testing.metrics import interior_point  # noqa: E402

pytestmark = pytest.mark.gui
TIMEOUT = 300_000


def widget_with_model(viewer, sam, path) -> MobileSAMWidget:
    """The dock widget on ``viewer`` with an already built model (as after its first load)."""
    w = MobileSAMWidget(viewer)
    w.model_box.value = CHOOSE_FILE
    w.model_file.value = str(path)
    w.device_box.value = "cpu"
    w.set_model(sam, (str(path), "cpu"))
    return w


def _cells(lab: np.ndarray, k: int) -> list[int]:
    """The ``k`` largest cells of a label frame that do not touch its border."""
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    edge = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])))
    order = [int(i) for _, i in sorted(zip(-counts, ids, strict=True)) if i not in edge]
    return order[:k]


def _box(mask: np.ndarray, t: int) -> np.ndarray:
    r, c = np.nonzero(mask)
    r0, c0, r1, c1 = r.min() - 2, c.min() - 2, r.max() + 2, c.max() + 2
    return np.array([[t, r0, c0], [t, r0, c1], [t, r1, c1], [t, r1, c0]], float)


def test_widget_and_cli_give_identical_labels(qtbot, make_napari_viewer, fsam, fcheckpoint, tmp_path):
    stack, gt = synthetic_stack(n_frames=4, shape=(160, 160), n=9, seed=31)
    tif = tmp_path / "movie.tif"
    tifffile.imwrite(tif, stack, photometric="minisblack")
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, name="movie")
    w = widget_with_model(viewer, fsam, fcheckpoint)

    a, b, c, d = _cells(gt[0], 4)
    shared = b if b in _cells(gt[1], 9) else _cells(gt[1], 1)[0]  # the cell group 5 follows on frame 1
    e, f = [i for i in _cells(gt[1], 9) if i != shared][:2]
    g = _cells(gt[2], 1)[0]
    pt = lambda t, cid: [t, *interior_point(gt[t] == cid)]  # noqa: E731
    near_a = np.array(pt(0, a), float) + [0, 1, 1]
    rows = [  # (coords, label, object, mask)
        (pt(0, a), 1, 0, 0),  # single click: best of 3
        (pt(0, b), 1, 5, 0),  # group 5 on frame 0 ...
        (pt(0, c), 0, 5, 0),  # ... with a negative point on a neighbour
        (pt(1, shared), 1, 5, 0),  # group 5 again on frame 1: the same label id
        (pt(1, e), 1, 0, 2),  # single click, mask 2 chosen
        (near_a.tolist(), 0, 0, 0),  # loose negative: refines the click on a
        (pt(1, f), 1, 0, 0),
        (pt(2, g), 0, 0, 0),  # a negative point inside frame 2's box
    ]
    points = w.points_box.value
    points.add(np.array([r[0] for r in rows], float))
    feats = points.features
    feats["label"] = [r[1] for r in rows]
    feats["object"] = [r[2] for r in rows]
    feats["mask"] = [r[3] for r in rows]
    shapes = w.shapes_box.value
    shapes.add_rectangles([_box(gt[0] == d, 0), _box(gt[2] == g, 2)])
    w.all_frames.value = True
    w.segment()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    labels = np.asarray(w.labels_box.value.data)
    # the documented ids: frame 0 box 1, click a 2, group 5 is 3 (also on frame 1), click e 4, click f 5, frame 2 box 6;
    # the negatives take their object's id
    assert points.features["label_id"].tolist() == [2, 3, 3, 3, 4, 2, 5, 6]
    assert shapes.features["label_id"].tolist() == [1, 6]
    for t, ids in enumerate([{1, 2, 3}, {3, 4, 5}, {6}, set()]):
        present = set(np.unique(labels[t]).tolist()) - {0}
        assert present <= ids and len(present) >= len(ids) - 1, (t, present)

    pcsv, bcsv = tmp_path / "points.csv", tmp_path / "boxes.csv"
    points.save(str(pcsv), plugin="napari")
    shapes.save(str(bcsv), plugin="napari")
    lo, hi = (str(v) for v in image.contrast_limits)
    out = tmp_path / "cli.tif"
    args = ["segment", str(tif), "--points", str(pcsv), "--boxes", str(bcsv), "-o", str(out),
            "--weights", str(fcheckpoint), "--device", "cpu", "-q", "--contrast", lo, hi]
    assert main(args) == 0
    np.testing.assert_array_equal(tifffile.imread(out), labels)


def test_stray_negative_point_widget_warns_cli_refuses_labels_agree(qtbot, make_napari_viewer, fsam, fcheckpoint, tmp_path, capsys):
    stack, gt = synthetic_stack(n_frames=2, shape=(128, 128), n=6, seed=32)
    tif = tmp_path / "movie.tif"
    tifffile.imwrite(tif, stack, photometric="minisblack")
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, name="movie")
    w = widget_with_model(viewer, fsam, fcheckpoint)
    (a,) = _cells(gt[0], 1)
    points = w.points_box.value
    points.add(np.array([[0, *interior_point(gt[0] == a)], [1, 40.0, 40.0]]))
    points.features["label"] = [1, 0]  # frame 1 has only a negative point: no object to refine
    w.all_frames.value = True
    w.segment()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert "skipped 1 prompt: point at row 40, col 40 in frame 1: a negative point with no object" in w.status.value
    labels = np.asarray(w.labels_box.value.data)
    assert labels[0].any() and not labels[1].any()
    pcsv = tmp_path / "points.csv"
    points.save(str(pcsv), plugin="napari")
    lo, hi = (str(v) for v in image.contrast_limits)
    args = ["segment", str(tif), "--points", str(pcsv), "-o", str(tmp_path / "cli.tif"),
            "--weights", str(fcheckpoint), "--device", "cpu", "-q", "--contrast", lo, hi]
    assert main(args) == 2
    assert "points.csv row 3: point at row 40, col 40 in frame 1: a negative point with no object" in capsys.readouterr().err
    lines = pcsv.read_text().splitlines()
    pcsv.write_text("\n".join(lines[:2]) + "\n")  # the user deletes that row, as the message says
    assert main(args) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cli.tif"), labels)
