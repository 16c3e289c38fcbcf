"""Training images for distillation: a folder, a stack file, or an in-memory stack -> frames.

Every frame is preprocessed exactly as the predictor does it:
``engine.image.to_rgb_uint8`` -> segment-anything's ``ResizeLongestSide(1024)`` -> SAM's
pixel-mean/std normalisation -> zero padding to ``1024 x 1024``.

What counts as a frame (the same rule for every file and array):
- ``(H, W)`` or ``(H, W, C)`` with ``C <= 4``: one frame;
- ``(N, H, W)`` or ``(N, H, W, C)`` with ``C <= 4``: N frames along the first axis;
- more leading axes (e.g. ``T x Z x H x W``) are flattened into frames.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from ..engine.errors import SettingsError
from ..engine.image import to_rgb_uint8

__all__ = [
    "IMAGE_SIZE",
    "IMAGE_SUFFIXES",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "FrameSource",
    "ImagesLike",
    "preprocess",
]

IMAGE_SIZE = 1024
# SAM's normalisation constants (segment_anything/build_sam.py; the same in model/build.py).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy")

ImagesLike = str | os.PathLike | Sequence[str | os.PathLike] | np.ndarray


def _frame_count(shape: Sequence[int]) -> int:
    """How many frames an array of this shape holds (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise SettingsError(f"An image needs at least 2 dimensions (H, W); got shape {shape}.")
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] <= 4):
        return 1
    lead = shape[:-3] if shape[-1] <= 4 else shape[:-2]
    return int(np.prod(lead))


def _frame(arr: np.ndarray, index: int) -> np.ndarray:
    """Frame ``index`` of ``arr`` as ``(H, W)`` or ``(H, W, C)``."""
    if _frame_count(arr.shape) == 1:
        return np.asarray(arr)
    per = 3 if arr.shape[-1] <= 4 else 2
    lead = arr.shape[:-per]
    return np.asarray(arr[np.unravel_index(index, lead)])


def _open_array(path: Path) -> np.ndarray:
    """Open an image file, memory-mapped where the format allows it (large stacks)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, mmap_mode="r")
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            return tifffile.memmap(path, mode="r")
        except Exception:  # noqa: BLE001 - compressed or non-contiguous: read it whole
            return tifffile.imread(path)
    from skimage.io import imread

    return imread(path)


def _file_frames(path: Path) -> int:
    """Frames in an image file, from its header only (listing 100K files must not decode them)."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return _frame_count(tif.series[0].shape)
    if suffix == ".npy":
        return _frame_count(np.load(path, mmap_mode="r").shape)
    from PIL import Image

    with Image.open(path) as im:  # png/jpg/bmp: one frame; opening checks the file is an image
        im.size  # noqa: B018
    return 1


def preprocess(frame: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """One frame -> SAM's network input.

    Args:
        frame: ``(H, W)`` or ``(H, W, C)`` array, any dtype ``to_rgb_uint8`` accepts.

    Returns:
        ``(x, input_size)``: ``x`` is a ``3 x 1024 x 1024`` float32 tensor (normalised, padded
        bottom/right with zeros), ``input_size`` the ``(h, w)`` of the resized image before padding.
    """
    rgb = to_rgb_uint8(frame)
    resized = ResizeLongestSide(IMAGE_SIZE).apply_image(rgb)
    x = torch.as_tensor(resized).permute(2, 0, 1).float()
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    x = (x - mean) / std
    h, w = x.shape[-2:]
    return F.pad(x, (0, IMAGE_SIZE - w, 0, IMAGE_SIZE - h)).contiguous(), (int(h), int(w))


@dataclass(frozen=True)
class _Item:
    source: int  # index into FrameSource.sources
    frame: int


class FrameSource(torch.utils.data.Dataset):
    """All frames of a folder, a list of files, a stack file, or an in-memory array.

    Indexing returns the preprocessed ``3 x 1024 x 1024`` float32 tensor of that frame. Files are
    opened lazily (memory-mapped where possible), so it pickles cheaply into DataLoader workers.

    Args:
        images: a folder (every ``IMAGE_SUFFIXES`` file, sorted by name, not recursive), one file,
            a list of files, or an array of one frame or a stack of frames.
    """

    def __init__(self, images: ImagesLike):
        self.array: np.ndarray | None = None
        self.sources: list[str] = []
        if isinstance(images, np.ndarray):
            self.array = images
            counts = [_frame_count(images.shape)]
            self.sources = ["<array>"]
        else:
            paths = self._list_files(images)
            counts = []
            for p in paths:
                try:
                    counts.append(_file_frames(p))
                except Exception as err:
                    raise SettingsError(f"Could not read image {p}: {type(err).__name__}: {err}. Remove or convert it.") from err
            self.sources = [str(p.absolute()) for p in paths]  # absolute: a rerun from elsewhere matches
        self.items = [_Item(s, f) for s, n in enumerate(counts) for f in range(n)]
        if not self.items:
            raise SettingsError(f"No frames found in {images!r}.")
        self._cache: tuple[int, np.ndarray] | None = None

    @staticmethod
    def _list_files(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
        if isinstance(images, (str, os.PathLike)):
            path = Path(images)
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                if not files:
                    raise SettingsError(
                        f"The folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); point to the folder with your images."
                    )
                return files
            candidates = [path]
        else:
            candidates = [Path(p) for p in images]
        missing = [str(p) for p in candidates if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"Image file(s) not found: {', '.join(missing[:5])}. Check the path(s).")
        return candidates

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> list[list]:
        """JSON-able ``[[source, frame], ...]``, used to check that a stored run saw the same images."""
        return [[self.sources[it.source], it.frame] for it in self.items]

    def frame(self, index: int) -> np.ndarray:
        """The raw frame ``index`` (before ``to_rgb_uint8``)."""
        it = self.items[index]
        if self.array is not None:
            return _frame(self.array, it.frame)
        if self._cache is None or self._cache[0] != it.source:
            self._cache = (it.source, _open_array(Path(self.sources[it.source])))
        return _frame(self._cache[1], it.frame)

    def __getitem__(self, index: int) -> torch.Tensor:
        return preprocess(self.frame(index))[0]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = None  # memmaps are reopened in each worker
        return state
