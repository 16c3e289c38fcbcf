"""Evaluate a student against its teacher: the MobileSAM paper's metric plus embedding MSE.

For each held-out frame, both models encode it (segment-anything's ``SamPredictor``, i.e. the
predictor's own preprocessing), then decode the same random prompts in single-mask mode:
- ``points`` random positive points, uniform over the frame;
- ``boxes`` boxes: the bounding box of the teacher's mask for a random point (an object as the
  teacher sees it); a random box (10-50% of each side) where that mask is empty.
The score is the mean IoU between the student's and the teacher's masks (1.0 when both are empty),
and the MSE between the two ``256 x 64 x 64`` embeddings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from ..engine.image import to_rgb_uint8
from ..model.build import build_mobilesam, resolve_device
from .data import FrameSource, ImagesLike
from .teacher import Teacher, TeacherLike, load_teacher

__all__ = ["evaluate", "format_table", "iter_evaluate", "mask_iou"]


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks ``N x H x W`` -> ``N`` float; two empty masks agree fully (1.0)."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _random_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """``n x 4`` boxes (x0, y0, x1, y1) inside an ``h x w`` frame, sides 10-50% of the frame's."""
    bw = rng.uniform(0.1, 0.5, n) * w
    bh = rng.uniform(0.1, 0.5, n) * h
    x0 = rng.uniform(0, w - bw)
    y0 = rng.uniform(0, h - bh)
    return np.stack([x0, y0, x0 + bw, y0 + bh], 1)


def _masks(pred: SamPredictor, points: np.ndarray | None = None, boxes: np.ndarray | None = None) -> torch.Tensor:
    """Single-mask decode of a batch of prompts in SAM's (x, y) pixel convention -> ``N x H x W`` bool."""
    size = pred.original_size
    dev = pred.device
    kw: dict = {"point_coords": None, "point_labels": None, "boxes": None}
    if points is not None:
        coords = pred.transform.apply_coords_torch(torch.as_tensor(points, dtype=torch.float, device=dev)[:, None], size)
        kw.update(point_coords=coords, point_labels=torch.ones(len(points), 1, device=dev))
    if boxes is not None:
        kw["boxes"] = pred.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float, device=dev), size)
    masks, _, _ = pred.predict_torch(**kw, multimask_output=False)
    return masks[:, 0].cpu()


def _as_sam(model: Sam | str | os.PathLike, device: torch.device) -> Sam:
    return model.eval().to(device) if isinstance(model, Sam) else build_mobilesam(model, device)


def iter_evaluate(
    student: Sam | str | os.PathLike,
    teacher: TeacherLike | Teacher,
    images: ImagesLike | FrameSource,
    *,
    points: int = 16,
    boxes: int = 16,
    seed: int = 0,
    max_frames: int | None = None,
    device: str | torch.device = "cpu",
    decoder_from: str | os.PathLike | None = None,
) -> Iterator[dict]:
    """Yields ``{"stage": "evaluate", "done", "total"}`` per frame, then the result dict
    ``{"stage": "result", "frames", "points", "boxes", "miou_point", "miou_box", "embedding_mse",
    "per_frame": [{"frame", "miou_point", "miou_box", "embedding_mse"}, ...], "seconds"}``.

    Args:
        student: an exported checkpoint (or registry name) or a ``Sam``.
        teacher: as in :func:`load_teacher`.
        images: held-out frames (not used for training).
        points, boxes: prompts per frame.
        max_frames: evaluate only the first ``max_frames`` frames.
    """
    dev = resolve_device(device)
    t = teacher if isinstance(teacher, Teacher) else load_teacher(teacher, decoder_from, dev)
    ps, pt = SamPredictor(_as_sam(student, dev)), SamPredictor(t.sam.eval().to(dev))
    source = images if isinstance(images, FrameSource) else FrameSource(images)
    n = len(source) if max_frames is None else min(len(source), max_frames)
    rng = np.random.default_rng(seed)
    names = source.describe()
    rows, start = [], time.perf_counter()
    for i in range(n):
        rgb = to_rgb_uint8(source.frame(i))
        h, w = rgb.shape[:2]
        with torch.inference_mode():
            pt.set_image(rgb)
            ps.set_image(rgb)
            mse = float(torch.mean((ps.features.float() - pt.features.float()) ** 2))
            row = {"frame": names[i], "embedding_mse": mse, "miou_point": float("nan"), "miou_box": float("nan")}
            if points:
                xy = rng.uniform((0, 0), (w, h), (points, 2))
                row["miou_point"] = float(mask_iou(_masks(ps, points=xy), _masks(pt, points=xy)).mean())
            if boxes:
                xy = rng.uniform((0, 0), (w, h), (boxes, 2))
                tm = _masks(pt, points=xy)
                bx = _random_boxes(rng, boxes, h, w)
                for j, m in enumerate(tm):
                    if m.any():
                        rr, cc = torch.nonzero(m, as_tuple=True)
                        bx[j] = [float(cc.min()), float(rr.min()), float(cc.max()), float(rr.max())]
                row["miou_box"] = float(mask_iou(_masks(ps, boxes=bx), _masks(pt, boxes=bx)).mean())
        rows.append(row)
        yield {"stage": "evaluate", "done": i + 1, "total": n}

    def mean(key: str) -> float:
        vals = [r[key] for r in rows if not np.isnan(r[key])]
        return float(np.mean(vals)) if vals else float("nan")

    yield {"stage": "result", "frames": n, "points": points, "boxes": boxes, "miou_point": mean("miou_point"),
           "miou_box": mean("miou_box"), "embedding_mse": mean("embedding_mse"), "per_frame": rows,
           "seconds": time.perf_counter() - start}


def evaluate(student: Sam | str | os.PathLike, teacher: TeacherLike | Teacher, images: ImagesLike | FrameSource, **kwargs) -> dict:
    """Blocking :func:`iter_evaluate`; returns its result dict."""
    result: dict = {}
    for result in iter_evaluate(student, teacher, images, **kwargs):  # noqa: B007 - the last one is the result
        pass
    return result


def format_table(result: dict) -> str:
    """The result of :func:`evaluate` as a small text table."""
    rows = [
        ("frames", f"{result['frames']}"),
        (f"mIoU, {result['points']} point prompts/frame", f"{result['miou_point']:.4f}"),
        (f"mIoU, {result['boxes']} box prompts/frame", f"{result['miou_box']:.4f}"),
        ("embedding MSE", f"{result['embedding_mse']:.6g}"),
    ]
    head = "student vs teacher"
    width, vw = max(len(k) for k, _ in rows), max(len(head), *(len(v) for _, v in rows))
    lines = [f"{'metric':<{width}}  {head:>{vw}}", "-" * (width + 2 + vw)]
    return "\n".join(lines + [f"{k:<{width}}  {v:>{vw}}" for k, v in rows])
