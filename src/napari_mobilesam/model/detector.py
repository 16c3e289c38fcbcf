"""Object-aware box proposals (MobileSAMv2) from an ultralytics YOLO detect/segment checkpoint.

ultralytics is AGPL-3.0: it is imported lazily, here only, when a detector is loaded. A detector
is loaded only from a file the user names (the official ``ObjectAwareModel.pt`` or any YOLO
``.pt`` checkpoint, e.g. one trained on nuclei); nothing is ever fetched from a hub.

Boxes come back in napari order, ``(row0, col0, row1, col1)`` in pixels of the given frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["Detector", "DetectorError", "load_detector"]

_TASKS = ("detect", "segment")


class DetectorError(ValueError):
    """A detector file that cannot be used; the message names the file and the fix."""


# opencv-python (pulled in by ultralytics) points Qt at its own bundled plugins when imported; a
# QApplication created afterwards (napari) then aborts. These variables are restored after import.
_CV2_ENV = ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR", "LD_LIBRARY_PATH")


def _import_yolo():
    # no network checks or hub downloads: a detector is always a local file
    os.environ.setdefault("YOLO_OFFLINE", "1")
    saved = {k: os.environ.get(k) for k in _CV2_ENV}
    try:
        from ultralytics import YOLO
    except ImportError as e:  # pragma: no cover - ultralytics is a dependency
        raise DetectorError(
            "The object-aware sampler needs the 'ultralytics' package (pip install ultralytics); "
            "or use sampler='blobs' or sampler='grid', which need no detector."
        ) from e
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return YOLO


class Detector:
    """A YOLO box detector for one checkpoint file.

    Args:
        path: a YOLO ``.pt`` checkpoint (detect or segment task), e.g. MobileSAMv2's
            ``ObjectAwareModel.pt``.

    Raises:
        FileNotFoundError: the file does not exist.
        DetectorError: the file is not a YOLO detect/segment checkpoint.
    """

    def __init__(self, path: str | os.PathLike):
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"Detector file not found: {p}. Give the path to MobileSAMv2's ObjectAwareModel.pt or another "
                "YOLO detect/segment .pt checkpoint, or use sampler='blobs' or sampler='grid', which need no detector."
            )
        if p.suffix.lower() != ".pt":
            raise DetectorError(f"Detector {p} is not a YOLO .pt checkpoint; give an ultralytics YOLO detect/segment .pt file.")
        yolo = _import_yolo()
        try:
            model = yolo(str(p))
        except Exception as e:  # ultralytics raises TypeError/RuntimeError/... for foreign files
            raise DetectorError(
                f"Detector {p} is not a YOLO checkpoint that ultralytics can load ({type(e).__name__}). "
                "Give an ultralytics YOLO detect/segment .pt file (e.g. ObjectAwareModel.pt), or use sampler='blobs' or 'grid'."
            ) from e
        import torch

        if not isinstance(getattr(model, "model", None), torch.nn.Module) or model.task not in _TASKS:
            raise DetectorError(
                f"Detector {p} is a YOLO '{getattr(model, 'task', '?')}' model; a 'detect' or 'segment' model is needed."
            )
        self.path = p
        self.task: str = model.task
        self._model = model

    def __repr__(self) -> str:
        return f"Detector({str(self.path)!r}, task={self.task!r})"

    def detect(
        self,
        rgb: np.ndarray,
        conf: float = 0.4,
        iou: float = 0.9,
        imgsz: int = 1024,
        max_det: int = 320,
        device: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Propose boxes on one frame.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB frame.
            conf: minimum confidence; iou: NMS IoU threshold; imgsz: inference size;
            max_det: at most this many boxes (highest confidence first).
            device: torch device string ("cpu", "cuda:0"); default: ultralytics' choice.

        Returns:
            ``(boxes (N, 4) float64 (row0, col0, row1, col1), scores (N,) float64)``, by
            decreasing score.
        """
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"Detector input must be an (H, W, 3) uint8 RGB frame, got {rgb.shape} {rgb.dtype}.")
        if max_det < 1:
            return np.zeros((0, 4)), np.zeros(0)
        kwargs = dict(conf=float(conf), iou=float(iou), imgsz=int(imgsz), max_det=int(max_det), verbose=False)
        if device is not None:
            kwargs["device"] = device
        # numpy input to ultralytics is BGR, as from cv2 (the layout YOLO checkpoints are trained with)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        import torch

        threads = torch.get_num_threads()
        try:
            result = self._model.predict(bgr, **kwargs)[0]
        finally:
            # ultralytics' device selection sets torch's CPU threads to cores - 1 for the whole
            # process (1 on a 2-core machine), which would halve the decoder's speed afterwards.
            torch.set_num_threads(threads)
        xyxy = result.boxes.xyxy.detach().cpu().double().numpy().reshape(-1, 4)
        scores = result.boxes.conf.detach().cpu().double().numpy().reshape(-1)
        order = np.argsort(-scores, kind="stable")
        h, w = rgb.shape[:2]
        boxes = xyxy[order][:, [1, 0, 3, 2]]
        boxes = np.clip(boxes, 0, [h, w, h, w])
        return boxes, scores[order]


def load_detector(detector: str | os.PathLike | Detector) -> Detector:
    """A :class:`Detector` from a path (or the same detector, if one is given)."""
    return detector if isinstance(detector, Detector) else Detector(detector)
