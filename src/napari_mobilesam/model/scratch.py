"""Reusable buffers for the fast decoder (:mod:`napari_mobilesam.model.fast_decoder`)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["Scratch"]


class Scratch:
    """Reusable buffers for the decoder's per-call image tokens (B x 4096 x 256: 32 MB for 8 prompts).

    glibc maps allocations of 32 MB and more afresh on every call, and touching the new pages
    cost ~8,000 page faults (~10 % of an 8-prompt decode), so each decode borrows a buffer here
    and gives it back. A buffer is lent to one decode at a time, so threads that decode at once
    each get their own; the buffers live as long as their owner (a :class:`FrameDecoder`, or the
    predictor that hands one ``Scratch`` to all its frames' decoders).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[torch.Tensor] = []

    @contextmanager
    def borrow(self, shape: tuple[int, ...], like: torch.Tensor) -> Iterator[torch.Tensor]:
        """A ``shape`` view of a buffer with ``like``'s dtype and device, for the ``with`` block."""
        n = math.prod(shape)
        with self._lock:
            i = next((i for i, b in enumerate(self._free) if b.device == like.device and b.dtype == like.dtype), None)
            buf = None if i is None else self._free.pop(i)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=like.dtype, device=like.device)
        try:
            yield buf[:n].view(shape)
        finally:
            with self._lock:
                self._free.append(buf)

    @property
    def nbytes(self) -> int:
        """Bytes held in buffers that are not lent out."""
        with self._lock:
            return sum(b.numel() * b.element_size() for b in self._free)
