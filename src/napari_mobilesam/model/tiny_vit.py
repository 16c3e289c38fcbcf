"""TinyViT-5M image encoder, as distilled by MobileSAM.

Written for this project from the published architecture (TinyViT, Wu et al. 2022;
MobileSAM, Zhang et al. 2023). Parameter and buffer names equal those of the official
``mobile_sam.pt`` checkpoint (``image_encoder.*``), so it loads strictly.

Shapes: input ``B x 3 x 1024 x 1024`` float (SAM-normalised, padded), output the image
embedding ``B x 256 x 64 x 64``.

Two execution paths share the same parameters:
- the fast path (default): activations stay channels-last from the first conv to the neck,
  so switching between token (``B x N x C``) and image layouts is a free view; Conv+BatchNorm
  pairs are folded on the fly in eval mode; window attention is
  ``F.scaled_dot_product_attention`` with the relative-position bias as a 4-D additive mask
  (a 4-D mask lets PyTorch pick its fused CPU kernel; a 3-D one falls back to the slow path).
- the reference path (``encoder.set_reference(True)``): the op sequence of the official
  MobileSAM code (Conv then BatchNorm, explicit ``q @ k^T`` softmax attention, NCHW input),
  kept as the baseline for benchmarks and parity checks.

In both, the bias table is gathered from the *loaded* parameter on every call, so it can
never be stale, and padded window tokens are zeros that take part in attention, exactly as
in the official model. Training (BatchNorm batch statistics, autograd) uses unfused convs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from . import onednn
from .onednn import onednn_ok

__all__ = ["TinyViT", "tiny_vit_5m"]


def _linear(layer: nn.Linear, x: torch.Tensor, gelu: bool = False, fuse: bool = True) -> torch.Tensor:
    """``layer(x)``, then GELU (exact, erf) if asked; fused by oneDNN if ``fuse`` and :func:`~napari_mobilesam.model.onednn.onednn_ok` allow."""
    if fuse and onednn_ok(x):
        return onednn.linear(x, layer.weight, layer.bias, gelu)
    if gelu:  # ONNX Runtime fuses 3-D MatMul + bias + GELU (BiasGelu)
        return F.gelu(layer(x))
    # 2-D in the fast path: an ONNX export then gets Gemm with the bias fused in, not MatMul + Add.
    return layer(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1) if fuse else layer(x)


def _layer_norm_2d(norm: LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``LayerNorm2d`` (over channels) as one fused layer norm on ``B x H x W x C``."""
    return F.layer_norm(x, (int(norm.weight.shape[0]),), norm.weight, norm.bias, norm.eps)  # int: static for ONNX


def _tokens_to_image(x: torch.Tensor, res: int) -> torch.Tensor:
    """``B x (res*res) x C`` -> ``B x C x res x res`` in channels-last strides (a view if ``x`` is contiguous)."""
    b, _, c = x.shape
    return x.reshape(b, res, res, c).permute(0, 3, 1, 2)


def _image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``B x C x H x W`` -> ``B x (H*W) x C`` (a view if ``x`` is channels-last)."""
    b, c = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(b, -1, c)


class Conv2dBN(nn.Sequential):
    """Conv (no bias) followed by BatchNorm; children named ``c`` and ``bn`` like the checkpoint."""

    def __init__(self, cin: int, cout: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))
        self.reference = False

    def fused_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv weight and bias equivalent to conv followed by BatchNorm in eval mode."""
        conv, bn = self.c, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale

    def forward(self, x: torch.Tensor, gelu: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
        """``bn(conv(x))``, then ``+ add`` and GELU if asked (in one oneDNN kernel where possible)."""
        if self.training or self.reference:
            y = self.bn(self.c(x))
        else:
            weight, bias = self.fused_weight_bias()
            conv = self.c
            if onednn_ok(x):
                args = (weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)
                if add is not None:  # oneDNN fuses the sum only; GELU after it stays separate
                    y = torch.ops.mkldnn._convolution_pointwise(x, add, *args, "add", 1.0, None, [], None)
                    return F.gelu(y) if gelu else y
                attr, algorithm = ("gelu", "none") if gelu else ("none", "")
                return torch.ops.mkldnn._convolution_pointwise(x, *args, attr, [], algorithm)
            y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if add is not None:
            y = y + add
        return F.gelu(y) if gelu else y


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convs: 1024² RGB -> 256² x ``dim``."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(in_chans, dim // 2, 3, 2, 1), nn.GELU(), Conv2dBN(dim // 2, dim, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq[2](self.seq[0](x, gelu=True))


class MBConv(nn.Module):
    """Inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project) on B x C x H x W."""

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, 1)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x, gelu=True), gelu=True)
        return self.conv3(y, gelu=True, add=x)


class PatchMerging(nn.Module):
    """Downsampling between stages; takes B x C x H x W or B x (H*W) x C, returns B x (H'*W') x C'.

    The stride is 2, except into the last stage (MobileSAM keeps 64x64 tokens there).
    """

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.resolution = resolution
        self.conv1 = Conv2dBN(dim, out_dim, 1)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1)
        self.act = nn.GELU()
        self.reference = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = _tokens_to_image(x, self.resolution)
        x = self.conv3(self.conv2(self.conv1(x, gelu=True), gelu=True))
        return x.flatten(2).transpose(1, 2) if self.reference else _image_to_tokens(x)


class Attention(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per head and
    per (|dy|, |dx|) offset. Input/output: B x N x C with N = window².
    """

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        n = len(points)
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(n, n), persistent=False)
        self.reference = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        x = self.norm(x)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # heads x N x N, from the loaded values
        # The checkpoint's qkv output is laid out per head as [q_h | k_h | v_h].
        qkv = _linear(self.qkv, x, fuse=not self.reference).view(b, n, self.num_heads, 3 * self.key_dim)
        if self.reference:
            q, k, v = (t.permute(0, 2, 1, 3) for t in qkv.split(self.key_dim, dim=3))
            attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
            out = attn @ v
        else:
            q, k, v = qkv.view(b, n, self.num_heads, 3, self.key_dim).permute(3, 0, 2, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(x.dtype)[None])
        return _linear(self.proj, out.transpose(1, 2).reshape(b, n, c), fuse=not self.reference)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()
        self.reference = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fuse = not self.reference
        return _linear(self.fc2, _linear(self.fc1, self.norm(x), gelu=True, fuse=fuse), fuse=fuse)


class TinyViTBlock(nn.Module):
    """Window attention + depthwise "local" conv + MLP, on B x (H*W) x C tokens."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int):
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv, 1, local_conv // 2, groups=dim)
        self.reference = False

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        h = w = self.resolution
        ws = self.window
        if h == ws:
            return self.attn(x)
        pad = (ws - h % ws) % ws
        x = x.view(b, h, w, c)
        if pad:
            x = F.pad(x, (0, 0, 0, pad, 0, pad))  # zeros at bottom/right, attended to as in the reference
        hp = h + pad
        nw = hp // ws
        x = x.view(b, nw, ws, nw, ws, c).transpose(2, 3).reshape(b * nw * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nw, nw, ws, ws, c).transpose(2, 3).reshape(b, hp, hp, c)
        if pad:
            x = x[:, :h, :w].contiguous()
        return x.view(b, h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        r = self.resolution
        x = x + self._window_attention(x)
        if self.reference:
            x = self.local_conv(x.transpose(1, 2).reshape(b, c, r, r)).view(b, c, n).transpose(1, 2)
        else:
            x = _image_to_tokens(self.local_conv(_tokens_to_image(x, r)))
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks on B x C x H x W, then patch merging to tokens."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks on tokens, optionally followed by patch merging."""

    def __init__(self, blocks: Sequence[TinyViTBlock], downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


Runner = Callable[[torch.Tensor], "torch.Tensor | None"]


class TinyViT(nn.Module):
    """TinyViT encoder with SAM's neck: ``B x 3 x img_size²`` -> ``B x 256 x (img_size/16)²``.

    Defaults are MobileSAM's TinyViT-5M. The classifier head of the original TinyViT is not
    built (SAM does not use it); :func:`napari_mobilesam.model.build.build_mobilesam` drops
    exactly those checkpoint keys.

    ``reference=True`` runs the official op sequence (see the module docstring); toggle it on
    an existing instance with :meth:`set_reference`. An accelerated inference backend may be
    attached with :meth:`set_runner` (see :mod:`napari_mobilesam.model.accelerate`); it is
    used only in eval mode without autograd, and never in reference mode.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        reference: bool = False,
    ):
        super().__init__()
        self.img_size = img_size  # read by segment_anything's Sam.preprocess
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        res0 = img_size // 4
        layers: list[nn.Module] = []
        n = len(embed_dims)
        for i in range(n):
            # The merge into the last stage keeps the resolution (stride 1), as MobileSAM does.
            res = res0 // (2 ** min(i, n - 2))
            downsample = None
            if i < n - 1:
                stride = 1 if i == n - 2 else 2
                downsample = PatchMerging(res, embed_dims[i], embed_dims[i + 1], stride)
            if i == 0:
                assert downsample is not None
                layers.append(ConvLayer(embed_dims[0], depths[0], mbconv_expand_ratio, downsample))
            else:
                blocks = [
                    TinyViTBlock(embed_dims[i], res, num_heads[i], window_sizes[i], mlp_ratio, local_conv_size)
                    for _ in range(depths[i])
                ]
                layers.append(BasicLayer(blocks, downsample))
        self.layers = nn.ModuleList(layers)
        self.out_res = res0 // (2 ** (n - 2))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.runner: Runner | None = None
        self.reference = reference
        self.set_reference(reference)

    def set_reference(self, on: bool = True) -> TinyViT:
        """Switch every submodule between the official op sequence (``on``) and the fast path."""
        for m in self.modules():
            if hasattr(m, "reference"):
                m.reference = bool(on)
        return self

    def set_runner(self, runner: Runner | None) -> None:
        """Attach (or, with None, detach) an inference backend: ``runner(x)`` returns the
        embedding, or None to fall back to the eager path. Not part of the state dict."""
        self.runner = runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()  # a backend exporting this very module
        if self.runner is not None and not (self.training or self.reference or torch.is_grad_enabled() or tracing):
            out = self.runner(x)
            if out is not None:
                return out
        return self.forward_eager(x)

    def forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        """The PyTorch path (fast or reference), never the attached runner."""
        if self.reference:
            return self.neck(_tokens_to_image(self._features(x), self.out_res))
        # Channels-last from here on: 1x1 convs become plain GEMMs, layout switches become views.
        x = self._features(x.contiguous(memory_format=torch.channels_last))
        conv1, norm1, conv2, norm2 = self.neck
        x = _layer_norm_2d(norm1, F.linear(x, conv1.weight.flatten(1)))  # a 1x1 conv on tokens is a linear
        x = conv2(_tokens_to_image(x, self.out_res))
        return _layer_norm_2d(norm2, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x


def tiny_vit_5m(img_size: int = 1024) -> TinyViT:
    """MobileSAM's encoder configuration (5.74M parameters without the classifier head)."""
    return TinyViT(img_size=img_size)
