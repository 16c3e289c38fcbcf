"""Frame normalisation: uint8 unchanged, defined contrast stretch for everything else."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mobilesam import to_rgb_uint8


def test_uint8_grey_and_rgb_pass_unchanged():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    out = to_rgb_uint8(grey)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[..., c], grey) for c in range(3))
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(rgb), rgb)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], -1)
    assert np.array_equal(to_rgb_uint8(rgba), rgb)


def test_uint16_percentile_stretch():
    img = np.arange(10000, dtype=np.uint16).reshape(100, 100) * 3
    out = to_rgb_uint8(img)[..., 0]
    lo, hi = np.percentile(img, [1, 99.8])
    assert out[img <= lo].max() == 0 and out[img >= hi].min() == 255
    mid = img == 15000
    assert abs(int(out[mid][0]) - round((15000 - lo) / (hi - lo) * 255)) <= 1
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotone


def test_contrast_limits_override():
    img = np.linspace(0, 1000, 400, dtype=np.float32).reshape(20, 20)
    out = to_rgb_uint8(img, contrast_limits=(0, 500))[..., 0]
    assert out[img >= 500].min() == 255 and out[0, 0] == 0


def test_float_with_nan_and_inf():
    img = np.random.default_rng(2).random((32, 32)).astype(np.float64)
    img[0, 0], img[0, 1], img[0, 2] = np.nan, np.inf, -np.inf
    out = to_rgb_uint8(img)[..., 0]
    assert out[0, 0] == 0 and out[0, 1] == 255 and out[0, 2] == 0
    assert out[1:].max() == 255 and out[1:].min() == 0


def test_constant_and_all_nan_frames():
    assert to_rgb_uint8(np.full((8, 8), 5.0)).max() == 0
    assert to_rgb_uint8(np.full((8, 8), np.nan)).max() == 0


def test_bool_and_signed_int():
    assert to_rgb_uint8(np.eye(4, dtype=bool))[..., 0].tolist()[0] == [255, 0, 0, 0]
    signed = np.array([[-100, 0], [50, 100]], dtype=np.int32)
    out = to_rgb_uint8(signed)[..., 0]
    assert out[0, 0] == 0 and out[1, 1] == 255


def test_multichannel_selection_and_channel_first():
    rng = np.random.default_rng(3)
    stack = rng.random((5, 16, 16)).astype(np.float32)  # C, H, W
    out = to_rgb_uint8(stack, channel_axis=0, channels=[4, 1])
    assert out.shape == (16, 16, 3) and out[..., 2].max() == 0
    assert np.array_equal(out[..., 0], to_rgb_uint8(stack[4])[..., 0])
    auto = to_rgb_uint8(stack[:2])  # (2, 16, 16): a leading axis of <= 4 is taken as channels
    assert auto.shape == (16, 16, 3) and np.array_equal(auto[..., 1], to_rgb_uint8(stack[1])[..., 0])
    with pytest.raises(ValueError, match="channel_axis"):
        to_rgb_uint8(stack)
    single = to_rgb_uint8(rng.random((16, 16, 2)), channels=[1])
    assert np.array_equal(single[..., 0], single[..., 2])


def test_bad_inputs():
    with pytest.raises(ValueError, match="one 2D frame"):
        to_rgb_uint8(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="channels"):
        to_rgb_uint8(np.zeros((8, 8, 4)), channels=[5])
    with pytest.raises(ValueError, match="dtype"):
        to_rgb_uint8(np.array([["a"]]))
    with pytest.raises(ValueError, match="channel axis"):
        to_rgb_uint8(np.zeros((8, 8, 9)))
    with pytest.raises(ValueError, match="empty"):
        to_rgb_uint8(np.zeros((0, 8)))
