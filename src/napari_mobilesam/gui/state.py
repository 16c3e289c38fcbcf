"""Everything the dock widget remembers between two events, in one object the widget owns.

Like micro-sam's ``AnnotatorState``, but not a singleton: each :class:`~.widget.MobileSAMWidget`
makes one :class:`WidgetState` and hands it to its parts and sections (see :mod:`.sections`), which
read and write its public fields instead of each other's attributes. Controls (combo boxes, check
boxes) are not state: their value is read from the control itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ..engine.embeddings import EmbeddingCache

__all__ = ["CACHE_BYTES", "WidgetState"]

CACHE_BYTES = 1 << 30  # image embeddings kept in memory


@dataclass(eq=False)
class WidgetState:
    """The dock widget's mutable state (fields are grouped by the part of the widget that writes them)."""

    # -- model (modelui.py): the built model, its key, the live predictor and recent frames' decoders
    cache: EmbeddingCache = field(default_factory=lambda: EmbeddingCache(CACHE_BYTES))
    sam: Any = None  # segment_anything Sam, once built
    sam_key: tuple | None = None  # (weights, device[, decoder]) the model was built from
    pred: Any = None  # live-mode Predictor (used by one decode at a time, on the model thread)
    decoders: OrderedDict = field(default_factory=OrderedDict)  # frame key -> FrameDecoder (a few recent frames)
    model_hash: tuple | None = None  # (sam, its fingerprint), as sessions and stores record it (session.py)

    # -- prompt layers (promptui.py)
    points: Any = None  # the napari Points layer whose points are prompts
    shapes: Any = None  # the napari Shapes layer whose rectangles are prompts
    outside: list[str] = field(default_factory=list)  # prompts of the last objects() call that describe no object
    prompt_gen: int = 0  # bumped on every prompt change; a live result decoded for an older one is checked
    switching: bool = False  # picking the layers of another image (prompts keep their ids)
    refining: set[int] = field(default_factory=set)  # labels whose points are Refine's, not Segment's (refine.py)

    # -- output (output.py): per output key ("layer", id) / ("new", image name)
    written: dict = field(default_factory=dict)  # -> {label id: (prompt signature, hash of the mask written, generation, overwrite)}
    issued_by: dict = field(default_factory=dict)  # -> highest label id given out
    labels_prev: Any = None  # the output layer before the last change of 'labels out'

    # -- embeddings store (stores.py)
    store: Any = None  # the checked StoreLink backing the cache
    store_prep: tuple | None = None  # (path, the store's pre-processing)

    # -- jobs (runner.py)
    worker: Any = None  # the running job's napari worker
    activity: Any = None  # its bar in napari's activity dock
    docked: bool = False  # the widget has had a parent (a napari dock)
    job_cancelled: bool = False  # the running (or last) job was cancelled: its on_finish says so
    job_failed: bool = False  # the running (or last) job ended with an error (already reported)
    soft_cancel: bool = False  # the running job stops itself on job_cancelled (e.g. tiled Segment everything)
    after_job: list[Callable[[], None]] = field(default_factory=list)  # run once the running job ends

    # -- live mode (live.py)
    live_threaded: bool = True  # decode on the model thread; False: on the GUI thread (the benchmarks' baseline)
    live_worker: Any = None  # the decode in flight (queued for the model thread), if any
    live_again: bool = False  # prompts changed while decoding: update again when it returns
    embedding: Any = None  # frame key being embedded between a job's steps
    live_note: str = ""  # said with the next live result (ids continuing after the user's labels)

    @property
    def busy(self) -> bool:
        """A job is running."""
        return self.worker is not None

    def reset(self) -> None:
        """Forget everything: the model, the embeddings, what was written and every pending job or
        decode (as a new widget starts). Not while a job runs."""
        if self.busy:
            raise RuntimeError("WidgetState.reset() while a job runs: cancel it first.")
        self.cache.back_with(None, None)
        self.cache.clear()
        for f in fields(self):
            if f.name != "cache":
                setattr(self, f.name, f.default_factory() if callable(f.default_factory) else f.default)
