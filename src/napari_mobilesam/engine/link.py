"""Link per-frame instance labels into 3D objects (z-stacks) or tracks (time-lapses).

Frames are fed in order to a :class:`Linker`; it keeps the label images of the last
``max_gap + 1`` frames only, and records, per object, its area and centroid and, per pair of
objects on frames at most ``max_gap + 1`` apart, how many pixels they share. The assignment is
then solved by laptrack's LAP tracker (Jaqaman et al. 2008) with costs from mask overlaps:

- **link** (frame ``t`` to ``t + 1``): cost ``1 - IoU``; a pair is allowed when
  ``IoU >= min_iou``. Each object links to at most one object of the next frame (the LAP
  minimises the total cost), so:
- **merge**: when one mask on ``t + 1`` covers two objects of ``t``, it continues the one it
  overlaps best; the other one ends there.
- **split** (``3d``, or ``time`` without a division): when two masks on ``t + 1`` cover one
  object of ``t``, the better overlap continues it and the other starts a new id.
- **gap closing**: an object missing on up to ``max_gap`` frames (default 2: with masks missed
  at random, two misses in a row are not rare) is joined to its continuation when their
  ``IoU >= min_iou_gap``; it keeps its id.
- **division** (``time`` only): a new object on ``t + 1`` that lies mostly inside an object of
  ``t`` (``overlap / its area >= min_inside``) while that object also continues is its
  daughter: the mother's track ends on ``t`` and two daughter tracks start on ``t + 1``, each
  with ``parent = mother``.

:class:`Links` holds the result: a lookup from each frame's input ids to linked ids (consecutive
from ``first_id``, numbered by first frame, then by input id) and the track table
``(id, first frame, last frame, parent)``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SettingsError

__all__ = ["LINK_MODES", "Linker", "Links", "link_labels"]

LINK_MODES = ("none", "3d", "time")
_FAR = 10.0  # cost of pairs that do not overlap (above every cutoff)


@dataclass
class Links:
    """Result of :meth:`Linker.solve`.

    Attributes:
        lut: per frame, ``(input ids (k,) int64 sorted, linked ids (k,) int64)``.
        tracks: ``(n, 4)`` int64 rows ``(id, first frame, last frame, parent)`` (parent 0: none),
            sorted by id.
        centroids: ``(m, 4)`` float64 rows ``(id, frame, row, col)``, one per object per frame,
            sorted by id then frame (napari Tracks data without the ``z``).
        gaps: ``(id, frame)`` of the frames a track skips (closed gaps).
        fills: per frame, objects added by the link pass (SAM fill-ins, see linkpass.py) as
            ``(input id, row, col, crop (h, w) bool)``; :meth:`relabel` paints them on background.
    """

    lut: dict[int, tuple[np.ndarray, np.ndarray]]
    tracks: np.ndarray
    centroids: np.ndarray
    gaps: list[tuple[int, int]] = field(default_factory=list)
    fills: dict[int, list[tuple[int, int, int, np.ndarray]]] = field(default_factory=dict)

    def relabel(self, t: int, labels: np.ndarray) -> np.ndarray:
        """Frame ``t``'s ``(H, W)`` input labels -> linked ids (same shape, uint32), with the
        frame's ``fills``; ids the linker did not see on that frame (e.g. labels that were there
        before) stay as they are."""
        src, dst = self.lut.get(t, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        lab = np.asarray(labels)
        if t in self.fills:
            lab = lab.copy()
            for rid, r0, c0, crop in self.fills[t]:
                region = lab[r0 : r0 + crop.shape[0], c0 : c0 + crop.shape[1]]
                region[crop & (region == 0)] = rid
        out = lab.astype(np.uint32, copy=True)
        if not len(src):
            return out
        pos = np.clip(np.searchsorted(src, lab), 0, len(src) - 1)
        hit = (src[pos] == lab) & (lab > 0)
        out[hit] = dst[pos[hit]].astype(np.uint32)
        return out

    @property
    def parents(self) -> dict[int, int]:
        """``{track id: parent id}`` of the tracks that have a parent (napari Tracks' ``graph``
        is ``{k: [v]}`` of this)."""
        return {int(i): int(p) for i, _, _, p in self.tracks if p}

    def iter_relabel(self, frames: Iterable[np.ndarray], fill_gaps: bool = True) -> Iterator[np.ndarray]:
        """Relabel frames ``0, 1, ...`` in order (see :meth:`relabel`), filling closed gaps.

        A track missing on frame ``t`` between frames ``t0`` and ``t1`` gets, on ``t``, its mask
        from ``t0`` moved along the line between its centroids on ``t0`` and ``t1``, painted on
        background only (it never covers another object). Filled frames join ``centroids`` and
        leave ``gaps``. Keeps the last ``max gap + 1`` output frames only.
        """
        todo: dict[int, list[int]] = {}
        for tid, t in self.gaps:
            todo.setdefault(t, []).append(tid)
        cen = {(int(i), int(t)): (y, x) for i, t, y, x in self.centroids}
        spans = self._gap_spans()
        span = max([t1 - t0 for t0, t1 in spans.values()] + [1])
        recent: deque[tuple[int, np.ndarray]] = deque(maxlen=span + 1)
        added = []
        for t, frame in enumerate(frames):
            out = self.relabel(t, frame)
            for tid in todo.get(t, []) if fill_gaps else []:
                t0, t1 = spans[(tid, t)]
                src = next((f for tt, f in recent if tt == t0), None)
                if src is None:
                    continue
                (y0, x0), (y1, x1) = cen[(tid, t0)], cen[(tid, t1)]
                a = (t - t0) / (t1 - t0)
                m = _shift(src == tid, round(a * (y1 - y0)), round(a * (x1 - x0))) & (out == 0)
                if m.any():
                    out[m] = tid
                    rr, cc = np.nonzero(m)
                    added.append((tid, t, float(rr.mean()), float(cc.mean())))
                    cen[(tid, t)] = (added[-1][2], added[-1][3])
                    self.gaps.remove((tid, t))
            recent.append((t, out))
            yield out
        if added:
            rows = np.concatenate([self.centroids, np.array(added, np.float64)])
            self.centroids = rows[np.lexsort((rows[:, 1], rows[:, 0]))]

    def _gap_spans(self) -> dict[tuple[int, int], tuple[int, int]]:
        """``{(id, gap frame): (frame before, frame after)}``."""
        frames: dict[int, list[int]] = {}
        for i, t in self.centroids[:, :2].astype(np.int64):
            frames.setdefault(int(i), []).append(int(t))
        out = {}
        for tid, t in self.gaps:
            ts = frames.get(tid, [])
            out[(tid, t)] = (max(x for x in ts if x < t), min(x for x in ts if x > t))
        return out


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by ``(dy, dx)`` pixels (what leaves the frame is lost)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


class Linker:
    """Streaming overlap bookkeeping + one LAP solve (see the module docstring).

    Args:
        mode: ``"3d"`` (one id per object through the slices) or ``"time"`` (tracks, divisions).
        min_iou: smallest IoU of a frame-to-frame link.
        min_iou_gap: smallest IoU to close a gap of ``max_gap`` frames.
        min_inside: for a division, the smallest fraction of a daughter inside its mother.
        max_gap: missing frames that a gap may span (0: none).
    """

    def __init__(self, mode: str = "time", *, min_iou: float = 0.2, min_iou_gap: float = 0.1, min_inside: float = 0.6, max_gap: int = 2):
        if mode not in ("3d", "time"):
            raise SettingsError(f"link mode must be '3d' or 'time' to link frames, got {mode!r}.")
        self.mode = mode
        self.min_iou, self.min_iou_gap, self.min_inside, self.max_gap = float(min_iou), float(min_iou_gap), float(min_inside), int(max_gap)
        self._recent: deque[tuple[int, np.ndarray]] = deque(maxlen=self.max_gap + 1)
        self._ids: list[np.ndarray] = []  # per frame: its object ids (sorted)
        self._area: dict[tuple[int, int], int] = {}
        self._centre: dict[tuple[int, int], tuple[float, float]] = {}
        self._inter: dict[tuple[int, int, int, int], int] = {}  # (t1, id1, t2, id2), t1 < t2

    @property
    def n_frames(self) -> int:
        return len(self._ids)

    def add(self, labels: np.ndarray) -> None:
        """Record the next frame's ``(H, W)`` integer labels (0 = background)."""
        lab = np.asarray(labels)
        if lab.ndim != 2:
            raise SettingsError(f"Linker.add takes one (H, W) label frame, got shape {lab.shape}.")
        t = len(self._ids)
        if self._recent and self._recent[-1][1].shape != lab.shape:
            raise SettingsError(f"frame {t} has shape {lab.shape}, the previous one {self._recent[-1][1].shape}.")
        flat = lab.ravel().astype(np.int64)
        ids, inv, area = np.unique(flat, return_inverse=True, return_counts=True)
        rows = np.repeat(np.arange(lab.shape[0], dtype=np.float64), lab.shape[1])
        cols = np.tile(np.arange(lab.shape[1], dtype=np.float64), lab.shape[0])
        cy = np.bincount(inv, rows) / area
        cx = np.bincount(inv, cols) / area
        keep = ids > 0
        self._ids.append(ids[keep])
        for i, a, y, x in zip(ids[keep], area[keep], cy[keep], cx[keep]):
            self._area[(t, int(i))] = int(a)
            self._centre[(t, int(i))] = (float(y), float(x))
        for t0, prev in self._recent:
            both = (prev.ravel() > 0) & (flat > 0)
            if not both.any():
                continue
            pairs, counts = np.unique(np.stack([prev.ravel()[both].astype(np.int64), flat[both]]), axis=1, return_counts=True)
            for (a, b), c in zip(pairs.T, counts):
                self._inter[(t0, int(a), t, int(b))] = int(c)
        self._recent.append((t, lab))

    # ---------------------------------------------------------------- costs (laptrack metrics)
    def _pair(self, c1: np.ndarray, c2: np.ndarray) -> tuple[tuple[int, int], tuple[int, int], int]:
        a, b = (int(c1[0]), int(c1[1])), (int(c2[0]), int(c2[1]))
        if a[0] > b[0]:
            a, b = b, a
        return a, b, self._inter.get((*a, *b), 0)

    def _iou_cost(self, c1: np.ndarray, c2: np.ndarray) -> float:
        a, b, inter = self._pair(c1, c2)
        if not inter:
            return _FAR
        iou = inter / (self._area[a] + self._area[b] - inter)
        if self.mode == "3d":  # a nucleus' tip is small against the next slice: count containment too
            iou = (iou + inter / min(self._area[a], self._area[b])) / 2
        return 1.0 - iou

    def _inside_cost(self, c1: np.ndarray, c2: np.ndarray) -> float:
        _a, b, inter = self._pair(c1, c2)  # b: the later one (the daughter)
        return 1.0 - inter / self._area[b] if inter else _FAR

    # ---------------------------------------------------------------- solve
    def solve(self, first_id: int = 1) -> Links:
        """Assign ids (consecutive from ``first_id``) and build the track table; see the module docstring."""
        from laptrack import LapTrack

        coords = [np.array([[t, i] for i in ids], np.float64).reshape(-1, 2) for t, ids in enumerate(self._ids)]
        link_cut = 1.0 - self.min_iou
        gap_cut = 1.0 - self.min_iou_gap
        split_cut = 1.0 - self.min_inside
        # the cutoffs decide; the alternative costs (Jaqaman's "no link" entries) are set high
        # enough never to veto a pair within its cutoff (see laptrack's cost matrices)
        no_split = split_cut if self.mode == "time" else gap_cut
        lt = LapTrack(  # type: ignore[call-arg]  # pydantic fields with defaults
            metric=self._iou_cost, cutoff=link_cut, track_start_cost=link_cut, track_end_cost=link_cut,
            gap_closing_metric=self._iou_cost, gap_closing_cutoff=gap_cut if self.max_gap else False,
            gap_closing_max_frame_count=self.max_gap + 1,
            splitting_metric=self._inside_cost, splitting_cutoff=split_cut if self.mode == "time" else False,
            merging_cutoff=False, segment_start_cost=gap_cut, segment_end_cost=gap_cut,
            no_splitting_cost=no_split, no_merging_cost=no_split,
        )
        graph = lt.predict(coords) if any(len(c) for c in coords) else None
        return self._tracks(graph, first_id)

    def _tracks(self, graph, first_id: int) -> Links:
        node_id: dict[tuple[int, int], int] = {}  # (t, index in frame) -> linked id
        rows: list[list[int]] = []
        gaps: list[tuple[int, int]] = []
        nxt = first_id
        order = sorted(graph.nodes) if graph is not None else []
        for node in order:
            if node in node_id:
                continue
            preds = list(graph.predecessors(node))
            # a node not reached along a chain whose predecessor has two successors: a daughter
            parent = node_id[preds[0]] if len(preds) == 1 and graph.out_degree(preds[0]) > 1 else 0
            tid, nxt = nxt, nxt + 1
            cur, last = node, node[0]
            while True:
                node_id[cur] = tid
                last = cur[0]
                succ = list(graph.successors(cur))
                if len(succ) != 1:
                    break
                nxt_node = succ[0]
                if graph.in_degree(nxt_node) != 1:
                    break
                gaps += [(tid, f) for f in range(cur[0] + 1, nxt_node[0])]
                cur = nxt_node
            rows.append([tid, node[0], last, parent])
        lut: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for t, ids in enumerate(self._ids):
            lut[t] = (ids.astype(np.int64), np.array([node_id[(t, k)] for k in range(len(ids))], np.int64))
        cents = [
            (node_id[(t, k)], t, *self._centre[(t, int(i))]) for t, ids in enumerate(self._ids) for k, i in enumerate(ids)
        ]
        cen = np.array(sorted(cents), np.float64).reshape(-1, 4)
        tracks = np.array(sorted(rows), np.int64).reshape(-1, 4)
        return Links(lut, tracks, cen, gaps)


def link_labels(
    frames: Iterable[np.ndarray], mode: str, first_id: int = 1, fill_gaps: bool = True, **options: Any
) -> tuple[np.ndarray, Links]:
    """Link a ``(T, H, W)`` stack of per-frame labels (any iterable of ``(H, W)`` frames); closed
    gaps are filled (see :meth:`Links.iter_relabel`) unless ``fill_gaps=False``.

    Returns ``(linked (T, H, W) uint32, links)``; see :class:`Linker` for ``options``.
    """
    frames = list(frames)
    linker = Linker(mode, **options)
    for f in frames:
        linker.add(f)
    links = linker.solve(first_id)
    out = np.stack(list(links.iter_relabel(frames, fill_gaps))) if frames else np.zeros((0, 0, 0), np.uint32)
    return out, links
