"""Tracks out: Cell Tracking Challenge result folders, GEFF graphs and napari Tracks layer data.

All take the :class:`~napari_mobilesam.engine.link.Links` of a time-linked stack and (for CTC) its
linked ``(H, W)`` label frames in order.

- CTC result format: ``maskTTT.tif`` (uint16 labels, one per frame) and ``res_track.txt``, one
  line ``id first last parent`` per track. CTC tracks have no gaps: a track that skips a frame
  (a closed gap) is written as two tracks, the later one with a new id and ``parent`` = the
  earlier one (the CTC convention for an object that is missing on a frame).
- GEFF (``.geff`` zarr, through the ``geff`` package): one node per object per frame with
  ``t``, ``y``, ``x`` and ``track_id``; edges along tracks (including over gaps) and from a
  mother's last node to each daughter's first node.
- napari Tracks: ``data`` rows ``(track_id, t, y, x)`` and ``graph`` ``{daughter: [mother]}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import SettingsError
from .link import Links

__all__ = ["ctc_tracks", "tracks_layer_data", "write_ctc", "write_geff", "write_tracks"]


def tracks_layer_data(links: Links) -> tuple[np.ndarray, dict[int, list[int]]]:
    """napari Tracks layer data: ``((N, 4) float64 rows (track_id, t, y, x), {daughter: [mother]})``."""
    return links.centroids.copy(), {d: [p] for d, p in links.parents.items()}


def ctc_tracks(links: Links) -> tuple[np.ndarray, dict[int, dict[int, int]]]:
    """Gap-free CTC tracks.

    Returns:
        ``table`` ``(n, 4)`` int64 ``(id, first, last, parent)`` and ``remap``: per frame, the
        linked ids that get a new CTC id there (``{frame: {linked id: ctc id}}``; tracks after a
        gap).
    """
    frames: dict[int, list[int]] = {}
    for tid, t in links.centroids[:, :2].astype(np.int64):
        frames.setdefault(int(tid), []).append(int(t))
    nxt = int(links.tracks[:, 0].max()) + 1 if len(links.tracks) else 1
    last_seg: dict[int, int] = {}
    rows: list[list[int]] = []
    links_ids = {int(x) for x in links.tracks[:, 0]}
    remap: dict[int, dict[int, int]] = {}
    for tid, _first, _last, parent in links.tracks:
        ts = np.array(sorted(frames.get(int(tid), [])))
        if not len(ts):
            continue
        cuts = np.flatnonzero(np.diff(ts) > 1) + 1
        prev = 0
        for k, seg in enumerate(np.split(ts, cuts)):
            cid = int(tid) if k == 0 else nxt
            if k:
                nxt += 1
                for t in seg:
                    remap.setdefault(int(t), {})[int(tid)] = cid
            rows.append([cid, int(seg[0]), int(seg[-1]), prev if k else int(parent)])
            prev = cid
        last_seg[int(tid)] = prev
    table = np.array(rows, np.int64).reshape(-1, 4)
    for r in table:  # a daughter (first segment of its track) hangs on the mother's last segment
        if r[0] in links_ids and r[3]:
            r[3] = last_seg.get(int(r[3]), int(r[3]))
    return table[np.argsort(table[:, 0])], remap


def write_ctc(folder: str | Path, frames: Iterable[np.ndarray], links: Links) -> Path:
    """Write a CTC result folder: ``maskTTT.tif`` per linked ``(H, W)`` frame and ``res_track.txt``."""
    import tifffile

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):  # frames may be a lazy relabel that fills gaps: table after
        tifffile.imwrite(out / f"mask{t:03d}.tif", _uint16(np.asarray(frame)))
    table, remap = ctc_tracks(links)
    if len(table) and table[:, 0].max() > np.iinfo(np.uint16).max:
        raise SettingsError(f"{len(table)} tracks (largest id {table[:, 0].max()}) do not fit CTC's 16-bit masks.")
    for t, change in remap.items():  # tracks continued after a gap: their new ids
        lab = tifffile.imread(out / f"mask{t:03d}.tif")
        new = lab.copy()
        for old, cid in change.items():
            new[lab == old] = cid
        tifffile.imwrite(out / f"mask{t:03d}.tif", new)
    np.savetxt(out / "res_track.txt", table, fmt="%d")
    return out


def _uint16(lab: np.ndarray) -> np.ndarray:
    if lab.size and int(lab.max()) > np.iinfo(np.uint16).max:
        raise SettingsError(f"Label id {int(lab.max())} does not fit CTC's 16-bit masks.")
    return lab.astype(np.uint16)


def write_geff(path: str | Path, links: Links, overwrite: bool = False) -> Path:
    """Write the tracking graph as GEFF (``geff.write`` of a networkx DiGraph); node ids are
    ``index in links.centroids``; properties ``t``, ``y``, ``x``, ``track_id``."""
    import geff
    import networkx as nx

    g = nx.DiGraph()
    cen = links.centroids
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for k, (tid, t, y, x) in enumerate(cen):
        g.add_node(k, t=float(t), y=float(y), x=float(x), track_id=int(tid))
        tid = int(tid)
        if tid in last:
            g.add_edge(last[tid], k)
        first.setdefault(tid, k)
        last[tid] = k
    for d, p in links.parents.items():
        if d in first and p in last:
            g.add_edge(last[p], first[d])
    geff.write(g, str(path), axis_names=["t", "y", "x"], axis_types=["time", "space", "space"], overwrite=overwrite)
    return Path(path)


def write_tracks(path: str | Path, frames: Iterable[np.ndarray], links: Links, overwrite: bool = False) -> Path:
    """``path`` ending in ``.geff``: GEFF; otherwise a CTC result folder (see the module docstring)."""
    if str(path).rstrip("/").lower().endswith(".geff"):
        return write_geff(path, links, overwrite=overwrite)
    return write_ctc(path, frames, links)
