"""Parity with the official MobileSAM outputs (computed live by napari_mobilesam.testing.reference) and batched-prompt behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from napari_mobilesam import Predictor, Prompt
from napari_mobilesam.testing.reference import IMAGES

# measured 2026-12-02 against the official code: max |Δ logit| 5.6e-7 to 1.0e-6 (embedding rel. error 1.3e-6)
LOGITS_TOL = 1e-5
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
    assert np.abs(low - ref[f"{prompt}/low_res_logits"]).max() <= LOGITS_TOL
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
    assert np.abs(low - ref["boxes_batch/low_res_logits"][:, 0]).max() <= LOGITS_TOL
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
    predictor.set_image(frames["photo.png"], key="photo.png")
    p = Prompt(points=[[219.5, 268.7]])  # (row, col) of the official "point" case: (0.55 H, 0.45 W)
    masks, iou, low = predictor.predict(np.array([[268.7, 219.5]]), np.array([1]), multimask_output=True)
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
    assert np.isfinite(obj.score) and obj.low_res_logits.shape == (256, 256)  # random weights: any score


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


# ---------------------------------------------------------------- the drop-in API against the official code
@pytest.fixture(scope="module")
def official(checkpoint):
    """The official MobileSAM (mobile_sam package) on the same weights."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's deprecation and registry warnings
        from mobile_sam import sam_model_registry

        sam = sam_model_registry["vit_t"]()
    sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.eval()  # the official TinyViT gathers its attention biases in eval(): after loading


@pytest.fixture(scope="module")
def small_frame(sam):
    """Our predictor on a small frame (cheap full-resolution masks); :func:`_official_on` puts the official
    SamPredictor on the same embedding (decoder parity does not depend on the encoder; tested above)."""
    img = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    img[20:70, 30:90] = 255
    ours = Predictor(sam)
    ours.set_image(img, key="small")
    return ours


def _official_on(official, ours):
    from mobile_sam import SamPredictor as OfficialPredictor

    ref = OfficialPredictor(official)
    ref.features, ref.original_size, ref.input_size = ours.features.clone(), ours.original_size, ours.input_size
    ref.is_image_set = True
    return ref


def _boxes(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wh = rng.uniform(8, 60, (n, 2))
    xy = rng.uniform(0, 1, (n, 2)) * (np.array([w, h]) - wh)
    return np.concatenate([xy, xy + wh], 1)


@pytest.mark.parametrize("batch,multimask", [(1, True), (7, True), (64, False)])
def test_fast_decoder_logits_match_official_decoder(official, small_frame, batch, multimask):
    """FrameDecoder.decode for one batch of B box prompts vs the official MaskDecoder (run 8 at a time)."""
    from napari_mobilesam.model.fast_decoder import FrameDecoder

    ours = small_frame
    pe = official.prompt_encoder
    boxes = torch.as_tensor(ours.transform.apply_boxes(_boxes(batch, 96, 128, batch), ours.original_size), dtype=torch.float32)
    with torch.inference_mode():
        sparse, dense = pe(points=None, boxes=boxes, masks=None)
        low, iou = FrameDecoder(ours.model, ours.features).decode(sparse, None, multimask)
        ref = [official.mask_decoder(ours.features, pe.get_dense_pe(), sparse[s : s + 8], dense[s : s + 8], multimask) for s in range(0, batch, 8)]
    ref_low, ref_iou = torch.cat([r[0] for r in ref]), torch.cat([r[1] for r in ref])
    assert low.shape == ref_low.shape == (batch, 3 if multimask else 1, 256, 256)
    assert (low - ref_low).abs().max() <= 1e-4
    assert (iou - ref_iou).abs().max() <= 1e-4


def test_predict_torch_320_boxes_matches_official(official, small_frame):
    """320 boxes in one predict_torch call (decoded in chunks) vs the official predict_torch on a sample of them."""
    ours = small_frame
    ref = _official_on(official, ours)
    boxes = torch.as_tensor(ours.transform.apply_boxes(_boxes(320, 96, 128), ours.original_size), dtype=torch.float32)
    masks, iou, low = ours.predict_torch(None, None, boxes=boxes, multimask_output=False)
    assert masks.shape == (320, 1, 96, 128) and masks.dtype == torch.bool
    assert iou.shape == (320, 1) and low.shape == (320, 1, 256, 256) and low.dtype == iou.dtype == torch.float32
    pick = torch.arange(3, 320, 41)
    with torch.inference_mode():
        r_masks, r_iou, r_low = ref.predict_torch(None, None, boxes=boxes[pick], multimask_output=False)
    assert (low[pick] - r_low).abs().max() <= 1e-4
    assert (iou[pick] - r_iou).abs().max() <= 1e-4
    assert (masks[pick] == r_masks).float().mean() >= 0.999
    assert not masks.is_inference() and not low.is_inference()  # usable outside inference mode, as the stock outputs


def test_predict_torch_points_mask_input_and_logits_match_official(official, small_frame):
    ours = small_frame
    ref = _official_on(official, ours)
    rng = np.random.default_rng(5)
    pts = torch.as_tensor(ours.transform.apply_coords(rng.uniform(0, 96, (5, 3, 2)), ours.original_size), dtype=torch.float32)
    lbl = torch.tensor([[1, 1, 0]] * 5)
    for kwargs in (dict(multimask_output=True), dict(multimask_output=False, return_logits=True)):
        got = ours.predict_torch(pts, lbl, **kwargs)
        with torch.inference_mode():
            exp = ref.predict_torch(pts, lbl, **kwargs)
        assert [g.shape for g in got] == [e.shape for e in exp] and [g.dtype for g in got] == [e.dtype for e in exp]
        if kwargs.get("return_logits"):
            assert (got[0] - exp[0]).abs().max() <= 1e-4
        else:
            assert (got[0] == exp[0]).float().mean() >= 0.999
        assert (got[1] - exp[1]).abs().max() <= 1e-4 and (got[2] - exp[2]).abs().max() <= 1e-4
    # mask input (the previous low-res logits) with a box and a point
    box = torch.as_tensor(ours.transform.apply_boxes(np.array([[20.0, 10, 100, 80]] * 5), ours.original_size), dtype=torch.float32)
    prev = exp[2]
    got = ours.predict_torch(pts[:, :1], lbl[:, :1], boxes=box, mask_input=prev, multimask_output=False)
    with torch.inference_mode():
        exp = ref.predict_torch(pts[:, :1], lbl[:, :1], boxes=box, mask_input=prev, multimask_output=False)
    assert (got[2] - exp[2]).abs().max() <= 1e-4 and (got[1] - exp[1]).abs().max() <= 1e-4
    assert (got[0] == exp[0]).float().mean() >= 0.999


def test_predict_matches_official_predict(official, small_frame):
    ours = small_frame
    ref = _official_on(official, ours)
    for args in (
        dict(point_coords=np.array([[60.0, 45.0]]), point_labels=np.array([1]), multimask_output=True),
        dict(point_coords=np.array([[60.0, 45.0]]), point_labels=np.array([1]), box=np.array([25, 15, 95, 75]), multimask_output=False),
        dict(box=np.array([25, 15, 95, 75]), multimask_output=True, return_logits=True),
    ):
        got, exp = ours.predict(**args), ref.predict(**args)
        assert [type(g) for g in got] == [np.ndarray] * 3
        assert [(g.shape, g.dtype) for g in got] == [(e.shape, e.dtype) for e in exp]
        if args.get("return_logits"):
            assert np.abs(got[0] - exp[0]).max() <= 1e-4
        else:
            assert (got[0] == exp[0]).mean() >= 0.999
        assert np.abs(got[1] - exp[1]).max() <= 1e-4 and np.abs(got[2] - exp[2]).max() <= 1e-4
    _, _, low = ref.predict(np.array([[60.0, 45.0]]), np.array([1]), multimask_output=False)
    got = ours.predict(np.array([[60.0, 45.0]]), np.array([1]), mask_input=low, multimask_output=False)
    exp = ref.predict(np.array([[60.0, 45.0]]), np.array([1]), mask_input=low, multimask_output=False)
    assert np.abs(got[2] - exp[2]).max() <= 1e-4 and (got[0] == exp[0]).mean() >= 0.999
