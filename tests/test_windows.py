"""Issue 24 item 9: clicks and boxes on frames much larger than 1024 px are decoded in full-resolution
windows around them (engine/windows.py), by the widget and ``mobilesam segment`` alike."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_mobilesam.engine.objects import ObjectMask, Prompt
from napari_mobilesam.engine.windows import MARGIN, choose_window, frame_logits, is_large, prompt_extent


def _iou(m: ObjectMask, truth: np.ndarray) -> float:
    a = m.full()
    return float((a & truth).sum() / max(1, (a | truth).sum()))


@pytest.fixture(scope="module")
def large_frame():
    """A 3072² frame: a 1024² synthetic-cells frame repeated 3 x 3, with the centre copy's labels, and
    the cells whose click lies well inside the centre (so that all share the window (1024, 1024, 2048, 2048))."""
    from napari_mobilesam.testing.metrics import interior_point
    from napari_mobilesam.testing.synthetic import synthetic_cells

    img, lab = synthetic_cells((1024, 1024), n=60, seed=5, radius=(12, 30))
    big = np.tile(img, (3, 3))
    labels = np.zeros(big.shape, np.int32)
    labels[1024:2048, 1024:2048] = lab
    clicks = {}
    for c in np.unique(lab)[1:]:
        p = interior_point(labels == c)
        if (labels == c).sum() > 400 and all(1024 + 320 <= v <= 2048 - 320 for v in p):
            clicks[int(c)] = p
    return big, labels, clicks


def test_which_frames_and_which_window():
    assert not is_large((2048, 2048)) and is_large((2049, 100)) and not is_large((4096, 4096), img_size=2048)
    hw = (4096, 4096)
    for point in ([0, 0], [700, 3000], [2047, 2049], [4095, 1023]):
        ext = prompt_extent(Prompt(points=[point]))
        r0, c0, r1, c1 = choose_window(ext, hw)
        assert (r1 - r0, c1 - c0) == (1024, 1024)
        # the click is at least a quarter window from every inner edge (frame edges do not cut)
        gaps = [point[0] - r0 if r0 else 1e9, point[1] - c0 if c0 else 1e9, r1 - 1 - point[0] if r1 < 4096 else 1e9,
                c1 - 1 - point[1] if c1 < 4096 else 1e9]
        assert min(gaps) >= MARGIN * 1024, (point, (r0, c0, r1, c1))
    # a box too large for any grid window keeps a margin too: a window centred on it, twice its size
    box = choose_window(prompt_extent(Prompt(box=[1000, 1000, 1700, 1500])), hw)
    assert box == (649, 549, 2051, 1951)  # 1402 = 2 x 701 rows, centred on (1350, 1250)
    # points far apart: one window around all of them, clipped to the frame (here: the whole frame)
    assert choose_window(prompt_extent(Prompt(points=[[10, 10], [10, 3000]], labels=[1, 0])), hw) == (0, 0, 4096, 4096)


def test_frame_logits_match_the_whole_frame_mask_input():
    """A windowed mask's ``low_res_logits`` are those of its full-frame mask (propagate's ``mask_to_logits``)."""
    mask = np.zeros((3000, 2000), bool)
    mask[1200:1500, 700:900] = True
    m = ObjectMask(mask[1200:1500, 700:900], (1200, 700), (3000, 2000), 1.0, 1.0, 0, np.zeros((256, 256), np.float32))
    input_size = (1024, round(2000 * 1024 / 3000))
    got = frame_logits(m, input_size) > 0
    # the same reduction done on the whole frame: resize like the image, pad to 1024², reduce to 256²
    import torch
    import torch.nn.functional as F

    t = F.interpolate(torch.as_tensor(mask, dtype=torch.float32)[None, None], input_size, mode="area")
    t = F.pad(t, (0, 1024 - input_size[1], 0, 1024 - input_size[0]))
    want = F.interpolate(t, (256, 256), mode="area")[0, 0].numpy() > 0.5
    from scipy.ndimage import binary_dilation

    # equal up to one low-resolution pixel along the outline (the crop's grid is rounded outwards)
    assert want.sum() > 400 and (got & want).sum() >= 0.9 * want.sum()
    assert not (got & ~binary_dilation(want)).any() and not (want & ~binary_dilation(got)).any()


def test_small_frames_are_decoded_as_before(fpredictor):
    """Below twice the encoder size nothing changes: windows=True gives the whole-frame masks, bit for bit."""
    from napari_mobilesam.testing.synthetic import synthetic_cells

    img, _ = synthetic_cells((1100, 900), n=10, seed=2)
    fpredictor.set_image(img, key=("windows-small", 0))
    assert fpredictor.pixels is None  # nothing kept for a frame this size
    prompts = [Prompt(points=[[300, 200]]), Prompt(box=[500, 400, 620, 560]), Prompt(points=[[800, 700], [810, 720]], labels=[1, 0])]
    plain = fpredictor.predict_objects(prompts)
    windowed = fpredictor.predict_objects(prompts, windows=True)
    for a, b in zip(plain, windowed, strict=True):
        assert b.window is None and a.offset == b.offset and a.score == b.score
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.low_res_logits, b.low_res_logits)


@pytest.mark.slow
def test_clicks_on_a_large_frame_fit_their_cells(fpredictor, large_frame):
    """The issue's 4096² click gave a mask with 30 % on the cell. On a 3072² frame (shrunk 3x by the
    encoder) the whole-frame path misses small cells; decoded in a full-resolution window they fit."""
    big, labels, clicks = large_frame
    assert len(clicks) >= 5
    fpredictor.set_image(big, key=("windows-large", 0))
    prompts = [Prompt(points=[p]) for p in clicks.values()]
    whole = fpredictor.predict_objects(prompts, multimask_output=True)
    windowed = fpredictor.predict_objects(prompts, multimask_output=True, windows=True)
    iou_whole = [_iou(m, labels == c) for m, c in zip(whole, clicks, strict=True)]
    iou_win = [_iou(m, labels == c) for m, c in zip(windowed, clicks, strict=True)]
    assert all(m.window == (1024, 1024, 2048, 2048) and m.shape == big.shape for m in windowed)
    assert np.mean(iou_win) >= np.mean(iou_whole) + 0.2, (iou_whole, iou_win)
    assert np.median(iou_win) >= 0.7, iou_win
    # the window's embedding is cached with the frame's: a second decode encodes nothing
    n = len(fpredictor.cache)
    again = fpredictor.predict_objects(prompts[:1], multimask_output=True, windows=True)
    assert len(fpredictor.cache) == n
    np.testing.assert_array_equal(again[0].mask, windowed[0].mask)


@pytest.mark.slow
def test_mobilesam_segment_decodes_large_frames_in_windows(fpredictor, fcheckpoint, large_frame, tmp_path, capsys):
    """``mobilesam segment`` (with and without an embeddings store) gives the engine's windowed masks."""
    from napari_mobilesam.cli import main
    from napari_mobilesam.engine.labels import render_labels
    from test_io import _save_points

    big, labels, clicks = large_frame
    c, p = next(iter(clicks.items()))
    tifffile.imwrite(tmp_path / "big.tif", big)
    pts = _save_points(tmp_path / "p.csv", [p])
    args = ["--weights", str(fcheckpoint), "--device", "cpu", "-q"]
    assert main(["segment", str(tmp_path / "big.tif"), "--points", str(pts), "-o", str(tmp_path / "out.tif"), *args]) == 0
    got = tifffile.imread(tmp_path / "out.tif")
    fpredictor.set_image(big, key=("windows-large", 0))
    want = render_labels(fpredictor.predict_objects([Prompt(points=[p])], multimask_output=True, windows=True), big.shape, ids=[1])
    np.testing.assert_array_equal(got, want)
    assert ((got == 1) & (labels == c)).sum() / ((got == 1) | (labels == c)).sum() > 0.5
    # from an embeddings store, the frame's pixels are read for the window
    assert main(["embed", str(tmp_path / "big.tif"), "-o", str(tmp_path / "emb.zarr"), *args]) == 0
    assert main(["segment", str(tmp_path / "big.tif"), "--points", str(pts), "-o", str(tmp_path / "out2.tif"),
                 "--embeddings", str(tmp_path / "emb.zarr"), *args]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out2.tif"), want)


def test_clicks_on_a_large_frame_neither_hide_the_cell_nor_vanish():
    """Item 9: on a 4096² image the default point size (61 px) hid the clicked cell. A click is at most
    12 image pixels wide, and zoomed out it still shows as at least 6 screen pixels."""
    from napari.layers import Image

    from napari_mobilesam.gui.layers import new_points_layer

    for side, want in ((4096, 12.0), (256, 3.84)):
        layer = new_points_layer(Image(np.zeros((side, side), np.uint8), name="img"))
        layer.add([[side / 2, side / 2]])
        assert layer.size[0] == pytest.approx(want) and layer.current_size == pytest.approx(want)
        assert layer.canvas_size_limits[0] >= 6


@pytest.mark.slow
def test_the_widgets_segment_job_decodes_large_frames_in_windows(fsam, fpredictor, large_frame):
    """The widget's *Segment* job (gui/jobs.segment_frames, run inline as the widget's worker runs it)
    gives the same windowed mask as the engine and ``mobilesam segment``."""
    from napari_mobilesam.engine.embeddings import EmbeddingCache
    from napari_mobilesam.engine.prompts import ObjectPrompt
    from napari_mobilesam.gui.jobs import FrameDone, segment_frames

    big, labels, clicks = large_frame
    p = next(iter(clicks.values()))
    obj = ObjectPrompt((), Prompt(points=[p]), 1, [0], [])
    done = [s for s in segment_frames(fsam, EmbeddingCache(), lambda f: big, lambda f: ("widget", f), [((), [obj])], {})
            if isinstance(s, FrameDone)]
    mask = done[0].masks[0]
    fpredictor.set_image(big, key=("windows-large", 0))
    want = fpredictor.predict_objects([Prompt(points=[p])], multimask_output=True, windows=True)[0]
    assert mask.window == want.window == (1024, 1024, 2048, 2048)
    assert mask.offset == want.offset
    np.testing.assert_array_equal(mask.mask, want.mask)
