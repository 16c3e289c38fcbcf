"""One worker thread for all of a widget's model work.

PyTorch's CPU kernels use OpenMP. Each thread that runs them gets its own OpenMP team, and once
the teams together hold more threads than there are cores, GNU OpenMP stops spinning between
kernels and puts its threads to sleep after each one. The decoder is hundreds of small kernels, so a
mask then takes about 1.6x longer (measured: 27 ms on one thread, 40-44 ms once a second thread
has run the model). So a widget's jobs and live decodes all run on its one long-lived
:class:`ModelThread`, and the GUI thread never runs the model. A live decode requested while a job
holds the thread is queued as *urgent*: the job runs it between two of its steps (``run_urgent``),
so clicks stay live while, say, *Segment everything* works through a stack.

The widget creates its ``ModelThread``, hands it to whoever queues model work, and closes it when
it closes: the running job is asked to stop, queued work is dropped and the thread ends once idle
(its OpenMP team with it).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QRunnable, QThreadPool, QTimer

from .._compat import start_worker_on

__all__ = ["ModelThread"]

REAP_MS = 100  # after close: how often to look whether the running job's last step has ended


class _Call(QRunnable):
    def __init__(self, fn: Callable[[], Any]):
        super().__init__()
        self.setAutoDelete(False)
        self.fn, self.done, self.result, self.error = fn, threading.Event(), None, None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            self.error = err
        finally:
            self.done.set()


class ModelThread:
    """A pool of one thread that does not expire while its owner lives, plus the urgent queue.

    Call every method from the GUI thread, except :meth:`run_urgent` (the model thread, between
    a job's steps) and :meth:`call` (any thread but the model thread).
    """

    def __init__(self) -> None:
        self._pool = QThreadPool()
        self._pool.setMaxThreadCount(1)
        self._pool.setExpiryTimeout(-1)
        self._urgent: deque[Callable[[], None]] = deque()
        self._drains: list[_Call] = []  # kept alive until they have run (Qt must not run a deleted runnable)
        self._job = None  # the napari worker running or queued, if any
        self.closed = False
        self._ended = False

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("The MobileSAM widget was closed: open it again from the Plugins menu.")

    @property
    def ended(self) -> bool:
        """Closed, and its thread has ended."""
        return self._ended

    def start(self, worker) -> None:
        """Start a napari ``thread_worker`` on the model thread (what ``worker.start()`` does on Qt's
        global pool)."""
        self._check_open()
        self._job = worker
        worker.finished.connect(lambda: self._job is worker and setattr(self, "_job", None))
        start_worker_on(worker, self._pool)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model thread and wait for it (scripts, benchmarks and tests)."""
        self._check_open()
        job = _Call(fn)
        self._pool.start(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def submit_urgent(self, fn: Callable[[], None]) -> None:
        """Queue ``fn`` to run on the model thread at the running job's next step (or by :meth:`drain`)."""
        self._check_open()
        self._urgent.append(fn)

    def run_urgent(self) -> None:
        """On the model thread: run the queued urgent calls now (jobs call this between steps)."""
        while True:
            try:
                fn = self._urgent.popleft()
            except IndexError:
                return
            fn()

    def drain(self) -> None:
        """Run queued urgent calls on the model thread as soon as it is free (after a job ends)."""
        self._drains[:] = [d for d in self._drains if not d.done.is_set()]
        if self._urgent and not self.closed:
            job = _Call(self.run_urgent)
            self._drains.append(job)
            self._pool.start(job)

    def close(self) -> None:
        """The owner closed: stop the running job after its current step, drop queued work, and
        end the thread as soon as it is idle (without blocking the GUI thread)."""
        if self.closed:
            return
        self.closed = True
        self._urgent.clear()
        try:
            self._pool.clear()  # queued, not started
            if self._job is not None:
                self._job.quit()
        except RuntimeError:  # Qt deleted the pool or the job already (application shutdown): nothing left to stop
            self._ended = True
            return
        self._reap()

    def _reap(self) -> None:
        try:
            idle = self._pool.waitForDone(0)
        except RuntimeError:  # the pool was deleted with the application: its thread is gone
            idle = True
        if idle:  # idle: Qt ends and removes the pool's thread
            self._drains.clear()
            self._job = None
            self._ended = True
        else:  # (a lambda: it keeps this object, and so the pool, alive until then)
            QTimer.singleShot(REAP_MS, lambda: self._reap())
