"""No detector file runs code (issue 24, Bad 1): crafted .pt files that reach ultralytics' model builders
(``DetectionModel(cfg)`` evaluates a config's ``activation`` string, ``YOLO(path)`` reads a yaml or unpickles
another file) are read inertly and refused; nothing they ask for happens. Damaged files are called damaged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_mobilesam.model.detector import Detector, DetectorError

# Writes KIND.pt files into folder argv[1], each of which, unpickled in full, would create the file argv[2].
_CRAFT = r"""
import os, sys, torch
from ultralytics.nn.tasks import DetectionModel, yaml_model_load, torch_safe_load
from ultralytics import YOLO
out, marker = sys.argv[1], sys.argv[2]
touch = f"__import__('os').system('touch {marker}')"
cfg = yaml_model_load("yolov8n.yaml")
cfg["activation"] = touch + " or __import__('torch').nn.SiLU()"
evil_yaml = os.path.join(out, "evil.yaml")
with open(evil_yaml, "w") as fh:
    fh.write("nc: 1\nactivation: " + repr(cfg["activation"]) + "\nbackbone: " + repr(cfg["backbone"]) + "\nhead: " + repr(cfg["head"]) + "\n")
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + marker,))
inner = os.path.join(out, "inner.pt")
torch.save({"model": Evil()}, inner)
class Call:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args
    def __reduce__(self):
        return (self.fn, self.args)
    def __call__(self, *args):  # pickle wants the first item callable (here: the result of another call)
        raise AssertionError
chain = {
    "activation": Call(DetectionModel, cfg),           # the issue's file: parse_model eval()s 'activation'
    "yaml": Call(DetectionModel, evil_yaml),          # a yaml path whose 'activation' is evaluated
    "yolo": Call(YOLO, evil_yaml),                    # ultralytics' model front end
    "load": Call(torch_safe_load, inner),             # ultralytics unpickles another file
    "eval": Call(eval, touch),
    "getattr": Call(Call(getattr, Call(__import__, "os"), "system"), "touch " + marker),
}
for kind, obj in chain.items():
    torch.save({"model": obj, "train_args": {}}, os.path.join(out, kind + ".pt"))
model = YOLO("yolov8n.yaml").model  # a genuine YOLOv8n whose first layer is replaced by the builder call
model.model._modules["0"] = Call(DetectionModel, cfg)
torch.save({"model": model, "train_args": {"imgsz": 256}}, os.path.join(out, "nested.pt"))
model = YOLO("yolov8n.yaml").model  # a genuine model; its training arguments call the builder
torch.save({"model": model, "train_args": Call(DetectionModel, cfg)}, os.path.join(out, "args.pt"))
"""
_KINDS = ["activation", "yaml", "yolo", "load", "eval", "getattr", "nested"]


def _py(args: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """kind -> (crafted .pt, the marker file its code would create)."""
    d = tmp_path_factory.mktemp("crafted")
    marker = d / "PWNED"
    res = _py(["-c", _CRAFT, str(d), str(marker)], cwd=d)
    assert res.returncode == 0 and not marker.exists(), res.stderr[-2000:]
    return {kind: (d / f"{kind}.pt", marker) for kind in [*_KINDS, "args"]}


@pytest.mark.slow
@pytest.mark.parametrize("kind", _KINDS)
def test_crafted_detector_builds_nothing(crafted, kind):
    path, marker = crafted[kind]
    with pytest.raises(DetectorError) as err:
        Detector(path)
    msg = str(err.value)
    assert not marker.exists()
    assert str(path) in msg and "onnx" in msg and "trust" in msg and "damaged" not in msg, msg


@pytest.mark.slow
def test_builder_call_in_training_arguments_stays_data(crafted):
    """A genuine network whose train_args is a builder call: the network loads, the call is never made."""
    path, marker = crafted["args"]
    det = Detector(path)
    assert det.imgsz == 1024 and det.imgsz_source == "MobileSAMv2's default" and not marker.exists()


@pytest.mark.slow
def test_crafted_detector_through_cli_and_api(crafted, checkpoint, predictor, tmp_path):
    """The issue's route: `mobilesam everything --detector` and segment_everything(detector=...): exit 2, no marker."""
    import tifffile

    from napari_mobilesam import segment_everything

    path, marker = crafted["activation"]
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    out = _py(["-m", "napari_mobilesam.cli", "everything", str(image), "-o", str(tmp_path / "out.tif"),
               "--weights", str(checkpoint), "--detector", str(path), "-q"])
    assert out.returncode == 2 and "--trust-detector" in out.stderr and "Traceback" not in out.stderr, out.stderr
    with pytest.raises(DetectorError, match="trust"):
        segment_everything(np.zeros((32, 32), np.uint8), predictor, "object-aware", detector=path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"this is a text file\n", "truncate"])
def test_damaged_detector_is_called_damaged(tmp_path, content):
    """A text file or a truncated checkpoint named as detector: 'damaged', and no push towards --trust-detector."""
    src = Path(__file__).parents[1] / "src/napari_mobilesam/testing/data/synthetic_yolov8n.pt"
    path = tmp_path / "detector.pt"
    path.write_bytes(src.read_bytes()[: src.stat().st_size // 2] if content == "truncate" else content)
    with pytest.raises(DetectorError, match="damaged") as err:
        Detector(path)
    assert "trust" not in str(err.value)


def _found(boxes: np.ndarray, labels: np.ndarray) -> int:
    """How many ground-truth cells some box matches at box IoU >= 0.5."""
    from skimage.measure import regionprops

    found = 0
    for r in regionprops(labels):
        g = np.asarray(r.bbox, float)
        lo, hi = np.maximum(boxes[:, :2], g[:2]), np.minimum(boxes[:, 2:], g[2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        union = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) + np.prod(g[2:] - g[:2]) - inter
        found += bool(np.any(inter / union >= 0.5))
    return found


def test_shipped_detector_reads_its_training_size():
    """The synthetic detector was trained at 256: Detector.imgsz says so and detect() runs at it by default
    (at MobileSAMv2's 1024 it found none of 20 cells in the widget, issue 24 item 4)."""
    from napari_mobilesam import to_rgb_uint8
    from napari_mobilesam.testing import synthetic_detector
    from napari_mobilesam.testing.synthetic import synthetic_cells

    det = Detector(synthetic_detector())
    assert det.imgsz == 256 and det.imgsz_source == "recorded in the file"
    image, truth = synthetic_cells((256, 256), n=20, seed=0)
    rgb = to_rgb_uint8(image)
    boxes, _ = det.detect(rgb)
    # the same size by default: the same boxes (to float noise: two runs of the network can differ by ~3e-5 px)
    np.testing.assert_allclose(boxes, det.detect(rgb, imgsz=256)[0], rtol=0, atol=1e-3)
    assert _found(boxes, truth) >= 12 and _found(det.detect(rgb, imgsz=1024)[0], truth) == 0


def test_onnx_that_is_not_a_yolo_export_is_refused(tmp_path):
    """An ONNX model with a (B, 10) output: one sentence naming the shapes, not ultralytics' AssertionError."""
    import torch

    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10))
    path = tmp_path / "classifier.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["images"], output_names=["out"],
                      dynamic_axes={"images": {0: "b", 2: "h", 3: "w"}, "out": {0: "b"}}, dynamo=False)
    with pytest.raises(DetectorError, match=r"classifier.onnx is not a YOLO.*output \(\?, 10\).*yolo export"):
        Detector(path)
