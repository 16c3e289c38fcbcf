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

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.errors import SettingsError, UserError

__all__ = ["Detector", "DetectorError", "load_detector"]

_TASKS = ("detect", "segment")
_RISK = "a pickled file can run any code when it is loaded"


def _convert(p: Path) -> str:
    return (f"convert it where you trust it (`yolo export model={p} format=onnx imgsz=1024 dynamic=True` gives an .onnx file, which "
            f"holds no code), or pass trust=True (CLI: --trust-detector) if you trust its source, since {_RISK}.")

# ultralytics' own model definitions this loader rebuilds a checkpoint's network from ({s}: its scale)
_FAMILIES = ("yolov8{s}.yaml", "yolov8{s}-seg.yaml", "yolo11{s}.yaml", "yolo11{s}-seg.yaml", "yolo26{s}.yaml", "yolo26{s}-seg.yaml")
_SCALES = ("n", "s", "m", "l", "x")


class DetectorError(UserError):
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
def _int(value: Any, lo: int, hi: int) -> int | None:
    return value if type(value) is int and lo <= value <= hi else None


def _train_size(args: dict) -> int | None:
    """The training input size a checkpoint records (``train_args['imgsz']``: an int or [h, w]), or None."""
    size = args.get("imgsz")
    if isinstance(size, list) and size:
        size = max(size) if all(type(v) is int for v in size) else None
    return _int(size, 32, 8192)


def _read_checkpoint(p: Path) -> tuple[dict, Any, dict[str, Any]]:
    """``(plain checkpoint dict, the model's record, its tensors)`` of a YOLO .pt, read inertly (no code runs)."""
    from .inert_pickle import DamagedFileError, Record, load_inert, module_tensors

    try:
        ckpt = load_inert(p)
    except DamagedFileError as e:
        raise DetectorError(f"Detector {p} is damaged or not a PyTorch checkpoint: {e}. Copy or download it again, "
                            "or give a YOLO .onnx export.") from e
    rec = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    try:
        tensors = module_tensors(rec)
        seq = rec.state["_modules"]["model"].state["_modules"]
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        if isinstance(rec, Record):  # e.g. a call to a builder or to os.system where the model's state should be
            raise DetectorError(f"Detector {p} holds a call to {rec.qualname[:80]} where a YOLO model should be; it was "
                                "not loaded (nothing in it was run): " + _convert(p)) from e
        raise DetectorError(f"Detector {p} is not a YOLO checkpoint (no pickled YOLO model inside); give an ultralytics "
                            "YOLO detect/segment .pt or .onnx file, or use sampler='blobs' or 'grid'.") from e
    return ckpt, rec, {"tensors": tensors, "layers": [getattr(m, "name", "?") for m in seq.values()], "head": list(seq.values())[-1]}


def _build(name: str, nc: int, reg_max: int | None, tensors: dict):
    """ultralytics' network ``name`` (one of _FAMILIES) for ``nc`` classes, or None when the file's tensors
    do not fit it exactly (names and shapes)."""
    import torch
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel, yaml_model_load

    cfg = yaml_model_load(name)
    if "activation" in cfg:  # never evaluated: our families have none
        return None
    cfg["nc"] = nc
    if reg_max is not None:
        cfg["reg_max"] = reg_max
    cls = SegmentationModel if "-seg" in name else DetectionModel
    with torch.random.fork_rng():
        model = cls(cfg, nc=nc, verbose=False)
    head = model.model[-1]
    if hasattr(head, "proto") and not any(".proto." in k for k in tensors):
        # MobileSAMv2's ObjectAwareModel head: a YOLOv8-seg head whose mask prototypes were removed; its
        # boxes are the Detect part, so it runs as a detector (as v2 does: boxes only)
        del head.proto
        head.__class__ = Detect
        model.task = "detect"
    for fused in (False, True):
        if fused:
            if any(".bn." in k for k in tensors):
                return None
            model.fuse(verbose=False)
        own = model.state_dict()
        if own.keys() == tensors.keys() and all(own[k].shape == tensors[k].shape for k in own):
            model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)
            return model
    return None


def _safe_model(p: Path):
    """A YOLO detect/segment network rebuilt from ultralytics' own definition, with only the checkpoint's tensors.

    The file is read inertly (``inert_pickle``): no class it names is ever constructed. Its layer list selects
    one of ``_FAMILIES`` (a known name, never a string from the file) and its tensors must fit that network
    exactly. Returns ``(model, checkpoint info)``; DetectorError for anything else.
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import yaml_model_load

    from .inert_pickle import plain

    ckpt, rec, found = _read_checkpoint(p)
    head = found["head"].state if isinstance(found["head"].state, dict) else {}
    kind = getattr(found["head"], "name", "?")
    nc = _int(head.get("nc"), 1, 100_000)
    yaml = plain(rec.state.get("yaml")) or {}
    scale = yaml.get("scale") if yaml.get("scale") in _SCALES else None
    model = None
    if nc is not None:
        for family in _FAMILIES:
            cfg = yaml_model_load(family.format(s="n"))
            if [m.rpartition(".")[2] for _, _, m, _ in cfg["backbone"] + cfg["head"]] != found["layers"]:
                continue
            for s in ([scale] if scale else []) + [x for x in _SCALES if x != scale]:
                model = _build(family.format(s=s), nc, _int(head.get("reg_max"), 1, 64), found["tensors"])
                if model is not None:
                    break
            if model is not None:
                break
    if model is None:
        raise DetectorError(
            f"Detector {p} is not a YOLOv8/YOLO11/YOLO26 detect or segment network that can be rebuilt without running "
            f"the file's code (layers {'-'.join(found['layers'][:4])}...-{kind}, {len(found['tensors'])} tensors); "
            + _convert(p))
    args = plain(ckpt.get("train_args")) or {}
    model.args = {**DEFAULT_CFG_DICT, **{k: v for k, v in args.items() if k in DEFAULT_CFG_DICT}}
    names = plain(rec.state.get("names"))
    if isinstance(names, dict) and len(names) == nc and all(type(v) is str for v in names.values()):
        model.names = names
    else:
        model.names = {i: f"class{i}" for i in range(nc)}
    model.pt_path = str(p)
    model.task = getattr(model, "task", None) or ("segment" if hasattr(model.model[-1], "proto") else "detect")
    model.float().eval()
    info = {"version": str(ckpt.get("version")) if type(ckpt.get("version")) is str else "?",
            "train_args": model.args, "imgsz": _train_size(args)}
    return model, info


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


def _dims(shape: list) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + ")"


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
    outputs = [o.shape for o in session.get_outputs()]
    boxes = outputs[0] if outputs else []
    if len(shape) != 4 or len(boxes) != 3 or (isinstance(boxes[1], int) and isinstance(boxes[2], int) and min(boxes[1:]) < 5):
        raise DetectorError(
            f"Detector {p} is not a YOLO detect/segment ONNX export: its input is {_dims(shape)} and its first output "
            f"{_dims(boxes)}, where YOLO gives (batch, 3, height, width) in and (batch, 4 + classes, boxes) out. Export "
            "the .pt again with `yolo export model=FILE.pt format=onnx imgsz=1024 dynamic=True`.")
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
        size: int | None = None
        self._fixed = False  # an ONNX export with a fixed input size runs at that size only
        try:
            if suffix == ".onnx":
                meta = _onnx_metadata(p)
                model = yolo(str(p), task=meta.get("task", "detect"))
                size = max(meta["imgsz"]) if isinstance(meta.get("imgsz"), (list, tuple)) and meta["imgsz"] else meta.get("imgsz")
                size = size if isinstance(size, int) and 32 <= size <= 8192 else None
                self._fixed = bool(meta["static"] and size)
            elif suffix == ".pt" and not trust:
                net, info = _safe_model(p)
                model = _yolo_from_model(yolo, net, {"version": info["version"], "train_args": info["train_args"]}, str(p))
                size = info["imgsz"]
            else:
                model = yolo(str(p))  # trusted by the user: ultralytics unpickles the file itself
                size = _train_size(dict((getattr(model, "ckpt", None) or {}).get("train_args") or {}))
        except DetectorError:
            raise
        except Exception as e:  # ultralytics raises TypeError/RuntimeError/... for foreign files
            raise DetectorError(
                f"Detector {p} is not a YOLO checkpoint that ultralytics can load ({type(e).__name__}). "
                "Give an ultralytics YOLO detect/segment .pt or .onnx file (e.g. ObjectAwareModel.pt), or use sampler='blobs' or 'grid'."
            ) from e
        #: the input size detection runs at by default: the size the detector was trained (or exported) at,
        #: as the file records it, else MobileSAMv2's 1024
        self.imgsz: int = int(size or 1024)
        #: where ``imgsz`` comes from, for a status line
        self.imgsz_source: str = ("fixed by the ONNX export" if self._fixed else "recorded in the file" if size
                                  else "MobileSAMv2's default")
        task = getattr(model, "task", "?")
        if task not in _TASKS:
            raise DetectorError(f"Detector {p} is a YOLO '{task}' model; a 'detect' or 'segment' model is needed.")
        self.path = p
        self.task: str = task
        self.version: str = str((getattr(model, "ckpt", None) or {}).get("version", "?"))
        self._model = model
        self._predictors: dict[int, type] = {}

    def __repr__(self) -> str:
        return f"Detector({str(self.path)!r}, task={self.task!r}, imgsz={self.imgsz})"

    def detect(
        self,
        rgb: np.ndarray,
        conf: float = 0.4,
        iou: float = 0.9,
        imgsz: int | None = None,
        max_det: int = 320,
        device: str | None = None,
        border: int = 20,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Propose boxes on one frame, as MobileSAMv2's ObjectAwareModel does.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB frame.
            conf: minimum confidence; iou: NMS IoU threshold; imgsz: inference size (default
                :attr:`imgsz`, the detector's training size; an ONNX export with a fixed input size
                always runs at that size); max_det: at most this many boxes.
            device: torch device string ("cpu", "cuda:0"); default: ultralytics' choice.
            border: box edges within this many input pixels of the image edge are moved onto it
                (MobileSAMv2's rule, 20); 0 keeps ultralytics' boxes as they are.

        Returns:
            ``(boxes (N, 4) float64 (row0, col0, row1, col1), scores (N,) float64)``, in NMS order
            (by decreasing score).
        """
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise SettingsError(f"Detector input must be an (H, W, 3) uint8 RGB frame, got {rgb.shape} {rgb.dtype}.")
        if max_det < 1:
            return np.zeros((0, 4)), np.zeros(0)
        kwargs = dict(conf=float(conf), iou=float(iou), imgsz=int(self.imgsz if self._fixed or imgsz is None else imgsz), max_det=int(max_det), verbose=False)
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
