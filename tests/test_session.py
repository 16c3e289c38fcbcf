"""Sessions (issue 13): save from napari, replay with ``mobilesam segment --session``, reopen and go on.

As a user runs it: annotate in the widget, File > Save Selected Layers... > "MobileSAM session" (the
npe2 writer), replay the folder on the command line, open it again in napari (the npe2 reader), press
Segment, add a prompt, save again. Run under Xvfb: ``xvfb-run -a python -m pytest tests/test_session.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_mobilesam.cli import main  # noqa: E402
from napari_mobilesam.testing import synthetic_stack  # noqa: E402
from napari_mobilesam.testing.metrics import interior_point  # noqa: E402
from test_prompt_equality import _cells, widget_with_model  # noqa: E402

pytestmark = pytest.mark.gui
TIMEOUT = 300_000


def _segment(qtbot, w):
    w.all_frames.value = True
    w.segment()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)


def _save(viewer, w, folder):
    viewer.layers.selection = {w.labels_box.value, w.points_box.value, w.shapes_box.value}
    return viewer.layers.save(str(folder), selected=True, plugin="napari-mobilesam")


def test_session_round_trip(qtbot, make_napari_viewer, fsam, fcheckpoint, sam, checkpoint, tmp_path, capsys):
    stack, gt = synthetic_stack(n_frames=2, shape=(128, 128), n=6, seed=41)
    tif = tmp_path / "movie.tif"
    tifffile.imwrite(tif, stack, photometric="minisblack")
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="movie")
    w = widget_with_model(viewer, fsam, fcheckpoint)
    a, b = _cells(gt[0], 2)
    c = _cells(gt[1], 1)[0]
    w.points_box.value.add(np.array([[0, *interior_point(gt[0] == a)], [1, *interior_point(gt[1] == c)]]))
    r, q = np.nonzero(gt[0] == b)
    w.shapes_box.value.add_rectangles(np.array([[0, r.min(), q.min()], [0, r.min(), q.max()], [0, r.max(), q.max()], [0, r.max(), q.min()]], float))
    _segment(qtbot, w)
    labels = np.asarray(w.labels_box.value.data).copy()
    assert labels[0].any() and set(np.unique(labels)) <= {0, 1, 2, 3}

    # save: napari-native files and one JSON
    folder = tmp_path / "run1.mobilesam"
    assert _save(viewer, w, folder) == [str(folder)]
    assert sorted(p.name for p in folder.iterdir()) == ["boxes.csv", "labels.tif", "points.csv", "session.json"]
    meta = json.loads((folder / "session.json").read_text())
    assert meta["model"]["model_hash"] and meta["shape_ids"] == [1] and meta["image"]["shape"] == [2, 128, 128]
    np.testing.assert_array_equal(tifffile.imread(folder / "labels.tif"), labels)

    # replay on the command line: identical labels
    out = tmp_path / "replay.tif"
    model = ["--weights", str(fcheckpoint), "--device", "cpu", "-q"]
    assert main(["segment", str(tif), "--session", str(folder), "-o", str(out), *model]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), labels)
    # other weights, or another image: refused with a message
    assert main(["segment", str(tif), "--session", str(folder), "-o", str(tmp_path / "x.tif"), "--weights", str(checkpoint), "-q"]) == 2
    assert "made with other weights" in capsys.readouterr().err
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, np.ascontiguousarray(stack[:, ::-1]), photometric="minisblack")
    assert main(["segment", str(other), "--session", str(folder), "-o", str(tmp_path / "y.tif"), *model]) == 2
    assert "made on another image" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists() and not (tmp_path / "y.tif").exists()

    # reopen in a new napari: the widget picks the session's layers; Segment changes nothing
    viewer2 = make_napari_viewer()
    viewer2.add_image(stack, name="movie")
    w2 = widget_with_model(viewer2, fsam, fcheckpoint)
    opened = viewer2.open(str(folder), plugin="napari-mobilesam")
    assert {layer._type_string for layer in opened} == {"labels", "points", "shapes"}
    assert w2.labels_box.value is next(la for la in opened if la._type_string == "labels")
    assert w2.points_box.value is next(la for la in opened if la._type_string == "points")
    _segment(qtbot, w2)
    np.testing.assert_array_equal(w2.labels_box.value.data, labels)
    # resume: one more click, a new id after the session's, saved again and replayed; a cell clear of
    # every label (8 px around it), whose mask still reaches the older object 3 (see the end of this test)
    d = min(_cells(gt[1], 20), key=lambda i: int((labels[1][ndi.binary_dilation(gt[1] == i, iterations=8)] > 0).sum()))
    w2.points_box.value.add(np.array([[1, *interior_point(gt[1] == d)]]))
    _segment(qtbot, w2)
    resumed = np.asarray(w2.labels_box.value.data).copy()
    assert w2.points_box.value.features["label_id"].tolist() == [2, 3, 4]  # after the session's ids (box 1, clicks 2, 3)
    assert np.array_equal(resumed[labels > 0], labels[labels > 0]) and set(np.unique(resumed)) <= {0, 1, 2, 3, 4}
    assert _save(viewer2, w2, folder) == [str(folder)]

    # the widget refuses to write into the session's labels with other weights
    w2.set_model(sam, (str(checkpoint), "cpu"))
    w2.model_file.value = str(checkpoint)
    w2.points_box.value.add(np.array([[0, 5.0, 5.0]]))
    before = np.asarray(w2.labels_box.value.data).copy()
    _segment(qtbot, w2)
    assert "made with other weights" in w2.status.value
    np.testing.assert_array_equal(w2.labels_box.value.data, before)

    # the resumed session replayed headless gives the widget's labels
    assert main(["segment", str(tif), "--session", str(folder), "-o", str(tmp_path / "replay2.tif"), *model]) == 0
    replay2 = tifffile.imread(tmp_path / "replay2.tif")
    assert "differs from the session's labels" not in capsys.readouterr().err
    # the widget wrote object 3 in the first Segment and object 4 in the resumed one (4 filled only
    # background); the replay paints write by write, so the older object keeps the overlap (issue 24:
    # it drew the smaller mask on top, 34 px differed)
    assert int(((replay2 == 4) & (resumed == 3)).sum()) == 0, "the replay drew the later object 4 over object 3"
    assert int((replay2 != resumed).sum()) == 0
    meta = json.loads((folder / "session.json").read_text())
    assert meta["version"] == 2
    assert {k: (v["generation"], v["overwrite"]) for k, v in meta["objects"].items()} == {
        "1": (0, False), "2": (0, False), "3": (1, False), "4": (2, False)}  # frame 0's write, frame 1's, the resumed one


def test_session_files_are_checked_and_saved_atomically(tmp_path):
    from napari_mobilesam.engine.session import SessionError, load_session, save_session

    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    with pytest.raises(SessionError, match="is not a MobileSAM session; pick a new folder"):
        save_session(mine, image={}, model={}, preprocess={}, labels=np.zeros((4, 4), np.uint32))
    assert (mine / "notes.txt").read_text() == "my notes"  # a folder the user made is never replaced
    s = save_session(tmp_path / "a.mobilesam", image={"name": "x"}, model={}, preprocess={}, labels=np.ones((4, 4), np.uint32),
                     points=np.array([[1.0, 2.0]]), point_features={"label": [1], "label_id": [3]})
    again = load_session(s)
    assert again.points.tolist() == [[1.0, 2.0]] and again.point_features["label_id"] == [3] and again.labels.sum() == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mobilesam", "results"]  # no temporary folder left
    (s / "session.json").write_text("{not json")
    with pytest.raises(SessionError, match="session.json cannot be read"):
        load_session(s)
    with pytest.raises(SessionError, match="not a MobileSAM session"):
        load_session(mine)


@pytest.mark.parametrize("change, named", [
    ({"image": "movie.tif"}, "'image' is str, not dict"),
    ({"shape_ids": "1,2"}, "'shape_ids' is str, not list"),
    ({"shape_ids": [1.5]}, "'shape_ids' holds values that are not whole numbers"),
    ({"runs": {}}, "'runs' is dict, not list"),
    ({"version": "one"}, "'version' is not a whole number"),
    ({"image": {"shape": "4x4"}}, "'image.shape' is not a list"),
    ({"objects": []}, "'objects' is list, not dict"),
    ({"objects": {"1": {"generation": "first"}}}, "'objects' holds a 'generation' that is not a whole number >= 0"),
])
def test_session_json_with_wrong_types_is_named(tmp_path, change, named):
    """Issue 24: a hand-edited session.json gave an AttributeError traceback."""
    from napari_mobilesam.engine.session import SessionError, load_session, save_session

    s = save_session(tmp_path / "a.mobilesam", image={"name": "x", "shape": [1, 4]}, model={}, preprocess={},
                     shapes=[np.array([[0, 0], [0, 2], [1, 2], [1, 0]], float)], shape_ids=[1], labels=np.ones((1, 4), np.uint32))
    meta = json.loads((s / "session.json").read_text())
    meta.update(change)
    (s / "session.json").write_text(json.dumps(meta))
    with pytest.raises(SessionError, match="is damaged: " + named.replace("(", r"\(")) as err:
        load_session(s)
    assert "Save the session again" in str(err.value)


def test_truncated_labels_tif_in_a_session_is_reported(tmp_path):
    """Issue 24: tifffile reads a truncated 3-page labels.tif as one (H, W) page, silently."""
    from napari_mobilesam.engine.session import SessionError, load_session, save_session

    labels = np.arange(3 * 64 * 64, dtype=np.uint32).reshape(3, 64, 64) % 7
    s = save_session(tmp_path / "a.mobilesam", image={"name": "x", "shape": [3, 64, 64]}, model={}, preprocess={}, labels=labels)
    assert load_session(s).labels.shape == (3, 64, 64)
    tif = s / "labels.tif"
    tif.write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])
    with pytest.raises(SessionError, match=r"labels.tif holds labels of shape \(64, 64\), but the session's image is \(3, 64, 64\): the file is damaged"):
        load_session(s)


def test_session_folders_open_with_this_reader_without_asking(tmp_path, monkeypatch):
    """Issue 24 item 5: napari offers its builtins reader for every folder, so *File > Open Folder*
    on a session asked "Choose reader". The plugin's activation makes it the preferred reader for
    ``*.mobilesam`` folders (napari's own lookup says so), and keeps a choice the user made."""
    import napari.plugins.utils as nu
    from napari.settings import NapariSettings

    from napari_mobilesam.engine.session import save_session
    from napari_mobilesam.gui.session import prefer_session_reader

    settings = NapariSettings(config_path=None)
    monkeypatch.setattr(nu, "get_settings", lambda: settings)
    folder = save_session(tmp_path / "work.mobilesam", image={"name": "x"}, model={}, preprocess={}, labels=np.ones((4, 4), np.uint32))
    other = tmp_path / "plain"
    other.mkdir()
    assert nu.get_preferred_reader(str(folder)) is None  # what napari had: ask
    assert prefer_session_reader(settings) is True
    assert nu.get_preferred_reader(str(folder)) == "napari-mobilesam"
    assert nu.get_preferred_reader(str(other)) is None  # other folders are not ours
    assert prefer_session_reader(settings) is False  # once
    settings.plugins.extension2reader = {"*.mobilesam/": "napari"}  # the user's choice stays
    assert prefer_session_reader(settings) is False
    assert nu.get_preferred_reader(str(folder)) == "napari"


def test_save_dialog_without_the_suffix_adds_it(make_napari_viewer, tmp_path):
    """Issue 24 item 5: a session saved from File > Save Selected Layers... to a name without
    ``.mobilesam`` (the dialog passes our writer) is written to ``NAME.mobilesam``."""
    from napari.plugins import _npe2

    from napari_mobilesam.engine.session import load_session

    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.eye(8, dtype=np.uint32), name="img labels")
    points = viewer.add_points(np.array([[2.0, 3.0]]), name="img points")
    viewer.layers.selection = {labels, points}
    _, writers = _npe2.file_extensions_string_for_layers([labels, points])
    ours = next(w for w in writers if w.plugin_name == "napari-mobilesam")
    saved = viewer.layers.save(str(tmp_path / "work"), selected=True, _writer=ours)  # as napari's save dialog calls it
    assert saved == [str(tmp_path / "work.mobilesam")]
    s = load_session(tmp_path / "work.mobilesam")
    np.testing.assert_array_equal(s.labels, np.eye(8))
    assert s.points.tolist() == [[2.0, 3.0]]


def test_version_1_session_resumed_replays_its_objects_as_one_write(qtbot, make_napari_viewer, fsam, fcheckpoint, tmp_path):
    """A session saved before writes were recorded (version 1): resumed, its objects count as one first
    write (generation 0), a new Segment is the next, and the session saved again replays as the widget wrote."""
    stack, gt = synthetic_stack(n_frames=1, shape=(128, 128), n=10, seed=41)
    image, cells = stack[0], gt[0]
    tif = tmp_path / "cells.tif"
    tifffile.imwrite(tif, image, photometric="minisblack")
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    w = widget_with_model(viewer, fsam, fcheckpoint)
    a, b, c = _cells(cells, 3)
    w.points_box.value.add(np.array([interior_point(cells == a), interior_point(cells == b)]))
    _segment(qtbot, w)
    folder = tmp_path / "old.mobilesam"
    assert _save(viewer, w, folder) == [str(folder)]
    meta = json.loads((folder / "session.json").read_text())
    meta["version"] = 1  # as version 1 wrote it
    for rec in meta["objects"].values():
        del rec["generation"], rec["overwrite"]
    (folder / "session.json").write_text(json.dumps(meta))

    viewer2 = make_napari_viewer()
    viewer2.add_image(image, name="cells")
    w2 = widget_with_model(viewer2, fsam, fcheckpoint)
    viewer2.open(str(folder), plugin="napari-mobilesam")
    w2.points_box.value.add(np.array([interior_point(cells == c)]))
    _segment(qtbot, w2)
    resumed = np.asarray(w2.labels_box.value.data).copy()
    assert set(np.unique(resumed)) == {0, 1, 2, 3}
    assert _save(viewer2, w2, folder) == [str(folder)]
    meta = json.loads((folder / "session.json").read_text())
    assert meta["version"] == 2 and {k: v["generation"] for k, v in meta["objects"].items()} == {"1": 0, "2": 0, "3": 1}
    out = tmp_path / "replay.tif"
    assert main(["segment", str(tif), "--session", str(folder), "-o", str(out), "--weights", str(fcheckpoint), "--device", "cpu", "-q"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), resumed)
