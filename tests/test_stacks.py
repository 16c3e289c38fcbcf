"""Everything mode over stacks with linking: engine, CLI (`--link`, `--tracks`) and their agreement.

Bookkeeping tests use the reference checkpoint (random weights: noisy masks, but the same in the
engine and the CLI); what linking reaches end to end is measured with the functional model in
test_stacks_e2e.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_mobilesam import segment_everything
from napari_mobilesam.cli import main
from napari_mobilesam.engine.everything import iter_segment_everything
from napari_mobilesam.engine.jobs import EverythingJob
from napari_mobilesam.engine.linkpass import axes_link
from napari_mobilesam.engine.tracks import ctc_tracks
from napari_mobilesam.testing.stacks import synthetic_timelapse, synthetic_volume
from test_cli import interrupt_everything_at  # noqa: E402

OPTIONS = dict(diameter=24.0, min_score=0.0, max_det=12)
CLI_OPTIONS = ["--sampler", "blobs", "--diameter", "24", "--min-score", "0", "--max-det", "12"]


@pytest.fixture(scope="module")
def movie():
    mov, gt, tracks = synthetic_timelapse(5, (96, 96), 5, seed=7, divide_at=2)
    return mov, gt, tracks


@pytest.fixture
def model_args(checkpoint):
    return ["--weights", str(checkpoint), "--device", "cpu", "-q"]


def linked_run(image, predictor, link, **kw):
    """(labels, links) of ``iter_segment_everything(link=...)``."""
    return linked_run_gen(iter_segment_everything(image, predictor, "blobs", rgb=False, link=link, **OPTIONS, **kw))


def test_axes_give_the_default_link():
    assert axes_link("ZYX", 1) == "3d" and axes_link("TYX", 1) == "time" and axes_link("TCYX", 1) == "time"
    assert axes_link("YX", 0) == axes_link("TZYX", 2) == axes_link("QYX", 1) == axes_link(None, 1) == "none"


@pytest.mark.slow
def test_engine_link_time_renumbers_into_tracks(movie, predictor):
    mov, _, _ = movie
    plain = segment_everything(mov, predictor, "blobs", rgb=False, **OPTIONS)
    lab, links = linked_run(mov, predictor, "time")
    assert links is not None and lab.shape == mov.shape
    # linking only renumbers the per-frame objects (and adds fill-ins/gap fills on background)
    assert np.all(lab[plain > 0] > 0)
    for t in range(len(mov)):
        for i in np.unique(plain[t])[1:]:
            assert len(np.unique(lab[t][plain[t] == i])) == 1
    ids = np.unique(lab)[1:]
    assert set(ids.tolist()) == set(links.tracks[:, 0].tolist())
    assert len(ids) <= len(np.unique(plain)[1:])
    for tid, first, last, _ in links.tracks:  # the table says where each id is
        frames = [t for t in range(len(mov)) if (lab[t] == tid).any()]
        assert frames[0] == first and frames[-1] == last


def test_engine_link_bad_arguments(movie, predictor):
    mov, _, _ = movie
    with pytest.raises(ValueError, match="link must be one of"):
        iter_segment_everything(mov, predictor, "blobs", rgb=False, link="4d")
    with pytest.raises(ValueError, match="one leading dimension"):
        iter_segment_everything(mov[None], predictor, "blobs", rgb=False, link="time")
    with pytest.raises(ValueError, match="drop out=False"):
        iter_segment_everything(mov, predictor, "blobs", rgb=False, link="3d", out=False)
    with pytest.raises(TypeError, match="Unknown link option"):
        iter_segment_everything(mov, predictor, "blobs", rgb=False, link="3d", link_options={"gap": 3})


@pytest.mark.slow
def test_existing_labels_are_kept(movie, predictor):
    mov, _, _ = movie
    existing = np.zeros(mov.shape, np.uint32)
    existing[:, :20, :20] = 5
    lab, links = linked_run(mov, predictor, "time", labels=existing)
    assert np.all(lab[:, :20, :20] == 5)
    assert links.tracks[:, 0].min() == 6  # ids continue after the existing ones


@pytest.mark.slow
def test_cli_link_time_and_tracks_equal_the_engine(tmp_path, movie, predictor, model_args):
    from ctc_metrics.scripts.evaluate import evaluate_sequence

    from napari_mobilesam.testing.stacks import write_ctc_gt

    mov, gt, tracks = movie
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, mov, imagej=True, metadata={"axes": "TYX"})
    out, res = tmp_path / "labels.tif", tmp_path / "res"
    assert main(["everything", str(path), "-o", str(out), "--tracks", str(res), *CLI_OPTIONS, *model_args]) == 0
    lab, links = linked_run(mov, predictor, "time")
    np.testing.assert_array_equal(tifffile.imread(out), lab)
    table = np.loadtxt(res / "res_track.txt", dtype=np.int64).reshape(-1, 4)
    np.testing.assert_array_equal(table, ctc_tracks(links)[0])
    assert sorted(p.name for p in res.glob("mask*.tif")) == [f"mask{t:03d}.tif" for t in range(len(mov))]
    m = evaluate_sequence(str(res), str(write_ctc_gt(tmp_path / "gt", gt, tracks)), metrics=["TRA", "DET", "LNK"], threads=1)
    assert 0 <= m["TRA"] <= 1 and 0 <= m["LNK"] <= 1  # a valid folder: CTC scores it (random weights: low)
    # GEFF
    assert main(["everything", str(path), "-o", str(tmp_path / "l2.tif"), "--link", "time", "--tracks", str(tmp_path / "t.geff"),
                 *CLI_OPTIONS, *model_args]) == 0
    assert (tmp_path / "t.geff").is_dir()


@pytest.mark.slow
def test_cli_link_3d_resumes_to_the_same_result(tmp_path, predictor, model_args, monkeypatch):
    vol, _ = synthetic_volume(4, (96, 96), 5, seed=3)
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, vol, photometric="minisblack")  # no axes: --link given
    out = tmp_path / "labels.tif"
    original = interrupt_everything_at(monkeypatch, 2)
    assert main(["everything", str(path), "-o", str(out), "--link", "3d", *CLI_OPTIONS, *model_args]) == 130
    assert not out.exists()
    monkeypatch.setattr(EverythingJob, "__call__", original)
    assert main(["everything", str(path), "-o", str(out), "--link", "3d", *CLI_OPTIONS, *model_args]) == 0
    lab, links = linked_run(vol, predictor, "3d")
    np.testing.assert_array_equal(tifffile.imread(out), lab)
    assert not links.parents


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--link", "3d", "--tracks", "res"], "--tracks needs --link time"),
    ],
)
def test_cli_link_errors(tmp_path, movie, model_args, capsys, extra, message, monkeypatch):
    mov, _, _ = movie
    tifffile.imwrite(tmp_path / "m.tif", mov, photometric="minisblack")
    monkeypatch.chdir(tmp_path)
    args = ["everything", "m.tif", *(["-o", "l.tif"] if "-o" not in extra else []), *extra, *CLI_OPTIONS, *model_args]
    assert main(args) == 2
    assert message in capsys.readouterr().err



@pytest.mark.slow
def test_cli_link_time_to_zarr(tmp_path, movie, predictor, model_args):
    """`-o OUT.zarr --link time`: built in OUT.partial.zarr, then the linked OUT.zarr (the labels of
    the engine, every frame marked done); --tracks from it; a second run finds it finished."""
    import zarr

    mov, _, _ = movie
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, mov, imagej=True, metadata={"axes": "TYX"})
    out, res = tmp_path / "labels.zarr", tmp_path / "res"
    args = ["everything", str(path), "-o", str(out), "--tracks", str(res), *CLI_OPTIONS, *model_args]
    assert main(args) == 0
    lab, links = linked_run(mov, predictor, "time")
    group = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(group["labels"][:], lab)
    assert (np.asarray(group["max_id"][:]) == lab.reshape(len(lab), -1).max(1)).all()
    assert not (tmp_path / "labels.zarr.partial.zarr").exists()
    np.testing.assert_array_equal(np.loadtxt(res / "res_track.txt", dtype=np.int64).reshape(-1, 4), ctc_tracks(links)[0])
    np.testing.assert_array_equal(tifffile.imread(res / "mask001.tif"), lab[1])
    assert main(args) == 0  # finished: nothing to do, the output kept
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["labels"][:], lab)


# the functional test model on a movie where it finds the cells and the division (richer tracks than random weights)
F_OPTIONS = ["--sampler", "blobs", "--diameter", "30", "--min-score", "0"]


@pytest.fixture(scope="module")
def cells():
    return synthetic_timelapse(4, (256, 256), 8, seed=6, divide_at=2)[0]  # the test model finds its division


@pytest.fixture
def fmodel_args(fcheckpoint):
    return ["--weights", str(fcheckpoint), "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def reference(cells, fpredictor):
    """``reference(link)`` -> (labels, links) of the engine in one process (computed once per mode)."""
    done: dict = {}

    def get(link: str):
        if link not in done:
            gen = iter_segment_everything(cells, fpredictor, "blobs", rgb=False, link=link, diameter=30.0, min_score=0.0)
            done[link] = linked_run_gen(gen)
        return done[link]

    return get


def linked_run_gen(gen):
    """(labels, links) of a running ``iter_segment_everything(link=...)``: its result and the last links it reported."""
    links = None
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value, links
        if p.links is not None:
            links = p.links

@pytest.mark.slow
@pytest.mark.parametrize("link", ["time", "3d"])
def test_cli_workers_equal_one_process(tmp_path, cells, reference, fmodel_args, link):
    """`--workers 2` (a local dask cluster): frames segmented in parallel, linked after in frame
    order: the labels and tracks of one process."""
    mov = cells
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, mov, photometric="minisblack")
    out, res = tmp_path / "labels.tif", tmp_path / "res"
    tracks = ["--tracks", str(res)] if link == "time" else []
    assert main(["everything", str(path), "-o", str(out), "--link", link, "--workers", "2", *tracks, *F_OPTIONS, *fmodel_args]) == 0
    lab, links = reference(link)
    np.testing.assert_array_equal(tifffile.imread(out), lab)
    if link == "time":
        np.testing.assert_array_equal(np.loadtxt(res / "res_track.txt", dtype=np.int64).reshape(-1, 4), ctc_tracks(links)[0])


@pytest.mark.slow
@pytest.mark.parametrize("where", ["frames", "link pass"])
def test_cli_link_time_resumes_to_the_same_tracks(tmp_path, cells, reference, fmodel_args, monkeypatch, where):
    """Ctrl+C while the frames are segmented, or during the link pass: the same command again gives
    the ids and tracks of an uninterrupted run."""
    from napari_mobilesam.engine import linkpass

    mov = cells
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, mov, imagej=True, metadata={"axes": "TYX"})
    out, res = tmp_path / "labels.tif", tmp_path / "res"
    args = ["everything", str(path), "-o", str(out), "--tracks", str(res), *F_OPTIONS, *fmodel_args]
    if where == "frames":
        interrupt_everything_at(monkeypatch, 3)
    else:
        real = linkpass.iter_link_stack

        def interrupted_pass(*a, **kw):
            gen = real(*a, **kw)
            yield next(gen)
            yield next(gen)
            raise KeyboardInterrupt

        monkeypatch.setattr(linkpass, "iter_link_stack", interrupted_pass)
    assert main(args) == 130
    assert not out.exists() and not res.exists()
    monkeypatch.undo()
    assert main(args) == 0
    lab, links = reference("time")
    np.testing.assert_array_equal(tifffile.imread(out), lab)
    np.testing.assert_array_equal(np.loadtxt(res / "res_track.txt", dtype=np.int64).reshape(-1, 4), ctc_tracks(links)[0])
    assert links.parents  # the division is in the tracks


def test_replay_everything_runs_of_a_session(tmp_path, movie, predictor):
    """engine.session.replay_everything: the recorded runs in order (one frame, then the stack linked)."""
    from napari_mobilesam.engine.session import SessionError, load_session, replay_everything, save_session

    mov, _, _ = movie
    one = {"sampler": "blobs", "options": {"diameter": 24.0, "min_score": 0.0, "max_det": 12}, "link": "none", "frames": [1]}
    runs = [{"overwrite": False}, {"everything": one}, {"everything": {**one, "link": "time", "frames": "all", "id_shift": 3}}]
    save_session(tmp_path / "s.mobilesam", image={"name": "movie", "shape": list(mov.shape)}, model={}, preprocess={}, runs=runs,
                 labels=np.zeros(mov.shape, np.uint32))
    got, links = replay_everything(load_session(tmp_path / "s.mobilesam"), mov, predictor)
    first = segment_everything(mov, predictor, "blobs", rgb=False, frames=[1], **OPTIONS)
    want, want_links = linked_run(mov, predictor, "time", labels=first)
    np.testing.assert_array_equal(got, np.where(want != first, want + 3, want))  # the widget's id shift
    np.testing.assert_array_equal(links.tracks[:, 0], want_links.tracks[:, 0] + 3)
    save_session(tmp_path / "e.mobilesam", image={}, model={}, preprocess={}, runs=runs[:1])
    with pytest.raises(SessionError, match="records no Segment everything run"):
        replay_everything(load_session(tmp_path / "e.mobilesam"), mov, predictor)
