"""The dask.distributed worker plugin (imported only by :func:`~.distributed.run_distributed`)."""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from .distributed import ModelHolder, ModelSpec

__all__ = ["ModelPlugin"]


class ModelPlugin(WorkerPlugin):
    """``distributed.WorkerPlugin`` holding one :class:`ModelHolder` per worker (built on first task)."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.holder: ModelHolder | None = None

    def setup(self, worker: Any) -> None:
        self.holder = ModelHolder(self.spec)

    def teardown(self, worker: Any) -> None:
        self.holder = None

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "holder": None}
