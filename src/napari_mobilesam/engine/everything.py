"""Segment everything: every object of a frame, or of every frame of a stack, as instance labels.

A sampler proposes the objects (the registry in ``samplers/``; see README.md, "Segment everything"):

- ``"object-aware"`` (MobileSAMv2): a YOLO detector proposes boxes (conf 0.4, NMS IoU 0.9,
  at most 320), decoded in batches, single-mask mode; the default when a detector is given;
- ``"blobs"``: detector-free, scikit-image LoG/DoG blob detection proposes boxes for roundish
  objects (nuclei, cells, particles), decoded like the detector's boxes; the default without one;
- ``"grid"`` (MobileSAM v1 / SAM): ``SamAutomaticMaskGenerator``'s point grid;
- any sampler added with :func:`~.samplers.register_sampler`.

Masks become labels by one deterministic rule: filter by predicted IoU, stability and area;
paint largest first (smaller objects stay on top); drop objects of which less than
``min_visible`` stays visible (duplicates, boxes around clusters, objects on existing labels);
number the rest consecutively in proposal order, after every id already used in the stack.
Frames larger than ``tile`` pixels are segmented tile by tile (see tiles.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from segment_anything.modeling import Sam

from .._progress import drive, relay
from .errors import SettingsError
from .image import channels_last, to_rgb_uint8
from .labels import filter_objects, render_labels
from .predictor import ObjectMask, Predictor
from .samplers import CommonOptions, Sampler, SamplerContext, default_sampler, get_sampler
from .tiles import place_tile_objects, tile_boxes, tile_settings

__all__ = ["EverythingProgress", "iter_segment_everything", "objects_to_labels", "segment_everything"]

UNITS = 100  # progress units per frame
# options of the run itself (besides the samplers' and CommonOptions): see iter_segment_everything
_RUN = dict(channels=None, contrast_limits=None, channel_axis=None, key=None, out=None, stop=None)


@dataclass
class EverythingProgress:
    """One progress report of :func:`iter_segment_everything`.

    Attributes:
        frame: ordinal of the frame in the image's leading (stack) dimensions, C order (0 for a 2D frame).
        index: the frame's index tuple in the leading dimensions (``()`` for a single frame), so
            that ``out[index]`` is the frame's ``(H, W)`` label image.
        done, total: progress units for a bar (each frame counts 100); only the ratio matters.
        message: what is happening, for a status line.
        labels: set once frame ``index`` is finished: its ``(H, W)`` uint32 new labels (0 where
            nothing new; background only unless ``overwrite``), ids unique across the stack.
            Merge with ``write_labels(existing[index], labels, overwrite)``.
        linked: with ``link``: these ``labels`` are the frame's linked ones (object / track ids,
            SAM fill-ins and filled gaps included); they replace the frame's earlier new labels.
        links: on the last item of a linked run: the :class:`~.link.Links` (track table, napari
            Tracks data through ``tracks.tracks_layer_data``).
    """

    frame: int
    index: tuple[int, ...]
    done: int
    total: int
    message: str
    labels: np.ndarray | None = None
    linked: bool = False
    links: Any = None


def objects_to_labels(
    objects: Sequence[ObjectMask],
    shape: tuple[int, int],
    first_id: int = 1,
    free: np.ndarray | None = None,
    min_visible: float = 0.5,
) -> np.ndarray:
    """Paint objects largest first and number the visible ones.

    Args:
        objects: masks of one frame, in proposal order (the order of their ids).
        first_id: the first id to use; ids are consecutive.
        free: ``(H, W)`` bool, where labels may be written (None: everywhere).
        min_visible: drop objects of which less than this fraction of their pixels stays
            visible (not under a smaller object, inside ``free``).

    Returns:
        ``(H, W)`` uint32 labels, 0 outside the objects and outside ``free``.
    """
    if not objects:
        return np.zeros(shape, np.uint32)
    objects = list(objects)
    for _ in range(2):  # second pass: after dropping, survivors only gain pixels
        lab = render_labels(objects, shape, order="largest_first")
        if free is not None:
            lab[~free] = 0
        visible = np.bincount(lab.ravel(), minlength=len(objects) + 1)[1:]
        area = np.array([o.area for o in objects])
        keep = visible >= np.maximum(min_visible * area, 1)
        if keep.all():
            break
        objects = [o for o, k in zip(objects, keep) if k]
        if not objects:
            return np.zeros(shape, np.uint32)
    else:
        lab = render_labels(objects, shape, order="largest_first")
        if free is not None:
            lab[~free] = 0
    present = np.flatnonzero(np.bincount(lab.ravel(), minlength=len(objects) + 1)[1:]) + 1
    lut = np.zeros(len(objects) + 1, np.uint32)
    lut[present] = np.arange(first_id, first_id + len(present), dtype=np.uint32)
    return lut[lab]


def _check_options(sampler: Sampler, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(the sampler's options dataclass, the run's options: CommonOptions + _RUN, filled in)``."""
    own = {f.name for f in dataclasses.fields(sampler.options)}
    common = dataclasses.asdict(CommonOptions())
    unknown = sorted(set(options) - own - set(common) - set(_RUN))
    if unknown:
        raise TypeError(f"Unknown option(s) {unknown} for sampler={sampler.name!r}; valid: {sorted(own | set(common) | set(_RUN))}.")
    sampler_opts = sampler.options(**{k: v for k, v in options.items() if k in own})
    opts = {**common, **_RUN, **{k: v for k, v in options.items() if k not in own}}
    ds, dst = sampler.score_defaults
    opts["min_score"] = ds if opts["min_score"] is None else float(opts["min_score"])
    opts["min_stability"] = dst if opts["min_stability"] is None else float(opts["min_stability"])
    if opts["tile"]:
        opts["tile"], opts["tile_overlap"] = tile_settings(opts["tile"], opts["tile_overlap"])
    return sampler_opts, opts


def _frame_layout(shape: tuple[int, ...], rgb: bool | None) -> tuple[tuple[int, ...], tuple[int, int]]:
    """(leading stack shape, (H, W)) of an image."""
    if rgb is None:
        if len(shape) >= 3 and shape[-1] <= 16 and shape[-1] not in (3, 4):
            lead = " x ".join(map(str, shape[:-2])) + " frames of "
            raise SettingsError(
                f"Image of shape {shape} is ambiguous: {lead}{shape[-2]} x {shape[-1]} pixels, or "
                f"{'one ' if len(shape) == 3 else ''}{' x '.join(map(str, shape[-3:-1]))} frame(s) with {shape[-1]} channels? "
                "Pass channel_axis=-1 for channels (or the axis that holds them), or rgb=False for frames."
            )
        rgb = len(shape) >= 3 and shape[-1] in (3, 4)
    spatial = 3 if rgb else 2
    if len(shape) < spatial:
        raise SettingsError(f"Image of shape {shape} is not a frame: give (H, W), (H, W, C) with rgb=True, or a stack (..., H, W[, C]).")
    lead = tuple(shape[: len(shape) - spatial])
    hw = tuple(shape[len(lead) : len(lead) + 2])
    if min(hw) < 1:
        raise SettingsError(f"Image of shape {shape} has empty frames.")
    return lead, hw


def _frame_list(lead: tuple[int, ...], frames: Iterable[int | Sequence[int]] | None) -> list[tuple[int, ...]]:
    n = int(np.prod(lead)) if lead else 1
    if frames is None:
        return [tuple(int(i) for i in np.unravel_index(k, lead)) for k in range(n)] if lead else [()]
    out = []
    for f in frames:
        idx = (int(f),) if np.isscalar(f) else tuple(int(i) for i in f)
        if len(idx) == 1 and len(lead) > 1:
            idx = tuple(int(i) for i in np.unravel_index(idx[0] % n, lead)) if -n <= idx[0] < n else idx
        if not lead and idx in ((0,), ()):
            out.append(())
            continue
        if len(idx) != len(lead) or any(not -s <= i < s for i, s in zip(idx, lead)):
            raise SettingsError(f"Frame {f} is not in a stack of {lead} frames; give frame numbers 0..{n - 1}.")
        out.append(tuple(i % s for i, s in zip(idx, lead)))
    return out


def _predictor(model: Predictor | Sam) -> Predictor:
    if isinstance(model, Predictor):
        return model
    if isinstance(model, Sam):
        return Predictor(model)
    raise TypeError(f"Expected a napari_mobilesam Predictor or a segment_anything Sam, got {type(model).__name__}.")


def _load_detector(sampler: Sampler, detector: Any) -> Any:
    if not sampler.needs_detector:
        return None
    if detector is None:
        raise SettingsError(
            f"sampler={sampler.name!r} needs a detector: detector='path/to/ObjectAwareModel.pt' (MobileSAMv2's) or any YOLO "
            "detect/segment .pt checkpoint. Without one, use sampler='blobs' (roundish objects, no extra weights) or sampler='grid'."
        )
    from ..model.detector import load_detector

    return load_detector(detector)


def _iter_frame(
    ctx: SamplerContext, rgb: np.ndarray, key: Hashable | None, sampler: Sampler, sopts: Any, opts: dict[str, Any]
) -> Generator[tuple[float, str], None, list[ObjectMask]]:
    """Objects of one frame, tile by tile when it is larger than ``tile`` (see tiles.py); yields
    (fraction of the frame done, message)."""
    tile = opts["tile"]
    hw = rgb.shape[:2]
    if not tile or max(hw) <= tile:
        return (yield from _iter_tile(ctx, rgb, key, sampler, sopts))
    boxes = tile_boxes(hw, tile, opts["tile_overlap"])
    objects: list[ObjectMask] = []
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        if ctx.stop():  # cancelled: the tiles done make a partial frame
            ctx.partial = f"{k} of {len(boxes)} tiles"
            break
        sub = np.ascontiguousarray(rgb[r0:r1, c0:c1])
        work = _iter_tile(ctx, sub, None if key is None else (key, "tile", r0, c0), sampler, sopts)
        found = yield from relay(work, lambda p, k=k: ((k + p[0]) / len(boxes), f"tile {k + 1}/{len(boxes)}: {p[1]}"))
        objects += place_tile_objects(found, (r0, c0, r1, c1), hw)
    return objects


def _iter_tile(
    ctx: SamplerContext, rgb: np.ndarray, key: Hashable | None, sampler: Sampler, sopts: Any
) -> Generator[tuple[float, str], None, list[ObjectMask]]:
    """Objects of one frame or tile: its embedding, then the sampler; yields (fraction done, message)."""
    ctx.predictor.set_image(rgb, key=key)
    yield 0.2, "embedded"
    return (yield from relay(sampler.propose(ctx, rgb, key, sopts), lambda p: (0.2 + 0.75 * p[0], p[1])))


def iter_segment_everything(
    image: Any,
    predictor_or_sam: Predictor | Sam,
    sampler: str | None = None,
    detector: Any = None,
    rgb: bool | None = None,
    frames: Iterable[int | Sequence[int]] | None = None,
    labels: Any = None,
    overwrite: bool = False,
    link: str = "none",
    link_options: dict[str, Any] | None = None,
    **options: Any,
) -> Generator[EverythingProgress, None, np.ndarray]:
    """Label every object of one frame or of the frames of a stack; a generator.

    Args:
        image: ``(H, W)`` / ``(H, W, C)`` frame or ``(..., H, W[, C])`` stack (numpy, dask, zarr:
            anything indexable); leading dimensions are frames. Any dtype (see ``to_rgb_uint8``).
        predictor_or_sam: a :class:`Predictor` (its embedding cache is reused) or a ``Sam``.
        sampler: a registered sampler's name (:func:`~.samplers.sampler_names`): "object-aware" (needs
            ``detector``), "blobs", "grid", ...; default (None): "object-aware" when a ``detector`` is
            given, else "blobs" (:func:`~.samplers.default_sampler`; the CLI and the widget use the same).
        detector: path to a YOLO detect/segment ``.pt`` (e.g. ObjectAwareModel.pt) or a loaded
            :class:`~napari_mobilesam.model.detector.Detector`; only for "object-aware".
        rgb: whether the last axis is colour/channels; None guesses (last dim 3 or 4; a last dim of
            at most 16 otherwise is ambiguous and raises, naming both readings).
        frames: frame numbers (C-order ordinals or index tuples) to do; default all.
        labels: existing labels, ``leading + (H, W)`` (or ``(H, W)`` for one frame); read only.
            Their ids are never reused, and new objects fill only their background unless
            ``overwrite``.
        link: ``"none"``; ``"3d"`` (one id per object through the slices of a z-stack) or
            ``"time"`` (one id per track, divisions) for a stack with one leading dimension: after
            the frames, a link pass (linkpass.py: SAM fill-ins, then laptrack; see link.py)
            renumbers the new labels. Needs the labels kept (not ``out=False``).
        link_options: for the link pass: ``fill`` (SAM fill-ins, default True), ``min_iou``,
            ``min_iou_gap``, ``min_inside``, ``max_gap``, ``min_score``, ``min_overlap``.
        **options: see README.md, "Segment everything" > Options. Common: ``min_score``, ``min_stability``,
            ``min_area``, ``max_area``, ``min_visible``, ``channels``, ``contrast_limits``,
            ``channel_axis`` (the axis of ``image`` holding channels, e.g. -1 for ``(H, W, 5)``, 1 for
            ``(T, C, H, W)``; frames are then read with it last),
            ``key`` (embedding-cache key: a callable ``index -> key`` or a prefix giving
            ``(prefix, *index)``), ``out``: an array (e.g. zarr, or ``labels`` itself) into which
            each finished frame's new labels are written, or False to keep nothing (the
            consumer writes the yielded frames itself; the return value is then None),
            ``tile`` / ``tile_overlap``: segment frames larger than ``tile`` pixels tile by tile
            (overlap default ``tile // 4``; see tiles.py),
            ``stop``: a callable polled before each frame, each tile and each decode batch of the
            sampler; once it returns True the frame in progress is finished with what was decoded
            (a partial frame, said in its message: tiles, boxes or point batches done) and no further
            frame is started. The sampler's own options: its options dataclass (``samplers/``).

    Yields:
        :class:`EverythingProgress`; items with ``.labels`` set carry a finished frame.
        Bad arguments raise at the call, before the first frame.

    Returns:
        the label array, ``leading + (H, W)``: ``labels`` (copied, unless passed as ``out``)
        merged with every finished frame, uint32 when no ``labels`` are given.
    """
    chosen = get_sampler(default_sampler(detector) if sampler is None else sampler)
    sopts, opts = _check_options(chosen, options)
    pred = _predictor(predictor_or_sam)
    det = _load_detector(chosen, detector)
    if opts["channel_axis"] is not None:  # frames read with that axis moved last
        image, rgb = channels_last(image, opts["channel_axis"]), True
    shape = tuple(np.shape(image))
    lead, hw = _frame_layout(shape, rgb)
    todo = _frame_list(lead, frames)
    if labels is not None and tuple(np.shape(labels)) != lead + hw:
        raise SettingsError(f"labels of shape {np.shape(labels)} do not match the image's frames {lead + hw}.")
    out = opts["out"]
    if out is False:  # the consumer writes each finished frame itself: keep nothing
        pass
    elif out is None:
        out = np.array(labels) if labels is not None else np.zeros(lead + hw, np.uint32)
    elif tuple(np.shape(out)) != lead + hw:
        raise SettingsError(f"out of shape {np.shape(out)} does not match the image's frames {lead + hw}.")
    next_id = int(np.max(labels)) + 1 if labels is not None and np.size(labels) else 1
    if out is not False and out is not labels and opts["out"] is not None and np.size(out):
        next_id = max(next_id, int(np.max(out)) + 1)  # never reuse an id already in a given out
    key = opts["key"]
    keyfn: Callable[[tuple[int, ...]], Hashable | None] = (
        key if callable(key) else (lambda idx: None) if key is None else (lambda idx: (key, *idx))
    )
    from .linkpass import check_link, linked_frames

    check_link(link, lead, out, link_options)
    ctx = SamplerContext(pred, det, opts["stop"] or (lambda: False), opts["min_score"], opts["min_stability"])
    work = _run(image, ctx, chosen, sopts, lead, hw, todo, labels, overwrite, opts, out, next_id, keyfn)
    if link == "none":
        return work
    return linked_frames(work, image, pred, todo, opts, out, next_id, keyfn, link, dict(link_options or {}))


def _run(
    image: Any, ctx: SamplerContext, sampler: Sampler, sopts: Any, lead: tuple[int, ...], hw: tuple[int, int], todo: list[tuple[int, ...]],
    labels: Any, overwrite: bool, opts: dict[str, Any], out: Any, next_id: int, keyfn: Callable[[tuple[int, ...]], Hashable | None],
) -> Generator[EverythingProgress, None, Any]:
    total = UNITS * len(todo)
    for n, idx in enumerate(todo):
        if ctx.stop():
            break
        ctx.partial = None
        frame_no = int(np.ravel_multi_index(idx, lead)) if lead else 0
        base = n * UNITS
        yield EverythingProgress(frame_no, idx, base, total, f"frame {frame_no}: embedding")
        frame = np.asarray(image[idx] if idx else image)
        rgb8 = to_rgb_uint8(frame, channel_axis=-1 if frame.ndim == 3 else None, channels=opts["channels"], contrast_limits=opts["contrast_limits"])
        work = _iter_frame(ctx, rgb8, keyfn(idx), sampler, sopts, opts)
        objects = yield from relay(
            # relay runs the lambda before this loop pass ends, so the loop variables are the current ones
            work, lambda p: EverythingProgress(frame_no, idx, base + int(p[0] * UNITS), total, f"frame {frame_no}: {p[1]}"),  # noqa: B023
        )
        kept = filter_objects(objects, opts["min_score"], opts["min_stability"], opts["min_area"], opts["max_area"])
        existing = None if labels is None else np.asarray(labels[idx] if idx else labels)
        free = None if existing is None or overwrite else existing == 0
        new = objects_to_labels(kept, hw, next_id, free, opts["min_visible"])
        n_new = int(new.max() - next_id + 1) if new.any() else 0
        if ctx.partial and not n_new:  # cancelled before anything of this frame was found: it stays as it was
            break
        next_id += n_new
        if out is not False:
            _merge(out, idx, new, n_new, next_id)
        part = f" (partial: {ctx.partial} done before Cancel)" if ctx.partial else ""
        yield EverythingProgress(
            frame_no, idx, base + UNITS, total,
            f"frame {frame_no}: {n_new} objects from {len(objects)} masks ({len(kept)} passed the filters){part}", new,
        )
    return None if out is False else out


def _merge(out: Any, idx: tuple[int, ...], new: np.ndarray, n_new: int, next_id: int) -> None:
    """Write a frame's new labels into ``out[idx]`` (one read and one write: zarr friendly)."""
    merged = np.array(out[idx] if idx else out)
    if n_new and np.issubdtype(merged.dtype, np.integer) and next_id - 1 > np.iinfo(merged.dtype).max:
        raise SettingsError(f"Label id {next_id - 1} does not fit the labels' dtype {merged.dtype}; convert the labels to uint32.")
    take = new > 0
    merged[take] = new[take]
    if idx:
        out[idx] = merged
    else:
        out[...] = merged


def segment_everything(
    image: Any,
    predictor_or_sam: Predictor | Sam,
    sampler: str | None = None,
    detector: Any = None,
    **options: Any,
) -> np.ndarray:
    """Blocking :func:`iter_segment_everything`: returns the label array (``leading + (H, W)``)."""
    return drive(iter_segment_everything(image, predictor_or_sam, sampler, detector, **options))
