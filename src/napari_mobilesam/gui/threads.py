"""One worker thread for all of the widget's model work.

PyTorch's CPU kernels use OpenMP. Each thread that runs them gets its own OpenMP team, and once
the teams together hold more threads than there are cores, GNU OpenMP stops spinning between
kernels and puts its threads to sleep after each one. The decoder is hundreds of small kernels, so a
mask then takes about 1.6x longer (measured: 27 ms on one thread, 40-44 ms once a second thread
has run the model). So jobs and live decodes all run on this one long-lived thread, one after the
other, and the GUI thread never runs the model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QRunnable, QThreadPool

__all__ = ["call", "start", "torch_pool"]

_POOL: QThreadPool | None = None


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
