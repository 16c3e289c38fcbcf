"""One object's prompt and one predicted mask: the engine's data types (numpy only, no torch).

Coordinates are napari's ``(row, col)`` pixels of one frame; :mod:`.predictor` turns them into SAM's
``(x, y)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ObjectMask", "Prompt"]


@dataclass
class Prompt:
    """One object's prompt, in napari coordinates of the frame.

    Attributes:
        points: ``(N, 2)`` float, (row, col) pixel coordinates, or None.
        labels: ``(N,)`` int, 1 = object (positive), 0 = background (negative). Default: all 1.
        box: ``(4,)`` float ``(row0, col0, row1, col1)`` (any two opposite corners), or None.
        mask_input: ``(256, 256)`` float32 low-resolution logits of an earlier prediction
            (``ObjectMask.low_res_logits``), or None.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_input: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.points is not None:
            pts = np.asarray(self.points, dtype=np.float64)
            if pts.size % 2 or pts.ndim > 2 or (pts.ndim == 2 and pts.shape[1] != 2):
                raise ValueError(f"Points are (row, col) pairs: give [[row, col], ...], got shape {pts.shape}.")
            self.points = pts.reshape(-1, 2)
            if self.labels is None:
                self.labels = np.ones(len(self.points), dtype=np.int64)
            self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
            if len(self.labels) != len(self.points):
                raise ValueError(f"{len(self.points)} points but {len(self.labels)} labels; give one label per point.")
            if len(self.points) == 0:
                self.points, self.labels = None, None
        if self.box is not None:
            b = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if b.shape != (4,):
                raise ValueError(f"A box is 4 numbers (row0, col0, row1, col1), got {b.shape[0]}.")
            self.box = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])
        if self.points is None and self.box is None:
            raise ValueError("A prompt needs at least one point or a box.")
        if self.points is not None and not np.isfinite(self.points).all() or self.box is not None and not np.isfinite(self.box).all():
            raise ValueError("Prompt coordinates must be finite numbers.")


@dataclass
class ObjectMask:
    """A predicted mask, stored as a crop of the frame.

    Attributes:
        mask: ``(h, w)`` bool crop; ``offset`` places it in the frame.
        offset: ``(row0, col0)`` of the crop's top-left pixel in the frame.
        shape: ``(H, W)`` of the frame.
        score: predicted IoU of the chosen mask.
        stability: stability score (IoU of the masks thresholded at ±1 around the threshold,
            on the low-resolution logits).
        mask_index: which decoder output was chosen (0 in single-mask mode; 0-2 in multimask).
        low_res_logits: ``(256, 256)`` float32, usable as a later ``Prompt.mask_input`` on the frame.
        window: ``(row0, col0, row1, col1)`` of the full-resolution window the prompt was decoded
            in, on a large frame (:mod:`.windows`); None when decoded on the whole frame.
    """

    mask: np.ndarray
    offset: tuple[int, int]
    shape: tuple[int, int]
    score: float
    stability: float
    mask_index: int
    low_res_logits: np.ndarray = field(repr=False)
    window: tuple[int, int, int, int] | None = None

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(row0, col0, row1, col1)`` of the crop (exclusive ends)."""
        r, c = self.offset
        return r, c, r + self.mask.shape[0], c + self.mask.shape[1]

    def full(self) -> np.ndarray:
        """The mask as a full-frame ``(H, W)`` bool array."""
        out = np.zeros(self.shape, dtype=bool)
        r0, c0, r1, c1 = self.bbox
        out[r0:r1, c0:c1] = self.mask
        return out
