"""The `mobilesam` command on small data with the reference checkpoint (random weights, official layout)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_mobilesam import Prompt
from napari_mobilesam.cli import main
from napari_mobilesam.engine.jobs import EmbedJob, EverythingJob
from napari_mobilesam.engine.labels import render_labels


def synthetic_stack(n: int = 3, size: int = 64, seed: int = 0) -> np.ndarray:
    """``(n, size, size)`` uint16 frames: bright disks (radius 6) on a dark, noisy background."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:size, :size]
    out = np.full((n, size, size), 200.0)
    for f in out:
        for r, c in rng.integers(10, size - 10, (3, 2)):
            f[(rr - r) ** 2 + (cc - c) ** 2 <= 36] = 1200.0
    return np.clip(out + rng.normal(0, 30, out.shape), 0, None).astype(np.uint16)


@pytest.fixture
def stack_path(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, synthetic_stack(), photometric="minisblack")
    return path


@pytest.fixture
def model_args(checkpoint):
    return ["--weights", str(checkpoint), "--device", "cpu", "-q"]


# random weights give noisy masks: keep every visible one so that the bookkeeping is tested
EVERYTHING = ["--sampler", "blobs", "--diameter", "12", "--max-det", "3", "--min-score", "-1", "--min-visible", "0"]
ENGINE_OPTIONS = dict(sampler="blobs", diameter=12.0, max_det=3, min_score=-1.0, min_visible=0.0)


def _count_calls(monkeypatch, cls) -> list:
    calls: list = []
    original = cls.__call__

    def counting(self, models, source, t, extra):
        calls.append(t)
        return original(self, models, source, t, extra)

    monkeypatch.setattr(cls, "__call__", counting)
    return calls


def test_help_reads_like_a_tool(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for word in ("usage: mobilesam COMMAND", "segment", "everything", "embed", "weights", "examples:"):
        assert word in out
    for cmd in ("embed", "segment", "everything", "weights"):
        with pytest.raises(SystemExit) as exit_info:
            main([cmd, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: mobilesam {cmd}" in capsys.readouterr().out


def interrupt_everything_at(monkeypatch, frame: int):
    """Ctrl+C (KeyboardInterrupt) when a *Segment everything* job reaches ``frame``; returns the
    job's own ``__call__`` (to put back with ``monkeypatch.setattr`` or ``monkeypatch.undo()``)."""
    original = EverythingJob.__call__

    def interrupted(self, models, source, t, extra):
        if t == frame:
            raise KeyboardInterrupt
        return original(self, models, source, t, extra)

    monkeypatch.setattr(EverythingJob, "__call__", interrupted)
    return original


@pytest.mark.slow
def test_everything_resumes_after_interruption(tmp_path, stack_path, model_args, predictor, monkeypatch, capsys):
    from napari_mobilesam.engine.everything import segment_everything

    # Ctrl+C while frame 1 is computed: exit 130, frame 0 kept on disk
    out = tmp_path / "labels.tif"
    original = interrupt_everything_at(monkeypatch, 1)
    assert main(["everything", str(stack_path), "-o", str(out), *EVERYTHING, *model_args]) == 130
    assert "resume" in capsys.readouterr().err
    partial = zarr.open_group(tmp_path / "labels.tif.partial.zarr", mode="r")
    assert list(partial["max_id"][:] >= 0) == [True, False, False] and not out.exists()

    # the rerun computes only frames 1 and 2
    monkeypatch.setattr(EverythingJob, "__call__", original)
    calls = _count_calls(monkeypatch, EverythingJob)
    assert main(["everything", str(stack_path), "-o", str(out), *EVERYTHING, *model_args]) == 0
    assert calls == [1, 2] and not (tmp_path / "labels.tif.partial.zarr").exists()
    labels = tifffile.imread(out)
    assert labels.shape == (3, 64, 64) and labels.dtype == np.uint32 and labels.any()
    # ... and the result equals the engine on the whole stack (ids unique across the stack)
    np.testing.assert_array_equal(labels, segment_everything(synthetic_stack(), predictor, **ENGINE_OPTIONS))
    calls.clear()
    assert main(["everything", str(stack_path), "-o", str(out), *EVERYTHING, *model_args]) == 0
    assert calls == []  # finished output: nothing to do


@pytest.mark.slow
def test_segment_and_embeddings(tmp_path, stack_path, model_args, predictor, monkeypatch, capsys):
    from test_io import _save_boxes, _save_points

    pts = _save_points(tmp_path / "p.csv", [[0, 20, 20], [0, 40, 44], [0, 38, 40]], label=[1, 1, 0])
    boxes = _save_boxes(tmp_path / "b.csv", [[[2, 10, 12], [2, 10, 40], [2, 30, 40], [2, 30, 12]]])
    out = tmp_path / "seg.zarr"
    assert main(["segment", str(stack_path), "--points", str(pts), "--boxes", str(boxes), "-o", str(out), *model_args]) == 0
    result = np.asarray(zarr.open_group(out, mode="r")["labels"])
    # the same prompts through the engine directly
    frames = synthetic_stack()
    predictor.set_image(frames[0], key=("cli-test", 0))
    # the widget's rule: a single click keeps the best of three masks, other prompts decode one
    objs = [predictor.predict_objects([Prompt(points=[[20, 20]])], multimask_output=True)[0],
            predictor.predict_objects([Prompt(points=[[40, 44], [38, 40]], labels=[1, 0])])[0]]
    np.testing.assert_array_equal(result[0], render_labels(objs, (64, 64), ids=[1, 2]))
    assert not result[1].any()  # no prompts in frame 1
    predictor.set_image(frames[2], key=("cli-test", 2))
    np.testing.assert_array_equal(result[2], render_labels(predictor.predict_objects([Prompt(box=[10, 12, 30, 40])]), (64, 64), ids=[3]))

    # embeddings: computed once, reused by segment with identical labels
    emb = tmp_path / "emb.zarr"
    assert main(["embed", str(stack_path), "-o", str(emb), *model_args]) == 0
    calls = _count_calls(monkeypatch, EmbedJob)
    assert main(["embed", str(stack_path), "-o", str(emb), *model_args]) == 0
    assert calls == []
    out2 = tmp_path / "seg2.tif"
    assert main(["segment", str(stack_path), "--points", str(pts), "--boxes", str(boxes), "-o", str(out2),
                 "--embeddings", str(emb), *model_args]) == 0
    np.testing.assert_array_equal(tifffile.imread(out2), result)
    # everything reuses the store too: the image encoder never runs
    from segment_anything import SamPredictor

    encodes = []
    original_set_image = SamPredictor.set_image
    monkeypatch.setattr(SamPredictor, "set_image", lambda self, *a, **k: encodes.append(1) or original_set_image(self, *a, **k))
    assert main(["everything", str(stack_path), "-o", str(tmp_path / "all.tif"), "--embeddings", str(emb), *EVERYTHING[:4],
                 "--max-det", "1", *model_args]) == 0
    assert encodes == [] and tifffile.imread(tmp_path / "all.tif").shape == (3, 64, 64)

    # a store made for another image is refused
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, synthetic_stack(seed=1), photometric="minisblack")
    capsys.readouterr()
    assert main(["segment", str(other), "--points", str(pts), "-o", str(tmp_path / "x.tif"), "--embeddings", str(emb), *model_args]) == 2
    err = capsys.readouterr().err
    assert "another image" in err and "Traceback" not in err


def test_channels_and_contrast_options(tmp_path, stack_path, model_args, predictor, capsys):
    """--contrast / --channels reach the model, are recorded in stores (a store made with another
    window is refused) and bad values are one-line errors."""
    import torch

    from test_io import _save_points

    emb = tmp_path / "c.zarr"
    assert main(["embed", str(stack_path), "-o", str(emb), "--contrast", "0", "2000", *model_args]) == 0
    frames = synthetic_stack()
    predictor.set_image(frames[1], contrast_limits=(0.0, 2000.0))
    from napari_mobilesam.engine.store import EmbeddingStore

    stored = EmbeddingStore.open(emb, "", "", mode="r", check=False).load(1).features
    assert torch.allclose(stored, predictor.cache.get(predictor.key).features.float(), atol=1e-5)
    pts = _save_points(tmp_path / "p.csv", [[1, 30, 30]])
    out = tmp_path / "s.tif"
    assert main(["segment", str(stack_path), "--points", str(pts), "-o", str(out), "--embeddings", str(emb), "--contrast", "0", "2000", *model_args]) == 0
    want = render_labels(predictor.predict_objects([Prompt(points=[[30, 30]])], multimask_output=True), (64, 64), ids=[1])
    np.testing.assert_array_equal(tifffile.imread(out)[1], want)
    capsys.readouterr()
    assert main(["segment", str(stack_path), "--points", str(pts), "-o", str(tmp_path / "t.tif"), "--embeddings", str(emb), *model_args]) == 2
    assert "preprocess" in capsys.readouterr().err
    for bad, msg in ((["--channels", "0"], "channel axis"), (["--contrast", "5", "5"], "LO < HI")):
        assert main(["embed", str(stack_path), "-o", str(tmp_path / "x.zarr"), *bad, *model_args]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err


def test_channel_axis(tmp_path, model_args, predictor, capsys):
    """A (T, C, H, W) stack with --channel-axis 1: one frame per time point, channels chosen with
    --channels; labels are (T, H, W)."""
    import torch

    from napari_mobilesam.engine.store import EmbeddingStore
    from test_io import _save_points

    stack = np.stack([synthetic_stack(2, seed=s) for s in (5, 6)], axis=1)  # T=2, C=2, 64 x 64
    path = tmp_path / "tc.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "TCYX"}, imagej=True)
    emb = tmp_path / "tc.zarr"
    assert main(["embed", str(path), "-o", str(emb), "--channel-axis", "1", "--channels", "1", *model_args]) == 0
    store = EmbeddingStore.open(emb, "", "", mode="r", check=False)
    assert store.n_frames == 2
    predictor.set_image(np.moveaxis(stack[1], 0, -1), channels=[1])  # time point 1, channel 1
    assert torch.allclose(store.load(1).features, predictor.cache.get(predictor.key).features.float(), atol=1e-5)
    pts = _save_points(tmp_path / "p.csv", [[1, 30, 30]])  # napari's points on a channel-split image: (T, Y, X)
    out = tmp_path / "l.tif"
    assert main(["segment", str(path), "--points", str(pts), "-o", str(out), "--channel-axis", "1", "--channels", "1",
                 "--embeddings", str(emb), *model_args]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (2, 64, 64) and not labels[0].any()
    want = render_labels(predictor.predict_objects([Prompt(points=[[30, 30]])], multimask_output=True), (64, 64), ids=[1])
    np.testing.assert_array_equal(labels[1], want)
    capsys.readouterr()
    assert main(["embed", str(path), "-o", str(tmp_path / "x.zarr"), "--channel-axis", "2", *model_args]) == 2
    assert "leading" in capsys.readouterr().err


def test_everything_tile_options(tmp_path, stack_path, model_args, capsys):
    out = tmp_path / "t.tif"
    assert main(["everything", str(stack_path), "-o", str(out), *EVERYTHING, "--tile", "64", "--tile-overlap", "16", *model_args]) == 0
    assert tifffile.imread(out).shape == (3, 64, 64)  # frames no larger than the tile: not tiled
    for bad, msg in ((["--tile", "32"], "at least 64"), (["--tile-overlap", "8"], "needs --tile"),
                     (["--tile", "128", "--embeddings", str(tmp_path / "e.zarr")], "whole-frame")):
        capsys.readouterr()
        assert main(["everything", str(stack_path), "-o", str(tmp_path / "x.tif"), *EVERYTHING, *bad, *model_args]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err


@pytest.mark.slow
def test_everything_folder_with_yolo_detector(tmp_path, model_args, monkeypatch):
    import imageio.v3 as iio

    from napari_mobilesam.model.detector import _import_yolo  # the guarded ultralytics import

    YOLO = _import_yolo()  # only to create a random detector file for the test

    monkeypatch.chdir(tmp_path)
    YOLO("yolov8n.yaml").save(tmp_path / "det.pt")
    folder = tmp_path / "wells"
    folder.mkdir()
    for i, frame in enumerate(synthetic_stack(2, seed=3)):
        iio.imwrite(folder / f"well{i}.png", (frame // 257).astype(np.uint8))
    out = tmp_path / "labels"
    assert main(["everything", str(folder), "-o", str(out), "--detector", str(tmp_path / "det.pt"), "--conf", "0", "--max-det", "3",
                 "--format", "zarr", *model_args]) == 0
    for i in range(2):
        labels = np.asarray(zarr.open_group(out / f"well{i}_labels.zarr", mode="r")["labels"])
        assert labels.shape == (64, 64) and labels.dtype == np.uint32


def test_weights_command(checkpoint, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("NAPARI_MOBILESAM_CACHE", str(tmp_path / "cache"))
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert "mobile_sam" in out and "vit_t_lm" in out and str(tmp_path / "cache") in out
    monkeypatch.setenv("NAPARI_MOBILESAM_WEIGHTS_MOBILE_SAM", str(checkpoint))
    assert main(["weights", "fetch", "mobile_sam", "-q"]) == 0
    assert str(checkpoint) in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "unreadable", "csv-columns", "outside", "weights-name", "offline", "no-detector", "options"])
def test_bad_input_one_line_exit_2(case, tmp_path, stack_path, model_args, monkeypatch, capsys):
    from test_io import _save_points

    image, extra, cmd = str(stack_path), [], "segment"
    pts = _save_points(tmp_path / "p.csv", [[0, 20, 20]])
    if case == "missing":
        image = str(tmp_path / "nope.tif")
    elif case == "unreadable":
        (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
        image = str(tmp_path / "bad.tif")
    elif case == "csv-columns":
        (tmp_path / "p.csv").write_text("x,y\n1,2\n")
    elif case == "outside":
        pts = _save_points(tmp_path / "p.csv", [[0, 20, 99]])
    elif case == "weights-name":
        model_args = ["--weights", "no_such_model", "-q"]
    elif case == "offline":  # nothing cached, no network: the registry explains how to pass a file
        monkeypatch.setenv("NAPARI_MOBILESAM_CACHE", str(tmp_path / "cache"))
        model_args = ["--weights", "mobile_sam", "-q"]
        import pooch

        def no_network(url, *a, **k):
            raise ConnectionError(f"no network for {url}")

        monkeypatch.setattr(pooch, "retrieve", no_network)
    elif case == "no-detector":
        cmd, extra = "everything", ["--sampler", "object-aware"]
    elif case == "options":
        cmd, extra = "everything", ["--sampler", "blobs", "--points-per-side", "4"]
    args = [cmd, image, "-o", str(tmp_path / "out.tif"), *extra, *model_args]
    if cmd == "segment":
        args += ["--points", str(pts)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mobilesam {cmd}: error:") and "Traceback" not in err
    if case == "offline":
        assert "--weights PATH" in err
    else:
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.tif").exists()


def test_min_snr_reaches_the_blobs_sampler(tmp_path, model_args, capsys):
    """--min-snr: on a frame of faint blobs in noise the default contrast cap (5x the noise) keeps
    none and says so; --min-snr 0 keeps them (the engine's option, one place)."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:96, :96]
    img = rng.normal(100, 10, (96, 96))
    for cy, cx in ((24, 24), (24, 70), (70, 48)):
        img += 6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2))  # fainter than the noise
    path = tmp_path / "faint.tif"
    tifffile.imwrite(path, img.astype(np.uint16))
    opts = ["--sampler", "blobs", "--diameter", "14", "--max-det", "5", "--min-score", "-1", "--min-visible", "0", "--min-area", "0"]
    assert main(["everything", str(path), "-o", str(tmp_path / "a.tif"), *opts, *model_args]) == 0
    assert "0 objects; " in capsys.readouterr().err and not tifffile.imread(tmp_path / "a.tif").any()
    assert main(["everything", str(path), "-o", str(tmp_path / "b.tif"), *opts, "--min-snr", "0", *model_args]) == 0
    assert tifffile.imread(tmp_path / "b.tif").any()


def test_weights_texts_align_and_cached_fetch_shows_no_empty_bar(checkpoint, monkeypatch, capsys, tmp_path):
    """Issue 24: the efficientvit_l2 row was one column off; fetching present weights printed a '0.00B' bar."""
    monkeypatch.setenv("NAPARI_MOBILESAM_CACHE", str(tmp_path / "cache"))
    assert main(["weights"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if "cached" in r]
    assert len(rows) >= 6 and len({r.index("cached") - (4 if "not cached" in r else 0) for r in rows}) == 1, rows
    monkeypatch.setenv("NAPARI_MOBILESAM_WEIGHTS_MOBILE_SAM", str(checkpoint))
    assert main(["weights", "fetch", "mobile_sam"]) == 0
    err = capsys.readouterr().err
    assert "0.00B" not in err and "B/s" not in err, err


def test_distill_progress_text(capsys):
    """'evaluate: evaluate:' became 'evaluate:'; frames an earlier run did are not counted in the rate."""
    from napari_mobilesam.distill_cli import _progress

    events = [{"stage": "evaluate", "done": d, "total": 4} for d in (1, 2)]
    _progress(iter(events), "evaluate")
    err = capsys.readouterr().err
    assert "evaluate: evaluate" not in err and "evaluate:" in err

    def resumed():  # 997 frames were stored by an earlier run; this one computes 3, 0.1 s each
        import time

        for d in (998, 999, 1000):
            time.sleep(0.1)
            yield {"stage": "precompute", "done": d, "total": 1000}

    _progress(resumed(), "distill")
    err = capsys.readouterr().err
    import re

    rates = [float(r) for r in re.findall(r"([\d.]+)frame/s", err.split("\r")[-1] + err.splitlines()[-1])]
    assert "distill: precompute" in err and rates and all(r < 100 for r in rates), err
