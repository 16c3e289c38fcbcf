"""Files in, files out, frame by frame: lazy image readers, napari CSV prompts, resumable label output.

- :func:`open_image` reads TIFF (incl. OME-TIFF, BigTIFF, ImageJ), zarr / OME-Zarr, PNG/JPEG into an
  :class:`ImageSource`: ``shape = leading + frame``, where a frame is ``(H, W)`` or ``(H, W, C)`` (colour)
  and every leading index (time, z, well, ...) is one frame, numbered ``t = 0..n_frames-1`` in C order.
  Frames are read one at a time (``source.read(t)``, or ``source.to_dask()`` with one chunk per frame);
  an ``ImageSource`` is a small picklable record, so dask workers open the file themselves.
- :func:`read_prompts` turns napari's Points/Shapes CSV files (File > Save Layers) into engine
  :class:`~napari_mobilesam.engine.predictor.Prompt` objects per frame, in (row, col) coordinates.
- :class:`LabelWriter` writes a label stack frame by frame with a completion marker per frame, so an
  interrupted run keeps every finished frame and a rerun skips them.

Errors about the user's files are :class:`InputError` (a ``ValueError``) with the file and the fix.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


__all__ = [
    "IMAGE_SUFFIXES",
    "ImageSource",
    "InputError",
    "LabelWriter",
    "list_images",
    "open_image",
    "read_prompts",
    "with_channel_axis",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".zarr", ".png", ".jpg", ".jpeg")
_PLAIN = (".png", ".jpg", ".jpeg")


class InputError(ValueError):
    """A user-supplied file is missing, unreadable or inconsistent; the message names it and the fix."""


# ---------------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class ImageSource:
    """An image file opened lazily: metadata only; frames are read on demand.

    Attributes:
        path: the file (or zarr directory).
        kind: "tiff", "zarr" or "plain" (PNG/JPEG).
        shape: full array shape, ``leading + frame_shape``.
        dtype: numpy dtype name.
        frame_ndim: 2 for ``(H, W)`` frames, 3 for ``(H, W, C)`` colour frames.
        inner: the array inside a zarr group ("" for a plain array); the TIFF series number as text.
        channel_first: the file stores frames as ``(C, H, W)`` (planar TIFF); ``read`` returns ``(H, W, C)``
            and ``shape`` is given in that order.
        channel_axis: a leading axis of the file that holds channels (see :func:`with_channel_axis`),
            or -1; it is then the last axis of ``shape`` and of every frame.
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    frame_ndim: int
    inner: str = ""
    channel_first: bool = False
    channel_axis: int = -1

    @property
    def leading_shape(self) -> tuple[int, ...]:
        return self.shape[: len(self.shape) - self.frame_ndim]

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return self.shape[len(self.shape) - self.frame_ndim :]

    @property
    def hw(self) -> tuple[int, int]:
        """``(H, W)`` of a frame."""
        return tuple(self.frame_shape[:2])  # type: ignore[return-value]

    @property
    def n_frames(self) -> int:
        return int(np.prod(self.leading_shape, dtype=np.int64))

    def frame_index(self, t: int) -> tuple[int, ...]:
        """Leading index of flat frame number ``t``."""
        return tuple(int(i) for i in np.unravel_index(t, self.leading_shape)) if self.leading_shape else ()

    def _array(self):
        import zarr

        if self.kind == "tiff":
            import tifffile

            return zarr.open(tifffile.imread(self.path, aszarr=True, series=int(self.inner or 0), level=0), mode="r")
        group_or_array = zarr.open(self.path, mode="r")
        return group_or_array[self.inner] if self.inner else group_or_array

    def read(self, t: int) -> np.ndarray:
        """Frame ``t`` as a numpy array of ``frame_shape``."""
        if not 0 <= t < self.n_frames:
            raise IndexError(f"frame {t} is outside 0..{self.n_frames - 1} of {self.path}")
        if self.kind == "plain":
            return _read_plain(self.path)
        arr = self._array()
        try:
            index: tuple = self.frame_index(t)
            if self.channel_axis >= 0:  # all channels of this frame, moved last
                index = (*index[: self.channel_axis], slice(None), *index[self.channel_axis :])
            frame = np.asarray(arr[index])
            return np.moveaxis(frame, 0, -1) if self.channel_first or self.channel_axis >= 0 else frame
        finally:
            store = getattr(arr, "store", None)
            if self.kind == "tiff" and hasattr(store, "close"):
                store.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.read(t) for t in range(self.n_frames))

    def to_dask(self):
        """A lazy dask array of ``shape``, one chunk per frame (each chunk reads its frame on compute)."""
        import dask.array as da

        frames = [da.from_delayed(_delayed_read(self, t), self.frame_shape, np.dtype(self.dtype)) for t in range(self.n_frames)]
        return da.stack(frames).reshape(self.shape)


def _delayed_read(source: ImageSource, t: int):
    import dask

    return dask.delayed(source.read, pure=True)(t, dask_key_name=f"read-{source.path}-{t}")


def _read_plain(path: str) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or any((path / n).exists() for n in ("zarr.json", ".zgroup", ".zarray"))


def _zarr_inner(path: Path) -> str:
    """The array to read inside a zarr store: OME-Zarr's full-resolution level, or the only array."""
    import zarr

    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):
        return ""
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return str(multiscales[0]["datasets"][0]["path"])
    arrays = sorted(name for name, _ in node.arrays())
    if len(arrays) == 1:
        return arrays[0]
    raise InputError(
        f"{path} is a zarr group with arrays {arrays or 'none'} and no OME-Zarr metadata; "
        f"pass the array itself, e.g. {path / (arrays[0] if arrays else 'ARRAY')}."
    )


def open_image(path: str | os.PathLike) -> ImageSource:
    """Open an image file lazily (nothing but metadata is read).

    Raises:
        InputError: missing file, unknown format or unreadable content, with the fix.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"Input {p} does not exist; check the path.")
    suffix = p.suffix.lower()
    try:
        planar = False
        if p.is_dir() and _is_zarr(p):
            import zarr

            inner = _zarr_inner(p)
            arr = zarr.open(p, mode="r")
            arr = arr[inner] if inner else arr
            shape, dtype, kind = tuple(arr.shape), arr.dtype, "zarr"
            frame_ndim = 3 if len(shape) >= 3 and shape[-1] in (3, 4) else 2
        elif p.is_dir():
            raise InputError(f"{p} is a folder; give one image file (or, for `everything`, the folder of images).")
        elif suffix in (".tif", ".tiff", ".btf", ".tf8"):
            import tifffile

            with tifffile.TiffFile(p) as tf:
                series = tf.series[0]
                shape, dtype = tuple(series.levels[0].shape), series.dtype
                frame_ndim = len(series.keyframe.shape)
                planar = frame_ndim == 3 and series.keyframe.planarconfig == 2 and series.keyframe.shape[0] <= 4
            kind, inner = "tiff", "0"
            if planar:
                shape = (*shape[:-3], shape[-2], shape[-1], shape[-3])
        elif suffix in _PLAIN:
            arr = _read_plain(str(p))
            shape, dtype, kind, inner = arr.shape, arr.dtype, "plain", ""
            frame_ndim = arr.ndim
        else:
            raise InputError(f"{p}: unsupported format {suffix or '(no suffix)'}; use TIFF, OME-TIFF, zarr, OME-Zarr, PNG or JPEG.")
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"Cannot read {p} as {suffix or 'an image'}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; "
                         "the file may be damaged or not what its name says.") from err
    if len(shape) < 2 or frame_ndim not in (2, 3) or len(shape) < frame_ndim or min(shape) < 1:
        raise InputError(f"{p} has shape {shape}; need frames of (H, W) or (H, W, C) pixels.")
    planar = kind == "tiff" and planar
    return ImageSource(str(p), kind, tuple(int(s) for s in shape), np.dtype(dtype).name, frame_ndim, inner, planar)


def with_channel_axis(source: ImageSource, axis: int | None) -> ImageSource:
    """``source`` with leading axis ``axis`` of the file read as the frames' channels (e.g. 1 for a
    ``(T, C, H, W)`` stack: frames become ``(H, W, C)``, one per time point); None: unchanged."""
    if axis is None:
        return source
    ndim = len(source.shape)
    a = axis + ndim if axis < 0 else axis
    if source.frame_ndim != 2 or source.kind == "plain" or not 0 <= a < ndim - 2:
        raise InputError(
            f"--channel-axis {axis}: {source.path} has shape {source.shape} with "
            f"{'colour frames' if source.frame_ndim == 3 else 'frames'} of {source.frame_shape}; give one of its leading "
            f"axes 0..{ndim - 3} (the channel axis of a stack such as (T, C, H, W) is 1)."
        )
    lead = source.shape[:-2]
    shape = (*lead[:a], *lead[a + 1 :], *source.shape[-2:], lead[a])
    return replace(source, shape=shape, frame_ndim=3, channel_axis=a)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (and ``.zarr`` stores) directly inside ``folder``, sorted by name."""
    p = Path(folder)
    found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
    if not found:
        raise InputError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return found


# ---------------------------------------------------------------------------------------------- output
class LabelWriter:
    """Label output written frame by frame, resumable.

    ``OUT.zarr`` is written in place: array ``labels`` (``leading + (H, W)``, uint32) and array
    ``max_id`` (one entry per frame; -1 until the frame is finished). Any other ``OUT`` (``.tif``)
    is built in ``OUT.partial.zarr`` and assembled into the TIFF when every frame is done, then the
    partial store is removed. ``signature`` (input and settings) is stored; resuming with another
    signature is refused, so results of different runs are never mixed.

    Args:
        path: output file (``.tif``/``.tiff`` or ``.zarr``).
        leading_shape, hw: frame layout of the input; the output is ``leading_shape + hw``.
        signature: JSON-able description of input and settings.
        overwrite: discard earlier output instead of resuming.
    """

    def __init__(self, path: str | os.PathLike, leading_shape: tuple[int, ...], hw: tuple[int, int], signature: dict, overwrite: bool = False):
        import zarr

        self.path = Path(path)
        self.is_zarr = self.path.suffix.lower() == ".zarr"
        if not self.is_zarr and self.path.suffix.lower() not in (".tif", ".tiff"):
            raise InputError(f"Output {self.path}: use a .tif, .tiff or .zarr name.")
        self.store_path = self.path if self.is_zarr else self.path.with_name(self.path.name + ".partial.zarr")
        self.shape = tuple(leading_shape) + tuple(hw)
        self.n_frames = int(np.prod(leading_shape, dtype=np.int64))
        self.signature = json.loads(json.dumps(signature))
        for p in {self.store_path, self.path}:
            if p.exists() and self._signature_of(p) is None:  # never delete or write into what we did not make
                raise InputError(f"Output {p} exists and was not written by mobilesam; choose another output path.")
            if overwrite and p.exists():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.complete = not self.is_zarr and self.path.exists()
        if self.complete:
            if self._signature_of(self.path) != self.signature:
                raise InputError(f"{self.path} exists and holds results of a different run (other input or settings); "
                                 "pass --overwrite to replace it, or choose another output.")
            self._max = np.zeros(self.n_frames, np.int64)
            return
        if self.store_path.exists():
            group = zarr.open_group(self.store_path, mode="r+")
            if self._signature_of(self.store_path) != self.signature:
                raise InputError(
                    f"{self.store_path} holds results of a different run (other input or settings); "
                    "pass --overwrite to replace it, or choose another output."
                )
        else:
            self.store_path.parent.mkdir(parents=True, exist_ok=True)
            group = zarr.open_group(self.store_path, mode="w")
            group.attrs["mobilesam_labels"] = {"signature": self.signature, "shape": list(self.shape)}
            tile = (1,) * len(leading_shape) + tuple(min(s, 2048) for s in hw)
            group.create_array("labels", shape=self.shape, chunks=tile, dtype="uint32", fill_value=0)
            group.create_array("max_id", shape=(self.n_frames,), chunks=(1,), dtype="int64", fill_value=-1)
        self._labels, self._marks = group["labels"], group["max_id"]
        self._max = np.asarray(self._marks[:])
        self.complete = self.done_count == self.n_frames and self.is_zarr

    @property
    def done_count(self) -> int:
        return int((self._max >= 0).sum())

    def is_done(self, t: int) -> bool:
        return bool(self._max[t] >= 0)

    def todo(self) -> list[int]:
        """Frames still to compute."""
        return [] if self.complete else [t for t in range(self.n_frames) if self._max[t] < 0]

    def offset(self, t: int) -> int:
        """Largest id in the finished frames before ``t``: frame ``t``'s ids start after it."""
        return int(max(0, self._max[:t].max(initial=0)))

    def write(self, t: int, labels: np.ndarray) -> None:
        """Store frame ``t`` (final ids), then mark it finished."""
        idx = np.unravel_index(t, self.shape[:-2]) if len(self.shape) > 2 else ()
        self._labels[tuple(int(i) for i in idx)] = np.asarray(labels, np.uint32)
        self._marks[t] = self._max[t] = int(labels.max(initial=0))

    @staticmethod
    def _signature_of(path: Path) -> dict | None:
        """The run signature stored in a label output of ours (TIFF or zarr), else None."""
        try:
            if path.is_dir():
                import zarr

                return dict(zarr.open_group(path, mode="r").attrs)["mobilesam_labels"]["signature"]
            import tifffile

            with tifffile.TiffFile(path) as tf:
                meta = (tf.shaped_metadata or [{}])[0]
            return json.loads(meta["mobilesam"])
        except Exception:  # not ours, or not readable: never resumed over, never deleted
            return None

    def finish(self) -> Path:
        """Assemble the TIFF (frame by frame) once every frame is done; returns the output path."""
        if self.is_zarr or self.complete:
            return self.path
        if self.done_count < self.n_frames:
            raise RuntimeError(f"{self.n_frames - self.done_count} frames of {self.path} are not finished.")
        import tifffile

        tmp = self.path.with_name(self.path.name + ".tmp")
        # a 2D image is written as one array: tifffile reads a one-page iterator back as (1, H, W)
        frames: Iterable[np.ndarray] | np.ndarray = (np.asarray(self._labels[np.unravel_index(t, self.shape[:-2])]) for t in range(self.n_frames)) \
            if len(self.shape) > 2 else np.asarray(self._labels[...])
        with tifffile.TiffWriter(tmp, bigtiff=4 * int(np.prod(self.shape)) > 2**31) as tw:
            tw.write(frames, shape=self.shape, dtype=np.uint32, compression="zlib", photometric="minisblack",
                     metadata={"mobilesam": json.dumps(self.signature, sort_keys=True)})
        os.replace(tmp, self.path)
        shutil.rmtree(self.store_path)
        self.complete = True
        return self.path



def read_prompts(source: ImageSource, points: str | os.PathLike | None = None, boxes: str | os.PathLike | None = None) -> dict:
    """napari Points/Shapes CSV -> ``{frame t: [(label id, Prompt), ...]}``; see :mod:`.csv_prompts`.

    (Imported on use: this module stays free of torch, for ``mobilesam --help`` and light readers.)
    """
    from .csv_prompts import read_prompts as read

    return read(source, points, boxes)
