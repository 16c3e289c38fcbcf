"""Run per-frame jobs in this process or as dask.distributed tasks, results streamed back in frame order.

The unit of work is one frame of one :class:`~napari_mobilesam.engine.io.ImageSource`: a picklable
*job* object is called as ``job(models, source, t, extra) -> numpy array`` where ``models`` is a
:class:`ModelHolder` (the predictor and detector of this process, built on first use). The same jobs
run inline (:func:`run_local`) or on a cluster (:func:`run_distributed`); each dask worker builds
its model once, held by a ``_worker_plugin.ModelPlugin`` (a ``distributed.WorkerPlugin``). Workers read their
frames from the file themselves (only paths travel), so input files and weights must be reachable
from every worker, e.g. on a shared file system.

Results are yielded in task order whatever order they finish in; at most ``window`` results are
pending or buffered at a time, so memory stays bounded on long stacks.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .io import ImageSource

# dask.distributed is imported only when a run asks for it (--workers / --scheduler): a plain
# `mobilesam segment` must not pay for it, so the worker plugin lives in _worker_plugin.py.

__all__ = ["PLUGIN_NAME", "ModelHolder", "ModelSpec", "Task", "run_distributed", "run_local", "start_client"]

PLUGIN_NAME = "napari-mobilesam-model"

Task = tuple[ImageSource, int, Any]
"""(source, frame t, per-task extra data such as the frame's prompts)."""


@dataclass(frozen=True)
class ModelSpec:
    """What a process needs to build its models. ``weights``: registry name or path (None: mobile_sam);
    ``trust_detector``: load a detector file that needs full unpickling (see model/detector.py)."""

    weights: str | None = None
    device: str = "cpu"
    detector: str | None = None
    cache_frames: int = 1
    decoder: str | None = None
    trust_detector: bool = False


class ModelHolder:
    """Per-process models, built on first use; ``loads`` (model builds) and ``jobs`` (frames run) are
    counted so that a run can prove "one model per worker".

    ``lock`` serialises jobs: a ``Predictor`` holds the current frame, so one job at a time uses it.
    ``progress``: None, or called with a count of objects decoded after each batch of them inside a
    frame (set by an in-process caller, e.g. ``mobilesam segment``'s progress bar; None on dask workers).
    """

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.loads = 0
        self.jobs = 0
        self.lock = threading.RLock()
        self.progress: Callable[[int], None] | None = None
        self._predictor = None
        self._detector = None
        self._model_hash: str | None = None

    @property
    def predictor(self):
        """A :class:`~napari_mobilesam.engine.predictor.Predictor` keeping ``cache_frames`` embeddings."""
        if self._predictor is None:
            from .._malloc import tune_allocator
            from ..model.build import build_mobilesam
            from .predictor import Predictor

            tune_allocator()  # a batch process (the CLI or a dask worker): keep the encoder's memory

            sam = build_mobilesam(self.spec.weights, device=self.spec.device, decoder=self.spec.decoder)
            self.loads += 1
            # keep at most cache_frames embeddings in memory: nothing accumulates over a long stack
            self._predictor = Predictor(sam, cache_bytes=max(1, self.spec.cache_frames) * (4 << 20))
        return self._predictor

    @property
    def detector(self):
        """The loaded object detector, or None when no ``detector`` path was given."""
        if self._detector is None and self.spec.detector:
            from ..model.detector import load_detector

            self._detector = load_detector(self.spec.detector, trust=self.spec.trust_detector)
        return self._detector

    @property
    def model_hash(self) -> str:
        if self._model_hash is None:
            from .store import model_fingerprint

            self._model_hash = model_fingerprint(self.predictor.model)
        return self._model_hash


class Job(Protocol):
    def __call__(self, models: ModelHolder, source: ImageSource, t: int, extra: Any) -> Any: ...


def run_local(models: ModelHolder, job: Job, tasks: Iterable[Task]) -> Iterator[tuple[Task, Any]]:
    """Run ``job`` on each task in this process, in order; yields ``(task, result)``."""
    for task in tasks:
        with models.lock:
            models.jobs += 1
            result = job(models, *task)
        yield task, result


@dataclass(frozen=True)
class _UserFailure:
    """A user's mistake met on a worker (bad weights, a damaged file), returned as a value so that the
    worker logs no "Compute Failed" block; :func:`run_distributed` raises ``error`` in the client."""

    error: BaseException


@dataclass(frozen=True)
class _Warned:
    """A worker's result with the warnings its job gave (``(category, message)``), shown by the client
    as its own warnings (so a CLI shows them its way, once) instead of in the worker's stderr."""

    value: Any
    warnings: tuple


def _run_on_worker(job: Job, source: ImageSource, t: int, extra: Any) -> Any:
    import pickle

    from distributed import get_worker

    from .._errors import user_error_types

    plugin = get_worker().plugins[PLUGIN_NAME]
    with plugin.holder.lock:
        plugin.holder.jobs += 1
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = job(plugin.holder, source, t, extra)
            said = tuple((w.category, str(w.message)) for w in caught)
            return _Warned(value, said) if said else value
        except user_error_types() as err:
            try:
                pickle.loads(pickle.dumps(err))
            except Exception:  # noqa: BLE001 - an error that cannot travel goes dask's way
                raise err from None
            return _UserFailure(err)


def start_client(scheduler: str | None = None, workers: int | None = None, processes: bool = True):
    """A ``distributed.Client``: connected to ``scheduler`` (an address) or to a new local cluster of
    ``workers`` single-threaded workers."""
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=processes, dashboard_address=None)
    return Client(cluster)


def run_distributed(client: Any, spec: ModelSpec, job: Job, tasks: Sequence[Task], window: int | None = None) -> Iterator[tuple[Task, Any]]:
    """Run ``job`` on each task as a dask.distributed task; yields ``(task, result)`` in task order.

    Registers a :class:`ModelPlugin` so that every worker (present or joining later) builds the
    model once. ``window``: tasks pending or buffered at once (default: twice the worker threads).
    Closing the generator (Ctrl+C) cancels what is still queued.
    """
    from distributed import as_completed

    from ._worker_plugin import ModelPlugin

    client.register_plugin(ModelPlugin(spec), name=PLUGIN_NAME)
    if window is None:
        window = max(2, 2 * sum(client.nthreads().values()))
    run_id = uuid.uuid4().hex[:8]
    todo = iter(enumerate(tasks))
    pending: dict[Any, int] = {}
    ready: dict[int, Any] = {}
    nxt = 0
    done = as_completed()

    def refill() -> None:
        while len(pending) + len(ready) < window:
            try:
                i, (source, t, extra) = next(todo)
            except StopIteration:
                return
            fut = client.submit(_run_on_worker, job, source, t, extra, key=f"mobilesam-{run_id}-{i}", pure=False)
            pending[fut] = i
            done.add(fut)

    try:
        refill()
        for fut in done:
            i = pending.pop(fut)
            ready[i] = fut.result()  # re-raises a worker's error here
            if isinstance(ready[i], _UserFailure):
                raise ready[i].error
            if isinstance(ready[i], _Warned):
                for category, message in ready[i].warnings:
                    warnings.warn(message, category if isinstance(category, type) and issubclass(category, Warning) else UserWarning,
                                  stacklevel=1)
                ready[i] = ready[i].value
            fut.release()
            while nxt in ready:
                yield tasks[nxt], ready.pop(nxt)
                nxt += 1
            refill()
    finally:
        if pending:
            client.cancel(list(pending))
