"""Issue 24's poor inputs through the CLI: each gives one line naming the file, the row and the fix, exit 2,
before the model runs and without leaving output (no .partial.zarr)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_mobilesam.cli import main
from napari_mobilesam.testing import synthetic_stack


@pytest.fixture
def stack_path(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, synthetic_stack(n_frames=4, shape=(64, 64))[0], photometric="minisblack")  # (4, 64, 64)
    return path


@pytest.fixture
def model_args(checkpoint):
    return ["--weights", str(checkpoint), "--device", "cpu", "-q"]


def _segment(tmp_path, image, model_args, capsys, points=None, boxes=None):
    out = tmp_path / "out.tif"
    args = ["segment", str(image), "-o", str(out), *model_args]
    if points is not None:
        (tmp_path / "p.csv").write_bytes(points.encode("utf-8"))
        args += ["--points", str(tmp_path / "p.csv")]
    if boxes is not None:
        (tmp_path / "b.csv").write_bytes(boxes.encode("utf-8"))
        args += ["--boxes", str(tmp_path / "b.csv")]
    code = main(args)
    err = capsys.readouterr().err
    return code, err, out


_SHAPES = "index,shape-type,vertex-index,axis-0,axis-1,axis-2\n"


@pytest.mark.parametrize("case, expected", [
    ("label-cell", r"p.csv row 2 has 4 cells but the header has 5 \(label missing\)"),
    ("label-id-huge", r"p.csv row 2: label_id 99999999999 is outside 0..4294967295"),
    ("label-id-negative", r"p.csv row 2: label_id -5 is outside"),
    ("mask-9", r"p.csv row 2: mask 9 is outside 0..3"),
    ("frame-1.5", r"p.csv row 2: frame index 1.5 is not a whole number"),
    ("frame-3.6", r"p.csv row 2: frame index 3.6 is not a whole number"),
    ("box-two-frames", r"b.csv row 2 \(shape 0\): its vertices lie on frames 0, 1"),
])
def test_csv_mistakes_are_named_before_the_model_runs(case, expected, tmp_path, stack_path, model_args, capsys):
    points = boxes = None
    if case == "label-cell":
        points = "index,axis-0,axis-1,axis-2,label\n0,0,20,20\n"
    elif case.startswith("label-id") or case == "mask-9":
        col, value = ("mask", "9") if case == "mask-9" else ("label_id", "99999999999" if case.endswith("huge") else "-5")
        points = f"index,axis-0,axis-1,axis-2,{col}\n0,0,20,20,{value}\n"
    elif case.startswith("frame"):
        points = f"index,axis-0,axis-1,axis-2\n0,{case[6:]},20,20\n"
    else:
        boxes = _SHAPES + "".join(f"0,rectangle,{i},{t},{r},{c}\n" for i, (t, r, c) in
                                  enumerate([(0, 10, 10), (0, 10, 40), (1, 40, 40), (1, 40, 10)]))
    code, err, out = _segment(tmp_path, stack_path, model_args, capsys, points, boxes)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    import re

    assert re.search(expected, err), err
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


@pytest.mark.parametrize("case", ["no-index", "bom"])
def test_hand_written_and_excel_csv_are_read(case, tmp_path, stack_path, model_args, capsys):
    """A CSV as the README describes it (no napari index column) and one saved by Excel (UTF-8 BOM) work."""
    text = "axis-0,axis-1,axis-2\n0,20,20\n" if case == "no-index" else "\ufeffindex,axis-0,axis-1,axis-2\n0,0,20,20\n"
    code, err, out = _segment(tmp_path, stack_path, model_args, capsys, points=text)
    assert code == 0, err
    assert tifffile.imread(out)[0].any()


def test_damaged_and_oversized_images(tmp_path, model_args, capsys):
    """A truncated TIFF names the file and the fix; a TIFF declaring 200000² pixels is refused before any
    pixel is read or the model loads (exit 2, no output)."""
    good = tmp_path / "img.tif"
    tifffile.imwrite(good, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    data = good.read_bytes()
    (tmp_path / "trunc.tif").write_bytes(data[: len(data) // 2])
    points = "axis-0,axis-1\n20,20\n"
    code, err, out = _segment(tmp_path, tmp_path / "trunc.tif", model_args, capsys, points=points)
    assert code == 2 and "Cannot read frame 0 of" in err and "trunc.tif" in err and "truncated or damaged" in err, err
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))
    huge = tmp_path / "huge.tif"
    tifffile.imwrite(huge, shape=(200000, 200000), dtype=np.uint8, bigtiff=True)  # a sparse file: nothing on disk
    weights_that_would_fail = ["--weights", str(tmp_path / "no_such_weights.pt"), "--device", "cpu", "-q"]
    code, err, out = _segment(tmp_path, huge, weights_that_would_fail, capsys, points=points)
    assert code == 2 and "declares frames of 200000 x 200000 uint8 (37.3 GiB each)" in err, err
    huge.unlink()


@pytest.mark.parametrize("case", ["png-output", "min-visible"])
def test_everything_output_and_fraction_checks(case, tmp_path, model_args, capsys):
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    out = tmp_path / ("out.png" if case == "png-output" else "out.tif")
    extra = ["--min-visible", "2"] if case == "min-visible" else []
    if case == "min-visible":
        with pytest.raises(SystemExit) as ex:
            main(["everything", str(image), "-o", str(out), "--sampler", "blobs", *extra, *model_args])
        assert ex.value.code == 2 and "--min-visible: 2 is a fraction" in capsys.readouterr().err
    else:
        assert main(["everything", str(image), "-o", str(out), "--sampler", "blobs", *model_args]) == 2
        assert "give " + str(out.with_suffix(".tif")) in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("content", ["pickle", "text"])
def test_foreign_weights_file_one_line_without_torch_warning(content, tmp_path, capsys):
    """A plain pickle or a text file as --weights: one line, no torch 'please file an issue' warning before it."""
    import pickle

    weights = tmp_path / "w.pt"
    if content == "pickle":
        weights.write_bytes(pickle.dumps({"image_encoder.x": 1}, protocol=4))
    else:
        weights.write_text("hello")
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    (tmp_path / "p.csv").write_text("axis-0,axis-1\n5,5\n")
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "napari_mobilesam.cli", "segment", str(image), "--points", str(tmp_path / "p.csv"),
                          "-o", str(tmp_path / "out.tif"), "--weights", str(weights), "--device", "cpu", "-q"],
                         capture_output=True, text=True, timeout=300, check=False)  # a fresh process: warnings show as a user sees them
    err = res.stderr
    assert res.returncode == 2 and len(err.strip().splitlines()) == 1 and "Warning" not in err and "w.pt" in err, err


def test_click_on_a_1x1_image_says_the_object_came_out_empty(tmp_path, model_args, capsys):
    image = tmp_path / "one.tif"
    tifffile.imwrite(image, np.zeros((1, 1), np.uint8))
    code, err, out = _segment(tmp_path, image, model_args, capsys, points="axis-0,axis-1\n0,0\n")
    if tifffile.imread(out).any():
        pytest.skip("the random model painted the pixel")
    assert code == 0 and "one.tif: object 1 came out empty" in err, err


@pytest.mark.parametrize("top", [2**32 - 1, 2**40])
def test_refine_labels_without_room_for_a_new_id_are_refused_before_the_model_loads(top, tmp_path, stack_path, capsys):
    """``--refine`` labels holding the largest uint32 id (or more) plus a new point: one line, exit 2, and before
    the weights are read (an unreadable weights file would otherwise be the error)."""
    labels = np.zeros((4, 64, 64), np.uint64)
    labels[0, 5:15, 5:15] = top
    tifffile.imwrite(tmp_path / "old.tif", labels, photometric="minisblack")
    (tmp_path / "bad.pt").write_text("not weights")
    model_args = ["--refine", str(tmp_path / "old.tif"), "--weights", str(tmp_path / "bad.pt"), "--device", "cpu", "-q"]
    code, err, out = _segment(tmp_path, stack_path, model_args, capsys, points="index,axis-0,axis-1,axis-2\n0,0,40,40\n")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "old.tif: " in err and str(top) in err and "relabel" in err and "bad.pt" not in err, err
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


def test_a_store_made_otherwise_names_the_fix_segment_accepts(tmp_path, checkpoint, fcheckpoint, capsys):
    """``segment --embeddings`` with a store made with other weights, or another --contrast: the message gives
    ``mobilesam embed ... --overwrite`` or another store, never a bare --overwrite (segment has none for stores)."""
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, synthetic_stack(n_frames=1, shape=(64, 64))[0][0])
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1\n0,20,20\n")
    emb = tmp_path / "emb.zarr"
    assert main(["embed", str(img), "-o", str(emb), "--contrast", "0", "100", "--weights", str(checkpoint), "-q"]) == 0
    for weights, extra, what in ((fcheckpoint, ["--contrast", "0", "100"], "other model weights"),
                                (checkpoint, [], "with other pre-processing (--contrast, --channels) (preprocess")):
        capsys.readouterr()
        out = tmp_path / "out.tif"
        code = main(["segment", str(img), "--points", str(tmp_path / "p.csv"), "--embeddings", str(emb), "-o", str(out),
                     "--weights", str(weights), "--device", "cpu", "-q", *extra])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert what in err and f"mobilesam embed IMAGE -o {emb} --overwrite" in err and "another store" not in err, err
        assert "(or pass --overwrite)" not in err and "--embeddings a store" in err, err
        assert not out.exists()


@pytest.mark.slow
def test_nan_weights_on_a_dask_worker_print_only_the_message(tmp_path, checkpoint, capfd):
    """``--workers 1`` with NaN weights: the one-line message, without dask's "Compute Failed" block from the worker."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "nan.pt")
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, synthetic_stack(n_frames=1, shape=(64, 64))[0][0])
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1\n0,20,20\n")
    out = tmp_path / "out.tif"
    code = main(["segment", str(img), "--points", str(tmp_path / "p.csv"), "-o", str(out), "--weights", str(tmp_path / "nan.pt"),
                 "--device", "cpu", "--workers", "1", "-q"])
    err = capfd.readouterr().err  # the worker process writes to the same stderr
    assert code == 2 and "not finite numbers" in err, err
    assert "Compute Failed" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["--workers", "1"]])
def test_micro_sam_checkpoint_warning_is_one_line(tmp_path, checkpoint, workers):
    """The CLI, run as a user runs it: the micro-sam training checkpoint warning is its message alone, once, without
    the ``file:line: UserWarning:`` prefix and the source line Python prints under it (also from a dask worker)."""
    import subprocess
    import sys

    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({"model_state": {"sam." + k: v for k, v in state.items()}, "decoder_state": {"out_conv.bias": torch.zeros(2)}},
               tmp_path / "best.pt")
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, synthetic_stack(n_frames=1, shape=(64, 64))[0][0])
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1\n0,20,20\n")
    run = subprocess.run([sys.executable, "-m", "napari_mobilesam.cli", "segment", str(img), "--points", str(tmp_path / "p.csv"),
                          "-o", str(tmp_path / "out.tif"), "--weights", str(tmp_path / "best.pt"), "--device", "cpu", "-q", *workers],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if "decoder_state" in ln or ln.startswith(" ")]
    assert lines == ["warning: best.pt: micro-sam training checkpoint; its SAM weights (model_state) are used, its decoder_state "
                     "(micro-sam's instance-segmentation decoder) is not."], run.stderr


def test_many_clicks_on_one_frame_show_progress_per_batch_of_objects(tmp_path, checkpoint, predictor, capsys):
    """``mobilesam segment`` with 72 clicks on one frame: the bar counts objects, batch by batch (32 per decoder pass
    on a CPU, Predictor.batch_size), not one frame at the end; the labels are those of decoding all objects at once."""
    import re

    from napari_mobilesam.engine.decode import decode_objects
    from napari_mobilesam.engine.labels import render_labels
    from napari_mobilesam.engine.objects import Prompt
    from napari_mobilesam.engine.prompts import ObjectPrompt

    img = synthetic_stack(n_frames=1, shape=(64, 64))[0][0]
    tifffile.imwrite(tmp_path / "img.tif", img)
    clicks = [(3 + 7 * (i // 8), 3 + 7 * (i % 8)) for i in range(72)]
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1\n" + "".join(f"{i},{r},{c}\n" for i, (r, c) in enumerate(clicks)))
    out = tmp_path / "out.tif"
    assert main(["segment", str(tmp_path / "img.tif"), "--points", str(tmp_path / "p.csv"), "-o", str(out),
                 "--weights", str(checkpoint), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    counts = [int(n) for n in re.findall(r"\b(\d+)/72 \[", err)]
    assert {32, 64, 72} <= set(counts) and "object" in err, err
    # per-batch decoding changes no pixel: the same labels as one decode_objects call for all 72 objects
    predictor.set_image(img)
    objects = [ObjectPrompt((), Prompt(points=[rc], labels=[1]), i + 1, [], []) for i, rc in enumerate(clicks)]
    want = render_labels(decode_objects(predictor, objects), (64, 64), ids=list(range(1, 73)))
    assert len(np.unique(want)) > 10
    np.testing.assert_array_equal(tifffile.imread(out), want)
