"""The private parts of other packages that this package uses, each behind one function.

A new release of superqt or segment-anything may rename or drop any of them; tests/test_compat.py
checks each one on the installed release and fails (it never skips) when one is gone or changed,
so the break shows in CI, not in a user's viewer.

- superqt ``WorkerBase._worker_set`` / ``WorkerBase._set_discard`` / ``worker._finished``:
  how ``WorkerBase.start()`` keeps a running worker alive. ``start()`` always uses Qt's global
  pool; :func:`start_worker_on` does the same on a pool of our own (the widget's model thread).
- segment-anything ``SamAutomaticMaskGenerator._process_batch``: one batch of grid points of one
  crop -> ``MaskData`` (the generator's per-batch step, so that crop layers can report progress).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["mask_data_len", "process_batch", "start_worker_on", "superqt_worker_internals"]

log = logging.getLogger("napari_mobilesam")

SUPERQT_CLASS_ATTRS = ("_worker_set", "_set_discard")
SUPERQT_SIGNAL = "_finished"
SAM_PROCESS_BATCH_ARGS = ("self", "points", "im_size", "crop_box", "orig_size")


def superqt_worker_internals(worker: Any) -> list[str]:
    """The names :func:`start_worker_on` needs that ``worker`` (a superqt / napari worker) lacks."""
    cls = type(worker)
    missing = [name for name in SUPERQT_CLASS_ATTRS if not hasattr(cls, name)]
    if "_worker_set" not in missing and not isinstance(cls._worker_set, set):
        missing.append("_worker_set (not a set)")
    if not hasattr(getattr(worker, SUPERQT_SIGNAL, None), "connect"):
        missing.append(SUPERQT_SIGNAL)
    return missing


def start_worker_on(worker: Any, pool: Any) -> None:
    """Start a napari ``thread_worker`` on ``pool`` (a ``QThreadPool``), as ``worker.start()`` does
    on Qt's global pool: keep a reference to the worker until it has finished, then run it.

    With a superqt that lacks these internals the worker runs on Qt's global pool instead (the
    widget still works, model work may then run on two threads), and a warning is logged.
    """
    missing = superqt_worker_internals(worker)
    if missing:
        log.warning("superqt changed (%s missing): running the worker on Qt's global pool", ", ".join(missing))
        worker.start()
        return
    cls = type(worker)
    if worker in cls._worker_set:
        raise RuntimeError("This worker is already started.")
    cls._worker_set.add(worker)
    worker._finished.connect(cls._set_discard)
    pool.start(worker)


def process_batch(generator: Any, points: Any, im_size: tuple[int, int], crop_box: list[int], orig_size: tuple[int, int]) -> Any:
    """``SamAutomaticMaskGenerator._process_batch``: ``points`` (N x 2, (x, y) in the crop) of the crop
    ``crop_box`` (x0, y0, x1, y1) of an ``orig_size`` (H, W) image whose predictor holds the crop
    (``im_size``, (H, W)) -> ``MaskData`` with ``rles``, ``boxes``, ``iou_preds``, ``stability_score``."""
    fn = getattr(generator, "_process_batch", None)
    if fn is None:
        import segment_anything

        raise RuntimeError(
            f"segment-anything {getattr(segment_anything, '__version__', '?')} has no "
            "SamAutomaticMaskGenerator._process_batch: crop layers need segment-anything 1.0."
        )
    return fn(points, im_size, crop_box, orig_size)


def mask_data_len(data: Any) -> int:
    """Masks held by a segment-anything ``MaskData`` (0 for one that never had a field: indexing
    such a one raises ``KeyError``). Uses only ``MaskData.items()``, its public view of the fields."""
    fields = dict(data.items())
    return len(fields["rles"]) if "rles" in fields else 0
