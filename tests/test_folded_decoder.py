"""The folded decoder (prompts without mask input) against segment-anything's own MaskDecoder.

Both checkpoints: the random reference one (``sam``: small logits) and the functional test model
(``fsam``: logits up to ~120, where float32 rounding alone is ~1e-5..1e-4). Expected values come
from the stock ``MaskDecoder`` (float32, and float64 for the rounding level), never from our code.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_mobilesam import Predictor
from napari_mobilesam.model.fast_decoder import FrameDecoder
from napari_mobilesam.model.scratch import DecodeThreads, Scratch
from napari_mobilesam.testing.synthetic import synthetic_cells


@pytest.fixture(scope="module", params=["random", "functional"])
def frame(request, sam, fsam):
    """(model, a real embedding of a 256² synthetic-cells frame, its Predictor)."""
    model = sam if request.param == "random" else fsam
    pred = Predictor(model)
    img, _ = synthetic_cells((256, 256), 14, seed=7, radius=(8, 24))
    pred.set_image(img, key="cells")
    return model, pred


def _prompts(model, pred, b: int, kind: str, seed: int):
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        if kind == "box":
            xy = rng.uniform(0, 200, (b, 2))
            xyxy = np.concatenate([xy, xy + rng.uniform(8, 56, (b, 2))], 1)
            boxes = torch.as_tensor(pred.transform.apply_boxes(xyxy, pred.original_size), dtype=torch.float32)
            return model.prompt_encoder(points=None, boxes=boxes, masks=None)
        pts = torch.as_tensor(pred.transform.apply_coords(rng.uniform(0, 256, (b, 2, 2)), pred.original_size), dtype=torch.float32)
        lbl = torch.as_tensor(rng.integers(0, 2, (b, 2)))
        lbl[:, 0] = 1
        return model.prompt_encoder(points=(pts, lbl), boxes=None, masks=None)


@pytest.fixture(scope="module")
def workers():
    """Two decode workers (what the command and the plugin use with OpenMP's passive wait policy)."""
    threads = DecodeThreads(2)
    yield threads
    threads.close()


@pytest.mark.parametrize("on_workers", [False, True], ids=["calling-thread", "workers"])
@pytest.mark.parametrize("batch,multimask,kind", [(1, True, "points"), (1, False, "box"), (7, True, "box"), (24, False, "box"), (5, False, "points")])
def test_folded_decoder_matches_stock_mask_decoder(frame, batch, multimask, kind, on_workers, workers):
    model, pred = frame
    sparse, dense = _prompts(model, pred, batch, kind, batch)
    pe = model.prompt_encoder.get_dense_pe()
    with torch.inference_mode():
        dec = FrameDecoder(model, pred.features, scratch=Scratch(workers) if on_workers else Scratch(start_threads=False))
        assert dec._threads() is (workers if on_workers else None)
        assert dec._folded is not None  # the folded path is the one under test
        low, iou = dec.decode(sparse, None, multimask)
        ref_low, ref_iou = model.mask_decoder(pred.features, pe, sparse, dense, multimask)
        md64 = copy.deepcopy(model.mask_decoder).double()
        exact, _ = md64(pred.features.double(), pe.double(), sparse.double(), dense.double(), multimask)
    assert low.shape == ref_low.shape == (batch, 3 if multimask else 1, 256, 256)
    assert (low - ref_low).abs().max() <= 1e-4
    assert (iou - ref_iou).abs().max() <= 1e-4
    # as close to the exact (float64) logits as the stock float32 decoder itself, up to float32 rounding
    stock_err = (ref_low.double() - exact).abs().max().item()
    assert (low.double() - exact).abs().max().item() <= 1.5 * stock_err + 1e-6 * exact.abs().max().item()


def test_folded_decoder_320_boxes_in_predictor_batches(frame):
    """320 boxes through Predictor.predict_torch (decoded 8 at a time) vs the stock decoder on a sample."""
    model, pred = frame
    sparse, dense = _prompts(model, pred, 320, "box", 320)
    rng = np.random.default_rng(320)
    xy = rng.uniform(0, 200, (320, 2))
    boxes = torch.as_tensor(pred.transform.apply_boxes(np.concatenate([xy, xy + rng.uniform(8, 56, (320, 2))], 1), pred.original_size), dtype=torch.float32)
    _, iou, low = pred.predict_torch(None, None, boxes=boxes, multimask_output=False)
    pick = torch.arange(5, 320, 45)
    with torch.inference_mode():
        ref_low, ref_iou = model.mask_decoder(pred.features, model.prompt_encoder.get_dense_pe(), sparse[pick], dense[pick], False)
    assert (low[pick] - ref_low).abs().max() <= 1e-4
    assert (iou[pick] - ref_iou).abs().max() <= 1e-4


def test_mask_input_on_workers_matches_stock_mask_decoder(frame, workers):
    """Prompts with mask input (Refine, Propagate) split over the decode workers: the stock results."""
    model, pred = frame
    rng = np.random.default_rng(5)
    masks = torch.as_tensor(rng.normal(0, 4, (5, 1, 256, 256)), dtype=torch.float32)
    xy = rng.uniform(0, 200, (5, 2))
    boxes = torch.as_tensor(pred.transform.apply_boxes(np.concatenate([xy, xy + 40], 1), pred.original_size), dtype=torch.float32)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=masks)
        ref_low, ref_iou = model.mask_decoder(pred.features, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
        for b in (1, 5):
            low, iou = FrameDecoder(model, pred.features, scratch=Scratch(workers)).decode(sparse[:b], dense[:b], True)
            assert (low - ref_low[:b]).abs().max() <= 1e-4
            assert (iou - ref_iou[:b]).abs().max() <= 1e-4


def test_unfolded_path_is_kept_for_mask_input_and_as_baseline(frame):
    """folded=False (the previous streamed path) gives the stock results too; mask input never folds."""
    model, pred = frame
    sparse, dense = _prompts(model, pred, 3, "box", 3)
    with torch.inference_mode():
        ref_low, _ = model.mask_decoder(pred.features, model.prompt_encoder.get_dense_pe(), sparse, dense, False)
        low, _ = FrameDecoder(model, pred.features, folded=False).decode(sparse, None, False)
    assert (low - ref_low).abs().max() <= 1e-4
