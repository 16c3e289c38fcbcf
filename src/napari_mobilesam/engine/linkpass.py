"""The link pass over a segmented stack: SAM fill-ins, then :class:`~.link.Linker`; shared by the
engine (``segment_everything(link=...)``), the CLI and the widget, so that they agree.

Frames are read one at a time, in order. On each frame, an object of the previous frame that no
object of this frame overlaps (IoU < the linker's ``min_iou``) is looked for with SAM, as
*Propagate* does: this frame is prompted with the object's mask (as SAM's mask input) and box, all
such objects in one batch, and a mask is kept when *Propagate* would keep it (predicted IoU
>= ``min_score``, IoU with the previous mask >= ``min_overlap``, at least ``min_area`` pixels) and
at least ``min_visible`` of it lies on background (it never covers labels). Fill-ins are stored as
crops (``Links.fills``) and painted again by :meth:`Links.relabel`, so the pass itself writes
nothing: it can be stopped and run again with the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import SettingsError
from .link import LINK_MODES, Linker, Links

if TYPE_CHECKING:
    from .everything import EverythingProgress

__all__ = ["axes_link", "check_link", "file_axes", "iter_link_stack", "linked_frames"]


def axes_link(axes: str | None, n_lead: int) -> str:
    """The default link mode for an image whose axes are ``axes`` (ImageJ/OME letters such as
    ``"ZYX"``, ``"TYX"``, ``"TZCYX"``): one leading axis that is ``Z`` -> ``"3d"``, ``T`` ->
    ``"time"``; anything else -> ``"none"``."""
    if n_lead != 1 or not axes:
        return "none"
    lead = [a for a in axes.upper()[:-2] if a not in "CS"]  # channels and samples are not frames
    return {"Z": "3d", "T": "time"}.get(lead[0], "none") if len(lead) == 1 else "none"


def file_axes(path: Any) -> str | None:
    """The axes letters a TIFF (ImageJ or OME) stores, e.g. ``"ZYX"``; None when it has none."""
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tf:
            if not (tf.is_imagej or tf.is_ome):
                return None
            return str(tf.series[0].axes)
    except Exception:  # noqa: BLE001 - not a TIFF, or unreadable here (the reader reports that)
        return None


def _bbox(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], float)


def _fill_in(predictor, image: np.ndarray, key: Hashable | None, image_kwargs: dict, prev: np.ndarray, objects: np.ndarray,
             free: np.ndarray, missed: list[int], base: int, thresholds: tuple[float, float, int, float]) -> list[tuple[int, int, int, np.ndarray]]:
    """Masks of the ``missed`` objects of ``prev`` found on this frame (see the module docstring);
    returns ``(raw id, row, col, crop)`` and paints them into ``objects``."""
    from .predictor import Prompt
    from .propagate import mask_to_logits, step_check

    min_score, min_overlap, min_area, min_visible = thresholds
    predictor.set_image(image, key=key, **image_kwargs)
    masks = [prev == i for i in missed]
    prompts = [Prompt(box=_bbox(m), mask_input=mask_to_logits(m, predictor)) for m in masks]
    found = predictor.predict_objects(prompts)
    fills: list[tuple[int, int, int, np.ndarray]] = []
    for m, obj in zip(masks, found):
        new, _, reason = step_check(obj, m, min_score, min_overlap, min_area)
        if reason:
            continue
        vis = new & free & (objects == 0)
        if vis.sum() < max(min_visible * new.sum(), 1):
            continue
        rid = base + len(fills)
        objects[vis] = rid
        rows, cols = np.flatnonzero(vis.any(1)), np.flatnonzero(vis.any(0))
        r0, c0 = int(rows[0]), int(cols[0])
        fills.append((rid, r0, c0, vis[r0 : rows[-1] + 1, c0 : cols[-1] + 1].copy()))
    return fills


def iter_link_stack(
    n_frames: int,
    read_labels: Callable[[int], np.ndarray],
    mode: str,
    *,
    first_id: int = 1,
    predictor: Any = None,
    read_image: Callable[[int], np.ndarray] | None = None,
    key: Callable[[int], Hashable | None] | None = None,
    image_kwargs: dict | None = None,
    fill: bool = True,
    min_score: float = 0.5,
    min_overlap: float = 0.3,
    min_area: int = 4,
    min_visible: float = 0.5,
    **link_options: Any,
) -> Generator[tuple[int, int, str], None, Links]:
    """Fill in and link the frames ``0 .. n_frames - 1`` of a segmented stack.

    Args:
        read_labels: ``read_labels(t)`` -> frame ``t``'s ``(H, W)`` labels: ids ``>= first_id`` are
            the objects to link (unique within the frame); smaller ids (labels that were there
            before) are left alone and never covered.
        mode: ``"3d"`` or ``"time"`` (see link.py).
        predictor, read_image, key, image_kwargs: for SAM fill-ins (``predictor.set_image(
            read_image(t), key=key(t), **image_kwargs)``); no predictor: no fill-ins.
        min_score, min_overlap, min_area: *Propagate*'s thresholds; ``min_visible``: the fraction
            of a fill-in that must lie on background.
        **link_options: :class:`~.link.Linker` options (``min_iou``, ``max_gap``, ...).

    Yields:
        ``(frames done, n_frames, message)``.

    Returns:
        :class:`~.link.Links` (ids from ``first_id``) with ``fills``; apply with ``Links.iter_relabel``.
    """
    linker = Linker(mode, **link_options)
    fills: dict[int, list[tuple[int, int, int, np.ndarray]]] = {}
    prev: np.ndarray | None = None
    thresholds = (min_score, min_overlap, min_area, min_visible)
    n_fill = 0
    for t in range(n_frames):
        raw = np.asarray(read_labels(t))
        objects = np.where(raw >= first_id, raw, 0).astype(np.int64)
        if fill and predictor is not None and read_image is not None and prev is not None and prev.any():
            missed = _missed(prev, objects, linker.min_iou)
            if missed:
                base = max(int(raw.max(initial=0)), first_id - 1) + 1
                found = _fill_in(predictor, read_image(t), None if key is None else key(t), image_kwargs or {}, prev, objects,
                                 raw == 0, missed, base, thresholds)
                if found:
                    fills[t] = found
                    n_fill += len(found)
        linker.add(objects)
        prev = objects
        yield t + 1, n_frames, f"linking: frame {t + 1}/{n_frames}" + (f", {n_fill} SAM fill-ins" if n_fill else "")
    links = linker.solve(first_id)
    links.fills = fills
    return links


def _missed(prev: np.ndarray, cur: np.ndarray, min_iou: float) -> list[int]:
    """Ids of ``prev`` that no object of ``cur`` overlaps with IoU >= ``min_iou``."""
    ids, area = np.unique(prev[prev > 0], return_counts=True)
    if not len(ids):
        return []
    both = (prev > 0) & (cur > 0)
    best = dict.fromkeys(ids.tolist(), 0.0)
    if both.any():
        pairs, inter = np.unique(np.stack([prev[both], cur[both]]), axis=1, return_counts=True)
        cur_ids, cur_area = np.unique(cur[cur > 0], return_counts=True)
        ca = dict(zip(cur_ids.tolist(), cur_area.tolist()))
        pa = dict(zip(ids.tolist(), area.tolist()))
        for (a, b), n in zip(pairs.T.tolist(), inter.tolist()):
            best[a] = max(best[a], n / (pa[a] + ca[b] - n))
    return [i for i in ids.tolist() if best[i] < min_iou]


def check_link(link: str, lead: tuple[int, ...], out: Any, link_options: dict[str, Any] | None) -> None:
    """Bad ``link`` arguments raise here, before any frame is segmented."""
    if link not in LINK_MODES:
        raise SettingsError(f"link must be one of {', '.join(map(repr, LINK_MODES))}; got {link!r}.")
    if link == "none":
        if link_options:
            raise SettingsError("link_options need link='3d' or link='time'.")
        return
    if len(lead) != 1:
        raise SettingsError(f"link={link!r} links the frames of a stack with one leading dimension (Z or T); this image has "
                         f"{len(lead)} ({lead}). Pick one stack (e.g. image[t]) or use link='none'.")
    if out is False:
        raise SettingsError("link needs the labels of every frame: drop out=False (or pass an array as out).")
    allowed = {"fill", "min_iou", "min_iou_gap", "min_inside", "max_gap", "min_score", "min_overlap", "min_area", "min_visible"}
    unknown = sorted(set(link_options or {}) - allowed)
    if unknown:
        raise TypeError(f"Unknown link option(s) {unknown}; valid: {sorted(allowed)}.")


def linked_frames(
    work: Generator[EverythingProgress, None, Any], image: Any, pred: Any, todo: list[tuple[int, ...]],
    opts: dict[str, Any], out: Any, first_id: int, keyfn: Callable[[tuple[int, ...]], Hashable | None], mode: str, lopts: dict[str, Any],
) -> Generator[EverythingProgress, None, Any]:
    """``iter_segment_everything(link=...)``: the frames (``work``), then the link pass over them and
    their linked labels, written in place in ``out`` and yielded (``linked=True``), then the links."""
    from .._progress import relay
    from .everything import UNITS, EverythingProgress
    from .image import to_rgb_uint8

    out = yield from work
    n = len(todo)
    total = UNITS * n

    def read_labels(k: int) -> np.ndarray:
        return np.asarray(out[todo[k]])

    def read_image(k: int) -> np.ndarray:
        frame = np.asarray(image[todo[k]])
        return to_rgb_uint8(frame, channel_axis=-1 if frame.ndim == 3 else None, channels=opts["channels"],
                            contrast_limits=opts["contrast_limits"])

    passing = iter_link_stack(n, read_labels, mode, first_id=first_id, predictor=pred, read_image=read_image,
                              key=lambda k: keyfn(todo[k]), **lopts)
    links = yield from relay(passing, lambda p: EverythingProgress(todo[p[0] - 1][0], todo[p[0] - 1], total, total, p[2]))
    relabelled = links.iter_relabel(read_labels(k) for k in range(n))
    for k, lab in enumerate(relabelled):
        out[todo[k]] = lab
        new = np.where(lab >= first_id, lab, 0).astype(np.uint32)
        yield EverythingProgress(todo[k][0], todo[k], total, total, f"frame {todo[k][0]}: linked", new, linked=True)
    n_tracks = len(links.tracks)
    what = "tracks" if mode == "time" else "objects"
    yield EverythingProgress(todo[-1][0], todo[-1], total, total, f"{n_tracks} {what} over {n} frames", links=links)
    return out
