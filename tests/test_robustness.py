"""Issue 16: files that cannot be silently corrupted, one writer per output, inputs never lost.

Each test reproduces a case found by trying the CLI and the API as a hostile user would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_mobilesam.cli import main
from napari_mobilesam.engine.io import InputError, LabelWriter
from napari_mobilesam.engine.labelfile import OutputLock
from napari_mobilesam.engine.objects import Prompt
from test_cli import EVERYTHING, synthetic_stack


@pytest.fixture
def model_args(checkpoint):
    return ["--weights", str(checkpoint), "--device", "cpu", "-q"]


@pytest.fixture
def stack_path(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, synthetic_stack(), photometric="minisblack")
    return path


def _chunk_files(array_dir: Path) -> list[Path]:
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())


def _frame_chunk(array_dir: Path, t: int) -> Path:
    """The chunk file of frame ``t`` (one chunk per frame; zarr v3 layout c/t/0/0)."""
    (hit,) = [p for p in _chunk_files(array_dir) if p.relative_to(array_dir / "c").parts[0] == str(t)]
    return hit


# --------------------------------------------------------------------------------- 2: two writers, one output
def test_two_concurrent_runs_on_one_output(tmp_path, stack_path, checkpoint):
    """Two `mobilesam everything` runs on one output, started 0.3 s apart: one writes it, the other is refused
    (exit 2, naming the writer); the output equals a run on its own."""
    import time

    out = tmp_path / "out.tif"
    cmd = [sys.executable, "-m", "napari_mobilesam.cli", "everything", str(stack_path), "-o", str(out), *EVERYTHING,
           "--weights", str(checkpoint), "--device", "cpu", "-q"]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    second = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    runs = [(p, p.communicate(timeout=600)[1]) for p in (first, second)]
    codes = sorted(p.returncode for p, _ in runs)
    assert codes == [0, 2], [e for _, e in runs]
    (winner, _), (loser_err,) = [r for r in runs if r[0].returncode == 0][0], [e for p, e in runs if p.returncode == 2]
    assert f"pid {winner.pid}" in loser_err and "being written by another run" in loser_err
    assert not (tmp_path / "out.tif.lock").exists()
    alone = tmp_path / "alone.tif"
    assert main(["everything", str(stack_path), "-o", str(alone), *EVERYTHING, "--weights", str(checkpoint), "--device", "cpu", "-q"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(alone))


def test_stale_lock_is_taken_over_and_a_live_one_refused(tmp_path):
    out = tmp_path / "o.tif"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "o.tif.lock"
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "earlier"}))
    w = LabelWriter(out, (2,), (4, 5), {"a": 1})  # the dead run's lock is replaced
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    w.close()
    assert not lock.exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "started": "now", "command": "mobilesam x"}))
        with pytest.raises(InputError, match=rf"pid {live.pid} on {socket.gethostname()}.*mobilesam x"):
            OutputLock(out).acquire()
    finally:
        live.kill()
        live.wait()


# ------------------------------------------------------------------------------ 3: damaged label output
@pytest.mark.parametrize("damage", ["delete", "garbage"])
def test_damaged_partial_frame_is_found_and_recomputed(tmp_path, damage):
    out = tmp_path / "out.tif"
    w = LabelWriter(out, (3,), (8, 9), {"a": 1})
    frames = [np.full((8, 9), t + 1, np.uint32) for t in range(3)]
    for t in range(2):
        w.write(t, frames[t])
    w.close()  # interrupted after two frames
    chunk = _frame_chunk(tmp_path / "out.tif.partial.zarr" / "labels", 1)
    chunk.unlink() if damage == "delete" else chunk.write_bytes(b"\x00garbage\xff" * 8)
    w = LabelWriter(out, (3,), (8, 9), {"a": 1})
    assert w.repaired == [1] and w.todo() == [1, 2]
    for t in w.todo():
        w.write(t, frames[t])
    w.finish()
    np.testing.assert_array_equal(tifffile.imread(out), np.stack(frames))


def test_frame_damaged_before_assembly_is_not_assembled(tmp_path):
    out = tmp_path / "out.tif"
    w = LabelWriter(out, (2,), (8, 9), {"a": 1})
    w.write(0, np.ones((8, 9), np.uint32))
    w.write(1, np.ones((8, 9), np.uint32))
    _frame_chunk(tmp_path / "out.tif.partial.zarr" / "labels", 0).unlink()
    with pytest.raises(InputError, match="Frame 0 .* failed its checksum.*run the same command again"):
        w.finish()
    assert not out.exists() and w.todo() == [0]


def test_everything_zarr_output_with_a_deleted_chunk_is_repaired(tmp_path, stack_path, model_args, capsys):
    out = tmp_path / "out.zarr"
    args = ["everything", str(stack_path), "-o", str(out), *EVERYTHING, *model_args[:-1]]  # not quiet: the repair is reported
    assert main(args) == 0
    first = np.asarray(zarr.open_group(out, mode="r")["labels"][:])
    assert first[1].any()
    _frame_chunk(out / "labels", 1).unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "failed their checksum" in capsys.readouterr().err
    again = np.asarray(zarr.open_group(out, mode="r")["labels"][:])
    # the recomputed frame gets back the ids it had: the repaired output equals the clean run (issue 24)
    np.testing.assert_array_equal(again, first)


def test_a_frame_damaged_before_assembly_gets_its_ids_back_in_the_next_run(tmp_path):
    """Frames numbered one after another (as `everything` does): frame 1, damaged and recomputed in a new run after
    frame 2 was finished, is numbered as before; a recomputation with more objects than before goes after every id."""
    out = tmp_path / "out.tif"
    own = [np.array([[1, 2, 3, 0]], np.uint32), np.array([[1, 2, 0, 0]], np.uint32), np.array([[1, 0, 0, 4]], np.uint32)]
    w = LabelWriter(out, (3,), (1, 4), {"a": 1})
    for t, lab in enumerate(own):
        w.write(t, np.where(lab > 0, lab + w.offset(t, int(lab.max())), 0))
    _frame_chunk(tmp_path / "out.tif.partial.zarr" / "labels", 1).unlink()
    with pytest.raises(InputError, match="Frame 1 .* failed its checksum"):
        w.finish()
    w.close()
    w = LabelWriter(out, (3,), (1, 4), {"a": 1})  # the same command again
    assert w.todo() == [1]
    assert w.offset(1, 3) == 9  # 3 objects do not fit in ids 4..5: after every id of the stack (9)
    w.write(1, np.where(own[1] > 0, own[1] + w.offset(1, 2), 0))
    w.finish()
    np.testing.assert_array_equal(tifffile.imread(out), [[[1, 2, 3, 0]], [[4, 5, 0, 0]], [[6, 0, 0, 9]]])


def test_overwrite_starts_again_on_a_damaged_output_of_ours(tmp_path):
    out = tmp_path / "out.tif"
    w = LabelWriter(out, (2,), (8, 9), {"a": 1})
    w.write(0, np.ones((8, 9), np.uint32))
    w.close()
    (tmp_path / "out.tif.partial.zarr" / "zarr.json").unlink()
    with pytest.raises(InputError, match="damaged.*--overwrite"):
        LabelWriter(out, (2,), (8, 9), {"a": 1})
    w = LabelWriter(out, (2,), (8, 9), {"a": 1}, overwrite=True)
    assert w.todo() == [0, 1]
    w.close()
    foreign = tmp_path / "theirs.zarr"
    zarr.open_group(foreign, mode="w").create_array("x", shape=(2,), dtype="uint8")
    with pytest.raises(InputError, match="not written by mobilesam"):
        LabelWriter(foreign, (2,), (8, 9), {"a": 1}, overwrite=True)
    assert (foreign / "x").is_dir()


# ------------------------------------------------------------------------------ 6: input given as output
def test_input_given_as_output_is_never_removed(tmp_path, stack_path, model_args, capsys):
    labels = tmp_path / "labels.tif"
    assert main(["everything", str(stack_path), "-o", str(labels), *EVERYTHING, *model_args]) == 0
    before = labels.read_bytes()
    capsys.readouterr()
    assert main(["everything", str(labels), "-o", str(labels), "--overwrite", *EVERYTHING, *model_args]) == 2
    assert "also an input" in capsys.readouterr().err
    assert labels.read_bytes() == before


# -------------------------------------------------------------------- poor: a failed load leaves no output
def test_failed_model_load_leaves_no_partial_output(tmp_path, stack_path, checkpoint, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    out = tmp_path / "out.tif"
    assert main(["everything", str(stack_path), "-o", str(out), *EVERYTHING, "--weights", str(bad), "-q"]) == 2
    assert not (tmp_path / "out.tif.partial.zarr").exists() and not (tmp_path / "out.tif.lock").exists()
    # the corrected rerun is not refused
    assert main(["everything", str(stack_path), "-o", str(out), *EVERYTHING, "--weights", str(checkpoint), "-q"]) == 0


# ----------------------------------------------------------------------- 4, 5: embedding stores checked per frame
@pytest.fixture(scope="module")
def embedded(tmp_path_factory, checkpoint):
    folder = tmp_path_factory.mktemp("emb")
    stack = folder / "stack.tif"
    tifffile.imwrite(stack, synthetic_stack(), photometric="minisblack")
    assert main(["embed", str(stack), "-o", str(folder / "emb.zarr"), "--weights", str(checkpoint), "-q"]) == 0
    return stack, folder / "emb.zarr"


@pytest.mark.parametrize("damage", ["delete", "garbage"])
def test_damaged_embedding_is_refused_then_recomputed(tmp_path, embedded, model_args, capsys, damage):
    stack, original = embedded
    emb = tmp_path / "emb.zarr"
    shutil.copytree(original, emb)
    chunk = _frame_chunk(emb / "features", 1)
    chunk.unlink() if damage == "delete" else chunk.write_bytes(b"\x28\xb5\x2f\xfdgarbage")
    pts = tmp_path / "p.csv"
    pts.write_text("index,axis-0,axis-1,axis-2\n0,1,20,20\n")
    capsys.readouterr()
    assert main(["segment", str(stack), "--points", str(pts), "-o", str(tmp_path / "s.tif"), "--embeddings", str(emb), *model_args]) == 2
    err = capsys.readouterr().err
    assert "Frame 1's embedding" in err and str(emb) in err and "mobilesam embed" in err and "Traceback" not in err
    assert main(["embed", str(stack), "-o", str(emb), *model_args[:-1]]) == 0  # writable: recomputed (not quiet: reported)
    assert "failed their checksum" in capsys.readouterr().err
    a, b = zarr.open_group(emb, mode="r"), zarr.open_group(original, mode="r")
    np.testing.assert_array_equal(np.asarray(a["features"][1]), np.asarray(b["features"][1]))


def test_store_of_an_image_differing_in_a_middle_frame_is_refused(tmp_path, embedded, model_args, capsys):
    stack, emb = embedded
    other = synthetic_stack()
    other[1, 30:34, 30:34] += 500  # first and last frames identical
    other_path = tmp_path / "other.tif"
    tifffile.imwrite(other_path, other, photometric="minisblack")
    pts = tmp_path / "p.csv"
    pts.write_text("index,axis-0,axis-1,axis-2\n0,1,20,20\n")
    capsys.readouterr()
    assert main(["segment", str(other_path), "--points", str(pts), "-o", str(tmp_path / "s.tif"), "--embeddings", str(emb), *model_args]) == 2
    assert "Frame 1 of this image differs" in capsys.readouterr().err


# ------------------------------------------------------------------- 8: prompts checked at the API
def test_prompts_outside_the_frame_or_with_bad_labels_raise(predictor):
    from napari_mobilesam import Prompt

    predictor.set_image(np.zeros((200, 300), np.uint8), key=("robustness", 0))
    with pytest.raises(ValueError, match=r"position \(1e\+09, 1e\+09\) is outside the 200 x 300 frame"):
        predictor.predict_objects([Prompt(points=[[1e9, 1e9]])])
    with pytest.raises(ValueError, match=r"Prompt 1: .*\(-3, 5\) is outside"):
        predictor.predict_objects([Prompt(points=[[5, 5]]), Prompt(points=[[-3, 5]])])
    with pytest.raises(ValueError, match=r"Point \(x, y\) = \(5000, -100\).*200 x 300"):
        predictor.predict(point_coords=[[5000, -100]], point_labels=[1])
    with pytest.raises(ValueError, match="point labels must be 1 .* or 0 .*, got 7, -5"):
        predictor.predict_objects([Prompt(points=[[5, 5], [6, 6]], labels=[7, -5])])
    with pytest.raises(ValueError, match="got 7"):
        predictor.predict(point_coords=[[5, 5]], point_labels=[7])
    with pytest.raises(ValueError, match=r"box \(10, 20, 10, 40\) has zero size"):
        predictor.predict_objects([Prompt(box=[10, 20, 10, 40])])
    with pytest.raises(ValueError, match="has zero size"):
        predictor.predict(box=[20, 10, 20, 10])
    with pytest.raises(ValueError, match="outside the 200 x 300 frame"):
        predictor.predict_objects([Prompt(box=[300, 400, 350, 450])])
    assert len(predictor.predict_objects([Prompt(points=[[199, 299]]), Prompt(box=[-5, -5, 20, 20])])) == 2  # edges are fine


def test_cli_prompt_messages_say_not_a_number_and_print_plain_numbers(tmp_path, stack_path, model_args, capsys):
    pts = tmp_path / "p.csv"
    pts.write_text("index,axis-0,axis-1,axis-2\n0,0,20,nan\n")
    out = str(tmp_path / "o.tif")
    assert main(["segment", str(stack_path), "--points", str(pts), "-o", out, *model_args]) == 2
    err = capsys.readouterr().err
    assert "p.csv row 2: point at row 20, col nan in frame 0: not a number" in err and "np.float64" not in err
    pts.write_text("index,axis-0,axis-1,axis-2\n0,0,20.25,99\n")
    assert main(["segment", str(stack_path), "--points", str(pts), "-o", out, *model_args]) == 2
    err = capsys.readouterr().err
    assert "p.csv row 2: point at row 20.25, col 99 in frame 0: outside the 64 x 64 frame" in err and "np.float64" not in err
    boxes = tmp_path / "b.csv"  # a rectangle of zero size, as napari saves one
    boxes.write_text("index,shape-type,vertex-index,axis-0,axis-1,axis-2\n" + "".join(f"0,rectangle,{i},0,10,12\n" for i in range(4)))
    assert main(["segment", str(stack_path), "--boxes", str(boxes), "-o", out, *model_args]) == 2
    assert "has zero size" in capsys.readouterr().err


# ----------------------------------------------------------------- 7: channels given explicitly
def test_segment_everything_with_an_explicit_channel_axis(predictor):
    from napari_mobilesam import segment_everything

    img = np.random.default_rng(0).random((64, 64, 5)).astype(np.float32)
    opts = dict(diameter=12.0, max_det=3, min_score=-1.0, min_visible=0.0)
    with pytest.raises(ValueError, match=r"ambiguous: 64 frames of 64 x 5 pixels, or one 64 x 64 frame\(s\) with 5 channels.*channel_axis=-1"):
        segment_everything(img, predictor, "blobs", **opts)
    last = segment_everything(img, predictor, "blobs", channel_axis=-1, **opts)
    assert last.shape == (64, 64)
    first = segment_everything(np.ascontiguousarray(np.moveaxis(img, -1, 0)), predictor, "blobs", channel_axis=0, **opts)
    np.testing.assert_array_equal(first, last)
    np.testing.assert_array_equal(segment_everything(img, predictor, "blobs", rgb=True, channels=[0, 1, 2], **opts), last)
    stack = segment_everything(np.stack([np.moveaxis(img, -1, 0)] * 2), predictor, "blobs", channel_axis=1, **opts)
    assert stack.shape == (2, 64, 64) and np.array_equal(stack[0], last)


def test_planar_five_channel_tiff_and_channel_axis_of_the_file(tmp_path):
    from napari_mobilesam.engine.image import preprocess_options
    from napari_mobilesam.engine.io import open_image, with_channel_axis

    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.zeros((5, 32, 40), np.uint16), planarconfig="separate", photometric="minisblack")
    assert open_image(path).shape == (5, 32, 40)  # 5 frames, as napari shows planar pages
    src = with_channel_axis(open_image(path), 0)
    assert src.shape == (32, 40, 5) and src.frame_ndim == 3 and src.read(0).shape == (32, 40, 5)
    with pytest.raises(ValueError, match="The frames have 5 channels"):
        preprocess_options(None, None, src.frame_shape)
    assert with_channel_axis(open_image(path), -3) == src
    import zarr as z

    hwc = tmp_path / "hwc.zarr"
    z.open_array(hwc, mode="w", shape=(32, 40, 5), dtype="uint8")[:] = 1
    src = with_channel_axis(open_image(hwc), -1)
    assert src.frame_ndim == 3 and src.frame_shape == (32, 40, 5) and src.n_frames == 1


def test_embed_and_segment_a_planar_five_channel_tiff(tmp_path, model_args, predictor):
    """``mobilesam embed/segment`` on a (5, H, W) planar TIFF with --channel-axis 0 --channels: the frames' 5
    channels are last, as everything mode reads them (before: "no obvious channel axis", exit 2)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 4000, (5, 48, 56)).astype(np.uint16)
    path = tmp_path / "planar5.tif"
    tifffile.imwrite(path, img, planarconfig="separate", photometric="minisblack")
    assert main(["embed", str(path), "-o", str(tmp_path / "e.zarr"), "--channel-axis", "0", "--channels", "0", "1", "2", *model_args]) == 0
    pts = tmp_path / "p.csv"
    pts.write_text("index,axis-0,axis-1\n0,20,30\n")
    out = tmp_path / "l.tif"
    assert main(["segment", str(path), "--points", str(pts), "-o", str(out), "--channel-axis", "0", "--channels", "0", "1", "2", *model_args]) == 0
    predictor.set_image(np.moveaxis(img, 0, -1), channel_axis=-1, channels=[0, 1, 2])
    want = predictor.predict_objects([Prompt(points=[[20, 30]])], multimask_output=True)[0]
    got = tifffile.imread(out)
    assert got.shape == (48, 56) and np.array_equal(got > 0, want.full())


def test_api_argument_errors_name_the_fix(predictor):
    """Issue 24: raw library errors (reshape, AttributeError, IndexError) for wrong API arguments became one
    sentence each that names the argument and a correct call."""
    import torch

    from napari_mobilesam import Predictor, build_mobilesam
    from napari_mobilesam.engine.predictor import Prompt

    with pytest.raises(ValueError, match=r"\(row, col\) pairs.*shape \(3,\)"):
        Prompt(points=[10, 10, 10])
    with pytest.raises(TypeError, match="registry name.*got int 42"):
        build_mobilesam(42)
    with pytest.raises(TypeError, match=r"Predictor takes a loaded model, got str.*build_mobilesam"):
        Predictor("mobile_sam")
    for image in (np.zeros((4, 64, 64), np.uint8), torch.zeros(3, 64, 64)):
        with pytest.raises(ValueError, match=r"ambiguous.*channel_axis=0"):
            predictor.set_image(image)
    predictor.set_image(np.zeros((64, 64), np.uint8))
    with pytest.raises(TypeError, match=r"takes Prompt objects, got list \[128, 128\] at position 0"):
        predictor.predict_objects([[128, 128]])
    with pytest.raises(ValueError, match=r"mask_input must be a 1 x 256 x 256 array.*tuple of shape \(2,\)"):
        predictor.predict(point_coords=[[10, 10]], point_labels=[1], mask_input=(64, 64))
