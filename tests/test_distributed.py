"""dask.distributed scale-out: a LocalCluster of 2 worker processes gives the single-process labels,
each worker builds the model once, results come back in frame order."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
import tifffile

from napari_mobilesam.cli import main
from napari_mobilesam.engine.distributed import PLUGIN_NAME, ModelHolder, ModelSpec, run_distributed, run_local
from napari_mobilesam.engine.io import open_image
from test_cli import EVERYTHING, synthetic_stack

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        with distributed.Client(cl) as client:
            yield cl, client


@dataclass(frozen=True)
class SlowEcho:
    """Later frames finish first: the runner must still yield in order."""

    n: int

    def __call__(self, models, source, t, extra):
        time.sleep(0.05 * (self.n - t))
        return np.array([t, extra])


def test_results_in_order_with_bounded_window(cluster, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    _, client = cluster
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((6, 8, 8), np.uint8), photometric="minisblack")
    source = open_image(tmp_path / "s.tif")
    tasks = [(source, t, 10 * t) for t in range(6)]
    got = [(task[1], r.tolist()) for task, r in run_distributed(client, ModelSpec(), SlowEcho(6), tasks, window=3)]
    assert got == [(t, [t, 10 * t]) for t in range(6)]
    holder_state = client.run(lambda dask_worker: dask_worker.plugins[PLUGIN_NAME].holder.loads)
    assert set(holder_state.values()) == {0}  # models are built lazily: this job never asked for one
    assert [r.tolist() for _, r in run_local(ModelHolder(ModelSpec()), SlowEcho(2), tasks[:2])] == [[0, 0], [1, 10]]


def test_local_cluster_equals_single_process(cluster, tmp_path, checkpoint):
    cl, client = cluster
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, synthetic_stack(4, seed=5), photometric="minisblack")
    common = [*EVERYTHING, "--weights", str(checkpoint), "--device", "cpu", "-q"]
    assert main(["everything", str(stack), "-o", str(tmp_path / "single.tif"), *common]) == 0
    assert main(["everything", str(stack), "-o", str(tmp_path / "dask.tif"), "--scheduler", cl.scheduler_address, *common]) == 0
    single, dask = tifffile.imread(tmp_path / "single.tif"), tifffile.imread(tmp_path / "dask.tif")
    assert single.shape == (4, 64, 64) and single.any()
    np.testing.assert_array_equal(dask, single)
    # each worker built the model once, however many frames it ran
    state = client.run(lambda dask_worker: (dask_worker.plugins[PLUGIN_NAME].holder.loads, dask_worker.plugins[PLUGIN_NAME].holder.jobs))
    assert sum(jobs for _, jobs in state.values()) == 4
    assert all(loads == (1 if jobs else 0) for loads, jobs in state.values())
    assert max(jobs for _, jobs in state.values()) >= 2
