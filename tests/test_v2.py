"""MobileSAMv2 as published: its prompt-guided decoder on any encoder, against the official code.

The official MobileSAMv2 code is mobilesam-lite's ``mobilesamv2`` and ``efficientvit`` packages (a
test dependency; they need their folder on ``sys.path``). Every file is built here in the official
layout from seeded random values: ``Prompt_guided_Mask_Decoder.pt`` as ``{'PromtEncoder',
'MaskDecoder'}``, ``l2.pt`` as ``{'state_dict': {image_encoder.*}}``, SAM ViT-B as segment-anything's
state dict.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from napari_mobilesam import CheckpointError, Embedding, Predictor, Prompt, build_mobilesam
from napari_mobilesam.model import weights

SEED = 1515


def official_v2():
    """The official ``mobilesamv2.build_sam`` module, imported without the vendored ultralytics 8.0
    (mobilesam-lite loads it as ``ultralytics`` on import unless that name is taken; its detector
    is not needed here, so a placeholder holds the name during the import and is removed after)."""
    root = importlib.util.find_spec("mobilesam_lite").submodule_search_locations[0]
    if root not in sys.path:
        sys.path.append(root)  # appended: the installed official mobile_sam keeps precedence
    placeholder = "ultralytics" not in sys.modules
    if placeholder:
        sys.modules["ultralytics"] = types.ModuleType("ultralytics")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm deprecations, registry overwrites
            import mobilesamv2.build_sam as build
            import mobilesamv2.modeling as modeling
            import mobilesamv2.predictor as predictor
    finally:
        if placeholder:
            del sys.modules["ultralytics"]
    return types.SimpleNamespace(build=build, modeling=modeling, predictor=predictor)


def perturbed(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """``module``'s state dict with every float tensor moved to seeded random values (BN statistics too)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            out[key] = value.clone()
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif key.endswith("running_mean"):
            out[key] = 0.1 * torch.randn(value.shape, generator=gen)
        else:
            out[key] = value + 0.02 * torch.randn(value.shape, generator=gen)
    module.load_state_dict(out)
    return out


@pytest.fixture(scope="module")
def ref():
    return official_v2()


@pytest.fixture(scope="module")
def official_decoder(ref, tmp_path_factory):
    """(path of a Prompt_guided_Mask_Decoder.pt in the official layout, the official modules loaded from it)."""
    torch.manual_seed(SEED)
    parts = ref.build.build_PromptGuidedDecoder()
    state = {"PromtEncoder": perturbed(parts["PromtEncoder"], SEED), "MaskDecoder": perturbed(parts["MaskDecoder"], SEED + 1)}
    path = tmp_path_factory.mktemp("v2") / "Prompt_guided_Mask_Decoder.pt"
    torch.save(state, path)
    loaded = ref.build.build_PromptGuidedDecoder(str(path))  # the official loader reads it
    return path, {k: m.eval() for k, m in loaded.items()}


@pytest.fixture(scope="module")
def v2_sam(checkpoint, official_decoder):
    return build_mobilesam(checkpoint, decoder=official_decoder[0])


@pytest.fixture(scope="module")
def cells_rgb():
    from napari_mobilesam.engine.image import to_rgb_uint8
    from napari_mobilesam.testing.synthetic import synthetic_cells

    grey, _ = synthetic_cells((200, 240), n=14, seed=7)
    rgb = np.repeat(grey[..., None], 3, -1)
    assert np.array_equal(to_rgb_uint8(rgb), rgb)  # what the pipeline sees is what the official code gets
    return rgb


def official_decode(ref, parts, features, boxes_xyxy, original_size, input_size, full_logits=False):
    """MobileSAMv2's Inference.py decoding: one batch of boxes, single mask, simple_type; boxes x0, y0, x1, y1
    in original pixels. Returns (low-res logits B x 256 x 256, full-size masks B x H x W bool), with
    ``full_logits`` the full-size logits (B x H x W float32) instead of the masks."""
    from segment_anything.utils.transforms import ResizeLongestSide

    pe, md = parts["PromtEncoder"], parts["MaskDecoder"]
    boxes = torch.as_tensor(ResizeLongestSide(1024).apply_boxes(np.asarray(boxes_xyxy, np.float64), original_size), dtype=torch.float32)
    n = len(boxes)
    with torch.no_grad():
        sparse, dense = pe(points=None, boxes=boxes, masks=None)
        low, _ = md(
            image_embeddings=torch.repeat_interleave(features, n, 0), image_pe=torch.repeat_interleave(pe.get_dense_pe(), n, 0),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False, simple_type=True,
        )
        sam = ref.modeling.Sam(image_encoder=torch.nn.Identity(), prompt_encoder=pe, mask_decoder=md)
        sam.image_encoder.img_size = 1024
        full = sam.postprocess_masks(low, input_size, original_size)
    return low[:, 0], (full[:, 0] if full_logits else full[:, 0] > sam.mask_threshold).numpy()


def official_labels(masks: np.ndarray) -> np.ndarray:
    """Inference.py's painting (largest first, ties in box order), numbered 1.. in box order over the visible masks."""
    areas = masks.reshape(len(masks), -1).sum(1)
    lab = np.zeros(masks.shape[1:], np.uint32)
    for i in np.argsort(-areas, kind="stable"):
        lab[masks[i]] = i + 1
    present = np.unique(lab[lab > 0])
    lut = np.zeros(len(masks) + 1, np.uint32)
    lut[present] = np.arange(1, len(present) + 1)
    return lut[lab]


# ------------------------------------------------------------------ the decoder file
def test_decoder_file_loads_strictly(v2_sam, official_decoder, checkpoint):
    path, parts = official_decoder
    for prefix, module in (("prompt_encoder.", parts["PromtEncoder"]), ("mask_decoder.", parts["MaskDecoder"])):
        for key, value in module.state_dict().items():
            assert torch.equal(v2_sam.state_dict()[prefix + key], value), key
    official = torch.load(checkpoint, weights_only=True)
    assert torch.equal(v2_sam.image_encoder.neck[0].weight, official["image_encoder.neck.0.weight"])
    assert not torch.equal(v2_sam.mask_decoder.iou_token.weight, official["mask_decoder.iou_token.weight"])


def test_decoder_file_errors(tmp_path, checkpoint, official_decoder):
    path, _ = official_decoder
    with pytest.raises(CheckpointError, match=r"is not a MobileSAMv2 decoder file: expected a dict holding 'PromtEncoder' and 'MaskDecoder'"):
        build_mobilesam(checkpoint, decoder=checkpoint)
    with pytest.raises(CheckpointError, match="is a MobileSAMv2 decoder file .* pass it as decoder="):
        build_mobilesam(path)
    state = torch.load(path, weights_only=True)
    state["MaskDecoder"]["iou_token.weight"] = torch.full((1, 256), float("nan"))
    nan = tmp_path / "nan_decoder.pt"
    torch.save(state, nan)
    with pytest.raises(CheckpointError, match=r"nan_decoder.pt holds weights that are not finite.*mask_decoder.iou_token.weight"):
        build_mobilesam(checkpoint, decoder=nan)
    state["MaskDecoder"]["iou_token.weight"] = torch.zeros(2, 256)
    wrong = tmp_path / "wrong_decoder.pt"
    torch.save(state, wrong)
    with pytest.raises(CheckpointError, match=r"with MobileSAMv2's decoder: shape mismatches: mask_decoder.iou_token.weight \(2, 256\) != \(1, 256\)"):
        build_mobilesam(checkpoint, decoder=wrong)


def test_registry_decoder_is_verified_by_its_git_blob_id(monkeypatch, tmp_path, checkpoint, official_decoder):
    spec = weights.REGISTRY["mobilesamv2"]
    assert spec.known_hash == "gitblob:c13b15a3a4496dbcba5f4f0d3e8453f41d818420" and spec.kind == "decoder"
    assert spec.urls == ("https://github.com/ChaoningZhang/MobileSAM/raw/master/MobileSAMv2/PromptGuidedDecoder/Prompt_guided_Mask_Decoder.pt",)
    path, _ = official_decoder
    data = path.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    table = dict(weights.REGISTRY)
    table["mobilesamv2"] = weights.WeightsSpec("mobilesamv2", spec.filename, (path.as_uri(),), f"gitblob:{blob}", "", "decoder")
    monkeypatch.setattr(weights, "REGISTRY", table)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    sam = build_mobilesam(checkpoint, decoder="mobilesamv2")
    assert (tmp_path / "cache" / spec.filename).read_bytes() == data
    assert torch.equal(sam.mask_decoder.iou_token.weight, torch.load(path, weights_only=True)["MaskDecoder"]["iou_token.weight"])
    (tmp_path / "cache" / spec.filename).unlink()
    table["mobilesamv2"] = weights.WeightsSpec("mobilesamv2", spec.filename, (path.as_uri(),), "gitblob:" + "0" * 40, "", "decoder")
    with pytest.raises(weights.WeightsUnavailableError, match=f"git blob id is {blob}, expected 0000"):
        build_mobilesam(checkpoint, decoder="mobilesamv2")
    assert not (tmp_path / "cache" / spec.filename).exists()


# ------------------------------------------------------------------ parity with the official code
def test_v2_decoder_parity_on_a_batch_of_boxes(ref, v2_sam, official_decoder, cells_rgb):
    """Our batched fast decoder with v2's weights vs Inference.py's decoding of the same boxes."""
    pred = Predictor(v2_sam)
    pred.set_image(cells_rgb)
    h, w = cells_rgb.shape[:2]
    rng = np.random.default_rng(SEED)
    r0, c0 = rng.uniform(0, 0.7, 24) * h, rng.uniform(0, 0.7, 24) * w
    boxes = np.stack([r0, c0, np.minimum(r0 + rng.uniform(10, 80, 24), h - 1), np.minimum(c0 + rng.uniform(10, 80, 24), w - 1)], 1)
    ours = pred.predict_objects([Prompt(box=b) for b in boxes], multimask_output=False)
    low, full = official_decode(ref, official_decoder[1], pred.features, boxes[:, [1, 0, 3, 2]], pred.original_size, pred.input_size)
    ours_low = torch.as_tensor(np.stack([o.low_res_logits for o in ours]))
    assert (ours_low - low).abs().max().item() <= 1e-3
    agree = np.mean([(o.full() == f).mean() for o, f in zip(ours, full)])
    assert agree >= 0.999, agree
    assert sum(f.sum() for f in full) > 0


@pytest.fixture(scope="module")
def yolo_detector(tmp_path_factory):
    """A random YOLOv8n through the project's detector loader; class-logit biases zeroed so that boxes pass
    v2's confidence 0.4 (the stock initialisation scores every anchor near 1e-4). Its boxes are arbitrary."""
    from napari_mobilesam.model.detector import _import_yolo, load_detector

    torch.manual_seed(SEED)
    model = _import_yolo()("yolov8n.yaml")
    for branch in model.model.model[-1].cv3:
        branch[-1].bias.data.zero_()
    path = tmp_path_factory.mktemp("yolo") / "random_yolov8n.pt"
    model.save(path)
    return load_detector(path)


def test_v2_pipeline_labels_identical(ref, checkpoint, v2_sam, official_decoder, cells_rgb, yolo_detector):
    """Boxes -> v2 decoder -> labels painted largest first: our segment_everything vs the official code end to end
    (official TinyViT encoder, predictor and decoding), with the boxes of the object-aware sampler (a random YOLO
    through the project's detector, at v2's settings) and of the blob sampler, given to both. v2 keeps every mask:
    so no score filter here (random weights predict negative IoUs, which the default min_score=0 would drop)."""
    from napari_mobilesam import segment_everything
    from napari_mobilesam.engine.samplers import blob_boxes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = ref.build.sam_model_registry["tiny_vit"](str(checkpoint))
    official_state = torch.load(checkpoint, weights_only=True)
    assert torch.equal(encoder.encoder.neck[0].weight, official_state["image_encoder.neck.0.weight"])  # loaded (strict=False upstream)
    parts = official_decoder[1]
    sam = ref.modeling.Sam(image_encoder=encoder, prompt_encoder=parts["PromtEncoder"], mask_decoder=parts["MaskDecoder"]).eval()
    predictor = ref.predictor.SamPredictor(sam)
    predictor.set_image(cells_rgb)

    pred = Predictor(v2_sam)  # shared by both runs: one embedding
    yolo_boxes, _ = yolo_detector.detect(cells_rgb, conf=0.4, iou=0.9, imgsz=1024, max_det=16)
    blobs, _ = blob_boxes(cells_rgb, max_det=16)
    runs = (("object-aware", yolo_boxes, dict(detector=yolo_detector)), ("blobs", blobs, {}))
    for sampler, boxes, extra in runs:
        boxes = boxes[((boxes[:, 2:] - boxes[:, :2]) >= 1).all(1)]  # the sampler drops degenerate boxes too
        assert len(boxes) >= 8, sampler
        ours = segment_everything(cells_rgb, pred, sampler=sampler, max_det=16, min_visible=0.0, min_score=-np.inf, **extra)
        _, logits = official_decode(ref, parts, predictor.features, boxes[:, [1, 0, 3, 2]], predictor.original_size, predictor.input_size, True)
        expected = official_labels(logits > 0)
        assert expected.max() >= 3, sampler
        # identical, except where a mask's logit is within float32 rounding of the threshold (random weights give
        # speckled masks with many logits near 0; the fast decoder agrees with the stock one to ~1e-5)
        tie = (np.abs(logits) < 1e-3).any(0)
        np.testing.assert_array_equal(ours[~tie], expected[~tie], err_msg=sampler)
        assert (ours != expected).sum() <= 2, (sampler, (ours != expected).sum())  # of 48,000 pixels


def test_efficientvit_l2_in_v2_layout(ref, tmp_path_factory, official_decoder, cells_rgb):
    """l2.pt ({'state_dict': {image_encoder.*}}) loads strictly with decoder=, and its embedding equals the official encoder's."""
    torch.manual_seed(SEED)
    official = ref.build.sam_model_registry["efficientvit_l2"]().eval()
    state = perturbed(official, SEED + 2)
    path = tmp_path_factory.mktemp("l2") / "l2.pt"
    torch.save({"state_dict": {"image_encoder." + k: v for k, v in state.items()}}, path)
    with pytest.raises(CheckpointError, match=r"only an image encoder \(MobileSAMv2 EfficientViT-L2\).*decoder='mobilesamv2'"):
        build_mobilesam(path)
    sam = build_mobilesam(path, decoder=official_decoder[0])
    assert sam.image_encoder.img_size == 1024
    pred = Predictor(sam)
    pred.set_image(cells_rgb)  # one forward of ours, through the predictor's pre-processing
    x = sam.preprocess(torch.as_tensor(pred.transform.apply_image(cells_rgb)).permute(2, 0, 1)[None].float())
    with torch.inference_mode():
        expected = official(x)
    rel = ((pred.features - expected).norm() / expected.norm()).item()
    assert rel <= 1e-4, rel
    assert tuple(pred.features.shape) == (1, 256, 64, 64)


def test_sam_vit_b_parity_with_segment_anything(tmp_path):
    """A random SAM ViT-B file (segment-anything's layout) through build_mobilesam and our Predictor vs SamPredictor."""
    from segment_anything import SamPredictor, sam_model_registry

    torch.manual_seed(SEED)
    official = sam_model_registry["vit_b"]().eval()
    perturbed(official, SEED + 3)
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(official.state_dict(), path)
    sam = build_mobilesam(path)
    assert type(sam.image_encoder).__name__ == "ImageEncoderViT" and len(sam.image_encoder.blocks) == 12
    theirs_state = official.state_dict()
    assert all(torch.equal(v, theirs_state[k]) for k, v in sam.state_dict().items())
    image = np.random.default_rng(SEED).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    ref_pred = SamPredictor(official)
    ref_pred.set_image(image)  # the one ViT-B forward: ours would run the same SamPredictor.set_image on equal weights
    pred = Predictor(sam)
    pred.set_embedding(Embedding(ref_pred.features, ref_pred.original_size, ref_pred.input_size))
    box, point = np.array([10, 8, 70, 60]), np.array([[40.0, 30.0]])
    theirs = ref_pred.predict(point_coords=point, point_labels=np.array([1]), box=box, multimask_output=True)
    ours = pred.predict(point_coords=point, point_labels=np.array([1]), box=box, multimask_output=True)
    np.testing.assert_allclose(ours[2], theirs[2], atol=1e-3)
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-4)
    assert (ours[0] == theirs[0]).mean() >= 0.999


def test_cli_decoder_option(tmp_path, checkpoint, v2_sam, official_decoder, cells_rgb, capsys):
    """`mobilesam everything --decoder FILE` gives the labels of the API with build_mobilesam(decoder=FILE);
    an encoder-only file without --decoder is a one-line error, exit 2."""
    import tifffile

    from napari_mobilesam import segment_everything
    from napari_mobilesam.cli import main

    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, cells_rgb[..., 0])
    out = tmp_path / "labels.tif"
    args = ["everything", str(image), "-o", str(out), "--sampler", "blobs", "--max-det", "8", "--weights", str(checkpoint), "--device", "cpu", "-q"]
    assert main([*args, "--decoder", str(official_decoder[0])]) == 0
    expected = segment_everything(cells_rgb[..., 0], v2_sam, sampler="blobs", max_det=8)
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    encoder_only = tmp_path / "encoder_only.pt"
    torch.save({k: v for k, v in torch.load(checkpoint, weights_only=True).items() if k.startswith("image_encoder.")}, encoder_only)
    capsys.readouterr()
    assert main([*args[:-5], "--weights", str(encoder_only), "--device", "cpu", "-q", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only an image encoder" in err[0] and "--decoder" in err[0]


def test_widget_model_loader_takes_the_decoder(checkpoint, official_decoder):
    """The widget's model job (gui/jobs.load_model) builds with decoder=, and keys the model by it."""
    from napari_mobilesam._progress import drive
    from napari_mobilesam.gui.jobs import ModelReady, load_model

    steps = []
    sam = drive(load_model(str(checkpoint), "cpu", official_decoder[0]), steps.append)
    ready = [s for s in steps if isinstance(s, ModelReady)]
    assert len(ready) == 1 and ready[0].key == (str(checkpoint), "cpu", str(official_decoder[0]))
    assert torch.equal(sam.mask_decoder.iou_token.weight, official_decoder[1]["MaskDecoder"].iou_token.weight)
    assert any("with decoder Prompt_guided_Mask_Decoder.pt" in getattr(s, "message", "") for s in steps)


def test_registry_l2_is_found_by_hand(monkeypatch, tmp_path, official_decoder):
    """l2.pt has no direct link: the registry name finds it in the cache, else says where to get it and how to pass it."""
    spec = weights.REGISTRY["efficientvit_l2"]
    assert spec.kind == "encoder" and not spec.urls and spec.filename == "l2.pt"
    assert weights.registry_names("decoder") == ["mobilesamv2"] and "efficientvit_l2" in weights.registry_names("model", "encoder")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    with pytest.raises(weights.WeightsUnavailableError) as info:
        build_mobilesam("efficientvit_l2", decoder=official_decoder[0])
    msg = str(info.value)
    assert "no direct download link" in msg and "l2.pt from the Google Drive folder" in msg and str(tmp_path / "l2.pt") in msg
    assert "--weights PATH" in msg and "NAPARI_MOBILESAM_WEIGHTS_EFFICIENTVIT_L2=PATH" in msg
    assert "--decoder PATH" in str(weights._unavailable(weights.REGISTRY["mobilesamv2"], "offline"))  # a decoder is passed as one
