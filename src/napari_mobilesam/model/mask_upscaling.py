"""SAM's mask upscaling (``MaskDecoder.output_upscaling``) and hypernetwork dot product, fused
per block of image tokens: the one implementation behind both decoders
(:mod:`napari_mobilesam.model.folded_decoder`, :mod:`napari_mobilesam.model.fast_decoder`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from . import onednn
from .scratch import DecodeThreads, over_chunks

__all__ = ["convt_matrix", "upscale_blocks"]

# Image tokens per block (each becomes 16 output pixels).
UPSCALE_BLOCK = 512


def upscale_blocks(upscaling: torch.nn.Sequential, convt1: Callable[[int, int, int], torch.Tensor], hyper: torch.Tensor, size: tuple[int, int],
                   fused: bool = True, threads: DecodeThreads | None = None) -> torch.Tensor:
    """SAM's ``output_upscaling`` (ConvT 2x2/2, LayerNorm2d, GELU, ConvT 2x2/2, GELU) and the
    hypernetwork dot product, fused per block of image tokens.

    A 2x2/stride-2 transposed convolution maps each input pixel to its own 2x2 output patch, so a
    block of tokens runs the whole chain on its own while it stays in cache; the 64- and
    32-channel maps never exist for the whole batch (12 MB per prompt in the stock path).
    The second convolution and its GELU run as one oneDNN kernel where it is available
    (:func:`napari_mobilesam.model.onednn.linear`: the same values, one pass fewer over the
    block's 2 M-element output), and each mask's dot product is a matrix-vector product
    written straight into that mask's rows (a GEMM with 1-3 output columns runs at a fraction of
    the speed).

    Args:
        upscaling: the mask decoder's ``output_upscaling``.
        convt1: ``(prompt i, first token s, end e) ->`` the first transposed convolution's output
            for those tokens, (e - s) x 4·C1 ordered (ky, kx, channel), bias included.
        hyper: B x M x 32 hypernetwork outputs.
        size: the token grid (h, w), h·w = N.
        fused: False runs the second convolution, its GELU and the dot products as separate
            ATen ops, as the decoder did before (2026-12-04): the benchmarks' baseline.
        threads: decode workers to share the blocks (they write disjoint rows of the output).

    Returns:
        B x M x 4h x 4w logits.
    """
    mods: list[Any] = list(upscaling)  # ConvT, LayerNorm2d, GELU, ConvT, GELU
    _, ln, act1, ct2, act2 = mods
    b, m = hyper.shape[:2]
    h, w = size
    c1, c2 = ct2.weight.shape[0], ct2.weight.shape[1]
    w2, bb2 = convt_matrix(ct2)
    w2t = w2.T.contiguous()  # (4·C2) x C1, as a Linear's weight
    n = h * w
    out = torch.empty((b, m, n * 16) if fused else (b, n, 16, m), dtype=hyper.dtype, device=hyper.device)
    blocks = [(i, s, min(s + UPSCALE_BLOCK, n)) for i in range(b) for s in range(0, n, UPSCALE_BLOCK)]

    def run(part: slice) -> None:
        for i, s, e in blocks[part]:
            hyp = hyper[i].T  # 32 x M
            x = act1(F.layer_norm(convt1(i, s, e).view(-1, c1), (c1,), ln.weight, ln.bias, ln.eps))  # (token, ky1, kx1) x C1
            if not fused:
                y = act2(torch.addmm(bb2, x, w2)).view(-1, c2)
                torch.matmul(y, hyp, out=out[i, s:e].view(-1, m))
                continue
            y = onednn.linear(x, w2t, bb2, gelu=True).view(-1, c2)  # (token, ky1, kx1, ky2, kx2) x C2
            for j in range(m):
                torch.mv(y, hyp[:, j], out=out[i, j, s * 16 : e * 16])

    over_chunks(threads, run, len(blocks))
    if not fused:  # (B, i, j, ky1, kx1, ky2, kx2, M) -> (B, M, 4i + 2ky1 + ky2, 4j + 2kx1 + kx2)
        return out.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, m, 4 * h, 4 * w)
    # (B, M, i, j, ky1, kx1, ky2, kx2) -> (B, M, 4i + 2ky1 + ky2, 4j + 2kx1 + kx2)
    out = out.view(b, m, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return out.reshape(b, m, 4 * h, 4 * w)


def convt_matrix(conv: torch.nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2/stride-2 transposed conv as ``x @ W + b`` with outputs ordered (ky, kx, channel)."""
    cin, cout = conv.weight.shape[:2]
    assert conv.bias is not None  # segment-anything's upscaling convolutions have biases
    return conv.weight.permute(0, 2, 3, 1).reshape(cin, 4 * cout), conv.bias.repeat(4)
