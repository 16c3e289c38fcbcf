"""TinyViT encoder: size, parity with the official outputs per backend, weight reloads, training."""

from __future__ import annotations

import copy
import json
import logging
import sys

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from skimage.io import imread

from napari_mobilesam.model.accelerate import available_backends, optimize_encoder
from napari_mobilesam.model.tiny_vit import TinyViT

BIAS_KEY = "layers.2.blocks.0.attn.attention_biases"  # stage 2: 14x14 windows, 5 heads


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def images(reference_dir) -> dict[str, np.ndarray]:
    grey = imread(reference_dir / "cell.png")
    assert grey.ndim == 2 and grey.dtype == np.uint8
    return {
        "photo": imread(reference_dir / "photo.png"),
        "cell": np.repeat(grey[..., None], 3, axis=-1),  # as the reference was made: no rescaling
    }


@pytest.fixture(scope="module")
def model_inputs(sam, images) -> dict[str, torch.Tensor]:
    """Each image resized, normalised and padded exactly as SamPredictor does it."""
    predictor = SamPredictor(sam)
    out = {}
    for name, rgb in images.items():
        x = predictor.transform.apply_image(rgb)
        x = torch.as_tensor(x).permute(2, 0, 1)[None].float()
        out[name] = sam.preprocess(x)
    return out


@pytest.fixture(scope="module")
def small_encoder(sam) -> TinyViT:
    """The reference weights in a 256² TinyViT (same parameter shapes): cheap to run."""
    enc = TinyViT(img_size=256)
    enc.load_state_dict(sam.image_encoder.state_dict(), strict=True)
    return enc.eval()


def test_parameter_count_matches_official(sam, reference_dir):
    manifest = json.loads((reference_dir / "state_dict_manifest.json").read_text())
    n = sum(p.numel() for p in sam.image_encoder.parameters())
    assert n == manifest["parameters"]["image_encoder_without_classifier_head"] == 5_743_892
    assert not any(k.startswith("image_encoder.") and "attention_bias_idxs" in k for k in sam.state_dict())


@pytest.mark.parametrize("backend", available_backends())
def test_embedding_parity(backend, sam, images, model_inputs, reference_dir, tmp_path_factory):
    """Each backend reproduces the official embedding of both reference images."""
    model = copy.deepcopy(sam)
    model.image_encoder.set_reference(backend == "reference")
    if backend not in ("reference", "eager"):
        assert optimize_encoder(model, backend, cache=tmp_path_factory.mktemp("onnx")) == backend
        assert model.image_encoder.runner is not None
        assert copy.deepcopy(model).image_encoder.runner is None  # a copy may get other weights: eager
    for name in images if backend != "reference" else ["photo"]:  # the baseline: one image is enough
        expected = np.load(reference_dir / f"expected_{name}.npz")["embedding"]
        with torch.inference_mode():
            got = model.image_encoder(model_inputs[name])
        assert got.shape == (1, 256, 64, 64) and got.dtype == torch.float32
        assert rel_err(got.numpy(), expected) <= 1e-4, (backend, name)
    if backend == "eager":  # and through segment-anything's own predictor
        predictor = SamPredictor(model)
        predictor.set_image(images["photo"])
        expected = np.load(reference_dir / "expected_photo.npz")["embedding"]
        assert rel_err(predictor.features.numpy(), expected) <= 1e-4


@pytest.mark.parametrize("backend", [b for b in available_backends() if b != "reference"])
def test_output_follows_reloaded_attention_biases(backend, small_encoder, tmp_path):
    """The gathered bias copy (and any export) must come from the weights loaded last."""
    enc = copy.deepcopy(small_encoder)
    holder = torch.nn.Module()
    holder.image_encoder = enc
    assert optimize_encoder(holder, "auto" if backend == "onnxruntime" else backend, cache=tmp_path) == backend
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = enc(x)
    state = copy.deepcopy(enc.state_dict())
    gen = torch.Generator().manual_seed(2)
    for key in [k for k in state if k.endswith("attention_biases")]:
        state[key] = state[key] + 3.0 * torch.randn(state[key].shape, generator=gen)
    enc.load_state_dict(state, strict=True)
    with torch.inference_mode():
        after = enc(x)
    fresh = TinyViT(img_size=256, reference=True).eval()
    fresh.load_state_dict(state, strict=True)
    with torch.inference_mode():
        expected = fresh(x)
    assert rel_err(after.numpy(), expected.numpy()) <= 1e-4
    assert rel_err(before.numpy(), expected.numpy()) > 1e-2  # the edit did matter


def test_training_mode_gives_gradients(small_encoder):
    enc = copy.deepcopy(small_encoder).train()
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    mean_before = enc.patch_embed.seq[0].bn.running_mean.clone()
    enc(x).square().mean().backward()
    grads = {n: p.grad for n, p in enc.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads[BIAS_KEY].abs().sum() > 0
    assert not torch.equal(enc.patch_embed.seq[0].bn.running_mean, mean_before)  # batch statistics were used
    # Eval mode with autograd (frozen BN) matches the no-grad fast path and still backpropagates.
    enc.eval().zero_grad()
    y = enc(x[:1])
    y.sum().backward()
    with torch.no_grad():
        assert rel_err(y.detach().numpy(), enc(x[:1]).numpy()) <= 1e-5
    assert enc.layers[3].blocks[1].mlp.fc1.weight.grad.abs().sum() > 0


def test_optimize_encoder_rejects_bad_arguments(sam):
    with pytest.raises(ValueError, match="Unknown encoder backend 'tensorrt'"):
        optimize_encoder(sam, "tensorrt")
    holder = torch.nn.Module()
    holder.image_encoder = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="needs a TinyViT"):
        optimize_encoder(holder, "eager")


def test_missing_onnxruntime_falls_back_to_eager(small_encoder, monkeypatch, caplog):
    holder = torch.nn.Module()
    holder.image_encoder = copy.deepcopy(small_encoder)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without it looks like
    with caplog.at_level(logging.WARNING):
        assert optimize_encoder(holder, "onnxruntime") == "eager"
    assert holder.image_encoder.runner is None
    assert optimize_encoder(holder, "auto") == "eager"
    assert "onnxruntime" in caplog.text and "eager" in caplog.text
