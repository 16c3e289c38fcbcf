"""Per-frame image-embedding cache: switching between frames never re-encodes a frame already seen.

An :class:`Embedding` is what SAM's decoder needs from a frame: the ``1 x 256 x 64 x 64``
features, the original frame size and the resized input size. The in-memory cache is an LRU
bounded by bytes; ``fp16=True`` stores features in half precision (half the memory; the decoder
still runs in float32; embedding error ~1e-3 relative).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import torch

from .errors import SettingsError

__all__ = ["Embedding", "EmbeddingCache"]


@dataclass(frozen=True)
class Embedding:
    """One frame's image embedding.

    Attributes:
        features: ``1 x 256 x 64 x 64`` tensor (float32, or float16 when stored compactly).
        original_size: ``(H, W)`` of the frame given to the predictor.
        input_size: ``(h, w)`` after resizing the longest side to 1024 (before padding).
        pixels: ``(H, W, 3)`` uint8, the frame as the encoder saw it, kept only for frames large
            enough that prompts are decoded in full-resolution windows (:mod:`.windows`); else None.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    pixels: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        extra = 0 if self.pixels is None else int(self.pixels.nbytes)
        return self.features.numel() * self.features.element_size() + extra


class EmbeddingCache:
    """Thread-safe LRU of :class:`Embedding` keyed by any hashable frame id.

    Args:
        max_bytes: memory budget; the least recently used frames are evicted beyond it
            (one embedding is 4 MiB in float32, 2 MiB in float16). 0 disables caching.
        fp16: store features as float16.
    """

    def __init__(self, max_bytes: int = 1 << 30, fp16: bool = False):
        if max_bytes < 0:
            raise SettingsError(f"max_bytes must be >= 0, got {max_bytes}.")
        self.max_bytes = int(max_bytes)
        self.fp16 = fp16
        self._items: OrderedDict[Hashable, Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self._has: Callable[[Hashable], bool] | None = None
        self._load: Callable[[Hashable], Embedding] | None = None
        self._save: Callable[[Hashable, Embedding], None] | None = None

    def back_with(
        self,
        has: Callable[[Hashable], bool] | None,
        load: Callable[[Hashable], Embedding] | None,
        save: Callable[[Hashable, Embedding], None] | None = None,
    ) -> None:
        """A second level (e.g. an on-disk store): keys ``has`` accepts are read with ``load`` on a
        miss, then kept in memory; ``save`` (optional) receives every embedding ``put`` here
        (computed, not read back). ``None, None`` removes it."""
        self._has, self._load, self._save = has, load, save

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        has = self._has
        return key in self._items or (has is not None and has(key))

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._items.values())

    def get(self, key: Hashable) -> Embedding | None:
        """The cached embedding (features as stored) or None; marks it most recently used."""
        with self._lock:
            emb = self._items.get(key)
            if emb is not None:
                self._items.move_to_end(key)
                return emb
        has, load = self._has, self._load
        if has is None or load is None or not has(key):
            return None
        emb = load(key)  # outside the lock: reading from disk must not block other frames
        self._insert(key, emb)
        return emb

    def put(self, key: Hashable, emb: Embedding) -> None:
        """Store ``emb`` (converted to float16 if configured) and evict beyond the budget; pass it
        to the second level's ``save`` if there is one."""
        save = self._save
        if save is not None:
            save(key, emb)
        self._insert(key, emb)

    def _insert(self, key: Hashable, emb: Embedding) -> None:
        if self.max_bytes == 0:
            return
        if self.fp16 and emb.features.dtype != torch.float16:
            emb = Embedding(emb.features.half(), emb.original_size, emb.input_size, emb.pixels)
        with self._lock:
            self._items[key] = emb
            self._items.move_to_end(key)
            total = sum(e.nbytes for e in self._items.values())
            while total > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                total -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
