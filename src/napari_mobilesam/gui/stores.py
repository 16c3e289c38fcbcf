"""Embedding stores in the widget: stored frames skip the encoder, computed frames are saved.

A store made by ``mobilesam embed`` (or by the widget) is checked against the model (encoder
weights) and the image layer (shape, dtype, first and last frames), exactly as the command line
checks it, so a store of another image or model is refused with a message that says what differs.
Each frame is checked again when it is used (:meth:`EmbeddingStore.load`): a frame whose pixels differ
from those the store recorded is refused, and a damaged or missing embedding is computed again and
written back (a read-only store refuses it), never used as zeros.
A path that does not exist yet becomes a new store, filled with every frame the widget embeds, for
the next session or for ``mobilesam segment/everything --embeddings``. The model sees the image as
the store's frames were made (``--channels`` / ``--contrast`` of ``mobilesam embed``, else
automatic contrast), not through the layer's contrast limits, so stored and newly computed frames
agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, FileEdit
from napari.layers import Image

from ..engine.embeddings import Embedding, EmbeddingCache
from ..engine.store import EmbeddingStore, EmbeddingStoreDamaged, frame_hash, image_fingerprint, model_fingerprint
from . import layers as L
from .jobs import Progress, built
from .state import WidgetState

__all__ = ["StoreLink", "StoreUse", "store_path", "store_preprocess", "tag_of"]


def store_path(value) -> Path | None:
    """The FileEdit's value as a path, or None when it is empty."""
    text = str(value or "").strip()
    return None if text in ("", ".") else Path(text).expanduser()


def store_preprocess(path: Path) -> dict:
    """The pre-processing an existing store was made with (``mobilesam embed --channels/--contrast``),
    as recorded in its image fingerprint; ``{}`` (automatic contrast) for a new store."""
    try:
        meta = EmbeddingStore.open(path, "", "", mode="r", check=False).meta
        prep = json.loads(meta["image_fingerprint"]).get("preprocess") or {}
    except (ValueError, OSError, KeyError):
        return {}
    return {k: v for k, v in prep.items() if k in ("channels", "contrast_limits")}


def tag_of(path: Path) -> tuple:
    """Last element of the frame keys while a store is in use (instead of the contrast limits)."""
    return ("store", str(Path(path).resolve()))


class StoreLink:
    """An opened, checked store bound to one image layer; backs the widget's embedding cache."""

    def __init__(self, path: Path, sam, image: Image, preprocess: dict | None = None):
        data = L.frame_data(image)  # frames as the widget reads them (a chosen channel axis last)
        geo = L.FrameGeometry.of(image)
        self.sam, self.image = sam, image
        p = Path(path).expanduser()
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()  # an empty folder (e.g. made in the file dialog) becomes the new store
        self.created = not p.exists()
        fingerprint = image_fingerprint(data if hasattr(data, "reshape") else np.asarray(data), preprocess, frame_ndim=3 if geo.rgb else 2)
        self.store = EmbeddingStore.open(path, model_fingerprint(sam), fingerprint, n_frames=geo.n_frames, original_size=geo.spatial, mode="a",
                                         widget=True)
        self.tag = tag_of(path)
        self.layer = L.image_key(image, ())[1]
        self.lead_shape = geo.lead_shape
        self.data = data
        # the options `mobilesam embed` used, to compute a damaged frame again as it did
        self.preprocess = {**(preprocess or {}), **{k: v for k, v in L.image_kwargs(image).items() if k == "channel_axis"}}
        self.writable = os.access(self.store.path / "features", os.W_OK)
        self.repaired: list[int] = []  # frames computed again because their stored embedding was damaged

    def frame_index(self, key: Hashable) -> int | None:
        """Store frame of a widget frame key ``(…, layer, frame, tag)`` of this image, else None."""
        if not (isinstance(key, tuple) and len(key) == 4 and key[3] == self.tag and key[1] == self.layer):
            return None
        frame = key[2]
        return int(np.ravel_multi_index(frame, self.lead_shape)) if self.lead_shape else 0

    def has(self, key: Hashable) -> bool:
        t = self.frame_index(key)
        return t is not None and self.store.has(t)

    def pixels(self, t: int) -> np.ndarray:
        """Frame ``t`` of the image, as the store's frame hash was computed."""
        return np.asarray(self.data[np.unravel_index(t, self.lead_shape) if self.lead_shape else ()])

    def load(self, key: Hashable) -> Embedding:
        """The stored embedding of a frame, checked against the frame's pixels and its checksum.

        Raises:
            EmbeddingStoreMismatch: the frame differs from the one the store was made for.
            EmbeddingStoreDamaged: a damaged embedding in a store the widget cannot write.
        """
        t = self.frame_index(key)
        frame = self.pixels(t)
        try:
            return self.store.load(t, frame=frame)
        except EmbeddingStoreDamaged as err:
            if not self.writable:
                raise EmbeddingStoreDamaged(f"{err} The store is read-only here, so the widget cannot compute the frame "
                                            "again; make it writable, or choose another embeddings path.") from None
        from ..engine.predictor import Predictor

        pred = Predictor(self.sam, cache_bytes=0)  # computed as `mobilesam embed` computes it
        pred.set_image(frame, **self.preprocess)
        emb = pred.get_embedding()
        self.store.save(t, emb, frame_hash=frame_hash(frame))
        self.repaired.append(t)
        return emb

    def save(self, key: Hashable, emb: Embedding) -> None:
        """Keep a newly computed embedding of this image in the store, with its frame's hash."""
        t = self.frame_index(key)
        if t is not None and self.writable and not self.store.has(t):
            self.store.save(t, emb, frame_hash=frame_hash(self.pixels(t)))

    def attach(self, cache: EmbeddingCache) -> None:
        cache.back_with(self.has, self.load, self.save)

    @staticmethod
    def detach(cache: EmbeddingCache) -> None:
        cache.back_with(None, None)


class StoreUse:
    """The *embeddings* field of the Model group: links the store it names to the widget's
    embedding cache (``state.store``) once the model is built and the image chosen."""

    def __init__(self, state: WidgetState, embeddings: FileEdit, image_box: ComboBox) -> None:
        self.state, self.embeddings, self.image_box = state, embeddings, image_box

    def with_store(self, model):
        """``model`` (built, or a generator that builds it), followed by checking and attaching the
        store when one is set and not attached for this model and image."""
        path, image = store_path(self.embeddings.value), self.image_box.value
        link = self.state.store
        if path is None or image is None or (link is not None and link.sam is model and link.image is image and link.tag == tag_of(path)
                                              and link.layer == L.image_key(image, ())[1]):
            return model
        return self._link_store(model, path, image)

    def _link_store(self, model, path: Path, image: Image):
        sam = yield from built(model)
        yield Progress(0, 0, f"checking embeddings {path.name}")
        link = StoreLink(path, sam, image, self._store_prep(path))  # raises with the fix for another model or image
        link.attach(self.state.cache)
        self.state.store = link
        what = "new store" if link.created else f"{link.store.done_count}/{link.store.n_frames} frames stored"
        yield Progress(0, 0, f"embeddings {path.name}: {what}")
        return sam

    def unlink(self, _=None) -> None:
        """Stop using the store (another path, image, model or channel axis: checked again when next used)."""
        self.state.store = None
        self.state.store_prep = None
        StoreLink.detach(self.state.cache)

    def _store_prep(self, path: Path) -> dict:
        """Pre-processing of the store at ``path`` (read once per path)."""
        if self.state.store_prep is None or self.state.store_prep[0] != path:
            self.state.store_prep = (path, store_preprocess(path))
        return dict(self.state.store_prep[1])

    def store_view(self, kw: dict, ident: tuple) -> tuple[dict, tuple]:
        """Image options and frame-key prefix: with a store set, the model sees the image as the
        store's frames were made, and keys name the store instead of the contrast limits."""
        path = store_path(self.embeddings.value)
        if path is None:
            return kw, ident
        frames = {k: v for k, v in kw.items() if k == "channel_axis"}  # how frames are read, not pre-processing
        return {**self._store_prep(path), **frames}, (*ident[:3], tag_of(path))
