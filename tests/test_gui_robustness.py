"""Issue 16 in the widget (run under Xvfb): channel axis, detector trust, per-frame checks of embedding stores.

Each test reproduces what the widget did wrong before: it read an ``(H, W, 5)`` image as 48 frames of
48 x 5 pixels with no way to say otherwise, had no trust option (and no safe-load message naming one),
and used a store's embedding for a frame of another image, or failed on a damaged one.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_mobilesam.engine.predictor import Prompt  # noqa: E402
from test_gui import TIMEOUT, agree, capture_errors, expected, make_widget, run  # noqa: E402,F401 (make_widget: a fixture)

pytestmark = pytest.mark.gui


def _blobs(shape, seed=0) -> np.ndarray:
    """Float frames with a few bright disks, ``shape`` = (..., H, W) spatial last."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[-2], : shape[-1]]
    out = rng.normal(100, 10, shape).astype(np.float32)
    for r, c in ((12, 14), (28, 34), (14, 38)):
        out[..., (rr - r) ** 2 + (cc - c) ** 2 <= 25] += 400
    return out


# ------------------------------------------------------------------------------------ 1: channel axis
def test_channel_last_image_is_ambiguous_until_the_channel_axis_is_set(qtbot, make_widget, predictor, monkeypatch):
    from napari_mobilesam.engine.everything import segment_everything

    image = np.ascontiguousarray(np.moveaxis(_blobs((5, 40, 48)), 0, -1))  # (40, 48, 5) float
    errors = capture_errors(monkeypatch)
    viewer, w, layer = make_widget(image)
    assert list(w.channel_axis.box.choices) == [None, "frames", 0, 2]  # axis 1 (the rows) cannot hold channels
    ev = w.everything
    ev.sampler.value = "blobs"
    run(qtbot, w, ev.run)  # auto: both readings named, nothing written
    msg = errors[-1].message
    assert "ambiguous" in msg and "48 x 5 pixels" in msg and "5 channels" in msg and "'channel axis'" in msg, msg
    assert w.labels_box.value is None
    w.channel_axis.box.value = 2
    assert w.labels_box.value is None and w.points_box.value is not None
    run(qtbot, w, ev.run)
    labels = w.labels_box.value
    assert labels.data.shape == (40, 48), labels.data.shape
    want = segment_everything(image, predictor, sampler="blobs", channel_axis=-1, min_score=0.0, polarity="bright",
                              contrast_limits=tuple(layer.contrast_limits))
    assert want.max() > 0 and agree(labels.data, want) > 0.999
    # "none (frames)": the old reading, asked for explicitly
    w.channel_axis.box.value = "frames"
    assert w.context()[1].lead_shape == (40,)


def test_planar_channels_with_a_box_prompt(qtbot, make_widget, predictor):
    planar = _blobs((5, 40, 48), seed=1)  # (C, H, W): napari shows a slider over the 5 channels
    viewer, w, layer = make_widget(planar)
    shapes = w.shapes_box.value
    assert shapes.ndim == 3  # made for 'auto': a stack of 5 frames
    w.channel_axis.box.value = 0
    viewer.dims.set_current_step(0, 3)
    shapes.add_rectangles(np.array([[3, 6, 8], [3, 6, 20], [3, 19, 20], [3, 19, 8]], float))  # on channel 3's slice
    run(qtbot, w)
    labels = w.labels_box.value
    assert labels.data.shape == (40, 48)  # the labels have no channel axis
    frame = np.moveaxis(planar, 0, -1)  # all channels of the one frame (the first three as R, G, B)
    want = expected(predictor, frame, [(Prompt(box=[6, 8, 19, 20]), False, "best", 1)], (40, 48),
                    channel_axis=-1, contrast_limits=tuple(layer.contrast_limits))
    assert want.any() and agree(labels.data, want) > 0.999


# ------------------------------------------------------------------------------------ 2: detector trust
class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_detector_runs_no_code_unless_trusted(qtbot, make_widget, monkeypatch, tmp_path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"model": _Evil(marker)}, evil)  # pickling runs nothing; unpickling would run `touch`
    errors = capture_errors(monkeypatch)
    viewer, w, _ = make_widget(_blobs((40, 48)))
    ev = w.everything
    ev.sampler.value = "object-aware"
    ev.detector.value = str(evil)
    assert ev.button.enabled and not ev.trust.native.isHidden() and not ev.trust.value  # shown with object-aware
    run(qtbot, w, ev.run)
    msg = str(errors[-1].exception)
    assert "run any code" in msg and "trust file (runs code)" in msg and "onnx" in msg, msg
    assert not marker.exists()
    assert w.labels_box.value is None or not w.labels_box.value.data.any()
    ev.trust.value = True  # the one gate: now the file is fully unpickled, and its code runs
    run(qtbot, w, ev.run)
    assert marker.exists()
    assert "not a YOLO checkpoint" in str(errors[-1].exception)


# ------------------------------------------------------------------------------------ 3: stores checked per frame
@pytest.fixture(scope="module")
def embedded(tmp_path_factory, checkpoint):
    """A (3, 48, 64) uint16 stack and its store from `mobilesam embed` (per-frame hashes and checksums)."""
    import tifffile

    from napari_mobilesam.cli import main

    folder = tmp_path_factory.mktemp("gui_emb")
    stack = np.clip(_blobs((3, 48, 64), seed=2) * 5, 0, None).astype(np.uint16)
    tifffile.imwrite(folder / "stack.tif", stack, photometric="minisblack")
    assert main(["embed", str(folder / "stack.tif"), "-o", str(folder / "emb.zarr"), "--weights", str(checkpoint), "--device", "cpu", "-q"]) == 0
    return stack, folder / "emb.zarr"


def _segment_box(qtbot, make_widget, sam, image, store, t) -> tuple:
    """A box on frame ``t`` of a new widget using ``store``: (the widget, frame t's labels, encoder runs)."""
    viewer, w, _ = make_widget(image)
    w.embeddings.value = str(store)
    viewer.dims.set_current_step(0, t)
    encoded = []
    hook = sam.image_encoder.register_forward_hook(lambda *a: encoded.append(1))
    try:
        w.shapes_box.value.add_rectangles(np.array([[t, 8, 10], [t, 8, 40], [t, 32, 40], [t, 32, 10]], float))
        run(qtbot, w)
    finally:
        hook.remove()
    labels = w.labels_box.value
    return w, (None if labels is None else labels.data[t]), len(encoded)


BOX = [(Prompt(box=[8, 10, 32, 40]), False, "best", 1)]


def test_store_frame_of_another_image_is_refused(qtbot, make_widget, sam, predictor, embedded, monkeypatch):
    stack, store = embedded
    other = stack.copy()
    other[1, 20:24, 20:24] += 500  # first and last frames identical: the store opens
    errors = capture_errors(monkeypatch)
    w, got, encoded = _segment_box(qtbot, make_widget, sam, other, store, 0)
    assert encoded == 0 and got.any()  # frame 0 is the same: read from the store (the CLI's and the widget's hashes agree)
    w, got, encoded = _segment_box(qtbot, make_widget, sam, other, store, 1)
    assert errors and "Frame 1 of this image differs" in str(errors[-1].exception), errors
    assert got is None or not got.any()


def test_damaged_store_embedding_is_computed_again_or_refused(qtbot, make_widget, sam, predictor, embedded, tmp_path, monkeypatch):
    from napari_mobilesam.engine.store import EmbeddingStore

    stack, original = embedded
    store = tmp_path / "emb.zarr"
    shutil.copytree(original, store)
    chunks = store / "features" / "c"
    shutil.rmtree(chunks / "2")  # frame 2's features are gone: zarr would read zeros
    errors = capture_errors(monkeypatch)
    w, got, encoded = _segment_box(qtbot, make_widget, sam, stack, store, 2)
    assert not errors and encoded == 1 and w.state.store.repaired == [2]
    assert agree(got, expected(predictor, stack[2], BOX, stack.shape[1:])) > 0.999  # what `mobilesam embed` computes
    fixed = EmbeddingStore.open(store, "", "", mode="r", check=False).load(2, frame=stack[2])  # checksum and frame hash pass
    ref = EmbeddingStore.open(original, "", "", mode="r", check=False).load(2, frame=stack[2])
    assert torch.allclose(fixed.features, ref.features, atol=1e-4)  # written back as `mobilesam embed` wrote it
    # a store the widget cannot write: refused, not used
    w, _, _ = _segment_box(qtbot, make_widget, sam, stack, store, 1)  # links the store (frame 1 is intact)
    w.state.store.writable = False  # as for a store on a read-only share (root could write through chmod)
    shutil.rmtree(chunks / "0")
    w.shapes_box.value.add_rectangles(np.array([[0, 8, 10], [0, 8, 40], [0, 32, 40], [0, 32, 10]], float))
    w.viewer.dims.set_current_step(0, 0)
    run(qtbot, w)
    msg = str(errors[-1].exception)
    assert "Frame 0's embedding" in msg and "read-only" in msg, msg
    assert not w.labels_box.value.data[0].any()


def test_store_of_a_planar_tiff_from_the_command_line_serves_the_channel_axis(qtbot, make_widget, sam, predictor, checkpoint, tmp_path):
    """`mobilesam embed --channel-axis 0` reads a planar (3, H, W) TIFF as one colour frame; the widget, told that axis 0 holds
    channels, sees the same frame: the store's fingerprint and frame hash match, and the encoder never runs."""
    import tifffile

    from napari_mobilesam.cli import main

    planar = np.clip(_blobs((3, 40, 48), seed=3) * 5, 0, None).astype(np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", planar, planarconfig="separate", photometric="minisblack")
    store = tmp_path / "emb.zarr"
    assert main(["embed", str(tmp_path / "planar.tif"), "-o", str(store), "--channel-axis", "0", "--weights", str(checkpoint), "--device", "cpu", "-q"]) == 0
    viewer, w, layer = make_widget(tifffile.imread(tmp_path / "planar.tif"))
    assert layer.data.shape == (3, 40, 48)
    w.channel_axis.box.value = 0
    w.embeddings.value = str(store)
    encoded = []
    hook = sam.image_encoder.register_forward_hook(lambda *a: encoded.append(1))
    try:
        w.shapes_box.value.add_rectangles(np.array([[0, 6, 8], [0, 6, 20], [0, 19, 20], [0, 19, 8]], float))
        run(qtbot, w)
    finally:
        hook.remove()
    assert encoded == [], w.status.value
    want = expected(predictor, np.moveaxis(planar, 0, -1), [(Prompt(box=[6, 8, 19, 20]), False, "best", 1)], (40, 48), channel_axis=-1)
    assert want.any() and agree(w.labels_box.value.data, want) > 0.999


# issue 16, poor case: a box overlapping the frame by less than 1 pixel: the engine's one rule (clip_box)
def test_box_overlapping_by_less_than_a_pixel_is_skipped(qtbot, make_widget, predictor, monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 48), dtype=np.uint8)
    errors = capture_errors(monkeypatch)
    viewer, w, _ = make_widget(image)
    shapes = w.shapes_box.value
    shapes.add_rectangles(np.array([[-5, 10], [-5, 30], [0.2, 30], [0.2, 10]], float))  # 0.2 px inside after clipping
    shapes.add_rectangles(np.array([[8, 10], [8, 40], [32, 40], [32, 10]], float))
    run(qtbot, w)
    assert not errors, [e.message for e in errors]
    assert "less than 1 pixel" in w.status.value, w.status.value
    want = expected(predictor, image, [(Prompt(box=[8, 10, 32, 40]), False, "best", 1)], image.shape)
    assert agree(w.labels_box.value.data, want) > 0.999
