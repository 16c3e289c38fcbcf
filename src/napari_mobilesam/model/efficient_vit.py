"""EfficientViT-L2 image encoder as MobileSAMv2 uses it (``l2.pt``), for SAM's prompt encoder and decoder.

Architecture facts (EfficientViT, Cai et al., ICCV 2023; EfficientViT-SAM's neck; MobileSAMv2's
1024 -> 512 resize), written here from those facts; parameter names equal the ``image_encoder.*``
keys of MobileSAMv2's ``l2.pt`` (checked by a strict load in the tests):

- input ``B x 3 x 1024 x 1024`` (SAM-normalised, padded), resized inside to 512² (bilinear);
- backbone widths 32/64/128/256/512, depths 1/2/2/8/8: a stride-2 stem and residual conv blocks,
  fused MBConvs (stages 1-2), MBConvs (stage 3), then a stride-2 MBConv and EfficientViT blocks
  (multi-scale ReLU linear attention + MBConv) at stride 32;
- neck: stages 4, 3, 2 projected to 256 channels, resized to 64² (bicubic) and summed, twelve
  fused MBConvs, a 1x1 convolution and a channel LayerNorm -> ``B x 256 x 64 x 64``.

Activations are tanh-approximated GELU, BatchNorm and LayerNorm use eps 1e-6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientViTL2Encoder", "is_efficientvit_state"]

EPS = 1e-6
WIDTHS = (32, 64, 128, 256, 512)
DEPTHS = (1, 2, 2, 8, 8)


def is_efficientvit_state(keys: object) -> bool:
    """Whether state-dict keys (with the ``image_encoder.`` prefix) are EfficientViT-SAM's."""
    return "image_encoder.backbone.stages.0.op_list.0.conv.weight" in keys  # type: ignore[operator]


class Conv(nn.Module):
    """``conv`` (k x k, 'same' padding) [+ ``norm`` BatchNorm] [+ GELU]."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, bias: bool = False, norm: bool = True, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(cout, eps=EPS) if norm else None
        self.act = nn.GELU(approximate="tanh") if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x) if self.act is not None else x


class Residual(nn.Module):
    """``main(x) + x`` (``skip``) or ``main(x)`` (a block that changes shape)."""

    def __init__(self, main: nn.Module, skip: bool = True):
        super().__init__()
        self.main = main
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x if self.skip else self.main(x)


class Ops(nn.Module):
    """Layers applied in order, held in ``op_list`` (the checkpoint's name)."""

    def __init__(self, ops: list[nn.Module]):
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class ResConv(nn.Module):
    """Two 3x3 convolutions (the stem's residual block)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = Conv(c, c)
        self.conv2 = Conv(c, c, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class FusedMBConv(nn.Module):
    """3x3 expansion convolution (BN, GELU) then 1x1 projection (BN)."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1):
        super().__init__()
        self.spatial_conv = Conv(cin, mid, 3, stride)
        self.point_conv = Conv(mid, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class MBConv(nn.Module):
    """1x1 expansion (bias, GELU), 3x3 depthwise (bias, GELU), 1x1 projection (BN)."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1):
        super().__init__()
        self.inverted_conv = Conv(cin, mid, 1, bias=True, norm=False)
        self.depth_conv = Conv(mid, mid, 3, stride, groups=mid, bias=True, norm=False)
        self.point_conv = Conv(mid, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention.

    ``qkv`` (1x1) gives per head a query, key and value of ``dim`` channels; a 5x5 depthwise +
    grouped 1x1 aggregation gives a second set of heads. Per head:
    ``out = relu(q) (relu(k)ᵀ [v, 1]) `` normalised by its last column (+1e-15).
    """

    def __init__(self, c: int, dim: int = 32, scale: int = 5):
        super().__init__()
        heads = c // dim
        total = heads * dim
        self.dim = dim
        self.eps = 1e-15
        self.qkv = Conv(c, 3 * total, 1, norm=False, act=False)
        self.aggreg = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(3 * total, 3 * total, scale, padding=scale // 2, groups=3 * total, bias=False),
                    nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
                )
            ]
        )
        self.proj = Conv(2 * total, c, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, *(op(qkv) for op in self.aggreg)], 1)
        b, _, h, w = qkv.shape
        qkv = qkv.float().reshape(b, -1, 3 * self.dim, h * w).transpose(-1, -2)  # B x heads x HW x 3d
        q, k, v = qkv.split(self.dim, -1)
        q, k = F.relu(q), F.relu(k)
        kv = k.transpose(-1, -2) @ F.pad(v, (0, 1), value=1.0)  # B x heads x d x (d + 1)
        out = q @ kv
        out = out[..., :-1] / (out[..., -1:] + self.eps)
        out = out.transpose(-1, -2).reshape(b, -1, h, w).to(x.dtype)
        return self.proj(out)


class EfficientViTBlock(nn.Module):
    """Linear attention (context) then an MBConv (local), each residual."""

    def __init__(self, c: int, dim: int = 32, expand: int = 6):
        super().__init__()
        self.context_module = Residual(LiteMLA(c, dim))
        self.local_module = Residual(MBConv(c, c, c * expand))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


class Backbone(nn.Module):
    """EfficientViT-L backbone; :meth:`forward` returns the outputs of stages 2, 3 and 4."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, depths: tuple[int, ...] = DEPTHS, dim: int = 32):
        super().__init__()
        stages = [Ops([Conv(3, widths[0], 3, 2)] + [Residual(ResConv(widths[0])) for _ in range(depths[0])])]
        cin = widths[0]
        for sid in (1, 2, 3):
            w, block = widths[sid], (FusedMBConv if sid <= 2 else MBConv)
            ops = [Residual(block(cin, w, cin * 16, stride=2), skip=False)]
            ops += [Residual(block(w, w, w * 4)) for _ in range(depths[sid])]
            stages.append(Ops(ops))
            cin = w
        w = widths[4]
        stages.append(Ops([Residual(MBConv(cin, w, cin * 24, stride=2), skip=False)] + [EfficientViTBlock(w, dim) for _ in range(depths[4])]))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[2:]


class Upsample(nn.Module):
    """Bicubic resize to ``size`` x ``size`` (a no-op at that size)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)


class Neck(nn.Module):
    """Stages 4, 3, 2 -> 256 channels at 64², summed, 12 fused MBConvs, 1x1 output convolution."""

    def __init__(self, in_channels: tuple[int, ...] = (512, 256, 128), width: int = 256, depth: int = 12, out: int = 256, grid: int = 64):
        super().__init__()
        self.input_ops = nn.ModuleList([Ops([Conv(c, width, 1, act=False), Upsample(grid)]) for c in in_channels])
        self.middle = Ops([Residual(FusedMBConv(width, width, width)) for _ in range(depth)])
        self.output_ops = nn.ModuleList([Ops([Conv(width, out, 1, bias=True, norm=False, act=False)])])

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        s2, s3, s4 = feats
        a, b, c = (op(f) for op, f in zip(self.input_ops, (s4, s3, s2)))
        x = a + (b + c)
        return self.output_ops[0](self.middle(x))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of ``B x C x H x W``."""

    def __init__(self, c: int, eps: float = EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(1, keepdim=True)
        x = x / torch.sqrt(x.square().mean(1, keepdim=True) + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class EfficientViTL2Encoder(nn.Module):
    """MobileSAMv2's EfficientViT-L2 image encoder: ``B x 3 x 1024 x 1024`` -> ``B x 256 x 64 x 64``.

    ``img_size`` is 1024 because SAM pads and scales prompts for that size; the network itself sees
    the input resized to ``inner_size`` (512), as in MobileSAMv2.
    """

    def __init__(self, img_size: int = 1024, inner_size: int = 512):
        super().__init__()
        self.img_size = img_size
        self.inner_size = inner_size
        self.backbone = Backbone()
        self.neck = Neck(grid=img_size // 16)
        self.norm = LayerNorm2d(256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.inner_size, self.inner_size), mode="bilinear", align_corners=False)
        return self.norm(self.neck(self.backbone(x)))
