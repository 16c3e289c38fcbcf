"""The dock widget in a real napari viewer (run under Xvfb: ``xvfb-run -a python -m pytest tests/test_gui.py``).

Expected masks come from the engine (``Predictor.predict_objects`` on the reference checkpoint) for
the prompts the documented semantics imply, so every test checks what the GUI wrote, pixel by pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_mobilesam.engine.labels import render_labels, write_labels  # noqa: E402
from napari_mobilesam.engine.predictor import Prompt  # noqa: E402
from napari_mobilesam.gui.widget import CHOOSE_FILE, MobileSAMWidget  # noqa: E402

pytestmark = pytest.mark.gui

TIMEOUT = 180_000  # ms; the encoder takes seconds per frame on a busy 2-core machine


@pytest.fixture(scope="module")
def small_cell(cell_image) -> np.ndarray:
    return np.ascontiguousarray(cell_image[::4, ::4])  # 165 x 138 uint8


@pytest.fixture
def make_widget(make_napari_viewer, request, checkpoint):
    """A viewer with one image and the widget, using the session's model (built once).

    As in a user's napari, the viewer (and its OpenGL context) exists before the model is asked for;
    tests/test_first_use.py checks that order in a fresh process, where it really matters.
    """

    made = []

    def make(image, **image_kw):
        viewer = make_napari_viewer()
        layer = viewer.add_image(image, name="img", **image_kw)
        sam = request.getfixturevalue("sam")
        w = MobileSAMWidget(viewer)
        made.append(w)
        w.model_box.value = CHOOSE_FILE
        w.model_file.value = str(checkpoint)
        w.device_box.value = "cpu"
        w.set_model(sam, (str(checkpoint), "cpu"))
        return viewer, w, layer

    yield make
    for w in made:  # each widget's model thread ends with the test (an idle one keeps an OpenMP team)
        w.shutdown()


def run(qtbot, w, fn=None):
    (fn or w.segment)()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)


def expected(predictor, frame, objects, shape, existing=None, **image_kw):
    """Engine result for ``objects`` = [(Prompt, multimask, select, id)] merged into ``existing``."""
    predictor.set_image(frame, **image_kw)
    masks = [predictor.predict_objects([p], multimask_output=mm, select=sel)[0] for p, mm, sel, _ in objects]
    new = render_labels(masks, shape, ids=[i for *_, i in objects])
    out = np.zeros(shape, np.uint32) if existing is None else existing.astype(np.uint32).copy()
    write_labels(out, new)
    return out


def agree(a, b) -> float:
    return float((a == b).mean())


def test_points_give_one_label_per_positive_point(qtbot, make_widget, predictor, small_cell):
    viewer, w, img = make_widget(small_cell)
    pts = w.points_box.value
    assert pts.ndim == 2 and w.shapes_box.value is not None
    pts.add([[40.0, 40.0], [110.0, 90.0]])
    run(qtbot, w)
    labels = w.labels_box.value
    assert labels is not None and labels.data.shape == small_cell.shape
    assert list(pts.features["label_id"]) == [1, 2]
    ref = expected(predictor, small_cell, [(Prompt(points=[[40, 40]]), True, "best", 1), (Prompt(points=[[110, 90]]), True, "best", 2)], small_cell.shape)
    assert agree(labels.data, ref) > 0.999
    assert set(np.unique(labels.data)) <= {0, 1, 2} and (labels.data == 1).any()


def test_rectangles_one_label_each_and_rerun_replaces_own_mask(qtbot, make_widget, predictor, small_cell):
    viewer, w, img = make_widget(small_cell)
    shapes = w.shapes_box.value
    shapes.add_rectangles([np.array([[10, 10], [60, 70]]), np.array([[90, 50], [150, 120]])])
    shapes.add_ellipses(np.array([[115, 25], [15, 15]]))  # centre, radii: counts by its bounding box
    run(qtbot, w)
    labels = w.labels_box.value
    boxes = [[10, 10, 60, 70], [90, 50, 150, 120], [100, 10, 130, 40]]
    ref = expected(predictor, small_cell, [(Prompt(box=b), False, "best", i + 1) for i, b in enumerate(boxes)], small_cell.shape)
    assert agree(labels.data, ref) > 0.999
    assert list(shapes.features["label_id"]) == [1, 2, 3]
    # move the first box: its label 1 is replaced, nothing else changes outside label 1's old/new pixels
    before = labels.data.copy()
    shapes.data = [np.array([[20, 20], [20, 80], [70, 80], [70, 20]]), *shapes.data[1:]]
    shapes.features["label_id"] = [1, 2, 3]  # napari resets features when data is replaced wholesale
    run(qtbot, w)
    after = labels.data
    others = (before != 1) & (after != 1) & (before != 0)
    assert np.array_equal(before[others], after[others])
    assert set(np.unique(after)) <= {0, 1, 2, 3}


def test_negative_point_refines_nearest_object(qtbot, make_widget, predictor, small_cell):
    viewer, w, img = make_widget(small_cell)
    pts = w.points_box.value
    pts.add([[60.0, 60.0]])
    w.prompts.toggle_mode()  # key T: new points are negative
    assert w.mode.value == "negative"
    pts.add([[70.0, 75.0]])
    pts.add([[150.0, 20.0]])  # nearer to no positive point than the first; still attached (only one object)
    assert list(pts.features["label"]) == [1, 0, 0]
    assert not np.allclose(pts.face_color[0], pts.face_color[1])  # distinct colours
    run(qtbot, w)
    labels = w.labels_box.value
    prompt = Prompt(points=[[60, 60], [70, 75], [150, 20]], labels=[1, 0, 0])
    ref = expected(predictor, small_cell, [(prompt, False, "best", 1)], small_cell.shape)
    assert agree(labels.data, ref) > 0.999
    pos_only = expected(predictor, small_cell, [(Prompt(points=[[60, 60]]), True, "best", 1)], small_cell.shape)
    assert not np.array_equal(ref, pos_only)  # the negative points changed the prompt's result


def test_stack_prompts_on_frames_0_and_3_only(qtbot, make_widget, predictor, small_cell):
    stack = np.stack([np.roll(small_cell[:96, :96], 3 * t, axis=1) for t in range(4)])
    viewer, w, img = make_widget(stack)
    pts = w.points_box.value
    assert pts.ndim == 3
    pts.add([[0, 30.0, 30.0], [3, 50.0, 60.0]])
    w.all_frames.value = True
    run(qtbot, w)
    labels = w.labels_box.value
    assert labels.data.shape == stack.shape
    assert not labels.data[1].any() and not labels.data[2].any()
    ref0 = expected(predictor, stack[0], [(Prompt(points=[[30, 30]]), True, "best", 1)], (96, 96))
    ref3 = expected(predictor, stack[3], [(Prompt(points=[[50, 60]]), True, "best", 2)], (96, 96))
    assert agree(labels.data[0], ref0) > 0.999 and agree(labels.data[3], ref3) > 0.999
    # without "all frames" only the viewed frame is segmented
    w.all_frames.value = False
    viewer.dims.set_current_step(0, 3)
    labels.data[...] = 0
    run(qtbot, w)
    assert not labels.data[0].any() and labels.data[3].any()


def test_existing_labels_kept_and_undo(qtbot, make_widget, small_cell):
    viewer, w, img = make_widget(small_cell)
    user = np.zeros(small_cell.shape, np.uint32)
    user[30:50, 30:50] = 7
    labels = viewer.add_labels(user.copy(), name="mine")
    w.labels_box.value = labels
    w.points_box.value.add([[40.0, 40.0], [120.0, 100.0]])
    run(qtbot, w)
    assert np.array_equal(labels.data[30:50, 30:50], user[30:50, 30:50])  # not overwritten
    assert set(np.unique(labels.data)) - {0, 7} <= {8, 9}  # new ids after the existing ones
    assert (labels.data >= 8).any()
    labels.undo()  # one Ctrl+Z per Segment
    assert np.array_equal(labels.data, user)
    labels.redo()
    assert (labels.data >= 8).any()
    # overwrite on: new masks may cover existing labels
    w.overwrite.value = True
    w.points_box.value.add([[40.0, 40.0]])
    run(qtbot, w)
    assert (labels.data[30:50, 30:50] != 7).any() or not (labels.data == 10).any()


def test_cancel_keeps_finished_frames(qtbot, make_widget, small_cell):
    stack = np.stack([small_cell[:80, :80]] * 3)
    viewer, w, img = make_widget(stack)
    w.points_box.value.add([[t, 40.0, 40.0] for t in range(3)])
    w.all_frames.value = True
    frames_written = []
    w.segment()
    worker = w.state.worker
    worker.yielded.connect(lambda msg: type(msg).__name__ == "FrameDone" and (frames_written.append(msg.frame), w.cancel()))
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    labels = w.labels_box.value
    assert frames_written[:1] == [(0,)]
    written = [t for t in range(3) if labels.data[t].any()]
    assert written == [t for (t,) in frames_written]  # cleanly partial: finished frames only
    assert len(written) < 3
    assert w.status.value.startswith(f"Segment cancelled: {len(written)} of 3 frames written")
    assert w.segment_btn.enabled and not w.cancel_btn.enabled


def test_rgb_image_is_colour_not_stack(qtbot, make_widget, predictor):
    from skimage import data

    rgb = np.ascontiguousarray(data.astronaut()[::4, ::4])  # 128 x 128 x 3
    viewer, w, img = make_widget(rgb)
    assert img.rgb
    pts = w.points_box.value
    assert pts.ndim == 2
    pts.add([[64.0, 64.0]])
    run(qtbot, w)
    labels = w.labels_box.value
    assert labels.data.shape == rgb.shape[:2]
    ref = expected(predictor, rgb, [(Prompt(points=[[64, 64]]), True, "best", 1)], rgb.shape[:2])
    assert agree(labels.data, ref) > 0.999


def test_uint16_image_uses_layer_contrast(qtbot, make_widget, predictor, small_cell):
    img16 = small_cell.astype(np.uint16) * 200 + 1000
    viewer, w, img = make_widget(img16, contrast_limits=(1000, 40000))
    w.shapes_box.value.add_rectangles(np.array([[20, 20], [90, 100]]))
    run(qtbot, w)
    labels = w.labels_box.value
    ref = expected(predictor, img16, [(Prompt(box=[20, 20, 90, 100]), False, "best", 1)], small_cell.shape, contrast_limits=(1000.0, 40000.0))
    assert agree(labels.data, ref) > 0.999


def settle(qtbot, w):
    """Wait until no live decode is in flight or queued."""
    qtbot.waitUntil(lambda: not w.live_pending and not w.busy, timeout=TIMEOUT)


def go_live(qtbot, w):
    """Tick live mode and wait for the frame's embedding."""
    w.live.value = True
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)


def live_clicks(qtbot, w, *points):
    """Click each (row, col) in live mode, waiting for its mask."""
    for rc in points:
        w.points_box.value.add([list(map(float, rc))])
        settle(qtbot, w)


def test_live_mode_click_move_delete_and_mask_choice(qtbot, make_widget, predictor, small_cell):
    viewer, w, img = make_widget(small_cell)
    pts = w.points_box.value
    w.live.value = True  # computes the frame's embedding in the background
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    pts.add([[50.0, 50.0]])  # decoded in a worker thread; the GUI thread only writes the result
    assert w.live_pending and not w.busy  # no job, no progress bar: just the decode in flight
    settle(qtbot, w)
    labels = w.labels_box.value
    ref = expected(predictor, small_cell, [(Prompt(points=[[50, 50]]), True, "best", 1)], small_cell.shape)
    assert agree(labels.data, ref) > 0.999
    # second click: its own id, first object untouched
    before = labels.data.copy()
    pts.add([[130.0, 100.0]])
    settle(qtbot, w)
    ref2 = expected(predictor, small_cell, [(Prompt(points=[[130, 100]]), True, "best", 2)], small_cell.shape, existing=before)
    assert agree(labels.data, ref2) > 0.999
    assert np.array_equal(labels.data[before == 1], before[before == 1])
    # choose SAM's mask 3 for the selected first point
    pts.selected_data = {0}
    w.mask_choice.value = 3
    settle(qtbot, w)
    ref3 = expected(predictor, small_cell, [(Prompt(points=[[50, 50]]), True, 2, 1)], small_cell.shape)
    m = labels.data == 1
    assert agree(m, (ref3 == 1) & ((labels.data == 0) | m)) > 0.999
    # the control shows the selected prompt's choice
    pts.selected_data = {1}
    assert w.mask_choice.value == 0
    pts.selected_data = {0}
    assert w.mask_choice.value == 3
    # delete the second point: its mask goes
    pts.selected_data = {1}
    pts.remove_selected()
    settle(qtbot, w)
    assert not (labels.data == 2).any()
    # a finished rectangle is segmented at once too, with the next id
    before = labels.data.copy()
    w.shapes_box.value.add_rectangles(np.array([[100, 20], [100, 60], [150, 60], [150, 20]]))
    settle(qtbot, w)
    ref_box = expected(predictor, small_cell, [(Prompt(box=[100, 20, 150, 60]), False, "best", 3)], small_cell.shape, existing=before)
    assert agree(labels.data, ref_box) > 0.999


def test_live_prompts_changed_while_decoding(qtbot, make_widget, predictor, small_cell):
    """Clicks faster than the decoder: every object ends with the mask of its latest prompt, a
    point deleted while its decode was in flight leaves no mask, and each write is one undo step."""
    viewer, w, img = make_widget(small_cell)
    pts = w.points_box.value
    go_live(qtbot, w)
    pts.add([[50.0, 50.0]])
    assert w.live_pending
    pts.add([[130.0, 100.0]])  # queued behind the first decode
    pts.data = np.array([[50.0, 50.0], [120.0, 40.0]])  # the second point moves before it is decoded
    settle(qtbot, w)
    labels = w.labels_box.value
    assert list(pts.features["label_id"]) == [1, 2]
    first = expected(predictor, small_cell, [(Prompt(points=[[50, 50]]), True, "best", 1)], small_cell.shape)
    ref = expected(predictor, small_cell, [(Prompt(points=[[120, 40]]), True, "best", 2)], small_cell.shape, existing=first)
    assert agree(labels.data, ref) > 0.999
    # a point added and deleted at once: its decode is dropped, no id 3 appears
    before = labels.data.copy()
    pts.add([[20.0, 120.0]])
    pts.selected_data = {2}
    pts.remove_selected()
    settle(qtbot, w)
    assert np.array_equal(labels.data, before)
    # exactly two writes reached the history (the dropped decode left none): Ctrl+Z twice empties it
    labels.undo()
    assert np.array_equal(labels.data, first)
    labels.undo()
    assert not labels.data.any()


def test_model_work_runs_on_one_thread(qtbot, make_widget, small_cell, monkeypatch):
    """Embedding jobs, Segment and live decodes all run on the model thread, never on the GUI
    thread (a second thread running the model would slow every decode, see gui/threads.py)."""
    import threading

    from napari_mobilesam.engine.predictor import Predictor

    seen = []
    for name in ("set_image", "predict_objects"):
        original = getattr(Predictor, name)

        def recording(self, *a, _original=original, **kw):
            seen.append(threading.get_ident())
            return _original(self, *a, **kw)

        monkeypatch.setattr(Predictor, name, recording)
    viewer, w, img = make_widget(small_cell)
    go_live(qtbot, w)
    live_clicks(qtbot, w, (50, 50), (120, 40))
    run(qtbot, w)
    settle(qtbot, w)
    model_thread = w.model_thread.call(threading.get_ident)
    assert len(seen) >= 3 and set(seen) == {model_thread} and model_thread != threading.get_ident()
    assert (w.labels_box.value.data == 2).any()


def test_live_click_during_a_long_job(qtbot, make_widget, predictor, small_cell):
    """A live click made while Segment works through a stack is decoded between two of the job's
    steps, not after the job; the job's own results are complete too."""
    stack = np.stack([np.roll(small_cell[:64, :80], 3 * t, axis=1) for t in range(4)])
    viewer, w, img = make_widget(stack)
    viewer.dims.set_current_step(0, 0)
    go_live(qtbot, w)  # frame 0 embedded
    shapes = w.shapes_box.value
    for t in (1, 2, 3):
        shapes.add_rectangles(np.array([[t, 10, 10], [t, 10, 50], [t, 50, 50], [t, 50, 10]]))
    settle(qtbot, w)
    w.all_frames.value = True
    w.segment()  # three frames to embed: seconds of work on the model thread
    assert w.busy
    w.points_box.value.add([[0, 30.0, 40.0]])
    labels_of = lambda: w.labels_box.value  # noqa: E731
    qtbot.waitUntil(lambda: labels_of() is not None and (labels_of().data[0] > 0).any(), timeout=TIMEOUT)
    assert w.busy  # the click's mask came while the job still ran
    qtbot.waitUntil(lambda: not w.busy and not w.live_pending, timeout=TIMEOUT)
    lid = int(w.points_box.value.features["label_id"].iloc[0])
    ref = expected(predictor, stack[0], [(Prompt(points=[[30, 40]]), True, "best", lid)], stack.shape[1:])
    assert agree(labels_of().data[0], ref) > 0.999
    assert all(labels_of().data[t].any() for t in (1, 2, 3))


def test_live_on_a_new_frame_during_a_long_job(qtbot, make_widget, predictor, small_cell):
    """Moving to a frame without an embedding while a job runs: the frame is embedded between two
    of the job's steps and a click there is decoded before the job ends."""
    stack = np.stack([np.roll(small_cell[:64, :80], 3 * t, axis=1) for t in range(5)])
    viewer, w, img = make_widget(stack)
    viewer.dims.set_current_step(0, 0)
    go_live(qtbot, w)
    for t in (1, 2, 3):
        w.shapes_box.value.add_rectangles(np.array([[t, 10, 10], [t, 10, 50], [t, 50, 50], [t, 50, 10]]))
    settle(qtbot, w)
    w.all_frames.value = True
    w.segment()
    assert w.busy
    viewer.dims.set_current_step(0, 4)  # not embedded yet, not part of the job
    w.points_box.value.add([[4, 30.0, 40.0]])
    qtbot.waitUntil(lambda: w.labels_box.value is not None and (w.labels_box.value.data[4] > 0).any(), timeout=TIMEOUT)
    assert w.busy  # embedded and decoded between the job's steps
    qtbot.waitUntil(lambda: not w.busy and not w.live_pending, timeout=TIMEOUT)
    ref = expected(predictor, stack[4], [(Prompt(points=[[30, 40]]), True, "best", 4)], stack.shape[1:])
    assert int(w.points_box.value.features["label_id"].iloc[0]) == 4  # ids 1-3 went to the boxes
    assert agree(w.labels_box.value.data[4], ref) > 0.999


def test_urgent_calls_run_on_the_model_thread_after_a_job(qtbot):
    """What a job has not run between its steps, drain() runs on the model thread once it is free."""
    import threading

    from napari_mobilesam.gui.threads import ModelThread

    threads = ModelThread()
    ran = []
    threads.submit_urgent(lambda: ran.append(threading.get_ident()))
    threads.drain()
    qtbot.waitUntil(lambda: bool(ran), timeout=10_000)
    assert ran == [threads.call(threading.get_ident)] and ran[0] != threading.get_ident()
    threads.drain()  # nothing queued: nothing runs
    assert len(ran) == 1
    threads.close()
    qtbot.waitUntil(lambda: threads.ended, timeout=10_000)


def test_shift_t_flips_selected_points(qtbot, make_widget, predictor, small_cell):
    viewer, w, img = make_widget(small_cell)
    pts = w.points_box.value
    assert any(str(k).replace("-", "+").lower() == "shift+t" for k in pts.keymap)
    w.prompts.flip_selected()  # nothing selected: a hint, no change
    assert "Select points" in w.status.value
    go_live(qtbot, w)
    live_clicks(qtbot, w, (50, 50), (60, 90))
    labels = w.labels_box.value
    assert list(pts.features["label_id"]) == [1, 2]
    # the second point turns negative: its own mask goes, it refines the first object
    pts.selected_data = {1}
    w.prompts.flip_selected()
    settle(qtbot, w)
    assert list(pts.features["label"]) == [1, 0]
    ref = expected(predictor, small_cell, [(Prompt(points=[[50, 50], [60, 90]], labels=[1, 0]), False, "best", 1)], small_cell.shape)
    assert not (labels.data == 2).any()
    assert agree(labels.data, ref) > 0.999
    # and back: a positive point of its own again, with a fresh id (2 stays retired for undo)
    w.prompts.flip_selected()
    settle(qtbot, w)
    assert list(pts.features["label"]) == [1, 1] and list(pts.features["label_id"]) == [1, 3]
    ref = expected(predictor, small_cell, [(Prompt(points=[[50, 50]]), True, "best", 1), (Prompt(points=[[60, 90]]), True, "best", 3)], small_cell.shape)
    assert agree(labels.data, ref) > 0.999


def test_propagate_through_stack(qtbot, make_widget, predictor, small_cell):
    from napari_mobilesam.engine.propagate import iter_propagate

    stack = np.stack([np.roll(small_cell[:96, :96], 2 * t, axis=0) for t in range(4)])
    viewer, w, img = make_widget(stack)
    viewer.dims.set_current_step(0, 1)
    w.shapes_box.value.add_rectangles(np.array([[1, 20, 20], [1, 20, 80], [1, 70, 80], [1, 70, 20]]))
    run(qtbot, w)
    labels = w.labels_box.value
    assert labels.data[1].any() and not labels.data[[0, 2, 3]].any()
    start = labels.data[1] == 1
    w.shapes_box.value.selected_data = {0}
    # the reference checkpoint has random weights: its predicted IoUs are near 0, so allow them
    w.propagate.min_score.min = -1.0
    w.propagate.min_score.value = -1.0
    w.propagate.min_overlap.value = 0.0
    statuses = []
    show = w.status.native.set_full_text
    w.status.native.set_full_text = lambda text: (statuses.append(text), show(text))
    run(qtbot, w, w.propagate.run)
    assert "Propagate: label 1 from frame 1 along axis 0: embedding the next frame" in statuses
    per_frame = [s for s in statuses if s.startswith("Propagate label 1: frame ")]
    assert [s.split(" (")[0] for s in per_frame] == ["Propagate label 1: frame 2", "Propagate label 1: frame 3", "Propagate label 1: frame 0"]
    assert w.status.value.startswith("Propagated label(s) 1 from frame 1 along axis 0 to 3 frame(s)")
    gen = iter_propagate(predictor, lambda i: stack[i], 4, 1, start, min_score=-1.0, min_overlap=0.0)
    steps = list(gen)
    want = {s.index: s.mask for s in steps if s.mask is not None}
    assert sorted(want) == [0, 2, 3]
    for t in (0, 2, 3):
        assert agree(labels.data[t] == 1, want[t]) > 0.999
    assert set(np.unique(labels.data)) <= {0, 1}
    labels.undo()  # one Ctrl+Z for the whole run
    assert labels.data[1].any() and not labels.data[[0, 2, 3]].any()


def test_propagate_several_selected_objects(qtbot, make_widget, predictor, small_cell):
    """Every selected box is propagated (in one batch per frame); frames get each object's engine
    result, where they overlap the smaller keeps the pixel, and one Ctrl+Z undoes the whole run."""
    from napari_mobilesam.engine.propagate import iter_propagate, render_propagated

    stack = np.stack([np.roll(small_cell[:96, :96], 2 * t, axis=0) for t in range(3)])
    viewer, w, img = make_widget(stack)
    viewer.dims.set_current_step(0, 1)
    shapes = w.shapes_box.value
    shapes.add_rectangles(np.array([[1, 10, 10], [1, 10, 40], [1, 40, 40], [1, 40, 10]]))
    shapes.add_rectangles(np.array([[1, 50, 50], [1, 50, 90], [1, 90, 90], [1, 90, 50]]))
    run(qtbot, w)
    labels = w.labels_box.value
    starts = {lid: labels.data[1] == lid for lid in (1, 2)}
    assert all(m.any() for m in starts.values())
    shapes.selected_data = {0, 1}
    w.propagate.min_score.min = -1.0  # random weights: predicted IoUs near 0
    w.propagate.min_score.value = -1.0
    w.propagate.min_overlap.value = 0.0
    before = labels.data.copy()
    run(qtbot, w, w.propagate.run)
    alone = {lid: {s.index: s.mask for s in iter_propagate(predictor, lambda i: stack[i], 3, 1, start, min_score=-1.0, min_overlap=0.0)}
             for lid, start in starts.items()}
    want = render_propagated(alone, stack.shape[1:])
    for t in (0, 2):
        assert agree(labels.data[t], want[t]) > 0.999
    assert np.array_equal(labels.data[1], before[1])  # the start frame is untouched
    assert "label(s) 1, 2" in w.status.value
    labels.undo()
    assert np.array_equal(labels.data, before)


def test_embeddings_store_from_the_command_line(qtbot, make_widget, predictor, sam, checkpoint, tmp_path, monkeypatch):
    """A store from `mobilesam embed` replaces the encoder in the widget (checked against model and
    image); a store of another image is refused with a notification that says so."""
    import tifffile

    from napari_mobilesam.cli import main

    rng = np.random.default_rng(3)
    stack = np.clip(rng.normal(900, 200, (2, 64, 80)), 0, None).astype(np.uint16)
    stack[:, 20:40, 30:55] += 2500
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    emb = tmp_path / "stack.zarr"
    assert main(["embed", str(tmp_path / "stack.tif"), "-o", str(emb), "--weights", str(checkpoint), "--device", "cpu", "-q"]) == 0

    def segment_with_store(store, frame, **image_kw) -> tuple[np.ndarray, int]:
        """Segment one box on ``frame`` of a new widget using ``store``: (labels of the frame, encoder runs)."""
        viewer, w, _ = make_widget(tifffile.imread(tmp_path / "stack.tif"), **image_kw)
        w.embeddings.value = str(store)
        viewer.dims.set_current_step(0, frame)
        encoded = []
        hook = sam.image_encoder.register_forward_hook(lambda *a: encoded.append(1))
        try:
            w.shapes_box.value.add_rectangles(np.array([[frame, 15, 25], [frame, 15, 60], [frame, 45, 60], [frame, 45, 25]]))
            run(qtbot, w)
        finally:
            hook.remove()
        return w.labels_box.value.data[frame], len(encoded)

    box = [(Prompt(box=[15, 25, 45, 60]), False, "best", 1)]
    got, encoded = segment_with_store(emb, 1, contrast_limits=(0, 60000))
    assert encoded == 0  # frame 1 came from the store
    # what `mobilesam embed` saw: automatic contrast, not the layer's contrast limits
    ref = expected(predictor, stack[1], box, stack.shape[1:])
    assert got.any() and agree(got, ref) > 0.999
    # a store of another image: a notification naming the mismatch, nothing written
    errors = capture_errors(monkeypatch)
    viewer2, w2, _ = make_widget(stack[::-1].copy())
    w2.embeddings.value = str(emb)
    w2.shapes_box.value.add_rectangles(np.array([[0, 15, 25], [0, 15, 60], [0, 45, 60], [0, 45, 25]]))
    run(qtbot, w2)
    assert errors and "another image" in errors[-1].message and "pixel values differ" in errors[-1].message
    assert w2.labels_box.value is None or not w2.labels_box.value.data.any()
    # a store made with `--contrast`: the widget sees the image through that window too
    emb2 = tmp_path / "window.zarr"
    assert main(["embed", str(tmp_path / "stack.tif"), "-o", str(emb2), "--contrast", "500", "3000",
                 "--weights", str(checkpoint), "--device", "cpu", "-q"]) == 0
    got, encoded = segment_with_store(emb2, 0)
    assert encoded == 0
    assert agree(got, expected(predictor, stack[0], box, stack.shape[1:], contrast_limits=(500.0, 3000.0))) > 0.999


def test_widget_creates_an_embeddings_store(qtbot, make_widget, predictor, sam, tmp_path):
    """A new path: every frame embedded in the widget is saved there, equal to the embedding with
    automatic contrast; the next session on the same image reads it instead of encoding."""
    from napari_mobilesam.engine.store import EmbeddingStore, image_fingerprint, model_fingerprint

    rng = np.random.default_rng(4)
    stack = np.clip(rng.normal(900, 200, (3, 48, 64)), 0, None).astype(np.uint16)
    path = tmp_path / "new"
    path.mkdir()  # an empty folder, as a file dialog makes it
    viewer, w, img = make_widget(stack)
    w.embeddings.value = str(path)
    viewer.dims.set_current_step(0, 2)
    go_live(qtbot, w)
    store = EmbeddingStore.open(path, model_fingerprint(sam), image_fingerprint(stack), mode="r")
    assert store.done_count == 1 and store.has(2)
    predictor.set_image(stack[2])  # what `mobilesam embed` computes: automatic contrast
    assert torch.allclose(store.load(2).features, predictor.cache.get(predictor.key).features.float(), atol=1e-5)

    viewer2, w2, _ = make_widget(stack)
    w2.embeddings.value = str(path)
    viewer2.dims.set_current_step(0, 2)
    encoded = []
    hook = sam.image_encoder.register_forward_hook(lambda *a: encoded.append(1))
    try:
        go_live(qtbot, w2)
        live_clicks(qtbot, w2, (2, 20, 30))
    finally:
        hook.remove()
    assert encoded == [] and w2.status.value.startswith("object 1: ")
    ref = expected(predictor, stack[2], [(Prompt(points=[[20, 30]]), True, "best", 1)], stack.shape[1:])
    assert agree(w2.labels_box.value.data[2], ref) > 0.999  # (the random test weights may find no mask here)


def capture_errors(monkeypatch) -> list:
    """The error notifications the user would see (``.message``: the short sentence;
    ``str(.exception)``: the details behind 'View Traceback')."""
    from napari_mobilesam.gui import feedback

    seen: list = []
    monkeypatch.setattr(feedback, "notify", seen.append)
    return seen


def test_errors_are_notifications(qtbot, make_widget, small_cell, monkeypatch, tmp_path):
    from napari_mobilesam.model.weights import REGISTRY, WeightsSpec

    errors = capture_errors(monkeypatch)
    viewer, w, img = make_widget(small_cell)
    w.model_file.value = str(tmp_path / "missing.pt")
    w.points_box.value.add([[40.0, 40.0]])
    w.state.sam = None
    w.segment()
    assert not w.busy and errors and "missing.pt" in errors[-1].message and "pick a .pt file" in errors[-1].message
    # an empty checkpoint field says so (not "Checkpoint '.' is not a file")
    w.model_file.line_edit.value = ""  # the user cleared the field
    w.segment()
    assert errors[-1].message == "MobileSAM: No checkpoint chosen: pick a .pt file next to 'checkpoint', or a registry model under 'model'."
    assert w.status.value.startswith("Error: No checkpoint chosen")
    # registry weights while offline: one short sentence naming the fix; URLs and the cause behind the details
    monkeypatch.setenv("NAPARI_MOBILESAM_CACHE", str(tmp_path))
    offline = WeightsSpec("mobile_sam", "mobile_sam.pt", ("file:///nonexistent/mobile_sam.pt",), None, "unreachable mirror")
    monkeypatch.setitem(REGISTRY, "mobile_sam", offline)
    w.model_box.value = "mobile_sam"
    run(qtbot, w)
    short = errors[-1].message
    assert short.startswith("MobileSAM: Could not download the 'mobile_sam' weights (offline?)")
    assert "NAPARI_MOBILESAM_WEIGHTS_MOBILE_SAM" in short and "file://" not in short and len(short) < 220
    details = str(errors[-1].exception)
    assert "file:///nonexistent/mobile_sam.pt" in details and "put it at" in details
    assert w.status.value == "Error: " + short.removeprefix("MobileSAM: ")
    assert w.labels_box.value is None or not w.labels_box.value.data.any()


def test_everything_section_blobs_matches_engine_and_cancel_keeps_frames(qtbot, make_widget, predictor, small_cell):
    from napari_mobilesam.engine.everything import segment_everything

    stack = np.stack([small_cell[:128, :128], np.ascontiguousarray(small_cell[:128, :128][::-1]), small_cell[:128, :128]])
    viewer, w, img = make_widget(stack)
    ev = w.everything
    # object-aware without a detector file: disabled, with a hint that says what to do
    ev.sampler.value = "object-aware"
    assert not ev.button.enabled and "detector" in ev.hint.value
    ev.sampler.value = "blobs"
    assert ev.button.enabled and not ev.hint.visible
    ev.polarity.value = "dark"
    user = np.zeros(stack.shape, np.uint32)
    user[0, :20, :20] = 5
    labels = viewer.add_labels(user.copy(), name="mine")
    w.labels_box.value = labels
    # current frame only (napari opens a stack on its middle frame)
    viewer.dims.set_current_step(0, 0)
    run(qtbot, w, ev.run)
    assert "1 of 1 frame" in w.status.value, w.status.value
    want = segment_everything(stack[:1], predictor, sampler="blobs", polarity="dark", min_score=0.0, labels=user[:1])
    assert want[0].max() > 5  # objects were found
    assert agree(labels.data[0], want[0]) > 0.999
    assert not labels.data[1:].any()
    assert np.array_equal(labels.data[0, :20, :20], user[0, :20, :20])  # existing labels kept
    labels.undo()
    assert np.array_equal(labels.data, user)
    # the tile control becomes the engine's tile option (0: off)
    ev.tile.value = 32
    with pytest.raises(ValueError, match="at least 64"):
        ev.options()
    ev.tile.value = 96
    assert ev.options()["tile"] == 96
    ev.tile.value = 0
    assert "tile" not in ev.options()
    # all frames, cancelled after the first finished frame: that frame stays, later ones are not touched
    ev.all_frames.value = True
    finished = []
    ev.run()
    w.state.worker.yielded.connect(lambda m: getattr(m, "labels", None) is not None and (finished.append(m.index), w.cancel()))
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert finished[:1] == [(0,)] and len(finished) < 3
    assert w.status.value.startswith(f"Segment everything cancelled: {len(finished)} of 3 frames written")
    assert [t for t in range(3) if (labels.data[t] != user[t]).any()] == [t for (t,) in finished]


def test_manifest_sample_data_and_widget(make_napari_viewer):
    """Plugins → MobileSAM and File → Open Sample work through the npe2 manifest."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-mobilesam", "cell_stack")
    (stack,) = viewer.layers
    assert stack.data.shape == (5, 256, 256) and stack.data.dtype == np.uint8
    _, w = viewer.window.add_plugin_dock_widget("napari-mobilesam", "MobileSAM")
    assert isinstance(w, MobileSAMWidget)
    assert w.image_box.value is stack
    assert w.points_box.value.ndim == 3 and w.shapes_box.value.ndim == 3  # prompt layers made for the stack
    assert w.propagate.axis.choices  # a stack has an axis to propagate along
    assert w.labels_box.value is None  # created on the first result
    # the prompt semantics are in the tooltips
    assert "nearest" in w.segment_btn.tooltip and "T" in w.mode.tooltip


def test_switching_images_switches_prompt_and_label_layers(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer()
    a = viewer.add_image(np.zeros((64, 64), np.uint8), name="a")
    w = MobileSAMWidget(viewer)
    pa, sa = w.points_box.value, w.shapes_box.value
    assert pa.metadata["image"] == "a" and sa.metadata["image"] == "a"
    b = viewer.add_image(np.zeros((3, 32, 48), np.uint16), name="a stack")
    w.image_box.value = b
    assert w.points_box.value is not pa and w.points_box.value.ndim == 3
    assert w.labels_box.value is None  # a's labels (none yet) would not fit anyway
    mismatched = viewer.add_labels(np.zeros((32, 48), np.uint32), name="2D labels")
    assert not any(v is mismatched for v in w.labels_box.choices)  # a 2D labels layer cannot hold a stack
    w.image_box.value = a
    assert w.points_box.value is pa and w.shapes_box.value is sa


def test_region_write_equals_whole_frame_write(make_napari_viewer):
    """write_masks (live path) == render on the whole frame + write_frames, incl. replaced ids."""
    from napari_mobilesam.engine.predictor import ObjectMask
    from napari_mobilesam.gui.writer import write_frames, write_masks

    rng = np.random.default_rng(1)
    viewer = make_napari_viewer()
    base = np.zeros((2, 60, 70), np.uint16)
    base[1, 5:20, 5:30] = 4  # an existing label
    base[1, 40:50, 50:60] = 9  # the old mask of object 9 (re-segmented below)
    masks, ids = [], [9, 11]
    for r, c, h, w in ((10, 20, 30, 25), (30, 45, 20, 20)):
        masks.append(ObjectMask(rng.random((h, w)) > 0.3, (r, c), (60, 70), 0.9, 0.9, 0, np.zeros((256, 256), np.float32)))
    for overwrite in (False, True):
        a = viewer.add_labels(base.copy())
        b = viewer.add_labels(base.copy())
        write_masks(a, (1,), masks, ids, overwrite, replace_ids=[9, 11])
        write_frames(b, [((1,), render_labels(masks, (60, 70), ids=ids))], overwrite, replace_ids=[9, 11])
        assert np.array_equal(a.data, b.data)
        assert not (a.data[1, 40:50, 50:60] == 9).all()  # old pixels of 9 released
        a.undo()
        assert np.array_equal(a.data, base)


def count_decodes(monkeypatch) -> list[int]:
    """Number of prompts each ``Predictor.predict_objects`` call decodes."""
    from napari_mobilesam.engine.predictor import Predictor

    calls: list[int] = []
    original = Predictor.predict_objects

    def recording(self, prompts, *a, **kw):
        calls.append(len(prompts))
        return original(self, prompts, *a, **kw)

    monkeypatch.setattr(Predictor, "predict_objects", recording)
    return calls


def rect(r0, c0, r1, c1):
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


def test_objects_stay_as_written(qtbot, make_widget, predictor, small_cell, monkeypatch):
    """Segment decodes only new or changed prompts; written objects keep their pixels; a
    re-segmented object replaces only its own pixels; each step is one undo."""
    viewer, w, img = make_widget(small_cell)
    shapes = w.shapes_box.value
    shapes.add_rectangles([rect(10, 10, 60, 60), rect(70, 20, 120, 80), rect(100, 70, 150, 130)])
    decoded = count_decodes(monkeypatch)
    run(qtbot, w)
    labels = w.labels_box.value
    step1 = labels.data.copy()
    assert sum(decoded) == 3 and {1, 2, 3} <= set(np.unique(step1))
    # two new boxes, each overlapping written objects: only they are decoded, ids 1-3 keep every pixel
    decoded.clear()
    new_boxes = [rect(30, 30, 100, 100), rect(5, 60, 160, 135)]
    shapes.add_rectangles(new_boxes)
    run(qtbot, w)
    step2 = labels.data.copy()
    assert sum(decoded) == 2
    for lid in (1, 2, 3):
        assert np.array_equal(step2 == lid, step1 == lid), f"object {lid} changed"
    ref = expected(predictor, small_cell, [(Prompt(box=[30, 30, 100, 100]), False, "best", 4),
                                           (Prompt(box=[5, 60, 160, 135]), False, "best", 5)], small_cell.shape, existing=step1)
    assert np.array_equal(step2, ref)  # new masks fill background only (largest first among themselves)
    assert (step2 == 4).any() and (step2 == 5).any()
    assert w.status.value.startswith("Segment: 2 object(s) → 'img labels'; 3 unchanged kept; Ctrl+Z undoes; object 4: ")
    # nothing changed: nothing decoded, nothing written, and the status says why
    decoded.clear()
    run(qtbot, w)
    assert decoded == [] and np.array_equal(labels.data, step2)
    assert w.status.value.startswith("Segment: nothing to do — all 5 object(s) are as written")
    # object 2's box moves: only id 2's pixels change, into background or its own old pixels
    shapes.data = [shapes.data[0], rect(75, 25, 125, 85), *shapes.data[2:]]
    shapes.features["label_id"] = [1, 2, 3, 4, 5]  # napari resets features when data is replaced wholesale
    run(qtbot, w)
    step3 = labels.data.copy()
    assert sum(decoded) == 1
    diff = step3 != step2
    assert diff.any() and np.all((step2[diff] == 2) | (step3[diff] == 2))
    assert np.all(np.isin(step2[step3 == 2], [0, 2]))  # it took no pixel of another object
    for lid in (1, 3, 4, 5):
        assert np.array_equal(step3 == lid, step2 == lid)
    # each step is one Ctrl+Z
    labels.undo()
    assert np.array_equal(labels.data, step2)
    labels.undo()
    assert np.array_equal(labels.data, step1)
    labels.undo()
    assert not labels.data.any()
    # an object whose mask is gone from the layer (undone) is segmented again
    decoded.clear()
    run(qtbot, w)
    assert sum(decoded) == 5


def test_status_lines(qtbot, make_widget, predictor, small_cell, monkeypatch):
    """Live results, ids after the user's labels, prompts outside the image, overwrite."""
    from napari_mobilesam.gui import promptui as widget_module

    warnings = []
    monkeypatch.setattr(widget_module, "show_warning", warnings.append)
    viewer, w, img = make_widget(small_cell)
    user = np.zeros(small_cell.shape, np.uint32)
    user[:20, :20] = 99  # a hand-painted label 99
    labels = viewer.add_labels(user.copy(), name="mine")
    w.labels_box.value = labels
    go_live(qtbot, w)
    live_clicks(qtbot, w, (80, 70))
    n = int((labels.data == 100).sum())
    assert n > 0
    assert w.status.value == f"object 100: {n:,} px; new ids start at 100, after the largest label in 'mine'"
    labels.data[labels.data == 0] = 99  # the user paints all the rest: a new mask has no room
    live_clicks(qtbot, w, (120, 30))
    assert not (labels.data == 101).any()
    assert w.status.value == "object 101: nothing written — the mask lies on existing labels (tick 'overwrite' to cover them)"
    # a point outside the 165 x 138 image: warned, skipped, never segmented
    w.live.value = False
    w.points_box.value.add([[10.0, 278.0]])
    before = labels.data.copy()
    run(qtbot, w)
    assert warnings and "skipped 1 prompt: point at row 10, col 278: outside the 165 x 138 frame" in warnings[-1]
    assert "skipped 1 prompt: point at row 10" in w.status.value and np.array_equal(labels.data, before)
    assert list(w.points_box.value.features["label_id"])[-1] == 0


def test_new_layer_ids_start_at_one_after_another_image(qtbot, make_widget, predictor, small_cell):
    """Ids of another image's output do not carry over: a new layer for an RGB image starts at 1;
    switching back keeps the first image's objects as written."""
    from skimage import data

    viewer, w, img = make_widget(small_cell)
    w.points_box.value.add([[40.0, 40.0], [110.0, 90.0]])
    run(qtbot, w)
    first = w.labels_box.value
    written = first.data.copy()
    rgb = viewer.add_image(np.ascontiguousarray(data.astronaut()[::4, ::4]), name="rgb")
    w.image_box.value = rgb
    assert w.labels_box.value is None
    w.points_box.value.add([[64.0, 64.0]])
    run(qtbot, w)
    assert list(w.points_box.value.features["label_id"]) == [1]
    assert set(np.unique(w.labels_box.value.data)) <= {0, 1} and w.labels_box.value is not first
    w.image_box.value = img
    assert w.labels_box.value is first and list(w.points_box.value.features["label_id"]) == [1, 2]
    run(qtbot, w)
    assert np.array_equal(first.data, written) and "nothing to do" in w.status.value


def test_axis_names_show_label_and_index(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 32, 32), np.uint8), name="t-stack", axis_labels=("t", "y", "x"))
    w = MobileSAMWidget(viewer)
    assert [w.propagate.axis.native.itemText(i) for i in range(w.propagate.axis.native.count())] == ["t (axis 0, 4 frames)"]
    assert w.propagate.section.expanded  # a stack: the section is open
    plain = viewer.add_image(np.zeros((3, 2, 32, 32), np.uint8), name="plain")
    w.image_box.value = plain
    assert [w.propagate.axis.native.itemText(i) for i in range(2)] == ["axis 0 (3 frames)", "axis 1 (2 frames)"]
    flat = viewer.add_image(np.zeros((32, 32), np.uint8), name="flat")
    w.image_box.value = flat
    assert not w.propagate.section.expanded and not w.propagate.box.isEnabled()


def test_sample_data_through_the_manifest(make_napari_viewer):
    """File → Open Sample → MobileSAM: the nuclei (RGB, many nuclei) and the synthetic time-lapse."""
    from napari_mobilesam.testing.synthetic import synthetic_stack

    viewer = make_napari_viewer()
    viewer.open_sample("napari-mobilesam", "nuclei")
    viewer.open_sample("napari-mobilesam", "synthetic_cells")
    nuclei, cells = viewer.layers
    assert nuclei.rgb and nuclei.data.shape == (512, 512, 3) and nuclei.data.dtype == np.uint8
    assert cells.data.shape == (8, 256, 256) and cells.data.dtype == np.uint8 and tuple(cells.axis_labels) == ("t", "y", "x")
    stack, truth = synthetic_stack(n_frames=8, shape=(256, 256), seed=0)
    assert np.array_equal(cells.data, stack)
    assert min(len(np.unique(f)) - 1 for f in truth) >= 8  # many cells in every frame
    assert cells.data[truth > 0].mean() > cells.data[truth == 0].mean() + 30  # bright cells: fluorescence-like
