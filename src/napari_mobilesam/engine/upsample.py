"""Low-resolution logits (256 x 256) -> full-resolution masks, computed only where they can be true.

SAM's postprocessing is two bilinear resizes (``align_corners=False``): 256² -> 1024², crop to
the resized input, -> original size. Bilinear resizing is separable and linear, so the whole chain
is ``Ay @ L @ Axᵀ`` with two per-frame matrices of at most four non-zeros per row, applied as
gathers (a few operations per output pixel). Every output value is a convex combination
of low-resolution values, so a pixel can exceed the threshold only if some low-resolution logit
in its support does: we evaluate only the rows/columns whose support touches a positive logit.
The result equals the stock path up to float32 rounding, at a cost proportional to the object.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MaskUpsampler", "bilinear_matrix"]


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of PyTorch's bilinear resize along one axis (align_corners=False)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m


class _Axis:
    """One axis of the resize chain: matrix plus, per low-res index, the output range it reaches."""

    def __init__(self, n_orig: int, n_input: int, n_pad: int, n_low: int):
        a = bilinear_matrix(n_input, n_orig) @ bilinear_matrix(n_low, n_pad)[:n_input]
        nz = a > 0
        # sparse rows: the (at most 4) low-res indices and weights of each output index
        taps = max(int(nz.sum(1).max()), 1)
        order = np.argsort(~nz, axis=1, kind="stable")[:, :taps]
        self.idx = np.where(np.take_along_axis(nz, order, 1), order, order[:, :1])
        self.wts = np.take_along_axis(a, order, 1).astype(np.float32)
        reach = nz.any(0)
        self.first = np.where(reach, nz.argmax(0), n_orig)
        self.last = np.where(reach, n_orig - 1 - nz[::-1].argmax(0), -1)
        self.n_valid = int(np.flatnonzero(reach).max()) + 1 if reach.any() else 0

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Output range [start, stop) reached by low-res indices lo..hi (inclusive)."""
        return int(self.first[lo : hi + 1].min()), int(self.last[lo : hi + 1].max()) + 1


class MaskUpsampler:
    """Threshold low-res logits at full resolution, for one (original_size, input_size) pair.

    Args:
        original_size: ``(H, W)`` of the frame.
        input_size: ``(h, w)`` of the frame resized for the encoder (longest side = img_size).
        img_size: the encoder's padded input size (1024).
        low_res: side of the decoder's logits (256).
    """

    def __init__(self, original_size: tuple[int, int], input_size: tuple[int, int], img_size: int = 1024, low_res: int = 256):
        self.shape = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.img_size = img_size
        self.rows = _Axis(self.shape[0], int(input_size[0]), img_size, low_res)
        self.cols = _Axis(self.shape[1], int(input_size[1]), img_size, low_res)

    def valid(self, low: torch.Tensor) -> torch.Tensor:
        """The part of ``... x 256 x 256`` logits that maps into the image (padding removed)."""
        return low[..., : self.rows.n_valid, : self.cols.n_valid]

    def crop_logits(self, low: np.ndarray, threshold: float) -> tuple[np.ndarray, tuple[int, int]]:
        """Full-resolution logits in the smallest window that contains every pixel > threshold.

        Returns ``(logits (h, w) float32, (row0, col0))``; an empty window when nothing can pass.
        """
        pos = low[: self.rows.n_valid, : self.cols.n_valid] > threshold
        prow, pcol = np.flatnonzero(pos.any(1)), np.flatnonzero(pos.any(0))
        if prow.size == 0:
            return np.zeros((0, 0), np.float32), (0, 0)
        r0, r1 = self.rows.span(prow[0], prow[-1])
        c0, c1 = self.cols.span(pcol[0], pcol[-1])
        if (r1 - r0) * (c1 - c0) > 0.3 * self.shape[0] * self.shape[1]:
            # a large object: PyTorch's own two resizes of the whole frame are faster than gathers
            return self._stock_logits(low)[r0:r1, c0:c1], (r0, c0)
        ri, rw = self.rows.idx[r0:r1], self.rows.wts[r0:r1]
        ci, cw = self.cols.idx[c0:c1], self.cols.wts[c0:c1]
        j0 = int(ci.min())
        sub = low[:, j0 : int(ci.max()) + 1].astype(np.float32, copy=False)
        tmp = rw[:, 0, None] * sub[ri[:, 0]]
        for k in range(1, ri.shape[1]):
            tmp += rw[:, k, None] * sub[ri[:, k]]
        ci = ci - j0
        out = cw[None, :, 0] * tmp[:, ci[:, 0]]
        for k in range(1, ci.shape[1]):
            out += cw[None, :, k] * tmp[:, ci[:, k]]
        return out, (r0, c0)

    def _stock_logits(self, low: np.ndarray) -> np.ndarray:
        """The full-frame logits exactly as segment-anything's ``postprocess_masks`` computes them."""
        x = torch.from_numpy(np.ascontiguousarray(low, dtype=np.float32))[None, None]
        x = F.interpolate(x, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        x = x[..., : self.input_size[0], : self.input_size[1]]
        if tuple(x.shape[-2:]) != self.shape:
            # (a resize to the same size is the identity: every source index is exact, weight 0
            # on its neighbour, so it is skipped; e.g. any frame whose longest side is 1024)
            x = F.interpolate(x, self.shape, mode="bilinear", align_corners=False)
        return x[0, 0].numpy()

    def crop_mask(self, low: np.ndarray, threshold: float) -> tuple[np.ndarray, tuple[int, int]]:
        """Like :meth:`crop_logits`, thresholded and trimmed to the mask's bounding box."""
        logits, (r0, c0) = self.crop_logits(low, threshold)
        mask = logits > threshold
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0:
            return np.zeros((0, 0), bool), (0, 0)
        return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], (r0 + int(rows[0]), c0 + int(cols[0]))

    def full_mask(self, low: np.ndarray, threshold: float) -> np.ndarray:
        """Full-frame ``(H, W)`` bool mask."""
        out = np.zeros(self.shape, bool)
        mask, (r0, c0) = self.crop_mask(low, threshold)
        out[r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]] = mask
        return out
