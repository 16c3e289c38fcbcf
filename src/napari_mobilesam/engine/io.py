"""Files in, files out, frame by frame: lazy image readers, napari CSV prompts, resumable label output.

- :func:`open_image` reads TIFF (incl. OME-TIFF, BigTIFF, ImageJ), zarr / OME-Zarr, PNG/JPEG into an
  :class:`ImageSource`: ``shape = leading + frame``, where a frame is ``(H, W)`` or ``(H, W, C)`` (colour)
  and every leading index (time, z, well, ...) is one frame, numbered ``t = 0..n_frames-1`` in C order.
  Frames are read one at a time (``source.read(t)``, or ``source.to_dask()`` with one chunk per frame);
  an ``ImageSource`` is a small picklable record, so dask workers open the file themselves.
- :func:`read_prompts` turns napari's Points/Shapes CSV files (File > Save Layers) into engine
  :class:`~napari_mobilesam.engine.predictor.Prompt` objects per frame, in (row, col) coordinates.
- :class:`~.labelfile.LabelWriter` (in labelfile.py) writes a label stack frame by frame with a checksum and a
  completion marker per frame, so an interrupted run keeps every finished frame and a rerun skips them.

Errors about the user's files are :class:`InputError` (a ``ValueError``) with the file and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import InputError  # defined there, with the other errors a user can fix; re-exported here

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageSource",
    "InputError",
    "LabelWriter",  # noqa: F822 - provided lazily by __getattr__ (labelfile imports this module)
    "list_images",
    "open_image",
    "read_objects",
    "read_prompts",
    "with_channel_axis",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".zarr", ".png", ".jpg", ".jpeg")
_PLAIN = (".png", ".jpg", ".jpeg")


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
            try:
                frame = np.asarray(arr[index])
            except (ValueError, OSError, EOFError, IndexError, KeyError, RuntimeError) as err:
                first = (str(err).splitlines() or [type(err).__name__])[0][:120]
                raise InputError(f"Cannot read frame {t} of {self.path} ({first}): the file is truncated or damaged; "
                                 "copy or export it again.") from err
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
    """Open an image file lazily (nothing but metadata is read), as napari's own reader shows it.

    In particular a TIFF of planar ``(C, H, W)`` pages (what ``tifffile.imwrite`` writes for a ``(3, H, W)`` or
    ``(4, H, W)`` array by default, tagged RGB) is a stack of C frames, as in napari; pass the file's axis 0
    to :func:`with_channel_axis` (CLI: ``--channel-axis 0``) to read it as one colour frame instead.

    Raises:
        InputError: missing file, unknown format or unreadable content, with the fix.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"Input {p} does not exist; check the path.")
    suffix = p.suffix.lower()
    try:
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
                if frame_ndim == 3 and series.keyframe.planarconfig == 2:
                    # (C, H, W) planar pages (tifffile's default for a (3|4, H, W) array): napari shows C frames,
                    # and so do we; --channel-axis 0 (-3) reads them as one colour frame
                    frame_ndim = 2
            kind, inner = "tiff", "0"
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
    source = ImageSource(str(p), kind, tuple(int(s) for s in shape), np.dtype(dtype).name, frame_ndim, inner)
    _check_frame_fits(source)
    return source


def _check_frame_fits(source: ImageSource) -> None:
    """InputError when one frame (read whole, as every command does) needs more than half the machine's memory:
    a damaged header or a slide too large for frame-by-frame work. Checked before anything is read or loaded."""
    nbytes = int(np.prod(source.frame_shape, dtype=object)) * np.dtype(source.dtype).itemsize
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not on POSIX: a fixed 64 GiB
        memory = 64 * 2**30
    if nbytes > memory // 2:
        raise InputError(
            f"{source.path} declares frames of {' x '.join(str(v) for v in source.frame_shape)} {source.dtype} "
            f"({nbytes / 2**30:.1f} GiB each), more than half of this machine's memory ({memory / 2**30:.0f} GiB); if the "
            "size is right, crop or downsample the image first, else the file's header is damaged."
        )


def with_channel_axis(source: ImageSource, axis: int | None) -> ImageSource:
    """``source`` with axis ``axis`` of the file's array read as the frames' channels; None: unchanged.

    ``axis`` counts the file's axes (negative: from the end): a leading axis (e.g. 1 for a ``(T, C, H, W)``
    stack: frames become ``(H, W, C)``, one per time point), the last axis (``-1``: ``(..., H, W, C)``, any
    number of channels), or the axis a colour file already stores its channels in; planar ``(C, H, W)`` TIFF
    pages are a stack of C frames unless axis ``0`` (``-3``) is named here. The two axes before (or after) it
    are rows and columns."""
    if axis is None:
        return source
    ndim = len(source.shape)
    a = axis + ndim if axis < 0 else axis
    if source.frame_ndim == 3:  # the file's own channel axis: last, or first of planar (C, H, W) pages
        if a == (ndim - 3 if source.channel_first else ndim - 1) and source.channel_axis < 0:
            return source
    elif source.kind != "plain" and a == ndim - 1 and ndim >= 3:
        return replace(source, frame_ndim=3)
    elif source.kind != "plain" and 0 <= a < ndim - 2:
        lead = source.shape[:-2]
        shape = (*lead[:a], *lead[a + 1 :], *source.shape[-2:], lead[a])
        return replace(source, shape=shape, frame_ndim=3, channel_axis=a)
    where = "its channel axis" if source.frame_ndim == 3 else f"one of its leading axes 0..{ndim - 3} or -1 (the last)"
    raise InputError(
        f"--channel-axis {axis}: {source.path} has shape {source.shape} with "
        f"{'colour frames' if source.frame_ndim == 3 else 'frames'} of {source.frame_shape}; give {where} "
        "(the channel axis of a stack such as (T, C, H, W) is 1, of (H, W, C) it is -1)."
    )


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (and ``.zarr`` stores) directly inside ``folder``, sorted by name."""
    p = Path(folder)
    found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
    if not found:
        raise InputError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return found


# ---------------------------------------------------------------------------------------------- output
def __getattr__(name: str):
    if name == "LabelWriter":  # lives in labelfile.py (checksums, lock); imported on use
        from .labelfile import LabelWriter

        return LabelWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_prompts(source: ImageSource, points: str | os.PathLike | None = None, boxes: str | os.PathLike | None = None) -> dict:
    """napari Points/Shapes CSV -> ``{frame t: [(label id, Prompt), ...]}``; see :mod:`.csv_prompts`.

    (Imported on use: this module stays free of torch, for ``mobilesam --help`` and light readers.)
    """
    from .csv_prompts import read_prompts as read

    return read(source, points, boxes)


def read_objects(source: ImageSource, points: str | os.PathLike | None = None, boxes: str | os.PathLike | None = None, **kwargs) -> dict:
    """napari Points/Shapes CSV -> ``{frame t: [ObjectPrompt, ...]}`` (ids and mask choices, the widget's
    rules); see :func:`.csv_prompts.read_objects`."""
    from .csv_prompts import read_objects as read

    return read(source, points, boxes, **kwargs)
