"""The ``object-aware`` sampler (MobileSAMv2): a YOLO detector proposes boxes, decoded in batches in
single-mask mode (conf 0.4, NMS IoU 0.9, at most 320 boxes, as the official code)."""

from __future__ import annotations

from collections.abc import Generator, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .base import SamplerContext, check_choice, decode_boxes, opt, register_sampler

if TYPE_CHECKING:
    from ..predictor import ObjectMask

__all__ = ["ObjectAwareOptions", "ObjectAwareSampler"]


@dataclass
class ObjectAwareOptions:
    """Options of the ``object-aware`` sampler (the detector's, see ``model.detector.Detector.detect``)."""

    conf: float = opt(0.4, "detector confidence", metavar="C")
    iou: float = 0.9
    imgsz: int | None = opt(None, "detector input size in pixels (default: the size the detector file records, "
                            "else 1024)", metavar="PX",
                            gui={"label": "input px", "min": 0, "max": 8192, "step": 32,
                                 "tooltip": "Detector inference size in pixels; 0 = the size the detector was trained at "
                                 "(read from the file; 1024 when it records none)"})
    max_det: int | None = opt(320, "at most N boxes per frame", metavar="N")
    prompt: str = "box"  # or "box+point": the box's centre as a click too

    def __post_init__(self) -> None:
        check_choice("prompt", self.prompt, ("box", "box+point"))


@register_sampler
class ObjectAwareSampler:
    """MobileSAMv2's object-aware prompt sampler; needs a detector (``ObjectAwareModel.pt`` or any YOLO
    detect/segment checkpoint). The default sampler when a detector is given."""

    name = "object-aware"
    label = "object-aware (YOLO detector)"
    help = "MobileSAMv2's YOLO detector proposes boxes (needs a detector .pt or .onnx file)"
    empty_hint = "check that the detector was trained on objects like these, or try --sampler blobs"
    options = ObjectAwareOptions
    score_defaults = (0.0, 0.0)  # boxes from a detector are objects already
    needs_detector = True

    def propose(self, ctx: SamplerContext, rgb: np.ndarray, key: Hashable | None,
                options: ObjectAwareOptions) -> Generator[tuple[float, str], None, list[ObjectMask]]:
        o = options
        boxes, _ = ctx.detector.detect(rgb, conf=o.conf, iou=o.iou, imgsz=o.imgsz, max_det=o.max_det, device=str(ctx.predictor.device))
        return (yield from decode_boxes(ctx, boxes, o.prompt == "box+point"))
