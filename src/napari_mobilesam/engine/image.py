"""Turn any microscopy frame into the H x W x 3 uint8 RGB that SAM expects.

Normalisation rule (documented in docs/weights.md, "Image normalisation"):
- ``uint8`` grey or RGB(A): values pass through unchanged (grey is repeated to 3 channels,
  alpha is dropped). The official MobileSAM behaves this way, and the reference relies on it.
- ``bool``: False -> 0, True -> 255.
- any other dtype (uint16, int, float): a linear contrast stretch from the 1st to the 99.8th
  percentile of the finite values to 0..255, clipped. NaN and -inf become 0, +inf becomes 255.
  ``contrast_limits=(lo, hi)`` replaces the percentiles (the napari widget passes the layer's
  contrast limits, so the model sees what the user sees). Colour images are stretched jointly,
  multichannel (fluorescence) images per channel.
- multichannel (a channel axis whose length is not 3 or 4, or an explicit ``channels``): up to
  three channels are chosen (default: the first three) and mapped to R, G, B; a single chosen
  channel is treated as grey; two channels fill R and G with B = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import SettingsError, UserError

__all__ = ["PERCENTILES", "channels_last", "preprocess_options", "to_rgb_uint8"]

PERCENTILES = (1.0, 99.8)
_SAMPLE = 1 << 22  # percentiles from at most ~4M values: same result within a grey level, much faster


def _stretch(values: np.ndarray, limits: tuple[float, float] | None) -> np.ndarray:
    """Linear map of ``values`` (any real dtype) to uint8 by ``limits`` or robust percentiles."""
    data = values.astype(np.float32, copy=False)
    if limits is None:
        flat = data.ravel()
        if flat.size > _SAMPLE:
            flat = flat[:: flat.size // _SAMPLE + 1]
        finite = flat[np.isfinite(flat)]
        if finite.size == 0:
            return np.zeros(values.shape, np.uint8)
        lo, hi = np.percentile(finite, PERCENTILES)
        if hi <= lo:  # nearly constant image: fall back to the full range
            lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = (float(v) for v in limits)
    if not hi > lo:
        return np.zeros(values.shape, np.uint8)
    out = (data - lo) * (255.0 / (hi - lo))
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def to_rgb_uint8(
    image: np.ndarray,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    contrast_limits: tuple[float, float] | None = None,
) -> np.ndarray:
    """Convert one frame to RGB uint8.

    Args:
        image: a 2D ``(H, W)`` grey frame, or 3D with a channel axis: ``(H, W, C)`` by default
            when ``C <= 4``, else give ``channel_axis``. Any real or bool dtype; NaN/inf allowed.
        channel_axis: the axis holding channels, for channel-first data such as ``(C, H, W)``.
        channels: which channels to use as R, G, B (1 to 3 indices).
        contrast_limits: ``(lo, hi)`` intensity window for non-uint8 data instead of percentiles.

    Returns:
        ``(H, W, 3)`` uint8, C-contiguous.

    Raises:
        UserError (a ValueError): with the fix, for unsupported shapes, dtypes or channel choices.
    """
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise UserError(f"Image dtype {arr.dtype} is not supported; give a numeric (int, uint, float or bool) array.")
    if arr.ndim == 3 and channel_axis is None and arr.shape[-1] > 4 and arr.shape[0] <= 4:
        channel_axis = 0
    if arr.ndim == 3:
        arr = np.moveaxis(arr, channel_axis if channel_axis is not None else -1, -1)
        if channel_axis is None and arr.shape[-1] > 4:
            raise SettingsError(
                f"Image of shape {np.shape(image)} has no obvious channel axis. A frame is 2D (H, W) or "
                "(H, W, C) with C <= 4; pass channel_axis=... for other layouts, or give one frame of a stack."
            )
    elif arr.ndim != 2:
        raise UserError(
            f"Expected one 2D frame (H, W) or (H, W, C), got shape {arr.shape}. For stacks, pass one frame at a time."
        )
    if min(arr.shape[:2]) < 1:
        raise UserError(f"Image of shape {arr.shape} is empty.")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3:
        n = arr.shape[-1]
        colour = channels is None and n in (3, 4)
        if channels is None:
            channels = (0, 1, 2) if colour else tuple(range(min(n, 3)))
        channels = tuple(int(c) for c in channels)
        if not 1 <= len(channels) <= 3 or any(not -n <= c < n for c in channels):
            raise SettingsError(f"channels={channels} is invalid for an image with {n} channels; pick 1 to 3 of 0..{n - 1}.")
        arr = arr[..., list(channels)]
        if arr.dtype != np.uint8:
            if colour:
                arr = _stretch(arr, contrast_limits)
            else:
                arr = np.stack([_stretch(arr[..., i], contrast_limits) for i in range(arr.shape[-1])], -1)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        elif arr.shape[-1] == 2:
            arr = np.concatenate([arr, np.zeros_like(arr[..., :1])], -1)
    if arr.ndim == 2:
        if arr.dtype != np.uint8:
            arr = _stretch(arr, contrast_limits)
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr)


def preprocess_options(
    channels: Sequence[int] | None,
    contrast: Sequence[float] | None,
    frame_shape: Sequence[int],
) -> dict:
    """``to_rgb_uint8`` / ``Predictor.set_image`` options from user input, checked against a frame.

    Args:
        channels: 1 to 3 channel indices for colour/multichannel ``(H, W, C)`` frames, or None.
        contrast: ``(lo, hi)`` intensity window, or None (1-99.8 percentiles per frame).
        frame_shape: ``(H, W)`` or ``(H, W, C)``.

    Returns:
        ``{"channels": [...], "contrast_limits": [lo, hi]}`` with only the options given (lists,
        so that the dict is also what embedding-store and resume fingerprints record).

    Raises:
        ValueError: with the fix, for channels of a grey image, an index out of range or a window
            with ``lo >= hi``.
    """
    out: dict = {}
    if not channels and len(frame_shape) == 3 and int(frame_shape[-1]) > 4:
        raise SettingsError(f"The frames have {frame_shape[-1]} channels; pick 1 to 3 of them (as R, G, B) with --channels.")
    if channels:
        if len(frame_shape) != 3:
            raise SettingsError(f"--channels needs frames with a channel axis (H, W, C); these frames are {tuple(frame_shape)}.")
        n = int(frame_shape[-1])
        bad = [c for c in channels if not 0 <= int(c) < n]
        if bad or not 1 <= len(channels) <= 3:
            raise SettingsError(f"--channels takes 1 to 3 indices in 0..{n - 1} (the frames have {n} channels), got {list(channels)}.")
        out["channels"] = [int(c) for c in channels]
    if contrast is not None:
        lo, hi = (float(v) for v in contrast)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise SettingsError(f"--contrast LO HI needs finite LO < HI, got {lo} {hi}.")
        out["contrast_limits"] = [lo, hi]
    return out


class _ChannelsLast:
    """A lazy view of an array-like (numpy, dask, zarr) with one axis moved last; indexing a leading
    (frame) index reads only that frame."""

    def __init__(self, array, axis: int):
        self.array, self.axis = array, axis
        shape = tuple(np.shape(array))
        self.shape = (*shape[:axis], *shape[axis + 1 :], shape[axis])
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, idx) -> np.ndarray:
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(not isinstance(i, (int, np.integer)) for i in idx) or len(idx) > self.ndim - 3:
            return np.asarray(self)[idx]
        full = (*idx[: self.axis], slice(None), *idx[self.axis :]) if self.axis < len(idx) else idx
        frame = np.asarray(self.array[full])
        return np.moveaxis(frame, self.axis - len(idx) if self.axis >= len(idx) else 0, -1)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.moveaxis(np.asarray(self.array), self.axis, -1)
        return out if dtype is None else out.astype(dtype)


def channels_last(image, channel_axis: int):
    """``image`` (``(..., H, W)`` with a channel axis anywhere but the last two spatial axes, or
    ``(..., H, W, C)``) as ``(..., H, W, C)``; lazy for dask/zarr. ``channel_axis`` may be negative.

    Raises:
        ValueError: the axis does not exist, or would leave fewer than two spatial axes.
    """
    shape = tuple(np.shape(image))
    a = channel_axis + len(shape) if channel_axis < 0 else channel_axis
    if not 0 <= a < len(shape) or len(shape) < 3 or a == len(shape) - 2:
        raise SettingsError(f"channel_axis={channel_axis} does not fit an image of shape {shape}; give the axis holding "
                         "the channels, e.g. -1 for (H, W, C), 0 for (C, H, W), 1 for (T, C, H, W).")
    return image if a == len(shape) - 1 else _ChannelsLast(image, a)
