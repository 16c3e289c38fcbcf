"""oneDNN's fused linear + activation kernels (``torch.ops.mkldnn``), where they may run: the one
place that decides, shared by the encoder (:mod:`napari_mobilesam.model.tiny_vit`) and the mask
upscaler (:mod:`napari_mobilesam.model.mask_upscaling`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear", "onednn_ok"]


def onednn_ok(x: torch.Tensor) -> bool:
    """Whether oneDNN's fused conv/linear + activation kernels may run: CPU float32 inference
    only (they have no autograd), and not while tracing for ONNX or compiling (those fuse themselves)."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and all(hasattr(torch.ops.mkldnn, op) for op in ("_linear_pointwise", "_convolution_pointwise"))
        and not (torch.jit.is_tracing() or torch.compiler.is_compiling())
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (``weight``: out x in), then the exact (erf) GELU if asked: one
    oneDNN kernel where :func:`onednn_ok` allows (the activation applied while the output is in
    registers: no second pass over it), else the two ATen ops. Same values either way."""
    if onednn_ok(x):
        attr, algorithm = ("gelu", "none") if gelu else ("none", "")  # "none" algorithm = exact (erf) GELU
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y
