"""One worker thread for all of the widget's model work.

PyTorch's CPU kernels use OpenMP. Each thread that runs them gets its own OpenMP team, and once
the teams together hold more threads than there are cores, GNU OpenMP stops spinning between
kernels and puts its threads to sleep after each one. The decoder is hundreds of small kernels, so a
mask then takes about 1.6x longer (measured: 27 ms on one thread, 40-44 ms once a second thread
has run the model). So jobs and live decodes all run on this one long-lived thread, and the GUI
thread never runs the model. A live decode requested while a job holds the thread is queued as
*urgent*: the job runs it between two of its steps (``run_urgent``), so clicks stay live while, say,
*Segment everything* works through a stack.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QRunnable, QThreadPool

__all__ = ["call", "drain", "run_urgent", "start", "submit_urgent", "torch_pool"]

_POOL: QThreadPool | None = None
_URGENT: deque[Callable[[], None]] = deque()


def torch_pool() -> QThreadPool:
    """The pool of one thread that never expires."""
    global _POOL
    if _POOL is None:
        _POOL = QThreadPool()
        _POOL.setMaxThreadCount(1)
        _POOL.setExpiryTimeout(-1)
    return _POOL


def start(worker) -> None:
    """Start a napari ``thread_worker`` on the model thread (what ``worker.start()`` does on Qt's
    global pool: keep a reference until it finishes, then run it)."""
    cls = type(worker)
    if not (hasattr(cls, "_worker_set") and hasattr(cls, "_set_discard") and hasattr(worker, "_finished")):
        worker.start()  # a superqt without these internals: run on Qt's global pool
        return
    cls._worker_set.add(worker)
    worker._finished.connect(cls._set_discard)
    torch_pool().start(worker)


class _Call(QRunnable):
    def __init__(self, fn: Callable[[], Any]):
        super().__init__()
        self.setAutoDelete(False)
        self.fn, self.done, self.result, self.error = fn, threading.Event(), None, None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as err:  # re-raised in the caller
            self.error = err
        finally:
            self.done.set()


def call(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on the model thread and wait for it (scripts and benchmarks)."""
    job = _Call(fn)
    torch_pool().start(job)
    job.done.wait()
    if job.error is not None:
        raise job.error
    return job.result


def submit_urgent(fn: Callable[[], None]) -> None:
    """Queue ``fn`` to run on the model thread at the running job's next step (or by ``drain``)."""
    _URGENT.append(fn)


def run_urgent() -> None:
    """On the model thread: run the queued urgent calls now (jobs call this between steps)."""
    while True:
        try:
            fn = _URGENT.popleft()
        except IndexError:
            return
        fn()


_DRAINS: list[_Call] = []  # kept alive until they have run (Qt must not run a deleted runnable)


def drain() -> None:
    """Run queued urgent calls on the model thread as soon as it is free (after a job ends)."""
    _DRAINS[:] = [d for d in _DRAINS if not d.done.is_set()]
    if _URGENT:
        job = _Call(run_urgent)
        _DRAINS.append(job)
        torch_pool().start(job)
