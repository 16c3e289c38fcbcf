"""MobileSAMv2's own detector, for tests/test_detector.py (run in a subprocess: the vendored ultralytics 8.0.120
registers itself as ``ultralytics``, so it cannot share a process with today's ultralytics).

``python v2_detector_reference.py OUT_DIR [CONF]`` writes into OUT_DIR:
- ``object_aware_80.pt``: a random YOLOv8n-seg (1 class) built with the vendored ultralytics 8.0.120 and saved as
  its trainer saves a finished checkpoint (``strip_optimizer``: ``model`` in fp16, ``train_args`` as a dict,
  ``version``); its Segment head is v2's, without mask prototypes;
- ``image.npy``: a 200 x 300 BGR uint8 image (as cv2.imread gives it to v2);
- ``boxes.npy`` (N, 4) x0 y0 x1 y1 and ``scores.npy`` (N,): v2's ObjectAwareModel on the image at v2's settings
  (retina_masks=True, imgsz=1024, conf=CONF (default 0.4), iou=0.9), in its order.

Weights: every conv is He-initialised (seed 0; ultralytics' default initialisation lets activations vanish, so every
score would be exactly 0.5) and the class logits are scaled so that about 1% of the anchors pass conf 0.4.
"""

from __future__ import annotations

import os
import sys
import types
from copy import deepcopy
from datetime import datetime


def _pkg_resources_shim() -> None:
    """ultralytics 8.0 imports pkg_resources, which setuptools >= 81 no longer ships; only version parsing is used."""
    from packaging.requirements import Requirement
    from packaging.version import parse

    m = types.ModuleType("pkg_resources")
    m.parse_version = parse
    m.parse_requirements = lambda text: [Requirement(x) for x in str(text).splitlines() if x.strip() and x[0] != "#"]
    m.require = lambda *a: None
    m.VersionConflict = m.DistributionNotFound = type("ResolutionError", (Exception,), {})
    sys.modules.setdefault("pkg_resources", m)


def main(out: str, conf: float) -> None:
    _pkg_resources_shim()
    import mobilesam_lite

    sys.path.insert(0, os.path.dirname(mobilesam_lite.__file__))  # the official code imports tinyvit etc. top-level
    import mobilesamv2  # noqa: F401  (registers the vendored ultralytics 8.0.120 as 'ultralytics')
    import numpy as np
    import torch
    import ultralytics
    from mobilesamv2.promt_mobilesamv2 import ObjectAwareModel
    from ultralytics.nn.tasks import SegmentationModel
    from ultralytics.yolo.cfg import get_cfg
    from ultralytics.yolo.utils import DEFAULT_CFG

    assert ultralytics.__version__.startswith("8.0."), ultralytics.__file__
    torch.manual_seed(0)
    model = SegmentationModel("yolov8n-seg.yaml", nc=1, verbose=False)
    dfl = model.model[-1].dfl.conv  # fixed weights: the expectation over the distance bins
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m is not dfl:
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    for branch in model.model[-1].cv3:
        branch[-1].weight.data *= 200
        branch[-1].bias.data.fill_(-7.0)
    args = get_cfg(DEFAULT_CFG, {"task": "segment", "imgsz": 1024})
    model.args, model.names = args, {0: "object"}
    ckpt = {"epoch": -1, "best_fitness": None, "model": deepcopy(model).half(), "ema": None, "updates": None,
            "optimizer": None, "train_args": vars(args), "date": datetime.now().isoformat(), "version": ultralytics.__version__}
    path = os.path.join(out, "object_aware_80.pt")
    torch.save(ckpt, path)

    image = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    np.save(os.path.join(out, "image.npy"), image)
    result = ObjectAwareModel(path)(image, device="cpu", retina_masks=True, imgsz=1024, conf=conf, iou=0.9)
    boxes = result[0].boxes if result else None
    np.save(os.path.join(out, "boxes.npy"), np.zeros((0, 4)) if boxes is None else boxes.xyxy.double().numpy())
    np.save(os.path.join(out, "scores.npy"), np.zeros(0) if boxes is None else boxes.conf.double().numpy())


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.4)
