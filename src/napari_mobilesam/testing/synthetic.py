"""Synthetic microscopy with exact instance labels (numpy and scikit-image only).

- :func:`synthetic_cells`: one fluorescence-like frame (bright cells on a dark background) or,
  with ``polarity="dark"``, a brightfield-like one (dark cells with a faint halo on a bright
  background), with its ``(H, W)`` int32 instance labels (0 = background, 1..n = cells).
- :func:`synthetic_stack`: a time-lapse of drifting cells that enter, leave and appear, with
  labels that keep each cell's id in every frame.

Cells are ellipses with a slightly wavy outline: equivalent radius ``radius`` (log-uniform),
aspect ratio 1..``max_aspect``, random orientation, brightness varying ~3x between cells, an
intensity that falls towards the edge (so touching cells show a dip where they meet), a smooth
inner texture, optical blur and Poisson-like noise. A pixel claimed by two touching cells goes
to the one whose outline is farther away (a Voronoi-like split), so labels never overlap.

Everything is a pure function of ``seed``: the same call gives the same arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..engine.errors import SettingsError

__all__ = ["render_cells", "sample_cells", "synthetic_cells", "synthetic_stack"]

# cell parameter columns: centre row, centre col, semi-axis along theta, across, theta, brightness,
# outline wave amplitude, wave order, wave phase
_COLS = 9


def sample_cells(
    shape: Sequence[int],
    n: int,
    rng: np.random.Generator,
    radius: tuple[float, float] = (8, 40),
    max_aspect: float = 2.5,
    touching: float = 0.3,
    brightness: tuple[float, float] = (0.3, 0.9),
) -> np.ndarray:
    """Place up to ``n`` cells in an ``(H, W)`` frame; returns ``(k, 9)`` float64 parameters.

    A fraction ``touching`` of the cells is put against an earlier one; the others keep clear of
    all earlier cells. Fewer than ``n`` come back when the frame is too full.
    """
    h, w = int(shape[0]), int(shape[1])
    cells: list[np.ndarray] = []
    lo, hi = np.log(radius[0]), np.log(radius[1])
    for _ in range(n):
        for _attempt in range(60):
            r = float(np.exp(rng.uniform(lo, hi)))
            asp = float(rng.uniform(1.0, max_aspect))
            a, b = r * np.sqrt(asp), r / np.sqrt(asp)
            theta = rng.uniform(0, np.pi)
            partner = None
            if cells and rng.random() < touching:
                partner = int(rng.integers(len(cells)))
                p = cells[partner]
                ang = rng.uniform(0, 2 * np.pi)
                dist = (_extent(p, ang) + _extent_ab(a, b, theta, ang + np.pi)) * 0.97
                cy, cx = p[0] + dist * np.sin(ang), p[1] + dist * np.cos(ang)
            else:
                cy, cx = rng.uniform(b, h - b), rng.uniform(b, w - b)
            if not (0 <= cy < h and 0 <= cx < w):
                continue
            ok = all(
                i == partner or np.hypot(cy - c[0], cx - c[1]) > 1.05 * (a + c[2]) for i, c in enumerate(cells)
            )
            if ok:
                wave = rng.uniform(0.0, 0.08)
                cells.append(
                    np.array([cy, cx, a, b, theta, rng.uniform(*brightness), wave, rng.integers(2, 5), rng.uniform(0, 2 * np.pi)])
                )
                break
    return np.array(cells, dtype=np.float64).reshape(-1, _COLS)


def _extent_ab(a: float, b: float, theta: float, ang: float) -> float:
    """Distance from an ellipse's centre to its outline in direction ``ang``."""
    t = ang - theta
    return float(1.0 / np.sqrt((np.cos(t) / a) ** 2 + (np.sin(t) / b) ** 2))


def _extent(c: np.ndarray, ang: float) -> float:
    return _extent_ab(c[2], c[3], c[4], ang)


def render_cells(
    shape: Sequence[int],
    cells: np.ndarray,
    ids: np.ndarray | None = None,
    *,
    seed: int | np.random.SeedSequence = 0,
    polarity: str = "bright",
    dtype: type | np.dtype = np.uint8,
    blur: float = 1.0,
    noise: float = 0.03,
    texture: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw cells (rows of :func:`sample_cells`) into an ``(H, W)`` frame.

    Returns:
        ``image`` ``(H, W)`` of ``dtype`` (uint8: 0..255; uint16: a 12-bit-like camera range
        with an offset of 100; float32: 0..1), and ``labels`` ``(H, W)`` int32 with ``ids[i]``
        (default ``i + 1``) where cell ``i`` is visible.
    """
    if polarity not in ("bright", "dark"):
        raise SettingsError(f"polarity must be 'bright' or 'dark', got {polarity!r}.")
    h, w = int(shape[0]), int(shape[1])
    rng = np.random.default_rng(seed)
    ids = np.arange(1, len(cells) + 1) if ids is None else np.asarray(ids)
    labels = np.zeros((h, w), np.int32)
    depth = np.full((h, w), np.inf, np.float32)  # normalised distance of the owning cell's centre
    signal = np.zeros((h, w), np.float32)  # cell intensity (0 outside)
    halo = np.zeros((h, w), np.float32)
    for c, cid in zip(cells, ids):
        cy, cx, a, b, theta, bright, wave, order, phase = c
        ext = a * 1.4 + 3
        r0, r1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, h)
        c0, c1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, w)
        if r0 >= r1 or c0 >= c1:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        phi = np.arctan2(v, u)
        d = np.sqrt((u / a) ** 2 + (v / b) ** 2) / (1 + wave * np.sin(order * phi + phase))
        inside = d < 1
        own = inside & (d < depth[r0:r1, c0:c1])
        labels[r0:r1, c0:c1][own] = cid
        depth[r0:r1, c0:c1][own] = d[own]
        signal[r0:r1, c0:c1][own] = bright * (1 - 0.45 * d[own] ** 2)
        ring = np.exp(-(((d - 1.12) / 0.1) ** 2)) * ~inside
        halo[r0:r1, c0:c1] = np.maximum(halo[r0:r1, c0:c1], ring)
    tex = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 2.0)
    tex *= texture / max(float(tex.std()), 1e-6)
    signal *= 1 + tex
    gy, gx = rng.uniform(-0.03, 0.03, 2)
    ramp = gy * np.linspace(-1, 1, h, dtype=np.float32)[:, None] + gx * np.linspace(-1, 1, w, dtype=np.float32)[None]
    if polarity == "bright":
        img = 0.06 + ramp + signal
    else:
        img = 0.78 + ramp - 0.6 * signal + 0.12 * halo
    if blur > 0:
        img = ndi.gaussian_filter(img, blur)
    img = img + noise * np.sqrt(np.clip(img, 0, None)) * rng.standard_normal((h, w)).astype(np.float32)
    img = img + 0.3 * noise * rng.standard_normal((h, w)).astype(np.float32)
    img = np.clip(img, 0, 1)
    dt = np.dtype(dtype)
    if dt == np.uint8:
        out = np.round(img * 255).astype(np.uint8)
    elif dt == np.uint16:
        out = np.round(100 + img * 3000).astype(np.uint16)
    elif dt.kind == "f":
        out = img.astype(dt)
    else:
        raise SettingsError(f"dtype must be uint8, uint16 or a float type, got {dt}.")
    return out, labels


def synthetic_cells(
    shape: Sequence[int] = (256, 256),
    n: int = 20,
    seed: int = 0,
    *,
    dtype: type | np.dtype = np.uint8,
    polarity: str = "bright",
    radius: tuple[float, float] = (8, 40),
    max_aspect: float = 2.5,
    touching: float = 0.3,
    blur: float = 1.0,
    noise: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic fluorescence (``polarity="bright"``) or brightfield-like (``"dark"``) frame.

    Args:
        shape: ``(H, W)``.
        n: cells to place (fewer if they do not fit).
        seed: everything is a function of it.
        dtype: uint8, uint16 (offset 100, ~12-bit range) or float.
        radius: range of the cells' equivalent radius in pixels (log-uniform).
        max_aspect: largest major/minor axis ratio.
        touching: fraction of cells placed against another one.
        blur: Gaussian sigma of the optics in pixels; noise: noise level (0..1 scale).

    Returns:
        ``(image (H, W) dtype, labels (H, W) int32)``; label ``i`` is the ``i``-th cell placed.
    """
    ss = np.random.SeedSequence([int(seed), 11])
    place, draw = ss.spawn(2)
    cells = sample_cells(shape, n, np.random.default_rng(place), radius, max_aspect, touching)
    return render_cells(shape, cells, seed=draw, polarity=polarity, dtype=dtype, blur=blur, noise=noise)


def synthetic_stack(
    n_frames: int = 8,
    shape: Sequence[int] = (256, 256),
    n: int = 14,
    seed: int = 0,
    *,
    dtype: type | np.dtype = np.uint8,
    polarity: str = "bright",
    radius: tuple[float, float] = (10, 22),
    speed: tuple[float, float] = (4.0, 7.0),
    appear: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """A time-lapse: cells drift together (plus a little motion of their own), leave the frame on
    one side and enter on the other; ``appear`` cells appear in mid-stack.

    Args:
        n_frames, shape: the stack is ``(n_frames, H, W)``.
        n: cells in the field around the frame at the start (some are outside it).
        speed: range of the common drift in pixels per frame.

    Returns:
        ``(stack (T, H, W) dtype, labels (T, H, W) int32)``; a cell keeps its id in every frame
        it is visible in, and ids are never reused.
    """
    h, w = int(shape[0]), int(shape[1])
    ss = np.random.SeedSequence([int(seed), 12])
    place, motion, *draws = ss.spawn(2 + n_frames)
    rng = np.random.default_rng(place)
    margin = int(2 * radius[1])
    drift_dir = rng.uniform(0, 2 * np.pi)
    drift = rng.uniform(*speed) * np.array([np.sin(drift_dir), np.cos(drift_dir)])
    # the field: the frame plus what drifts into it during the stack
    travel = np.abs(drift) * n_frames
    fh, fw = int(h + travel[0] + margin), int(w + travel[1] + margin)
    field = sample_cells((fh, fw), int(n * fh * fw / (h * w)), rng, radius, 2.0, 0.15)
    # shift the field so that the frame sees its upstream part first
    field[:, 0] -= (travel[0] + margin / 2) if drift[0] > 0 else margin / 2
    field[:, 1] -= (travel[1] + margin / 2) if drift[1] > 0 else margin / 2
    born = np.zeros(len(field), int)
    extra = sample_cells((h, w), appear, rng, radius, 2.0, 0.0)
    extra[:, :2] -= drift * (n_frames // 2)  # placed where they will be at mid-stack
    ok = [all(np.hypot(*(e[:2] - f[:2])) > 1.05 * (e[2] + f[2]) for f in field) for e in extra]
    extra = extra[np.asarray(ok, bool)] if len(extra) else extra
    cells = np.concatenate([field, extra])
    born = np.concatenate([born, np.full(len(extra), n_frames // 2)])
    ids = np.arange(1, len(cells) + 1)
    mrng = np.random.default_rng(motion)
    own = mrng.normal(0, 0.6, (n_frames, len(cells), 2)).cumsum(0)
    spin = mrng.normal(0, 0.03, (n_frames, len(cells))).cumsum(0)
    stack = np.zeros((n_frames, h, w), np.dtype(dtype))
    labels = np.zeros((n_frames, h, w), np.int32)
    for t in range(n_frames):
        now = cells.copy()
        now[:, :2] += drift * t + own[t]
        now[:, 4] += spin[t]
        live = born <= t
        stack[t], labels[t] = render_cells((h, w), now[live], ids[live], seed=draws[t], polarity=polarity, dtype=dtype)
    return stack, labels
