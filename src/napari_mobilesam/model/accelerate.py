"""Optional inference backends for the TinyViT image encoder.

:func:`optimize_encoder` attaches a backend to ``sam.image_encoder`` in place (the module,
its parameters and its state-dict keys stay as they are):

- ``"eager"``: PyTorch, channels-last with oneDNN fused kernels (the default path of
  :class:`~napari_mobilesam.model.tiny_vit.TinyViT`); nothing to attach.
- ``"onnxruntime"``: the encoder exported to ONNX once per set of weights (cached under
  ``cache_dir()/onnx``, keyed by a hash of the weights; about 10 s the first time, then a
  0.5 s session start) and run by ONNX Runtime's CPU provider. ``onnx`` and ``onnxruntime``
  are optional; without them this backend falls back to eager, with a logged reason.
- ``"auto"``: ``"onnxruntime"`` for a CPU encoder when both packages are installed, else eager.
  On the shared 2-core CPU this was tuned on, ONNX Runtime was the fastest in every same-run
  comparison with two threads (0.30-0.40x the official op sequence, eager 0.46-0.51x); with
  one thread the two were level (eager 0.51x, ONNX Runtime 0.54x). Its thread pool copes
  better with a busy machine. See ``benchmarks/bench_encoder.py``.

A backend only serves eval-mode, no-grad calls on CPU float32 ``B x 3 x S x S`` input; anything
else (training, autograd, GPU, reference mode) runs the PyTorch path. If the weights change
after a backend was attached (``load_state_dict``, in-place edits), the next call notices it,
rebuilds the backend for the new weights and logs it, so a stale export is never used.
``copy.deepcopy`` and pickling of the encoder drop the backend (the copy runs eager).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import statistics
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..engine.errors import SettingsError
from . import tiny_vit
from .tiny_vit import TinyViT

__all__ = ["BACKENDS", "available_backends", "optimize_encoder", "time_encoder", "time_encoders"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "onnxruntime")
ONNX_OPSET = 17


def _have_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """Backends that can run here (``"reference"`` is the official op sequence, for benchmarks)."""
    return ["reference", "eager"] + (["onnxruntime"] if _have_onnxruntime() else [])


def _tensors(encoder: torch.nn.Module) -> list[torch.Tensor]:
    return [t for _, t in encoder.state_dict(keep_vars=True).items()]


def _fingerprint(encoder: torch.nn.Module) -> tuple:
    """Cheap identity of the current weights: tensor identity and in-place version counters."""
    try:
        return tuple((id(t), t.data_ptr(), t._version) for t in _tensors(encoder))
    except RuntimeError:  # inference tensors carry no version counter: fall back to the content
        return (weights_hash(encoder),)


def weights_hash(encoder: torch.nn.Module) -> str:
    """SHA-256 (hex, 32 chars) of every state-dict tensor, with names, shapes and dtypes."""
    h = hashlib.sha256()
    for name, t in encoder.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _check_input(encoder: TinyViT, x: torch.Tensor) -> bool:
    s = encoder.img_size
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.ndim == 4 and tuple(x.shape[1:]) == (3, s, s)


class _Runner:
    """Calls a backend built for one set of weights; rebuilds it when the weights change."""

    def __init__(self, encoder: TinyViT, name: str, build: Callable[[TinyViT], Callable[[torch.Tensor], torch.Tensor]]):
        self.name = name
        self._encoder = weakref.ref(encoder)  # no reference cycle through encoder.runner
        self._build = build
        self._fn = build(encoder)
        self._fingerprint = _fingerprint(encoder)

    def __deepcopy__(self, memo: dict) -> None:
        return None  # a copied encoder must not run (and check) the original's weights: it starts eager

    def __reduce__(self):  # pickling (torch.save of a whole model) likewise drops the backend
        return (type(None), ())

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        encoder = self._encoder()
        if encoder is None or not _check_input(encoder, x):
            return None
        fp = _fingerprint(encoder)
        if fp != self._fingerprint:
            log.info("Encoder weights changed since the %s backend was built; rebuilding it.", self.name)
            try:
                self._fn = self._build(encoder)
            except Exception as err:  # noqa: BLE001 - never serve the old weights; eager always works
                log.warning("Could not rebuild the %s backend (%s: %s); using eager PyTorch.",
                            self.name, type(err).__name__, err)
                encoder.set_runner(None)
                return None
            self._fingerprint = fp
        return self._fn(x)


def _onnx_path(encoder: TinyViT, folder: Path) -> Path:
    """Cache file for these weights, this image size and this exporter (model code, torch, opset)."""
    code = hashlib.sha256(Path(tiny_vit.__file__).read_bytes()).hexdigest()[:16]
    key = f"{weights_hash(encoder)}-s{encoder.img_size}-op{ONNX_OPSET}-code{code}-torch{torch.__version__}"
    return folder / f"tinyvit-{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"


def _export_onnx(encoder: TinyViT, path: Path) -> None:
    """Export the fast path (plain ops while tracing) with a dynamic batch axis; atomic write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    x = torch.zeros(1, 3, encoder.img_size, encoder.img_size)
    was_reference, was_training = encoder.reference, encoder.training
    encoder.set_reference(False).eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kwargs = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
            torch.onnx.export(
                encoder, (x,), str(tmp), input_names=["image"], output_names=["embedding"],
                opset_version=ONNX_OPSET, dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}}, **kwargs,
            )  # fmt: skip
        os.replace(tmp, path)  # concurrent writers each finish their own file; nobody waits on a lock
    finally:
        encoder.set_reference(was_reference).train(was_training)
        tmp.unlink(missing_ok=True)


def _build_onnxruntime(cache: Path | None) -> Callable[[TinyViT], Callable[[torch.Tensor], torch.Tensor]]:
    import onnx  # noqa: F401  (fail here, not halfway through an export)
    import onnxruntime as ort

    def build(encoder: TinyViT) -> Callable[[torch.Tensor], torch.Tensor]:
        from .weights import cache_dir

        path = _onnx_path(encoder, cache if cache is not None else cache_dir() / "onnx")
        if not path.is_file():
            t0 = time.perf_counter()
            _export_onnx(encoder, path)
            log.info("Exported the encoder to %s in %.1f s.", path, time.perf_counter() - t0)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = torch.get_num_threads()  # physical cores by default
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - a truncated or foreign cache file: export again, once
            path.unlink(missing_ok=True)
            _export_onnx(encoder, path)
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            (y,) = session.run(None, {"image": x.detach().contiguous().numpy()})
            return torch.from_numpy(y)

        return run

    return build


def optimize_encoder(sam: torch.nn.Module, backend: str = "auto", cache: str | os.PathLike | None = None) -> str:
    """Attach an inference backend to ``sam.image_encoder`` (a :class:`TinyViT`) in place.

    Args:
        sam: a ``segment_anything`` ``Sam`` built by :func:`~napari_mobilesam.model.build.build_mobilesam`.
        backend: one of :data:`BACKENDS`.
        cache: folder for ONNX exports; default ``cache_dir()/onnx``.

    Returns:
        The backend actually in use; ``"eager"`` when the one asked for is unavailable here
        (the reason is logged at WARNING level).

    Raises:
        ValueError: unknown backend, or an encoder that is not a TinyViT.
    """
    if backend not in BACKENDS:
        raise SettingsError(f"Unknown encoder backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    encoder = sam.image_encoder
    if not isinstance(encoder, TinyViT):
        raise SettingsError(f"optimize_encoder needs a TinyViT image encoder, got {type(encoder).__name__}.")
    encoder.set_runner(None)
    device = next(encoder.parameters()).device
    if backend == "auto":
        if device.type != "cpu" or not _have_onnxruntime():
            return "eager"
        backend = "onnxruntime"
        complain = log.info  # nobody asked for it by name
    else:
        complain = log.warning
    if backend == "eager":
        return "eager"
    if device.type != "cpu":
        complain("The onnxruntime backend runs on CPU only; the encoder is on %s, so it stays eager.", device)
        return "eager"
    try:
        runner = _Runner(encoder, backend, _build_onnxruntime(Path(cache) if cache is not None else None))
    except ImportError as err:
        complain("Encoder backend %r is unavailable (%s); using eager PyTorch.", backend, err)
        return "eager"
    except Exception as err:  # noqa: BLE001 - export or session creation failed: eager still works
        complain("Encoder backend %r failed to build (%s: %s); using eager PyTorch.", backend, type(err).__name__, err)
        return "eager"
    encoder.set_runner(runner)
    return backend


def _prepared(encoder: TinyViT, backend: str, cache: str | os.PathLike | None) -> TinyViT:
    """A copy of ``encoder`` (same weights) set up for ``backend``: ``"reference"`` or one of :data:`BACKENDS`."""
    enc = copy.deepcopy(encoder).eval()  # without the backend (see _Runner.__deepcopy__)
    enc.set_reference(backend == "reference")
    if backend not in ("reference", "eager"):
        holder = torch.nn.Module()
        holder.image_encoder = enc
        used = optimize_encoder(holder, backend, cache)
        if backend != "auto" and used != backend:
            raise RuntimeError(f"Encoder backend {backend!r} is not available here (see the log).")
    return enc


def time_encoders(
    sam: torch.nn.Module,
    backends: Sequence[str],
    repeats: int = 5,
    warmup: int = 1,
    cache: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Median seconds per 1024² frame for each backend, same weights, runs interleaved.

    Interleaving (reference, eager, ... then again) spreads load from other processes evenly
    over the backends, so ratios between them stay meaningful on a shared machine.
    """
    encoders = {b: _prepared(sam.image_encoder, b, cache) for b in backends}
    s = sam.image_encoder.img_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {b: [] for b in backends}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for b, enc in encoders.items():
                t0 = time.perf_counter()
                enc(x)
                if i >= warmup:
                    times[b].append(time.perf_counter() - t0)
    return {b: statistics.median(v) for b, v in times.items()}


def time_encoder(sam: torch.nn.Module, backend: str, repeats: int = 5) -> float:
    """Median seconds per 1024² frame of one backend (see :func:`time_encoders` to compare)."""
    return time_encoders(sam, [backend], repeats)[backend]
