"""Cropped full-resolution masks equal segment-anything's postprocess_masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from napari_mobilesam.engine.upsample import MaskUpsampler, bilinear_matrix


def _stock(low: np.ndarray, original: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(low)[None, None]
    x = torch.nn.functional.interpolate(x, (1024, 1024), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return torch.nn.functional.interpolate(x, original, mode="bilinear", align_corners=False)[0, 0].numpy()


@pytest.mark.parametrize("original", [(770, 769), (96, 128), (2000, 300), (1024, 1024), (512, 1024)])
@pytest.mark.parametrize("radius", [3, 20, 200])
def test_crop_mask_equals_stock(original, radius):
    input_size = ResizeLongestSide.get_preprocess_shape(*original, 1024)
    rng = np.random.default_rng(radius)
    rr, cc = np.mgrid[:256, :256]
    centre = rng.uniform(20, 100, 2)
    low = (radius - np.hypot(rr - centre[0], cc - centre[1])).astype(np.float32) + rng.normal(0, 0.5, (256, 256)).astype(np.float32)
    up = MaskUpsampler(original, input_size)
    full = up.full_mask(low, 0.0)
    stock = _stock(low, original, input_size) > 0
    assert full.shape == original
    assert (full == stock).mean() >= 0.9999
    mask, (r0, c0) = up.crop_mask(low, 0.0)
    assert mask.sum() == full.sum()
    if mask.size:
        assert full[r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]].sum() == full.sum()


@pytest.mark.parametrize("original", [(1024, 1024), (512, 1024), (770, 769)])
def test_large_mask_logits_equal_stock_exactly(original):
    """A mask over most of the frame takes the whole-frame path (the second resize is skipped
    when the frame already has the resized input's size): the logits equal the stock ones bit for bit."""
    input_size = ResizeLongestSide.get_preprocess_shape(*original, 1024)
    low = np.random.default_rng(1).normal(2.0, 1.0, (256, 256)).astype(np.float32)
    logits, (r0, c0) = MaskUpsampler(original, input_size).crop_logits(low, 0.0)
    stock = _stock(low, original, input_size)
    assert logits.shape[0] * logits.shape[1] > 0.3 * original[0] * original[1]
    np.testing.assert_array_equal(logits, stock[r0 : r0 + logits.shape[0], c0 : c0 + logits.shape[1]])


def test_empty_and_padding_only_logits():
    up = MaskUpsampler((100, 50), ResizeLongestSide.get_preprocess_shape(100, 50, 1024))
    low = np.full((256, 256), -5.0, np.float32)
    assert not up.full_mask(low, 0.0).any()
    low[:, 200:] = 5.0  # positive only in the padding (right of the image): no pixel can be set
    assert not up.full_mask(low, 0.0).any()


def test_bilinear_matrix_matches_torch():
    # torch computes its weights in float32: agreement to ~1e-5; a wrong tap or weight is off by >1e-2
    for seed in range(20):
        x = torch.randn(1, 1, 37, 1, generator=torch.Generator().manual_seed(seed))
        for n_out in (11, 37, 90):
            ref = torch.nn.functional.interpolate(x, (n_out, 1), mode="bilinear", align_corners=False)[0, 0, :, 0].numpy()
            assert np.allclose(bilinear_matrix(37, n_out) @ x[0, 0, :, 0].numpy(), ref, atol=5e-5)
