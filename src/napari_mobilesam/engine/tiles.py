"""Tiling for *segment everything* on frames much larger than the model's 1024-pixel input.

SAM shrinks a frame so that its long side is 1024 pixels: on a 4096² or whole-slide frame, cells
become a few pixels wide. With tiling, each tile is segmented at the model's resolution and the
objects are put back into the frame:

- tiles of at most ``tile`` x ``tile`` pixels cover the frame, neighbours overlapping by at least
  ``overlap`` pixels (spread evenly, so the last tile ends at the frame's edge);
- an object touching a tile's *inner* edge (one that is not the frame's edge) is cut by the tile
  and dropped: when ``overlap`` is at least the objects' size, the neighbouring tile holds it whole;
- objects found whole in two overlapping tiles are resolved by the usual labels rule (largest
  first, ``min_visible``), which keeps one of the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .objects import ObjectMask

__all__ = ["place_tile_objects", "tile_boxes", "tile_settings"]


def tile_settings(tile: int, overlap: int | None = None) -> tuple[int, int]:
    """``(tile, overlap)`` as ints, the overlap defaulting to a quarter tile.

    Raises:
        ValueError: ``tile`` under 64 pixels, or ``overlap`` not in ``0 .. tile // 2``.
    """
    tile = int(tile)
    overlap = tile // 4 if overlap is None else int(overlap)
    if tile < 64:
        raise ValueError(f"tile must be at least 64 pixels, got {tile}.")
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"tile overlap must be between 0 and half the tile ({tile // 2}), got {overlap}.")
    return tile, overlap


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    k = math.ceil((n - tile) / (tile - overlap)) + 1
    return sorted({int(round(x)) for x in np.linspace(0, n - tile, k)})


def tile_boxes(hw: Sequence[int], tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(row0, col0, row1, col1)`` of tiles covering an ``(H, W)`` frame, row by row.

    Raises:
        ValueError: as :func:`tile_settings`.
    """
    tile, overlap = tile_settings(tile, overlap)
    h, w = int(hw[0]), int(hw[1])
    return [(r, c, min(r + tile, h), min(c + tile, w)) for r in _starts(h, tile, overlap) for c in _starts(w, tile, overlap)]


def place_tile_objects(objects: Sequence[ObjectMask], box: Sequence[int], hw: Sequence[int]) -> list[ObjectMask]:
    """Masks found in the tile ``box`` as masks of the whole ``(H, W)`` frame; masks touching an
    inner edge of the tile (cut by it) and empty masks are dropped."""
    r0, c0, r1, c1 = (int(v) for v in box)
    h, w = int(hw[0]), int(hw[1])
    out = []
    for o in objects:
        rows, cols = np.flatnonzero(o.mask.any(1)), np.flatnonzero(o.mask.any(0))
        if not len(rows):
            continue
        top, bottom = o.offset[0] + rows[0], o.offset[0] + rows[-1] + 1  # tile coordinates
        left, right = o.offset[1] + cols[0], o.offset[1] + cols[-1] + 1
        cut = (r0 > 0 and top == 0) or (r1 < h and bottom == r1 - r0) or (c0 > 0 and left == 0) or (c1 < w and right == c1 - c0)
        if not cut:
            out.append(replace(o, offset=(o.offset[0] + r0, o.offset[1] + c0), shape=(h, w)))
    return out
