"""Synthetic stacks with exact ground truth: z-stacks of ellipsoid nuclei, time-lapses with a division.

- :func:`synthetic_volume`: ``(Z, H, W)`` slices through ellipsoid nuclei, with ``(Z, H, W)``
  int32 3D labels (one id per nucleus through its slices).
- :func:`synthetic_timelapse`: ``(T, H, W)`` frames of drifting cells of which at least one
  divides, with per-frame track labels and the track table ``(id, first, last, parent)``.
- :func:`write_ctc_gt`: the Cell Tracking Challenge ground-truth layout
  (``TRA/man_trackTTT.tif`` + ``TRA/man_track.txt``) that py-ctcmetrics reads.

Cells are drawn by :func:`napari_mobilesam.testing.synthetic.render_cells`; everything is a pure
function of ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..engine.errors import SettingsError
from .synthetic import render_cells, sample_cells

__all__ = ["synthetic_timelapse", "synthetic_volume", "write_ctc_gt"]


def synthetic_volume(
    n_slices: int = 16,
    shape: Sequence[int] = (192, 192),
    n: int = 14,
    seed: int = 0,
    *,
    radius: tuple[float, float] = (10, 20),
    z_radius: tuple[float, float] = (3.0, 6.0),
    dtype: type | np.dtype = np.uint8,
) -> tuple[np.ndarray, np.ndarray]:
    """A z-stack of ellipsoid nuclei.

    Each nucleus is an ellipse in ``(row, col)`` (from :func:`sample_cells`, so nuclei do not
    overlap in projection, a few touch) extruded as an ellipsoid of semi-axis ``z_radius`` slices
    around a random centre slice; its cross-section shrinks (and dims a little) towards its tips.
    Cross-sections with a minor semi-axis under 2 px are left out.

    Returns:
        ``(volume (Z, H, W) dtype, labels (Z, H, W) int32)``; nucleus ``i`` has id ``i + 1`` on
        every slice it is visible on.
    """
    ss = np.random.SeedSequence([int(seed), 21])
    place, depth, *draws = ss.spawn(2 + n_slices)
    cells = sample_cells(shape, n, np.random.default_rng(place), radius, 1.8, 0.2)
    rng = np.random.default_rng(depth)
    zc = rng.uniform(0, n_slices - 1, len(cells))
    zr = rng.uniform(*z_radius, len(cells))
    vol = np.zeros((n_slices, *map(int, shape)), np.dtype(dtype))
    lab = np.zeros((n_slices, *map(int, shape)), np.int32)
    ids = np.arange(1, len(cells) + 1)
    for z in range(n_slices):
        s = np.sqrt(np.clip(1 - ((z - zc) / zr) ** 2, 0, None))
        now = cells.copy()
        now[:, 2] *= s
        now[:, 3] *= s
        now[:, 5] *= 0.6 + 0.4 * s
        live = now[:, 3] >= 2
        vol[z], lab[z] = render_cells(shape, now[live], ids[live], seed=draws[z], dtype=dtype)
    return vol, lab


def synthetic_timelapse(
    n_frames: int = 10,
    shape: Sequence[int] = (192, 192),
    n: int = 12,
    seed: int = 0,
    *,
    radius: tuple[float, float] = (9, 16),
    speed: float = 2.0,
    divide_at: int | None = None,
    dtype: type | np.dtype = np.uint8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A time-lapse of cells drifting together (``speed`` px/frame plus a jitter of their own);
    the largest cell divides on frame ``divide_at`` (default: mid-stack) into two daughters that
    fill its outline and then move apart along its long axis.

    Returns:
        ``(movie (T, H, W) dtype, labels (T, H, W) int32, tracks (k, 4) int64)``; ``tracks`` rows
        are ``(id, first frame, last frame, parent)`` (CTC ``man_track.txt``); the mother's track
        ends on ``divide_at - 1`` and the daughters (the two last ids) start on ``divide_at``.
    """
    h, w = int(shape[0]), int(shape[1])
    ss = np.random.SeedSequence([int(seed), 22])
    place, motion, *draws = ss.spawn(2 + n_frames)
    rng = np.random.default_rng(place)
    td = n_frames // 2 if divide_at is None else int(divide_at)
    if not 0 < td < n_frames:
        raise SettingsError(f"divide_at={td} must be within 1..{n_frames - 1}.")
    ang = rng.uniform(0, 2 * np.pi)
    drift = speed * np.array([np.sin(ang), np.cos(ang)])
    span = np.abs(drift) * n_frames + 4
    inner = (h - span[0], w - span[1])
    cells = sample_cells(inner, n, rng, radius, 1.6, 0.1)
    cells[:, 0] += span[0] / 2 - drift[0] * n_frames / 2
    cells[:, 1] += span[1] / 2 - drift[1] * n_frames / 2
    mother = int(np.argmax(cells[:, 2] * cells[:, 3]))
    m = cells[mother].copy()
    m[2] = max(m[2], 1.3 * m[3])  # an elongated mother: the daughters sit along its long axis
    cells[mother] = m
    axis = np.array([np.sin(m[4]), np.cos(m[4])])
    daughters = np.stack([m, m])
    daughters[:, 2] = m[2] / 2 * 0.95
    daughters[:, 3] = min(m[3] * 0.9, daughters[0, 2] * 1.2)
    daughters[0, :2] = m[:2] + axis * m[2] / 2
    daughters[1, :2] = m[:2] - axis * m[2] / 2
    n0 = len(cells)
    ids = np.arange(1, n0 + 3)
    mrng = np.random.default_rng(motion)
    own = mrng.normal(0, 0.4, (n_frames, n0 + 2, 2)).cumsum(0)
    movie = np.zeros((n_frames, h, w), np.dtype(dtype))
    labels = np.zeros((n_frames, h, w), np.int32)
    for t in range(n_frames):
        now = np.concatenate([cells, daughters])
        now[:, :2] += drift * t + own[t]
        if t >= td:  # daughters move apart along the mother's axis, 1 px per frame each
            now[n0, :2] += axis * (t - td)
            now[n0 + 1, :2] -= axis * (t - td)
        live = np.ones(n0 + 2, bool)
        live[mother] = t < td
        live[n0:] = t >= td
        movie[t], labels[t] = render_cells((h, w), now[live], ids[live], seed=draws[t], dtype=dtype)
    tracks = []
    for i in ids:
        frames = np.flatnonzero((labels == i).any(axis=(1, 2)))
        if len(frames):
            tracks.append([i, frames[0], frames[-1], mother + 1 if i > n0 else 0])
    return movie, labels, np.array(tracks, np.int64).reshape(-1, 4)


def write_ctc_gt(folder: str | Path, labels: np.ndarray, tracks: np.ndarray) -> Path:
    """Write ``folder/TRA/man_trackTTT.tif`` (uint16) and ``folder/TRA/man_track.txt``; returns ``folder``."""
    import tifffile

    tra = Path(folder) / "TRA"
    tra.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(labels):
        tifffile.imwrite(tra / f"man_track{t:03d}.tif", frame.astype(np.uint16))
    np.savetxt(tra / "man_track.txt", np.asarray(tracks, np.int64).reshape(-1, 4), fmt="%d")
    return Path(folder)
