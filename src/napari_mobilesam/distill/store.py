"""Step 1 of distillation: teacher embeddings computed once and stored on disk, resumably.

Layout of ``<work>/teacher/``:
- ``manifest.json``: the teacher's identity, the frame list and the dtype;
- ``embeddings/0000000.npy``...: one ``256 x 64 x 64`` array per frame (float16 or float32),
  written to a temporary name then renamed, so an interrupted run never leaves a partial file.

A rerun with the same images and teacher computes only the frames still missing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..engine.errors import SettingsError
from .data import FrameSource, ImagesLike
from .teacher import Teacher, TeacherLike, load_teacher

__all__ = ["EMBEDDING_SHAPE", "EmbeddingStore", "iter_precompute", "precompute_teacher"]

EMBEDDING_SHAPE = (256, 64, 64)


class EmbeddingStore:
    """Teacher embeddings of every frame, one ``.npy`` per frame under ``root/embeddings``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"No teacher embeddings at {self.root}; run `mobilesam distill ... --precompute` first.")
        self.manifest = json.loads(manifest.read_text())
        self.frames: list[list] = self.manifest["frames"]
        self.dtype = np.dtype(self.manifest["dtype"])

    @classmethod
    def create(cls, root: str | os.PathLike, frames: list[list], teacher: dict, fp16: bool) -> EmbeddingStore:
        """Open the store at ``root``, creating it, or check that it was made from the same inputs.

        Raises:
            ValueError: when ``root`` holds embeddings of other images, another teacher or dtype.
        """
        root = Path(root)
        manifest = {"version": 1, "teacher": teacher, "frames": frames, "dtype": "float16" if fp16 else "float32",
                    "shape": list(EMBEDDING_SHAPE)}
        path = root / "manifest.json"
        if path.is_file():
            old = json.loads(path.read_text())
            for key in ("teacher", "frames", "dtype"):
                if old.get(key) != manifest[key]:
                    raise SettingsError(
                        f"{root} already holds teacher embeddings made with a different {key} "
                        f"({_short(old.get(key))} != {_short(manifest[key])}). Use another work folder, or delete {root} to start over."
                    )
        else:
            (root / "embeddings").mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(manifest))
            os.replace(tmp, path)
        (root / "embeddings").mkdir(parents=True, exist_ok=True)
        return cls(root)

    def __len__(self) -> int:
        return len(self.frames)

    def path(self, index: int) -> Path:
        return self.root / "embeddings" / f"{index:07d}.npy"

    def has(self, index: int) -> bool:
        return self.path(index).is_file()

    def missing(self) -> list[int]:
        """Frame indices whose embedding is not stored yet."""
        return [i for i in range(len(self)) if not self.has(i)]

    def complete(self) -> bool:
        return not self.missing()

    def write(self, index: int, embedding: np.ndarray) -> None:
        """Store ``embedding`` (``256 x 64 x 64``) atomically."""
        arr = np.asarray(embedding, dtype=self.dtype)
        if arr.shape != EMBEDDING_SHAPE:
            raise SettingsError(f"Teacher embedding has shape {arr.shape}; SAM's decoder needs {EMBEDDING_SHAPE}.")
        tmp = self.path(index).with_name(f".{index:07d}.tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, self.path(index))

    def read(self, index: int) -> np.ndarray:
        """The stored ``256 x 64 x 64`` embedding as float32."""
        return np.load(self.path(index)).astype(np.float32, copy=False)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) < 80 else text[:77] + "..."


def iter_precompute(
    images: ImagesLike | FrameSource,
    teacher: TeacherLike | Teacher,
    out_dir: str | os.PathLike,
    *,
    fp16: bool = True,
    device: str | torch.device = "cpu",
    decoder_from: str | os.PathLike | None = None,
) -> Iterator[dict]:
    """Compute and store the teacher embedding of every frame not stored yet.

    Yields after each frame ``{"stage": "precompute", "done", "total", "computed", "seconds"}``
    (``computed`` counts frames encoded in this run; ``done`` includes earlier runs). Breaking out
    of the loop is a clean cancel: finished frames are kept, and a rerun resumes.

    Args:
        images: a folder, file(s) or array (see :class:`FrameSource`).
        teacher: checkpoint path, ``Sam``/encoder module, or a loaded :class:`Teacher`.
        out_dir: the store folder (``<work>/teacher``).
        fp16: store float16 (2 MiB per frame instead of 4 MiB).
    """
    source = images if isinstance(images, FrameSource) else FrameSource(images)
    t = teacher if isinstance(teacher, Teacher) else load_teacher(teacher, decoder_from, device)
    store = EmbeddingStore.create(out_dir, source.describe(), t.describe(), fp16)
    todo = store.missing()
    done = len(store) - len(todo)
    dev = next(t.sam.parameters()).device
    start = time.perf_counter()
    yield {"stage": "precompute", "done": done, "total": len(store), "computed": 0, "seconds": 0.0}
    for n, index in enumerate(todo, 1):
        x = source[index].unsqueeze(0).to(dev)
        with torch.inference_mode():
            emb = t.sam.image_encoder(x)[0].float().cpu().numpy()
        store.write(index, emb)
        yield {"stage": "precompute", "done": done + n, "total": len(store), "computed": n,
               "seconds": time.perf_counter() - start}


def precompute_teacher(
    images: ImagesLike | FrameSource,
    teacher: TeacherLike | Teacher,
    out_dir: str | os.PathLike,
    **kwargs,
) -> EmbeddingStore:
    """Blocking :func:`iter_precompute`; returns the complete :class:`EmbeddingStore`."""
    for _ in iter_precompute(images, teacher, out_dir, **kwargs):
        pass
    return EmbeddingStore(out_dir)
