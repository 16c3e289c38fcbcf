"""Object-aware box proposals (MobileSAMv2) from an ultralytics YOLO detect/segment model.

ultralytics is AGPL-3.0: it is imported lazily, here only, when a detector is loaded. A detector
is loaded only from a file the user names; nothing is ever fetched from a hub.

A detector file must not run code (see README, "Security"):
- ``.pt`` checkpoints (MobileSAMv2's ``ObjectAwareModel.pt``, any YOLOv8/YOLO11 detect/segment
  checkpoint, also those saved by ultralytics 8.0.x) are read with ``torch.load(weights_only=True)``
  and an explicit allow-list: the torch and ultralytics layer classes, ultralytics' argument
  namespace and paths; a ``getattr`` only for a layer's ``forward``. The YOLO object is then built
  from the loaded model, so ultralytics never unpickles the file itself.
- ``.onnx`` exports (``yolo export model=FILE format=onnx imgsz=1024 dynamic=True``) hold no code at all.
- anything else (or a ``.pt`` needing other classes) is refused unless ``trust=True`` / ``--trust-detector``.

Boxes come back in napari order, ``(row0, col0, row1, col1)`` in pixels of the given frame.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Detector", "DetectorError", "load_detector"]

_TASKS = ("detect", "segment")
_RISK = "a pickled file can run any code when it is loaded"


def _convert(p: Path) -> str:
    return (f"convert it where you trust it (`yolo export model={p} format=onnx imgsz=1024 dynamic=True` gives an .onnx file, which "
            f"holds no code), or pass trust=True (CLI: --trust-detector) if you trust its source, since {_RISK}.")

# torch.nn layers a YOLO checkpoint holds (resolved through torch.nn; the pickled name must be the class's own)
_TORCH_LAYERS = (
    "Conv1d", "Conv2d", "ConvTranspose2d", "BatchNorm1d", "BatchNorm2d", "GroupNorm", "LayerNorm", "SiLU", "ReLU",
    "LeakyReLU", "GELU", "Hardswish", "Hardsigmoid", "Sigmoid", "Mish", "Softmax", "Identity", "Upsample",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Dropout", "Linear", "MultiheadAttention", "Sequential",
    "ModuleList", "ModuleDict",
)
# ultralytics modules whose torch.nn.Module subclasses may be unpickled (and their 8.0.x names)
_YOLO_MODULES = ("ultralytics.nn.modules.conv", "ultralytics.nn.modules.block", "ultralytics.nn.modules.head",
                 "ultralytics.nn.modules.transformer", "ultralytics.nn.modules.activation", "ultralytics.nn.tasks")
_RENAMED = {"ultralytics.yolo.utils": "ultralytics.utils"}  # 8.0.x module names


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


# ------------------------------------------------------------------------------------ safe .pt loading
def _layer_getattr(obj: Any, name: str) -> Any:
    """The only ``getattr`` a checkpoint may call: a layer class's forward (YOLOv8 heads pickle ``Detect.forward``)."""
    import torch

    if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and name in ("forward", "forward_fuse"):
        return getattr(obj, name)
    raise DetectorError(f"the checkpoint asks for getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r})")


def _allowed(name: str) -> Any | None:
    """The object a pickled global ``name`` may resolve to, or None when it is not on the allow-list."""
    import pathlib

    import torch

    module, _, attr = name.rpartition(".")
    if name == "builtins.getattr":
        return _layer_getattr
    if name in ("pathlib.PosixPath", "pathlib.WindowsPath", "pathlib._local.PosixPath", "pathlib._local.WindowsPath"):
        return pathlib.PurePosixPath  # a path in the saved arguments: text only
    if name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
        return np.float64(0).__reduce__()[0]
    if name == "numpy.dtype":
        return np.dtype
    if module == "numpy.dtypes":
        obj = getattr(np.dtypes, attr, None)
        return obj if isinstance(obj, type) and issubclass(obj, np.dtype) else None
    if module.startswith("torch.nn.modules.") and attr in _TORCH_LAYERS:
        obj = getattr(torch.nn, attr)
        return obj if obj.__module__ == module else None
    module = _RENAMED.get(module, module)
    if name.endswith(".IterableSimpleNamespace") and module == "ultralytics.utils":
        from ultralytics.utils import IterableSimpleNamespace

        return IterableSimpleNamespace
    if module in _YOLO_MODULES or module == "ultralytics.nn.modules":  # the latter: 8.0.x's flat modules.py names
        obj = getattr(importlib.import_module(module), attr, None)
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__.startswith("ultralytics.nn."):
            return obj
    return None


def _safe_checkpoint(p: Path) -> dict:
    """``torch.load(p, weights_only=True)`` with the YOLO allow-list; DetectorError for anything else."""
    import pickle

    import torch

    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(p)
    except Exception as e:  # not a torch zip archive (an old pickle, a renamed file, a damaged download)
        raise DetectorError(f"Detector {p} is not a YOLO checkpoint that can be read safely ({type(e).__name__}); "
                            + _convert(p)) from e
    entries, refused = [], []
    for name in needed:
        obj = _allowed(name)
        (refused.append(name) if obj is None else entries.append((obj, name)))
    if refused:
        raise DetectorError(f"Detector {p} holds objects outside a YOLO checkpoint ({', '.join(sorted(refused)[:6])}); it was "
                            "not loaded: " + _convert(p))
    try:
        with torch.serialization.safe_globals(entries):
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, DetectorError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DetectorError(f"Detector {p} could not be read safely ({first[:200]}); " + _convert(p)) from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), torch.nn.Module):
        raise DetectorError(f"Detector {p} is not a YOLO checkpoint that ultralytics can load (no model inside); "
                            "give an ultralytics YOLO detect/segment .pt or .onnx file, or use sampler='blobs' or 'grid'.")
    return ckpt


def _model_from_checkpoint(ckpt: dict, p: Path):
    """The checkpoint's model prepared as ultralytics' ``load_checkpoint`` does (float, eval, task, args)."""
    import torch
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.modules.head import Detect, Segment
    from ultralytics.nn.tasks import guess_model_task

    model = (ckpt.get("ema") or ckpt["model"]).float()
    model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    model.pt_path = str(p)
    model.task = getattr(model, "task", None) or guess_model_task(model)
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    head = model.model[-1] if hasattr(model, "model") else None
    if type(head) is Segment and not hasattr(head, "proto"):
        # MobileSAMv2's ObjectAwareModel head: a YOLOv8-seg head whose mask prototypes were removed; its
        # boxes are the Detect part, so it runs as a detector (as v2 does: boxes only)
        head.__class__ = Detect
        model.task = "detect"
    model.eval()
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = True
        elif isinstance(m, torch.nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None  # checkpoints pickled by older torch
    return model


def _yolo_from_model(yolo_cls, model, ckpt: dict, path: str):
    """A ``YOLO`` object around an already loaded model: ultralytics' own ``_load`` steps, minus reading the file."""

    class LoadedYOLO(yolo_cls):
        def _load(self, weights: str, task: str | None = None) -> None:
            self.model, self.ckpt = self.__dict__.pop("_preloaded")
            self.task = self.model.task
            self.overrides = self.model.args = self._reset_ckpt_args(self.model.args)
            self.ckpt_path = weights
            self.overrides["model"] = weights
            self.overrides["task"] = self.task
            self.model_name = weights

    obj = LoadedYOLO.__new__(LoadedYOLO)
    obj.__dict__["_preloaded"] = (model, ckpt)
    obj.__init__(path)
    return obj


def _box_predictor(border: int):
    """ultralytics' DetectionPredictor, boxes only, with MobileSAMv2's border rule: after NMS, box edges
    within ``border`` input pixels of the (letterboxed) input's edge move onto it."""
    import torch
    from ultralytics.models.yolo.detect import DetectionPredictor

    class BoxPredictor(DetectionPredictor):
        def construct_result(self, pred, img, orig_img, img_path):
            if border > 0 and len(pred):
                h, w = img.shape[2:]
                b = pred[:, :4]
                b[:, 0] = torch.where(b[:, 0] < border, torch.zeros_like(b[:, 0]), b[:, 0])
                b[:, 1] = torch.where(b[:, 1] < border, torch.zeros_like(b[:, 1]), b[:, 1])
                b[:, 2] = torch.where(b[:, 2] > w - border, torch.full_like(b[:, 2], w), b[:, 2])
                b[:, 3] = torch.where(b[:, 3] > h - border, torch.full_like(b[:, 3], h), b[:, 3])
            return super().construct_result(pred, img, orig_img, img_path)

    return BoxPredictor


def _onnx_metadata(p: Path) -> dict:
    import ast

    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    except ImportError as e:  # pragma: no cover - onnxruntime comes with the accel/test extras
        raise DetectorError(f"Detector {p} is an ONNX file; reading it needs onnxruntime (pip install onnxruntime).") from e
    except Exception as e:
        raise DetectorError(f"Detector {p} is not a readable ONNX model ({type(e).__name__}); export it again with "
                            "`yolo export model=FILE.pt format=onnx imgsz=1024 dynamic=True`.") from e
    meta = dict(session.get_modelmeta().custom_metadata_map)
    shape = session.get_inputs()[0].shape
    out = {k: v for k, v in meta.items() if k in ("task", "imgsz", "stride", "names")}
    for k in ("imgsz", "stride"):
        if k in out:
            out[k] = ast.literal_eval(out[k])  # data only, never evaluated as code
    out["static"] = all(isinstance(s, int) for s in shape[2:])
    return out


class Detector:
    """A YOLO box detector for one model file.

    Args:
        path: a YOLO ``.pt`` checkpoint (detect or segment task, e.g. MobileSAMv2's
            ``ObjectAwareModel.pt``, including files saved by ultralytics 8.0.x) or its ``.onnx`` export.
        trust: also load files that need full unpickling (other formats, ``.pt`` files with objects
            outside a YOLO checkpoint). Such a file can run code: only for files from a trusted source.

    Raises:
        FileNotFoundError: the file does not exist.
        DetectorError: the file is not a YOLO detect/segment model, or cannot be read safely (the
            message names the risk and how to convert it).
    """

    def __init__(self, path: str | os.PathLike, trust: bool = False):
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"Detector file not found: {p}. Give the path to MobileSAMv2's ObjectAwareModel.pt or another "
                "YOLO detect/segment .pt or .onnx file, or use sampler='blobs' or sampler='grid', which need no detector."
            )
        suffix = p.suffix.lower()
        if suffix not in (".pt", ".onnx") and not trust:
            raise DetectorError(f"Detector {p} is not a YOLO .pt checkpoint or .onnx export; other formats are loaded only "
                                f"with trust=True (CLI: --trust-detector), because {_RISK}.")
        yolo = _import_yolo()
        self.imgsz: int | None = None  # an ONNX export's fixed input size
        try:
            if suffix == ".onnx":
                meta = _onnx_metadata(p)
                model = yolo(str(p), task=meta.get("task", "detect"))
                size = meta.get("imgsz")
                self.imgsz = int(max(size)) if meta["static"] and size else None
            elif suffix == ".pt" and not trust:
                ckpt = _safe_checkpoint(p)
                model = _yolo_from_model(yolo, _model_from_checkpoint(ckpt, p), ckpt, str(p))
            else:
                model = yolo(str(p))  # trusted by the user: ultralytics unpickles the file itself
        except DetectorError:
            raise
        except Exception as e:  # ultralytics raises TypeError/RuntimeError/... for foreign files
            raise DetectorError(
                f"Detector {p} is not a YOLO checkpoint that ultralytics can load ({type(e).__name__}). "
                "Give an ultralytics YOLO detect/segment .pt or .onnx file (e.g. ObjectAwareModel.pt), or use sampler='blobs' or 'grid'."
            ) from e
        task = getattr(model, "task", "?")
        if task not in _TASKS:
            raise DetectorError(f"Detector {p} is a YOLO '{task}' model; a 'detect' or 'segment' model is needed.")
        self.path = p
        self.task: str = task
        self.version: str = str((getattr(model, "ckpt", None) or {}).get("version", "?"))
        self._model = model
        self._predictors: dict[int, type] = {}

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
        border: int = 20,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Propose boxes on one frame, as MobileSAMv2's ObjectAwareModel does.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB frame.
            conf: minimum confidence; iou: NMS IoU threshold; imgsz: inference size (an ONNX
                export with a fixed input size runs at that size); max_det: at most this many boxes.
            device: torch device string ("cpu", "cuda:0"); default: ultralytics' choice.
            border: box edges within this many input pixels of the image edge are moved onto it
                (MobileSAMv2's rule, 20); 0 keeps ultralytics' boxes as they are.

        Returns:
            ``(boxes (N, 4) float64 (row0, col0, row1, col1), scores (N,) float64)``, in NMS order
            (by decreasing score).
        """
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"Detector input must be an (H, W, 3) uint8 RGB frame, got {rgb.shape} {rgb.dtype}.")
        if max_det < 1:
            return np.zeros((0, 4)), np.zeros(0)
        kwargs = dict(conf=float(conf), iou=float(iou), imgsz=int(self.imgsz or imgsz), max_det=int(max_det), verbose=False)
        if device is not None:
            kwargs["device"] = device
        if int(border) not in self._predictors:
            self._predictors[int(border)] = _box_predictor(int(border))
        # numpy input to ultralytics is BGR, as from cv2 (the layout YOLO checkpoints are trained with)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        import torch

        threads = torch.get_num_threads()
        try:
            result = self._model.predict(bgr, predictor=self._predictors[int(border)], **kwargs)[0]
        except (AttributeError, KeyError, TypeError) as e:  # a layer saved by another ultralytics lacks what this one needs
            raise DetectorError(
                f"Detector {self.path} (saved by ultralytics {self.version}) does not run with this ultralytics "
                f"({type(e).__name__}: {e}). Convert it with the ultralytics it was made with: "
                f"`yolo export model={self.path} format=onnx imgsz=1024 dynamic=True`, and give the .onnx file."
            ) from e
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


def load_detector(detector: str | os.PathLike | Detector, trust: bool = False) -> Detector:
    """A :class:`Detector` from a path (or the same detector, if one is given); ``trust`` as in :class:`Detector`."""
    return detector if isinstance(detector, Detector) else Detector(detector, trust=trust)
