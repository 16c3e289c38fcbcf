"""Issue 24 in one napari process: hand edits are the user's, negative points keep their object, an
empty mask choice keeps the object, the points layer is ready for clicks. Functional test model on a
synthetic frame. Run under Xvfb: ``xvfb-run -a python -m pytest tests/test_gui_trust.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_mobilesam.cli import main  # noqa: E402
from napari_mobilesam.testing import synthetic_stack  # noqa: E402
from napari_mobilesam.testing.metrics import interior_point  # noqa: E402
from test_prompt_equality import _cells, widget_with_model  # noqa: E402

pytestmark = pytest.mark.gui
TIMEOUT = 300_000


@pytest.fixture(scope="module")
def frame():
    stack, gt = synthetic_stack(n_frames=1, seed=106)  # 256 x 256; the model's "mask 1" is empty on these cells
    return stack[0], gt[0]


def _segment(qtbot, w):
    w.segment()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)


def _setup(make_napari_viewer, fsam, fcheckpoint, img):
    viewer = make_napari_viewer()
    viewer.add_image(img, name="img")
    return viewer, widget_with_model(viewer, fsam, fcheckpoint)


def test_empty_mask_choice_keeps_the_object(qtbot, make_napari_viewer, fsam, fcheckpoint, frame):
    img, gt = frame
    viewer, w = _setup(make_napari_viewer, fsam, fcheckpoint, img)
    points = w.points_box.value
    points.add([interior_point(gt == _cells(gt, 1)[0])])
    _segment(qtbot, w)
    before = np.asarray(w.labels_box.value.data).copy()
    assert (before == 1).sum() > 100
    points.selected_data = {0}
    w.mask_choice.value = 1  # "mask 1": empty for this model here
    assert points.features["mask"].tolist() == [1]
    _segment(qtbot, w)
    np.testing.assert_array_equal(w.labels_box.value.data, before)
    assert f"mask 1 is empty for object 1; kept its {(before == 1).sum():,} px as they were" in w.status.value, w.status.value


def test_hand_edited_label_is_kept_unless_overwrite(qtbot, make_napari_viewer, fsam, fcheckpoint, frame):
    img, gt = frame
    viewer, w = _setup(make_napari_viewer, fsam, fcheckpoint, img)
    a, b = _cells(gt, 2)
    points = w.points_box.value
    points.add([interior_point(gt == a), interior_point(gt == b)])
    _segment(qtbot, w)
    labels = w.labels_box.value
    # by hand: erase part of label 1, paint label 2 onto background beside it
    ra, ca = np.nonzero(np.asarray(labels.data) == 1)
    labels.brush_size = 3
    labels.paint((ra[0], ca[0]), 0)
    rb, cb = np.nonzero(np.asarray(labels.data) == 2)
    labels.paint((rb.min() - 2, cb[0]), 2)
    edited = np.asarray(labels.data).copy()
    # move label 1's click: its prompt changed, but its pixels are the user's
    data = points.data.copy()
    data[0] += 1
    points.data = data
    points.features["label_id"] = [1, 2]
    _segment(qtbot, w)
    np.testing.assert_array_equal(labels.data, edited)
    assert w.status.value.startswith("Segment: kept object 1: edited by hand (tick 'overwrite labels' to redo it)"), w.status.value
    # a new object with overwrite ticked: it never covers the hand-edited labels
    w.overwrite.value = True
    c = _cells(gt, 3)[2]
    points.add([interior_point(gt == c)])
    _segment(qtbot, w)
    now = np.asarray(labels.data)
    assert (now == 3).any()
    assert np.array_equal(now == 2, edited == 2)  # label 2 (edited, prompt unchanged) kept every pixel
    # label 1: its prompt changed and overwrite is ticked: replaced by its new mask
    assert not np.array_equal(now == 1, edited == 1)


def test_negative_point_keeps_its_object_widget_and_cli(qtbot, make_napari_viewer, fsam, fcheckpoint, frame, tmp_path):
    """Item 2: three clicks, Segment, a negative click refines object 3, a newer positive click lands
    nearer to it: the negative stays with object 3 (widget and mobilesam segment agree)."""
    img, gt = frame
    viewer, w = _setup(make_napari_viewer, fsam, fcheckpoint, img)
    at = {c: np.asarray(interior_point(gt == c), float) for c in _cells(gt, 8)}
    c, d = min(((c, d) for c in at for d in at if c != d), key=lambda cd: np.hypot(*(at[cd[0]] - at[cd[1]])))
    neg = at[c] + 0.6 * (at[d] - at[c])  # the negative point: nearer to d than to c
    others = sorted((k for k in at if k not in (c, d)), key=lambda k: -np.hypot(*(at[k] - neg)))[:2]
    clicks, d_click = [at[others[0]], at[others[1]], at[c]], at[d]
    assert min(range(3), key=lambda i: np.hypot(*(clicks[i] - neg))) == 2  # before d, object 3 is the nearest
    points = w.points_box.value
    points.add(np.array(clicks))
    _segment(qtbot, w)
    labels = w.labels_box.value
    w.mode.value = "negative"
    points.add([neg])
    _segment(qtbot, w)
    assert points.features["label_id"].tolist() == [1, 2, 3, 3]
    refined = np.asarray(labels.data).copy()
    w.mode.value = "positive"
    points.add([d_click])
    assert np.hypot(*(neg - d_click)) < np.hypot(*(neg - clicks[2]))
    _segment(qtbot, w)
    assert points.features["label_id"].tolist() == [1, 2, 3, 3, 4]
    now = np.asarray(labels.data)
    assert np.array_equal(now == 3, refined == 3)  # object 3 kept its refined mask
    # the CLI reads the same points (napari's CSV) and gives the same labels
    tif, pcsv, out = tmp_path / "img.tif", tmp_path / "points.csv", tmp_path / "cli.tif"
    tifffile.imwrite(tif, img, photometric="minisblack")
    points.save(str(pcsv), plugin="napari")
    lo, hi = (str(v) for v in viewer.layers["img"].contrast_limits)
    assert main(["segment", str(tif), "--points", str(pcsv), "-o", str(out), "--weights", str(fcheckpoint),
                 "--device", "cpu", "-q", "--contrast", lo, hi]) == 0
    cli = tifffile.imread(out)
    # one run of all prompts vs the widget's three runs: the same objects (overlaps may be split otherwise)
    assert set(np.unique(cli).tolist()) == set(np.unique(now).tolist()) == {0, 1, 2, 3, 4}
    for lid in (1, 2, 3, 4):
        a, b = cli == lid, now == lid
        assert (a & b).sum() / (a | b).sum() >= 0.97, lid


def test_points_layer_ready_for_clicks_when_the_widget_came_first(qtbot, make_napari_viewer, frame):
    """Item 7: widget opened before the image: the first click on the canvas must add a point."""
    from napari_mobilesam.gui.widget import MobileSAMWidget

    viewer = make_napari_viewer()
    w = MobileSAMWidget(viewer)
    viewer.add_image(frame[0], name="img")
    qtbot.wait(50)
    points = w.points_box.value
    assert points is not None and viewer.layers.selection.active is points and points.mode == "add"
    # a second image: its own prompt layers, again ready
    viewer.add_image(frame[0][::2, ::2].copy(), name="small")
    w.image_box.value = viewer.layers["small"]
    qtbot.wait(50)
    assert w.points_box.value is not points and viewer.layers.selection.active is w.points_box.value
    assert w.points_box.value.mode == "add"
    w.shutdown()


@pytest.mark.slow
def test_object_aware_uses_the_detectors_training_size(qtbot, make_napari_viewer, fsam, fcheckpoint, frame):
    """Item 4: the shipped synthetic detector was trained at 256 px; at 1024 it found 0 of 20 cells."""
    from napari_mobilesam.gui.everything import detector_input_size
    from napari_mobilesam.model.detector import Detector
    from napari_mobilesam.testing import synthetic_detector

    assert detector_input_size(Detector(synthetic_detector())) == (256, "the size the detector was trained at")
    img, gt = frame
    viewer, w = _setup(make_napari_viewer, fsam, fcheckpoint, img)
    ev = w.everything
    ev.sampler.value = "object-aware"
    ev.detector.value = str(synthetic_detector())
    assert not ev.imgsz.native.isHidden() and ev.button.enabled
    ev.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    found = set(np.unique(w.labels_box.value.data).tolist()) - {0}
    assert "detector input 256 px (the size the detector was trained at)" in w.status.value, w.status.value
    assert len(found) >= 5, (len(found), w.status.value)


def test_no_empty_labels_layer_when_the_model_fails_to_load(qtbot, make_napari_viewer, frame, monkeypatch, tmp_path):
    """Item 9: a model that cannot be loaded leaves no empty labels layer behind (Segment, Segment everything)."""
    from napari.layers import Labels

    from napari_mobilesam.gui import feedback
    from napari_mobilesam.gui.widget import CHOOSE_FILE, MobileSAMWidget

    monkeypatch.setattr(feedback, "notify", lambda n: None)
    viewer = make_napari_viewer()
    viewer.add_image(frame[0], name="img")
    w = MobileSAMWidget(viewer)
    bad = tmp_path / "damaged.pt"
    bad.write_bytes(b"not a checkpoint")
    w.model_box.value = CHOOSE_FILE
    w.model_file.value = str(bad)
    w.device_box.value = "cpu"
    w.points_box.value.add([[40.0, 40.0]])
    w.segment()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert w.status.value.startswith("Error:"), w.status.value
    w.everything.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert w.status.value.startswith("Error:"), w.status.value
    assert not [la for la in viewer.layers if isinstance(la, Labels)]
    # the error goes when the problem is gone (another model chosen)
    w.model_box.value = "mobile_sam"
    assert w.status.value == "Ready."
    w.shutdown()


def test_progress_text_on_a_2d_image():
    """Item 9: "Segment: frame: image embedding" on a 2-D image."""
    from napari_mobilesam.gui.jobs import frame_step

    assert frame_step((), True, 2) == "image embedding"
    assert frame_step((), False, 2) == "decoding 2 objects"
    assert frame_step((3,), True, 1) == "frame 3: image embedding"


def test_closing_the_dock_mid_job_says_so_and_takes_its_keys(qtbot, make_napari_viewer, fsam, fcheckpoint, frame, monkeypatch):
    """Item 9: closing the dock stopped the job silently; a later Shift+E logged a RuntimeError."""
    from napari_mobilesam.gui import runner

    warned = []
    monkeypatch.setattr(runner, "show_warning", warned.append)
    viewer = make_napari_viewer()
    viewer.add_image(frame[0], name="img")
    w = widget_with_model(viewer, fsam, fcheckpoint)
    dock = viewer.window.add_dock_widget(w, name="MobileSAM")
    assert "Shift+E" in {str(k) for k in viewer.keymap}
    w.everything.sampler.value = "grid"
    w.everything.run()
    assert w.busy
    viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert warned and "the dock was closed" in warned[0]
    assert not {"Shift+E", "Shift+S", "Escape"} & {str(k) for k in viewer.keymap}



@pytest.mark.slow
def test_cancel_a_tiled_frame_writes_the_tiles_done(qtbot, make_napari_viewer, fsam, fcheckpoint):
    """Item 6: Cancel after some tiles of a large frame wrote "0 of 1 frame written"; the tiles done are kept."""
    stack, _ = synthetic_stack(n_frames=1, shape=(512, 512), n=40, seed=3)
    viewer, w = _setup(make_napari_viewer, fsam, fcheckpoint, stack[0])
    ev = w.everything
    ev.sampler.value = "blobs"
    ev.diameter.value = 30
    ev.tile.value = 256
    ev.run()
    qtbot.waitUntil(lambda: "tile 2/" in w.status.value, timeout=TIMEOUT)
    w.cancel()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert "cancelled: 1 of 1 frame written" in w.status.value and "partial: " in w.status.value, w.status.value
    labels = w.labels_box.value
    assert labels is not None and np.asarray(labels.data).any()
