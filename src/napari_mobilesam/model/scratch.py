"""Reusable buffers and worker threads for the fast decoder (:mod:`napari_mobilesam.model.fast_decoder`)."""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

__all__ = ["DecodeThreads", "Scratch", "over_chunks"]

T = TypeVar("T")
ENV = "NAPARI_MOBILESAM_DECODE_THREADS"
log = logging.getLogger("napari_mobilesam")


class DecodeThreads:
    """Worker threads that each run torch with ONE intra-op thread; the decoder hands them whole
    prompts (or a prompt's blocks of image tokens), so that the threads work in parallel without a
    synchronisation per operation.

    Why: a decode is hundreds of small operations. Split inside each one (torch's intra-op
    threads), every operation is a parallel region: with OpenMP's passive wait policy each one
    pays a thread wake-up, with the spin policy a thread that another process has descheduled
    stalls all of them (issue 25). Split by prompt, each worker runs its share start to end.

    OpenMP's thread count is per thread: the workers set theirs to one when they start, then the
    creating thread sets the process default back, so threads started later (and the caller) keep
    torch's count (``tests/test_decode_threads.py`` checks this).
    """

    def __init__(self, n: int):
        self.n = n
        keep = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="mobilesam-decode", initializer=_one_thread)
        ready = threading.Barrier(n)
        # start all n workers now (each sets its count once), and know them by their ids
        self._workers = frozenset(self._pool.map(lambda _: (ready.wait(), threading.get_ident())[1], range(n)))
        torch.set_num_threads(keep)
        self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False)

    def map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``[fn(x) for x in items]`` on the workers, in the caller's grad and inference modes.

        The items are pulled one at a time by the workers, so a worker slowed by another process
        takes fewer. Called from a worker (a prompt's blocks, inside that prompt's decode), the
        calling worker pulls items too instead of waiting."""
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
        n = len(items)
        results: list[Any] = [None] * n
        errors: list[BaseException] = []
        state = [0, 0]  # next item, items done
        cond = threading.Condition()

        def pull() -> None:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                while True:
                    with cond:
                        i = state[0]
                        if i >= n:
                            return
                        state[0] += 1
                    try:
                        results[i] = fn(items[i])
                    except BaseException as e:  # noqa: BLE001  (re-raised in the caller below)
                        errors.append(e)
                    with cond:
                        state[1] += 1
                        cond.notify_all()

        inside = threading.get_ident() in self._workers
        for _ in range(min(n, self.n - 1 if inside else self.n)):
            self._pool.submit(pull)
        if inside:
            pull()
        with cond:
            cond.wait_for(lambda: state[1] == n)
        if errors:
            raise errors[0]
        return results

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a worker (one intra-op thread, whatever the caller's thread count)."""
        return self.map(lambda _: fn(), [None])[0]

    def chunks(self, n: int) -> list[slice]:
        """``range(n)`` in about 2 pieces per worker: a worker whose core is shared with another
        process takes fewer of them."""
        size = max(1, math.ceil(n / (2 * self.n)))
        return [slice(s, min(s + size, n)) for s in range(0, n, size)]

    def close(self) -> None:
        self._finalizer()


def over_chunks(threads: DecodeThreads | None, fn: Callable[[slice], T], n: int) -> list[T]:
    """``fn`` over ``range(n)`` in slices: on the workers (:meth:`DecodeThreads.chunks`) when there
    are workers and more than one item, else one call ``fn(slice(0, n))`` on the caller."""
    if threads is None or n < 2:
        return [fn(slice(0, n))]
    return threads.map(fn, threads.chunks(n))


def _one_thread() -> None:
    """A worker's start: torch's per-thread set-up first (it reads the process count once per
    thread, lazily, and would undo a count set before it), then one intra-op thread."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def decode_threads_wanted() -> int:
    """How many decode workers to start: ``NAPARI_MOBILESAM_DECODE_THREADS`` if set (0: none),
    else torch's thread count for the calling thread when OpenMP waits passively (what the
    ``mobilesam`` command and the napari plugin set, :mod:`napari_mobilesam._threads`), else none.

    With OpenMP's default spin policy each of torch's own threads keeps spinning for a while after
    every parallel operation of the caller, on the cores the workers need; there the decoder
    splits each operation across torch's threads as before."""
    env = os.environ.get(ENV, "").strip()
    if env:
        try:
            return max(0, int(env))
        except ValueError:
            log.warning("%s must be a number of threads (0: none), got %r: no decode workers.", ENV, env)
            return 0
    if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() != "PASSIVE":
        return 0
    return torch.get_num_threads()


class Scratch:
    """Reusable buffers for the decoder's per-call image tokens, and its worker threads
    (:class:`DecodeThreads`, :meth:`threads`): what the decoders of one predictor's frames share.

    Buffers: the decoder's per-call image tokens (B x 4096 x 256: 32 MB for 8 prompts).

    glibc maps allocations of 32 MB and more afresh on every call, and touching the new pages
    cost ~8,000 page faults (~10 % of an 8-prompt decode), so each decode borrows a buffer here
    and gives it back. A buffer is lent to one decode at a time, so threads that decode at once
    each get their own; the buffers live as long as their owner (a :class:`FrameDecoder`, or the
    predictor that hands one ``Scratch`` to all its frames' decoders).
    """

    def __init__(self, threads: DecodeThreads | None = None, start_threads: bool = True) -> None:
        """``threads``: decode workers to use; by default started on first use when wanted
        (:func:`decode_threads_wanted`), never with ``start_threads=False``."""
        self._lock = threading.Lock()
        self._free: list[torch.Tensor] = []
        self._threads = threads
        self._threads_made = threads is not None or not start_threads

    def threads(self) -> DecodeThreads | None:
        """The decode workers of this scratch's owner, started on first use; None with one thread."""
        with self._lock:
            if not self._threads_made:
                self._threads_made = True
                n = decode_threads_wanted()
                self._threads = DecodeThreads(n) if n > 1 else None
            return self._threads

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
