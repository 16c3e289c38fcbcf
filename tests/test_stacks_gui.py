"""The widget's *link frames* control: the same labels and tracks as `mobilesam everything --link`.

Run under Xvfb: ``xvfb-run -a python -m pytest tests/test_stacks_gui.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_mobilesam.cli import main
from napari_mobilesam.testing.stacks import synthetic_timelapse
from test_prompt_equality import widget_with_model  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.slow]
TIMEOUT = 600_000


def _everything_all_frames(w, diameter: float, link: str | None = None):
    """*Segment everything* with blobs on every frame (and ``link`` if given), started: its section."""
    ev = w.everything
    ev.sampler.value = "blobs"
    ev.diameter.value = diameter
    ev.all_frames.value = True
    if link is not None:
        ev.link.value = link
    ev.run()
    return ev


def test_widget_link_time_equals_cli(qtbot, make_napari_viewer, sam, checkpoint, tmp_path):
    mov, _, _ = synthetic_timelapse(5, (96, 96), 5, seed=7, divide_at=2)
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, mov, imagej=True, metadata={"axes": "TYX"})
    res = tmp_path / "res"
    assert main(["everything", str(path), "-o", str(tmp_path / "l.tif"), "--tracks", str(res), "--sampler", "blobs",
                 "--diameter", "24", "--min-score", "0", "--weights", str(checkpoint), "--device", "cpu", "-q"]) == 0
    want = tifffile.imread(tmp_path / "l.tif")
    table = np.loadtxt(res / "res_track.txt", dtype=np.int64).reshape(-1, 4)

    viewer = make_napari_viewer()
    viewer.add_image(mov, name="movie", axis_labels=("t", "y", "x"), contrast_limits=(0, 255))
    w = widget_with_model(viewer, sam, checkpoint)
    try:
        assert w.everything.link.value == "auto"
        ev = _everything_all_frames(w, 24)
        qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
        labels = w.labels_layer()
        np.testing.assert_array_equal(labels.data, want)
        tracks = viewer.layers[f"{labels.name} tracks"]
        # the Tracks layer: the same ids as the labels, the lineage of res_track.txt
        assert set(np.unique(tracks.data[:, 0]).astype(int)) == set(np.unique(want)[1:].tolist())
        parents = {int(i): [int(p)] for i, _, _, p in table if p}
        assert {int(k): [int(x) for x in v] for k, v in tracks.graph.items()} == parents
        # a stack with two stack axes cannot be linked: a clear error, nothing written
        ev.link.value = "3d"
        with pytest.raises(ValueError, match="one stack axis"):
            ev.link_mode(viewer.layers["movie"], type("G", (), {"n_lead": 2})())
    finally:
        w.shutdown()


def test_widget_propagate_all_equals_cli(qtbot, make_napari_viewer, fsam, fcheckpoint, tmp_path):
    """*Propagate* with 'all labels of this frame' in a 1280x720 window: the labels of `mobilesam
    propagate` on the same input, a label of another frame kept, one Ctrl+Z undoes the run."""
    mov, gt, _ = synthetic_timelapse(4, (256, 256), 6, seed=11, divide_at=3)
    given = np.zeros(gt.shape, np.uint32)
    given[1] = gt[1]
    given[3, :12, :12] = 99  # the user's label on another frame: never painted over (no --overwrite)
    tifffile.imwrite(tmp_path / "m.tif", mov, photometric="minisblack")
    tifffile.imwrite(tmp_path / "l.tif", given, photometric="minisblack")
    assert main(["propagate", str(tmp_path / "m.tif"), "--labels", str(tmp_path / "l.tif"), "--from-frame", "1",
                 "-o", str(tmp_path / "out.tif"), "--weights", str(fcheckpoint), "--device", "cpu", "-q"]) == 0
    want = tifffile.imread(tmp_path / "out.tif")
    assert len(np.unique(want[0])) > 2 and len(np.unique(want[3])) > 2  # it went both ways
    assert (want[3, :12, :12] == 99).all()

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 720)
    viewer.add_image(mov, name="movie", axis_labels=("t", "y", "x"), contrast_limits=(0, 255))
    layer = viewer.add_labels(given.copy(), name="cells")
    w = widget_with_model(viewer, fsam, fcheckpoint)
    try:
        w.labels_box.value = layer
        viewer.dims.set_current_step(0, 1)
        w.propagate.all_labels.value = True
        w.propagate.run()
        qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
        assert w.status.value.startswith(f"Propagated {len(np.unique(gt[1])) - 1} of {len(np.unique(gt[1])) - 1} label(s) from frame 1 along t")
        np.testing.assert_array_equal(layer.data, want)
        layer.undo()
        np.testing.assert_array_equal(layer.data, given)
        viewer.dims.set_current_step(0, 2)
        with pytest.raises(ValueError, match="no labels to propagate"):
            w.propagate._run()
    finally:
        w.shutdown()


def test_session_records_link_and_replays(qtbot, make_napari_viewer, fsam, fcheckpoint, tmp_path):
    """A saved session records a linked *Segment everything* run; replaying it (engine) gives the
    widget's labels and tracks."""
    from napari_mobilesam import Predictor
    from napari_mobilesam.engine.session import everything_runs, load_session, replay_everything

    mov, _, _ = synthetic_timelapse(4, (256, 256), 8, seed=6, divide_at=2)  # the test model finds its division
    viewer = make_napari_viewer()
    viewer.add_image(mov, name="movie", axis_labels=("t", "y", "x"), contrast_limits=(0, 255))
    w = widget_with_model(viewer, fsam, fcheckpoint)
    try:
        _everything_all_frames(w, 30, link="time")
        qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
        labels = w.labels_layer()
        tracks = viewer.layers[f"{labels.name} tracks"]
        viewer.layers.selection = {labels}
        folder = tmp_path / "movie.mobilesam"
        assert viewer.layers.save(str(folder), selected=True, plugin="napari-mobilesam") == [str(folder)]
    finally:
        w.shutdown()
    session = load_session(folder)
    (run,) = everything_runs(session)
    assert (run["link"], run["sampler"], run["frames"]) == ("time", "blobs", "all")
    assert {int(k): v for k, v in run["parents"].items()} == {int(k): int(v[0]) for k, v in tracks.graph.items()}
    got, links = replay_everything(session, mov, Predictor(fsam))
    np.testing.assert_array_equal(got, labels.data)
    np.testing.assert_array_equal(links.centroids, tracks.data)
    assert links.parents == {int(k): int(v[0]) for k, v in tracks.graph.items()}
    assert links.parents and len(links.tracks) >= 8 and labels.data.max() == links.tracks[:, 0].max()


def test_cancel_during_linking_keeps_the_frames_unlinked(qtbot, make_napari_viewer, sam, checkpoint):
    """Cancel while the linked frames come in: every frame done keeps its per-frame labels (no mix
    of linked and per-frame ids), and no Tracks layer is made."""
    from napari_mobilesam import segment_everything

    mov, _, _ = synthetic_timelapse(5, (96, 96), 5, seed=7, divide_at=2)
    want = segment_everything(mov, sam, "blobs", rgb=False, diameter=24.0, min_score=0.0)
    viewer = make_napari_viewer()
    viewer.add_image(mov, name="movie", axis_labels=("t", "y", "x"), contrast_limits=(0, 255))
    w = widget_with_model(viewer, sam, checkpoint)
    try:
        _everything_all_frames(w, 24, link="time")
        seen: list = []
        w.state.worker.yielded.connect(lambda m: getattr(m, "linked", False) and not seen and (seen.append(m.index), w.cancel()))
        qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
        assert seen and w.status.value.startswith("Segment everything cancelled: 5 of 5 frames written")
        labels = w.labels_layer()
        np.testing.assert_array_equal(labels.data, want)
        assert f"{labels.name} tracks" not in viewer.layers
    finally:
        w.shutdown()
