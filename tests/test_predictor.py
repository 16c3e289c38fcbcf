"""Parity with the official MobileSAM outputs (../shared/reference) and batched-prompt behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from napari_mobilesam import Predictor, Prompt

IMAGES = ["photo.jpg", "cell.png"]
PROMPTS = ["point", "point_multimask", "points_pos_neg", "box", "box_and_point"]


@pytest.fixture(scope="module")
def frames(reference_dir):
    from skimage.io import imread

    return {name: imread(reference_dir / name) for name in IMAGES}


@pytest.fixture(scope="module")
def expected(reference_dir):
    return {name: np.load(reference_dir / f"expected_{name.split('.')[0]}.npz") for name in IMAGES}


def _args(case):
    pts = np.array(case["point_coords"]) if "point_coords" in case else None
    lbl = np.array(case["point_labels"]) if "point_labels" in case else None
    box = np.array(case["box"]) if "box" in case else None
    return pts, lbl, box


@pytest.mark.parametrize("name", IMAGES)
def test_embedding_matches_reference(predictor, frames, expected, name):
    predictor.set_image(frames[name], key=name)
    ref = expected[name]["embedding"]
    err = np.linalg.norm(predictor.features.numpy() - ref) / np.linalg.norm(ref)
    assert err <= 1e-4


@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_predict_matches_reference(predictor, frames, expected, cases, name, prompt):
    case = cases[name]["prompts"][prompt]
    predictor.set_image(frames[name], key=name)
    masks, iou, low = predictor.predict(*_args(case), multimask_output=case["multimask_output"])
    ref = expected[name]
    assert masks.shape == ref[f"{prompt}/mask"].shape and masks.dtype == bool
    assert (masks == ref[f"{prompt}/mask"]).mean() >= 0.999
    assert np.abs(low - ref[f"{prompt}/low_res_logits"]).max() <= 1e-3
    assert np.abs(iou - ref[f"{prompt}/iou"]).max() <= 1e-4


@pytest.mark.parametrize("name", IMAGES)
def test_boxes_batch_matches_reference(predictor, frames, expected, cases, name):
    case = cases[name]["prompts"]["boxes_batch"]
    predictor.set_image(frames[name], key=name)
    boxes_xy = np.array(case["boxes"])
    objs = predictor.predict_objects([Prompt(box=b[[1, 0, 3, 2]]) for b in boxes_xy])
    ref = expected[name]
    assert len(objs) == len(boxes_xy)
    masks = np.stack([o.full() for o in objs])
    assert (masks == ref["boxes_batch/mask"][:, 0]).mean() >= 0.999
    low = np.stack([o.low_res_logits for o in objs])
    assert np.abs(low - ref["boxes_batch/low_res_logits"][:, 0]).max() <= 1e-3
    assert np.abs(np.array([o.score for o in objs]) - ref["boxes_batch/iou"][:, 0]).max() <= 1e-4


def test_fast_decoder_matches_stock_with_mask_input_and_mixed_prompts(sam, predictor, frames):
    """Mask input (per-prompt dense embeddings) and mixed prompt kinds in one call, vs SamPredictor."""
    img = frames["cell.png"]
    predictor.set_image(img, key="cell.png")
    stock = SamPredictor(sam)
    stock.features, stock.original_size, stock.input_size = predictor.features, predictor.original_size, predictor.input_size
    stock.is_image_set = True
    _, _, low0 = stock.predict(np.array([[200.0, 300.0]]), np.array([1]), multimask_output=False)
    prompts = [
        Prompt(points=[[300.0, 200.0]], labels=[1], mask_input=low0[0]),
        Prompt(box=[100, 50, 400, 300]),
        Prompt(points=[[120.0, 80.0], [130.0, 90.0]], labels=[1, 0], box=[60, 40, 200, 160]),
    ]
    objs = predictor.predict_objects(prompts)
    expected = [
        stock.predict(np.array([[200.0, 300.0]]), np.array([1]), mask_input=low0, multimask_output=False),
        stock.predict(box=np.array([50, 100, 300, 400]), multimask_output=False),
        stock.predict(np.array([[80.0, 120.0], [90.0, 130.0]]), np.array([1, 0]), box=np.array([40, 60, 160, 200]), multimask_output=False),
    ]
    for obj, (m, iou, low) in zip(objs, expected):
        assert np.abs(obj.low_res_logits - low[0]).max() <= 1e-3
        assert abs(obj.score - iou[0]) <= 1e-4
        assert (obj.full() == m[0]).mean() >= 0.999


def test_multimask_select(predictor, frames):
    predictor.set_image(frames["photo.jpg"], key="photo.jpg")
    p = Prompt(points=[[423.5, 346.05]])
    masks, iou, low = predictor.predict(np.array([[346.05, 423.5]]), np.array([1]), multimask_output=True)
    best = predictor.predict_objects([p], multimask_output=True)[0]
    assert best.mask_index == int(np.argmax(iou))
    for k in range(3):
        obj = predictor.predict_objects([p], multimask_output=True, select=k)[0]
        assert obj.mask_index == k
        assert np.array_equal(obj.full(), masks[k]) or (obj.full() == masks[k]).mean() >= 0.999


def test_object_mask_crop_is_tight(predictor, frames):
    predictor.set_image(frames["cell.png"], key="cell.png")
    obj = predictor.predict_objects([Prompt(box=[100, 100, 300, 250])])[0]
    if obj.area:
        assert obj.mask[0].any() and obj.mask[-1].any() and obj.mask[:, 0].any() and obj.mask[:, -1].any()
    full = obj.full()
    assert full.shape == frames["cell.png"].shape[:2] and full.sum() == obj.area


def test_cache_avoids_reencoding(sam, frames):
    pred = Predictor(sam, cache_bytes=64 << 20)
    calls = []
    handle = sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        small = frames["cell.png"][:64, :80]
        other = frames["cell.png"][64:128, :80]
        pred.set_image(small, key=("s", 0))
        pred.set_image(other, key=("s", 1))
        pred.set_image(small, key=("s", 0))
        assert len(calls) == 2
        assert pred.key == ("s", 0) and pred.original_size == (64, 80)
        pred.set_image(small)  # keyed by pixel hash: a new key, encoded once, then cached
        pred.set_image(small.copy())
        assert len(calls) == 3
    finally:
        handle.remove()


def test_cache_budget_evicts_lru_and_fp16(sam, frames):
    pred = Predictor(sam, cache_bytes=5 << 20, cache_fp16=True)  # room for two fp16 embeddings
    img = frames["cell.png"][:48, :48]
    for t in range(3):
        pred.set_image(img + t, key=t)
    assert 0 not in pred.cache and 1 in pred.cache and 2 in pred.cache
    assert pred.cache.get(2).features.dtype == torch.float16
    assert pred.features.dtype == torch.float32


def test_sixteen_bit_frame_click(predictor):
    rng = np.random.default_rng(0)
    img = rng.normal(1000, 50, (96, 128)).astype(np.uint16)
    img[30:60, 40:80] += 20000
    predictor.set_image(img, key="u16")
    obj = predictor.predict_objects([Prompt(points=[[45, 60]])])[0]
    assert obj.shape == (96, 128)
    assert 0 <= obj.score <= 2 and obj.low_res_logits.shape == (256, 256)


def test_errors(sam):
    pred = Predictor(sam)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict_objects([Prompt(points=[[1, 1]])])
    with pytest.raises(ValueError, match="at least one point or a box"):
        Prompt()
    with pytest.raises(ValueError, match="labels"):
        Prompt(points=[[1, 2], [3, 4]], labels=[1])
    with pytest.raises(ValueError, match="4 numbers"):
        Prompt(box=[1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        Prompt(points=[[np.nan, 1]])
    with pytest.raises(ValueError, match="2D"):
        pred.set_image(np.zeros((2, 3, 8, 8)))
