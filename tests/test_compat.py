"""The private parts of superqt and segment-anything that ``napari_mobilesam._compat`` wraps.

These tests never skip: when a new release renames or drops one of them, they fail here, naming
it, instead of the plugin silently running without it (see _compat.py).
"""

from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest

from napari_mobilesam import _compat


def test_segment_anything_process_batch_is_there_with_its_signature():
    from segment_anything import SamAutomaticMaskGenerator

    fn = getattr(SamAutomaticMaskGenerator, "_process_batch", None)
    assert fn is not None, "segment-anything dropped SamAutomaticMaskGenerator._process_batch: update _compat.process_batch"
    assert tuple(inspect.signature(fn).parameters) == _compat.SAM_PROCESS_BATCH_ARGS


def test_process_batch_adapter_on_the_real_generator(predictor):
    """One batch of 4 grid points through the adapter: 3 masks per point (no filter at thresholds 0)."""
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import MaskData

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    gen = SamAutomaticMaskGenerator(predictor.model, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                    box_nms_thresh=0.7, output_mode="binary_mask")
    gen.predictor = predictor
    predictor.set_image(rgb)
    points = gen.point_grids[0] * np.array([64, 48])[None]
    data = _compat.process_batch(gen, points, (48, 64), [0, 0, 64, 48], (48, 64))
    assert isinstance(data, MaskData)
    fields = dict(data.items())
    assert {"rles", "boxes", "iou_preds", "stability_score", "points"} <= set(fields)
    assert _compat.mask_data_len(data) == len(fields["iou_preds"]) == 12
    assert _compat.mask_data_len(MaskData()) == 0


def test_process_batch_names_the_package_when_the_method_is_gone():
    with pytest.raises(RuntimeError, match="segment-anything .*_process_batch"):
        _compat.process_batch(object(), np.zeros((1, 2)), (8, 8), [0, 0, 8, 8], (8, 8))


def test_superqt_worker_internals_are_there(qtbot):
    from napari.qt.threading import create_worker
    from superqt.utils._qthreading import WorkerBase

    worker = create_worker(lambda: None, _start_thread=False)
    assert _compat.superqt_worker_internals(worker) == [], "superqt changed: update _compat.start_worker_on"
    assert isinstance(WorkerBase._worker_set, set)
    assert list(inspect.signature(WorkerBase._set_discard).parameters) == ["obj"]


def test_start_worker_on_runs_on_our_pool_and_keeps_the_worker_until_it_ends(qtbot):
    from napari.qt.threading import create_worker
    from qtpy.QtCore import QThreadPool
    from superqt.utils._qthreading import WorkerBase

    pool = QThreadPool()
    pool.setMaxThreadCount(1)
    go, where = threading.Event(), []

    def work():
        where.append(threading.get_ident())
        go.wait(30)

    worker = create_worker(work, _start_thread=False)
    with qtbot.waitSignal(worker.started, timeout=10_000):
        _compat.start_worker_on(worker, pool)
    assert worker in WorkerBase._worker_set  # alive while it runs
    assert pool.activeThreadCount() == 1  # on our pool, not Qt's global one
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        go.set()
    qtbot.waitUntil(lambda: worker not in WorkerBase._worker_set, timeout=10_000)
    assert where and where[0] != threading.get_ident()
    assert pool.waitForDone(10_000)


@pytest.mark.slow
def test_crop_layers_through_the_adapters_equal_the_stock_generator(sam, predictor, cell_image):
    """iter_grid_objects with a crop layer (the path that uses process_batch and mask_data_len)
    gives the non-empty masks of segment-anything's own generate() (ours leaves empty ones out)."""
    from segment_anything import SamAutomaticMaskGenerator

    from napari_mobilesam._progress import drive
    from napari_mobilesam.engine.samplers import iter_grid_objects

    rgb = np.repeat(np.ascontiguousarray(cell_image[:96, :128])[..., None], 3, axis=2)
    opts = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=1)
    ours = drive(iter_grid_objects(predictor, rgb, key=None, min_score=0.0, min_stability=0.0, points_per_side=4, crop_n_layers=1))
    stock = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **opts).generate(rgb)
    stock = [m for m in stock if m["segmentation"].any()]
    assert len(ours) == len(stock) > 0
    want = sorted((m["segmentation"] for m in stock), key=lambda m: -int(m.sum()))
    got = sorted((o.full() for o in ours), key=lambda m: -int(m.sum()))
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
