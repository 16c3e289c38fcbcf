"""Per-frame jobs of the ``mobilesam`` commands, run inline or on dask workers (see ``distributed.py``).

A job is a small picklable object called as ``job(models, source, t, extra)``: it reads frame ``t``
of ``source`` itself, uses the process's models and returns a numpy array. The same job objects run
in one process and on a cluster, which is why both give identical results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .decode import decode_objects  # re-exported: its home was this module
from .distributed import ModelHolder
from .io import ImageSource

__all__ = ["EmbedJob", "EverythingJob", "ModelHashJob", "SegmentJob", "decode_objects", "use_stored_embedding"]


def _trusted_store(path: str):
    """An embedding store already validated by the caller (workers skip re-reading fingerprints)."""
    import zarr

    from .store import EmbeddingStore

    return EmbeddingStore(Path(path), zarr.open_group(path, mode="r"))


def _frame_options(source: ImageSource, preprocess: dict) -> dict:
    """``set_image`` options for a frame of ``source``: frames of more than 4 channels come with their
    channels last (``(H, W, C)``), which ``set_image`` cannot guess from the shape alone."""
    many = source.frame_ndim == 3 and int(source.frame_shape[-1]) > 4
    return {**preprocess, "channel_axis": -1} if many else dict(preprocess)


def use_stored_embedding(models: ModelHolder, store_path: str | None, source: ImageSource, t: int) -> Any:
    """Put frame ``t``'s stored embedding in the predictor's cache; returns the cache key (None if absent).

    The frame is read and compared with the hash the store recorded for it, and the embedding with its
    checksum (:meth:`EmbeddingStore.load`): a store made for another image, or a damaged one, is refused."""
    if not store_path:
        return None
    store = _trusted_store(store_path)
    if not store.has(t):
        return None
    key = ("embedding-store", store_path, t)
    models.predictor.cache.put(key, store.load(t, frame=source.read(t)))
    return key


@dataclass(frozen=True)
class ModelHashJob:
    """Returns the process's model fingerprint (to validate an embedding store where the model lives); loads
    the detector too, so that a run fails on a bad model or detector file before it writes anything."""

    def __call__(self, models: ModelHolder, source: ImageSource, t: int, extra: Any) -> str:
        models.detector  # noqa: B018 - loaded now (None without one)
        return models.model_hash


@dataclass(frozen=True)
class EmbedJob:
    """Frame ``t`` -> ``(its image embedding (256, 64, 64) float32, the frame's hash)`` (see :func:`~.store.frame_hash`).

    ``preprocess``: ``channels`` / ``contrast_limits`` for ``Predictor.set_image`` (default: all
    colour channels, 1-99.8 percentile contrast)."""

    preprocess: dict = field(default_factory=dict)

    def __call__(self, models: ModelHolder, source: ImageSource, t: int, extra: Any) -> tuple[np.ndarray, int]:
        from .store import frame_hash

        pred = models.predictor
        frame = source.read(t)
        pred.set_image(frame, key=("embed", source.path, t), **_frame_options(source, self.preprocess))
        return pred.get_embedding().features.detach().to("cpu").float().numpy().reshape(256, 64, 64), frame_hash(frame)


@dataclass(frozen=True)
class SegmentJob:
    """Frame ``t`` + its objects (``extra``: ``[ObjectPrompt, ...]`` with label ids, see :mod:`.prompts`)
    -> ``(H, W)`` uint32 labels.

    Objects are decoded by :func:`decode_objects` and painted as the widget paints them
    (:func:`.labels.paint_writes`): largest first (smaller ones stay on top), each with its own label id;
    with ``generations`` (a session's replay, label id -> ``(generation, overwrite)``), write by write as
    the widget wrote them, a later write filling only background (objects not listed: after the others).

    ``refine``: a labels file (same frames as the image). Objects whose id is one of its labels refine
    that label (:func:`.refine.refine_objects`); the result is that file's frame with the refined labels
    replaced and the new objects filling background.
    """

    store: str | None = None
    multimask: bool = False
    preprocess: dict = field(default_factory=dict)  # as EmbedJob
    refine: str | None = None
    generations: dict = field(default_factory=dict)

    def __call__(self, models: ModelHolder, source: ImageSource, t: int, extra: Any) -> np.ndarray:
        from .labels import paint_writes

        pred = models.predictor
        key = use_stored_embedding(models, self.store, source, t)
        if key is not None:
            pred.set_embedding(pred.cache.get(key), key)
            if pred.needs_pixels:  # a large frame: its prompts are decoded in windows of its pixels
                pred.set_pixels(source.read(t), **_frame_options(source, self.preprocess))
        else:
            pred.set_image(source.read(t), key=("segment", source.path, t), **_frame_options(source, self.preprocess))
        existing = None
        if self.refine:
            from .refine import open_labels, refine_objects

            existing = np.asarray(open_labels(self.refine, source).read(t))
            extra = refine_objects(extra, existing, pred)
        masks = decode_objects(pred, extra, self.multimask, progress=models.progress)
        ids = [o.label_id for o in extra]
        gens = over = None
        if self.generations:
            after = (1 + max(g for g, _ in self.generations.values()), False)
            gens, over = zip(*(self.generations.get(i, after) for i in ids), strict=True) if ids else ((), ())
        new = paint_writes(masks, ids, source.hw, gens, over)
        if existing is None:
            return new
        from .labels import write_labels

        out = existing.astype(np.uint32)
        # a refined label is replaced by its new mask; where the model finds nothing, it stays as it was
        write_labels(out, new, replace_ids=[o.label_id for o, m in zip(extra, masks, strict=True) if o.prompt.mask_input is not None and m.area])
        return out


@dataclass(frozen=True)
class EverythingJob:
    """Frame ``t`` -> ``(H, W)`` uint32 labels numbered 1..n (the caller offsets ids across frames)."""

    sampler: str | None = None  # None: object-aware with a detector, else blobs (samplers.default_sampler)
    options: dict = field(default_factory=dict)
    store: str | None = None

    def __call__(self, models: ModelHolder, source: ImageSource, t: int, extra: Any) -> np.ndarray:
        from .everything import iter_segment_everything

        key = use_stored_embedding(models, self.store, source, t)
        gen = iter_segment_everything(
            source.read(t), models.predictor, sampler=self.sampler, detector=models.detector, rgb=source.frame_ndim == 3,
            key=(lambda idx: key) if key is not None else None, out=False, **self.options,
        )
        finished = [p.labels for p in gen if p.labels is not None]  # one frame: one finished item
        return np.asarray(finished[-1], np.uint32)
