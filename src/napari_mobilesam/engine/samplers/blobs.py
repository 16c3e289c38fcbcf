"""The detector-free ``blobs`` sampler: boxes from scale-space blob detection (microscopy).

:func:`blob_boxes`: scikit-image LoG/DoG blob detection on the normalised frame proposes one box per
roundish object, sized from the blob's scale; the boxes are then decoded in batches like MobileSAMv2's
detector boxes (:func:`~.base.decode_boxes`). No weights besides MobileSAM's. Without a diameter,
:func:`estimate_diameter` measures one from the image (the scale of its strongest blobs), and
proposals must stand out of the noise (:func:`blob_contrast`), so that noise gives few boxes.

Coordinates are napari's: ``(row, col)``; boxes are ``(row0, col0, row1, col1)``.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SettingsError
from .base import SamplerContext, check_choice, decode_boxes, opt, register_sampler

if TYPE_CHECKING:
    from ..predictor import ObjectMask

__all__ = ["BlobsOptions", "BlobsSampler", "blob_boxes", "blob_contrast", "estimate_diameter", "noise_level"]


def _grey(rgb: np.ndarray, polarity: str) -> np.ndarray:
    """``(H, W)`` float32 in 0..1, objects bright (``polarity="dark"`` inverts)."""
    if polarity not in ("bright", "dark"):
        raise SettingsError(f"polarity must be 'bright' (objects brighter than background) or 'dark', got {polarity!r}.")
    g = np.asarray(rgb, np.float32)
    if g.ndim == 3:
        g = g.mean(-1)
    g = g / 255.0 if rgb.dtype == np.uint8 else g
    return 1.0 - g if polarity == "dark" else g


def noise_level(img: np.ndarray) -> float:
    """Robust standard deviation of the pixel noise of an ``(H, W)`` float image.

    The median absolute deviation of the image minus its 1-pixel Gaussian blur (objects and
    gradients mostly cancel there), scaled so that white noise of sd s gives s.
    """
    from scipy import ndimage

    res = img - ndimage.gaussian_filter(img, 1.0)
    delta = np.zeros((11, 11))
    delta[5, 5] = 1.0
    gain = float(np.linalg.norm(delta - ndimage.gaussian_filter(delta, 1.0)))  # white noise sd 1 -> this sd
    mad = float(np.median(np.abs(res - np.median(res))))
    return 1.4826 * mad / gain


def _log_noise_gain(sigma: float) -> float:
    """Standard deviation of the scale-normalised LoG ``σ²∇²G_σ`` of white noise of sd 1."""
    from scipy import ndimage

    n = 2 * int(math.ceil(4 * sigma)) + 3
    delta = np.zeros((n, n))
    delta[n // 2, n // 2] = 1.0
    return float(np.linalg.norm(sigma**2 * ndimage.gaussian_laplace(delta, sigma)))


def estimate_diameter(img: np.ndarray, min_diameter: float = 4.0, max_diameter: float | None = None, per_octave: int = 4) -> float:
    """Typical diameter in pixels of the bright blobs of an ``(H, W)`` float image (0..1).

    Scale selection on the scale-normalised Laplacian of Gaussian ``-σ²∇²G_σ * img``: its
    scale-space maxima are blobs, with diameter ``2√2 σ`` for a disk. The estimate is the
    diameter-weighted median diameter of the strong maxima (at least 30 % of the strongest
    response; an edge responds about a third as strongly as a disk of the same contrast), leaving
    out maxima inside a larger one (texture inside an object). Scales run from
    ``min_diameter`` to ``max_diameter`` (default: a third of the shorter side), ``per_octave``
    per doubling; large scales are computed on a downscaled image (σ of 1.5-3 working pixels).
    """
    from scipy import ndimage
    from skimage.transform import downscale_local_mean

    h, w = img.shape
    dmax = float(max_diameter or max(2 * min_diameter, min(h, w) / 3))
    n = int(np.floor(per_octave * math.log2(dmax / min_diameter))) + 1
    sigmas = min_diameter / (2 * math.sqrt(2)) * 2.0 ** (np.arange(n) / per_octave)
    levels: dict[int, np.ndarray] = {1: np.asarray(img, np.float32)}
    maps = []
    for s in sigmas:
        f = 2 ** max(0, int(math.floor(math.log2(s / 1.5))))
        if f not in levels:
            levels[f] = downscale_local_mean(levels[f // 2], (2, 2))
        ss = s / f
        r = -(ss**2) * ndimage.gaussian_laplace(levels[f], ss)
        maps.append((f, r, ndimage.maximum_filter(r, 3)))
    found = []  # (row, col, diameter, response) of scale-space maxima
    for k in range(1, n - 1):  # a scale-space maximum needs a scale on each side
        f, r, mx = maps[k]
        ri, ci = np.nonzero((r == mx) & (r > 0))
        v = r[ri, ci]
        for j in (k - 1, k + 1):  # the neighbouring scales' 3x3 maxima at the same place
            fj, _, mj = maps[j]
            rj = np.clip(((ri + 0.5) * f / fj).astype(int), 0, mj.shape[0] - 1)
            cj = np.clip(((ci + 0.5) * f / fj).astype(int), 0, mj.shape[1] - 1)
            keep = v >= mj[rj, cj]
            ri, ci, v = ri[keep], ci[keep], v[keep]
        found.append(np.stack([(ri + 0.5) * f - 0.5, (ci + 0.5) * f - 0.5, np.full(len(v), 2 * math.sqrt(2) * sigmas[k]), v], 1))
    p = np.concatenate(found) if found else np.zeros((0, 4))
    if not len(p):
        return float(min_diameter)
    p = p[np.argsort(-p[:, 3], kind="stable")[:4000]]  # noise has many maxima: the strongest decide
    strong = p[p[:, 3] >= 0.3 * p[0, 3]][:1000]
    cover = p[p[:, 3] >= 0.2 * p[0, 3]]
    # texture inside an object is not an object: drop maxima inside a clearly larger one
    dist = np.hypot(strong[:, None, 0] - cover[None, :, 0], strong[:, None, 1] - cover[None, :, 1])
    inside = (dist < cover[None, :, 2] / 2) & (cover[None, :, 2] > 1.2 * strong[:, None, 2])
    kept = strong[~inside.any(1)]
    kept = kept if len(kept) else strong
    # median weighted by diameter: between the median per object and per area covered
    order = np.argsort(kept[:, 2])
    wts = np.cumsum(kept[order, 2])
    return float(kept[order[np.searchsorted(wts, wts[-1] / 2)], 2])


def blob_contrast(img: np.ndarray, centres: np.ndarray, radius: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Contrast of blobs against their surroundings, and its signal-to-noise ratio.

    Contrast: the mean of ``img`` in the square inscribed in each blob's disk minus the mean in
    the square ring between 1.25 and 1.75 radii around it (clipped to the image). The SNR
    divides it by its standard deviation under white pixel noise of sd ``noise``.
    centres: ``(N, 2)`` (row, col); radius: ``(N,)``. Returns ``(contrast (N,), snr (N,))``.
    """
    h, w = img.shape
    ii = np.zeros((h + 1, w + 1))
    ii[1:, 1:] = np.asarray(img, np.float64).cumsum(0).cumsum(1)

    def square(half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r0 = np.clip(np.round(centres[:, 0] - half), 0, h).astype(int)
        r1 = np.clip(np.round(centres[:, 0] + half) + 1, 0, h).astype(int)
        c0 = np.clip(np.round(centres[:, 1] - half), 0, w).astype(int)
        c1 = np.clip(np.round(centres[:, 1] + half) + 1, 0, w).astype(int)
        total = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
        return total, np.maximum(r1 - r0, 0) * np.maximum(c1 - c0, 0)

    s_in, n_in = square(np.maximum(radius / math.sqrt(2), 0.5))
    s_mid, n_mid = square(1.25 * radius)
    s_out, n_out = square(np.maximum(1.75 * radius, 1.25 * radius + 1))
    n_ring = n_out - n_mid
    inner = s_in / np.maximum(n_in, 1)
    ring = np.where(n_ring > 0, (s_out - s_mid) / np.maximum(n_ring, 1), inner)
    contrast = inner - ring
    sd = max(float(noise), 1e-6) * np.sqrt(1.0 / np.maximum(n_in, 1) + 1.0 / np.maximum(n_ring, 1))
    return contrast, contrast / sd


def blob_boxes(
    rgb: np.ndarray,
    diameter: float | None = None,
    diameter_range: tuple[float, float] = (0.5, 2.0),
    method: str = "log",
    threshold: float = 0.05,
    polarity: str = "bright",
    overlap: float = 0.5,
    num_sigma: int = 6,
    box_scale: float = 1.2,
    max_det: int | None = 1000,
    min_snr: float | None = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes around blob-like objects found by scale-space blob detection.

    Args:
        rgb: ``(H, W, 3)`` uint8 (as from ``to_rgb_uint8``) or ``(H, W)`` float in 0..1.
        diameter: expected object diameter in pixels; default: measured on the image
            (:func:`estimate_diameter`).
        diameter_range: factors around ``diameter`` that bound the scale search.
        method: "log" (Laplacian of Gaussian; accurate) or "dog" (difference of Gaussians; faster).
        threshold: minimum scale-normalised response (intensities in 0..1); lower finds fainter objects.
        polarity: "bright" (fluorescence: objects brighter than background) or "dark" (brightfield).
        overlap: blobs overlapping more than this fraction are merged (skimage's ``overlap``).
        num_sigma: number of scales tried between the bounds ("log").
        box_scale: box half-side = ``box_scale`` x the blob radius.
        max_det: keep at most this many blobs, the strongest first (None: all).
        min_snr: keep only blobs whose contrast (:func:`blob_contrast`) is at least this many
            times its standard deviation under the image's pixel noise (:func:`noise_level`), so
            that noise and flat texture propose few boxes; None or 0: no cap.

    Returns:
        ``(boxes (N, 4) float64 (row0, col0, row1, col1), scores (N,) float64)``, by decreasing
        score = contrast (blob minus surroundings, intensities 0..1); the box centre is the blob
        centre (up to clipping at the image border).
    """
    from skimage.feature import blob_dog, blob_log
    from skimage.transform import downscale_local_mean

    if method not in ("log", "dog"):
        raise SettingsError(f"method must be 'log' or 'dog', got {method!r}.")
    img = _grey(np.asarray(rgb), polarity)
    h, w = img.shape
    if diameter is None:
        diameter = estimate_diameter(img)
    if not diameter > 0 or not 0 < diameter_range[0] <= diameter_range[1]:
        raise SettingsError(f"diameter={diameter} and diameter_range={diameter_range} must be positive, low <= high.")
    # sigma of a disk of radius r for the LoG is r / sqrt(2)
    smin = diameter * diameter_range[0] / 2 / math.sqrt(2)
    smax = diameter * diameter_range[1] / 2 / math.sqrt(2)
    # work at a coarser grid when objects are large: same blobs, far fewer pixels
    f = max(1, int(smin // 2))
    small = downscale_local_mean(img, (f, f)) if f > 1 else img
    noise = noise_level(img) if min_snr else 0.0
    if min_snr:
        # responses within 3 sd of what the pixel noise gives are not worth a blob (and noise
        # has very many of them): raise the threshold to that, at the finest scale searched
        threshold = max(float(threshold), 3.0 * noise / f * _log_noise_gain(smin / f))
    if method == "log":
        blobs = blob_log(small, min_sigma=smin / f, max_sigma=smax / f, num_sigma=max(1, num_sigma), threshold=threshold, overlap=overlap)
    else:
        blobs = blob_dog(small, min_sigma=smin / f, max_sigma=smax / f, threshold=threshold, overlap=overlap)
    if len(blobs) == 0:
        return np.zeros((0, 4)), np.zeros(0)
    centres = (blobs[:, :2] + 0.5) * f - 0.5
    radius = blobs[:, 2] * f * math.sqrt(2)
    scores, snr = blob_contrast(img, centres, radius, noise)
    if min_snr:
        keep = snr >= float(min_snr)
        centres, radius, scores = centres[keep], radius[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    if max_det is not None:
        order = order[: max(0, int(max_det))]
    centres, radius, scores = centres[order], radius[order], scores[order]
    half = (radius * box_scale)[:, None]
    boxes = np.concatenate([centres - half, centres + half], 1)
    boxes = np.clip(boxes, 0, [h, w, h, w])
    return boxes, scores.astype(np.float64)


@dataclass
class BlobsOptions:
    """Options of the ``blobs`` sampler (see :func:`blob_boxes`) and how its boxes are decoded."""

    diameter: float | None = opt(None, "typical object diameter in pixels (default: measured on the image)", metavar="PX",
                                 gui={"label": "diameter", "min": 0, "max": 10000, "step": 1,
                                      "tooltip": "Expected object diameter in pixels; 0 = automatic"})
    diameter_range: tuple[float, float] = (0.5, 2.0)
    method: str = "log"
    threshold: float = opt(0.05, "detection threshold (lower finds fainter objects)", metavar="T")
    polarity: str = opt("bright", "objects brighter (fluorescence) or darker (brightfield) than background",
                        choices=("bright", "dark"),
                        gui={"label": "objects", "tooltip": "blobs: brighter (fluorescence) or darker (brightfield) than background"})
    overlap: float = 0.5
    num_sigma: int = 6
    box_scale: float = 1.2
    max_det: int | None = opt(1000, "at most N boxes per frame", metavar="N")
    min_snr: float | None = opt(5.0, "keep blobs whose contrast is at least R times the image's noise (0 keeps every blob, "
                                "e.g. for faint objects)", metavar="R")
    prompt: str = "box"  # or "box+point": the box's centre as a click too

    def __post_init__(self) -> None:
        check_choice("prompt", self.prompt, ("box", "box+point"))


@register_sampler
class BlobsSampler:
    """Boxes from scale-space blob detection, decoded like detector boxes: roundish objects (nuclei,
    cells, particles), no weights besides MobileSAM's. The default sampler without a detector."""

    name = "blobs"
    label = "blobs (no extra weights)"
    help = "scale-space blob detection proposes one box per roundish object (nuclei, cells; no extra weights)"
    empty_hint = ("give --diameter PX (typical object diameter), --polarity dark for dark objects, a lower --threshold, "
                  "or --min-snr 0 for faint objects")
    options = BlobsOptions
    score_defaults = (0.0, 0.0)  # proposed boxes are objects already
    needs_detector = False

    def propose(self, ctx: SamplerContext, rgb: np.ndarray, key: Hashable | None,
                options: BlobsOptions) -> Generator[tuple[float, str], None, list[ObjectMask]]:
        o = options
        lo, hi = o.diameter_range
        boxes, _ = blob_boxes(rgb, o.diameter, (lo, hi), o.method, o.threshold, o.polarity, o.overlap,
                              o.num_sigma, o.box_scale, o.max_det, o.min_snr)
        return (yield from decode_boxes(ctx, boxes, o.prompt == "box+point"))
