"""Image embeddings on disk (zarr), one entry per frame, tied to the model and the image they came from.

Layout of ``EMB.zarr`` (a zarr group):
- array ``features``: ``(n_frames, 256, 64, 64)`` float32 (or float16), one chunk per frame;
- array ``done``: ``(n_frames,)`` uint8, 1 once a frame's features are written (written after them,
  so an interrupted run never leaves a half-written frame marked done);
- arrays ``checksum`` and ``frame_hash``: ``(n_frames,)`` uint64, a checksum of each frame's stored
  features and a hash of the image frame it was computed from (0: not recorded). :meth:`EmbeddingStore.load`
  checks both: a damaged embedding or another image's frame is refused, never used;
- attribute ``mobilesam_embeddings``: format version, ``model_hash`` (image encoder weights and
  pixel normalisation), ``image_fingerprint`` (shape, dtype, pre-processing and a hash of the first
  and last frames, a quick check on opening; every frame is checked on use), ``original_size``, ``input_size``, encoder ``image_size`` and package version.

Opening a store made for another model or image raises :class:`EmbeddingStoreMismatch`, naming what
differs; reusing one that matches skips the encoder entirely (``pred.set_embedding(store.load(t))``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .embeddings import Embedding
from .errors import InputError, MissingEmbedding, SettingsError
from .io import ImageSource

__all__ = ["EmbeddingStore", "EmbeddingStoreDamaged", "EmbeddingStoreMismatch", "frame_hash", "image_fingerprint", "model_fingerprint"]

FORMAT = 2  # 2: per-frame checksum and frame hash
ATTR = "mobilesam_embeddings"


class EmbeddingStoreMismatch(InputError):
    """The store on disk was computed for another model, image or settings."""


class EmbeddingStoreDamaged(InputError):
    """A stored embedding fails its checksum or cannot be read."""


def frame_hash(frame: np.ndarray) -> int:
    """64-bit hash of one image frame (pixels, shape, dtype) as the store records it; never 0."""
    from .labelfile import frame_checksum

    return frame_checksum(np.asarray(frame))


def _looks_like_store(p: Path) -> bool:
    return p.is_dir() and all((p / n).is_dir() for n in ("features", "done"))


def model_fingerprint(sam: torch.nn.Module) -> str:
    """Hash of everything that determines an embedding: image encoder weights and pixel mean/std."""
    h = hashlib.blake2b(digest_size=16)
    state = sam.image_encoder.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    for buf in (sam.pixel_mean, sam.pixel_std):
        h.update(buf.detach().to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()


def image_fingerprint(image: ImageSource | Any, preprocess: dict | None = None, frame_ndim: int | None = None) -> str:
    """Identify an image cheaply: shape, dtype, pre-processing options and a hash of its first and last frames.

    Args:
        image: an :class:`ImageSource`, or an array-like (numpy, dask, zarr) of ``(..., H, W[, C])``.
        preprocess: options that change the model input (channels, contrast limits).
        frame_ndim: 2 or 3 for arrays (default: 3 when the last axis has length 3 or 4).
    """
    if isinstance(image, ImageSource):
        shape, dtype, n = image.shape, image.dtype, image.n_frames
        first, last = image.read(0), image.read(n - 1)
    else:
        shape, dtype = tuple(image.shape), np.dtype(image.dtype).name
        fnd = frame_ndim or (3 if len(shape) >= 3 and shape[-1] in (3, 4) else 2)
        flat = image.reshape((-1, *shape[len(shape) - fnd :]))
        first, last = np.asarray(flat[0]), np.asarray(flat[-1])
    h = hashlib.blake2b(digest_size=12)
    for frame in (first, last):
        h.update(np.ascontiguousarray(frame).tobytes())
    desc = {"shape": list(shape), "dtype": str(dtype), "preprocess": preprocess or {}, "pixels": h.hexdigest()}
    return json.dumps(desc, sort_keys=True)


def _input_size(hw: Sequence[int], image_size: int) -> tuple[int, int]:
    scale = image_size / max(hw)
    return int(hw[0] * scale + 0.5), int(hw[1] * scale + 0.5)  # as SAM's ResizeLongestSide


class EmbeddingStore:
    """Per-frame embeddings in a zarr group. Create or reuse with :meth:`open`."""

    def __init__(self, path: Path, group: Any):
        self.path = path
        self.meta: dict = dict(group.attrs)[ATTR]
        try:
            self._features, self._done_arr = group["features"], group["done"]
            self._sums, self._hashes = group["checksum"], group["frame_hash"]
            self._done = np.asarray(self._done_arr[:]).astype(bool)
        except Exception as err:  # noqa: BLE001 - whatever zarr raises on a damaged store, the fix is the same
            raise EmbeddingStoreDamaged(f"{path} is damaged ({type(err).__name__}); recompute it with "
                                        f"`mobilesam embed IMAGE -o {path} --overwrite`.") from None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        model_hash: str,
        image_fingerprint: str,
        *,
        n_frames: int | None = None,
        original_size: tuple[int, int] | None = None,
        image_size: int = 1024,
        dtype: str = "float32",
        mode: str = "a",
        check: bool = True,
        widget: bool = False,
    ) -> EmbeddingStore:
        """Open (mode "r": existing only; "a": create if missing) and check it matches.

        Args:
            path: the ``.zarr`` directory.
            model_hash: :func:`model_fingerprint` of the model in use.
            image_fingerprint: :func:`image_fingerprint` of the image in use.
            n_frames, original_size: needed to create a store: frame count, ``(H, W)``.
            dtype: "float32" (exact) or "float16" (half the disk).
            check: compare model and image (False: only make sure it is an embedding store).
            widget: a mismatch names the widget's fixes (its *model* and *embeddings* fields), not the CLI's.

        Raises:
            EmbeddingStoreMismatch: the store belongs to another model or image.
            InputError: missing store in mode "r", or not an embedding store.
        """
        import zarr

        from .. import __version__

        p = Path(path).expanduser()
        exists = p.exists()
        if mode == "r" and not exists:
            raise InputError(f"Embedding store {p} does not exist; create it with `mobilesam embed IMAGE -o {p}`.")
        if exists:
            try:
                group = zarr.open_group(p, mode="r" if mode == "r" else "r+")
                meta = dict(group.attrs)[ATTR]
            except Exception as err:
                if _looks_like_store(p):
                    raise InputError(f"{p} is a damaged embedding store ({type(err).__name__}: its zarr.json cannot be read); "
                                     f"recompute it with `mobilesam embed IMAGE -o {p} --overwrite`.") from None
                raise InputError(f"{p} is not a mobilesam embedding store ({type(err).__name__}); choose another path.") from err
            if check:
                cls._check(p, meta, model_hash, image_fingerprint, image_size, reading=mode == "r", widget=widget)
            return cls(p, group)
        if n_frames is None or original_size is None:
            raise SettingsError("n_frames and original_size are needed to create an embedding store.")
        if dtype not in ("float32", "float16"):
            raise SettingsError(f"dtype must be 'float32' or 'float16', got {dtype!r}.")
        group = zarr.open_group(p, mode="w")
        group.create_array("features", shape=(n_frames, 256, 64, 64), chunks=(1, 256, 64, 64), dtype=dtype, fill_value=0)
        group.create_array("done", shape=(n_frames,), chunks=(1,), dtype="uint8", fill_value=0)
        group.create_array("checksum", shape=(n_frames,), chunks=(1,), dtype="uint64", fill_value=0)
        group.create_array("frame_hash", shape=(n_frames,), chunks=(1,), dtype="uint64", fill_value=0)
        group.attrs[ATTR] = {
            "format": FORMAT,
            "model_hash": model_hash,
            "image_fingerprint": image_fingerprint,
            "n_frames": int(n_frames),
            "original_size": [int(s) for s in original_size],
            "input_size": list(_input_size(original_size, image_size)),
            "image_size": int(image_size),
            "dtype": dtype,
            "package_version": __version__,
        }
        return cls(p, group)

    @staticmethod
    def _check(p: Path, meta: dict, model_hash: str, fingerprint: str, image_size: int, reading: bool = False, widget: bool = False) -> None:
        if meta.get("format") != FORMAT:
            raise EmbeddingStoreMismatch(f"{p} has store format {meta.get('format')}, this version reads {FORMAT}; recompute it with `mobilesam embed`.")
        if reading:  # --embeddings of segment/everything/...: only `mobilesam embed` rewrites a store
            fix = (f"recompute it with `mobilesam embed IMAGE -o {p} --overwrite` and the same --weights, --contrast and "
                   "--channels as this command, or give --embeddings a store made with them.")
        elif widget:
            fix = f"choose another 'embeddings' path, or delete {p} to compute it again."
        else:
            fix = f"delete {p} (or pass --overwrite) to recompute, or use a new -o path."
        same = "pick the weights it was made with as 'model'" if widget else "use the same --weights"
        if meta.get("model_hash") != model_hash:
            raise EmbeddingStoreMismatch(f"{p} was computed with other model weights (encoder hash {meta.get('model_hash', '?')[:12]} "
                                         f"!= {model_hash[:12]}); {same}, or {fix}")
        if meta.get("image_size") != image_size:
            raise EmbeddingStoreMismatch(f"{p} was computed at input size {meta.get('image_size')}, not {image_size}; {fix}")
        if meta.get("image_fingerprint") != fingerprint:
            old, new = json.loads(meta.get("image_fingerprint", "{}")), json.loads(fingerprint)
            what = [k for k in ("shape", "dtype", "preprocess", "pixels") if old.get(k) != new.get(k)]
            detail = ", ".join(f"{k} {old.get(k)} != {new.get(k)}" if k != "pixels" else "pixel values differ" for k in what)
            prep = "(the image layer's contrast limits, channels)" if widget else "(--contrast, --channels)"
            subject = f"with other pre-processing {prep}" if what == ["preprocess"] else "for another image"
            raise EmbeddingStoreMismatch(f"{p} was computed {subject} ({detail}); {fix}")

    # ------------------------------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return int(self.meta["n_frames"])

    @property
    def done_count(self) -> int:
        return int(self._done.sum())

    def has(self, t: int) -> bool:
        """Whether frame ``t``'s embedding is stored."""
        return bool(self._done[t])

    def todo(self) -> list[int]:
        return [t for t in range(self.n_frames) if not self._done[t]]

    def load(self, t: int, frame: np.ndarray | None = None) -> Embedding:
        """Frame ``t``'s :class:`Embedding` (features ``1 x 256 x 64 x 64`` float32 on the CPU), checked.

        Args:
            frame: the image frame it is used for; compared with the hash recorded when it was stored.

        Raises:
            MissingEmbedding (a KeyError): not stored. EmbeddingStoreDamaged: fails its checksum or cannot be read.
            EmbeddingStoreMismatch: ``frame`` is not the frame the embedding was computed from.
        """
        if not self.has(t):
            raise MissingEmbedding(f"Frame {t} has no stored embedding in {self.path}; run `mobilesam embed` to complete it.")
        fix = f"run `mobilesam embed IMAGE -o {self.path}` (it recomputes damaged frames), or delete the store."
        try:
            stored = np.asarray(self._features[t])
            ok = int(self._sums[t]) == _checksum(stored)
        except Exception as err:  # noqa: BLE001 - a damaged chunk, whatever the codec raises
            raise EmbeddingStoreDamaged(f"Frame {t}'s embedding in {self.path} cannot be read ({type(err).__name__}); {fix}") from None
        if not ok:
            raise EmbeddingStoreDamaged(f"Frame {t}'s embedding in {self.path} fails its checksum (the file was damaged); {fix}")
        if frame is not None and int(self._hashes[t]) not in (0, frame_hash(frame)):
            raise EmbeddingStoreMismatch(f"Frame {t} of this image differs from the frame {self.path} was computed for; "
                                         "use the store made for this image, or recompute it with `mobilesam embed ... --overwrite`.")
        feats = torch.from_numpy(stored.astype(np.float32))[None]
        return Embedding(feats, tuple(self.meta["original_size"]), tuple(self.meta["input_size"]))

    def save(self, t: int, emb: Embedding, frame_hash: int | None = None) -> None:
        """Write frame ``t``'s embedding, its checksum and ``frame_hash`` (of the image frame, see
        :func:`frame_hash`; None: not recorded), then mark it done."""
        if tuple(emb.original_size) != tuple(self.meta["original_size"]) or tuple(emb.input_size) != tuple(self.meta["input_size"]):
            raise InputError(f"Embedding of a {emb.original_size} frame does not fit store {self.path} of {self.meta['original_size']} frames.")
        stored = emb.features.detach().to("cpu", torch.float32).reshape(256, 64, 64).numpy().astype(self._features.dtype)
        self._features[t] = stored
        self._sums[t] = np.uint64(_checksum(stored))
        self._hashes[t] = np.uint64(frame_hash or 0)
        self._done_arr[t] = 1
        self._done[t] = True

    def verify(self) -> list[int]:
        """Check every stored embedding; those damaged are marked missing (to be recomputed). Returns them."""
        bad = []
        for t in np.flatnonzero(self._done):
            try:
                ok = int(self._sums[t]) == _checksum(np.asarray(self._features[t]))
            except Exception:  # noqa: BLE001 - an unreadable chunk is a damaged frame
                ok = False
            if not ok:
                bad.append(int(t))
                self._done_arr[t] = 0
                self._done[t] = False
        return bad

    @staticmethod
    def remove(path: str | os.PathLike) -> None:
        """Delete an embedding store of ours (also one whose metadata is damaged); refuse anything else."""
        import shutil

        p = Path(path).expanduser()
        if not _looks_like_store(p):
            EmbeddingStore.open(p, "", "", mode="r", check=False)  # raises: not an embedding store
        shutil.rmtree(p)


def _checksum(stored: np.ndarray) -> int:
    return frame_hash(stored)
