"""SAM's two-way transformer for prompts without mask input, folded through both LayerNorms.

The rank argument (segment-anything's ``TwoWayTransformer`` with two layers; shapes per prompt,
``N = 4096`` image tokens, ``C = 256`` channels, ``T`` prompt tokens, ``h = 8`` heads of
``d = 16``, ``r = hT``):

1. Without mask input the image tokens entering the transformer, ``S0 = embedding + no_mask``
   (N x C), and their positional encoding PE (N x C) are the same for every prompt.
2. Layer 0's image-to-token attention adds ``P1 @ VW1`` to them: ``P1`` (N x r) are its
   probabilities (softmax over each head's T tokens), ``VW1`` (r x C) the token values through the
   output projection (plus 1/h of its bias per row: each head's probabilities sum to one).
   LayerNorm ``norm4`` is per-row affine: ``keys1 = a ⊙ (S0c + P1 @ VW1c) ⊙ g1 + b1`` with ``S0c``
   the row-centred frame tokens, ``VW1c`` the row-centred values and ``a = 1/s1`` (N) the rows'
   inverse standard deviations. Their squared norms come exactly from Gram forms:
   ``‖x_i‖² = ‖S0c_i‖² + 2 P1_i·(VW1 S0c_iᵀ) + P1_i (VW1c VW1cᵀ) P1_iᵀ``, where
   ``VW1 S0cᵀ = v_h @ (Wo_h S0cᵀ)`` per head (``Wo_h S0cᵀ``: h x d x N, once per frame).
3. Layer 1 adds ``P2 @ VW2`` and normalises again. With ``Sg = S0c ⊙ g1`` and its row-centred
   ``Sgc``: ``keys2 = (c a) ⊙ Sgc ⊙ g2 + [c F | c] @ [Ec ⊙ g2; b1c ⊙ g2] + b2``, where
   ``F = [a P1 | P2]`` (N x 2r) is the per-prompt factor, ``Ec = [E1c; VW2c]`` (2r x C) with
   ``E1 = VW1c ⊙ g1``, and ``c = 1/s2`` (N); ``s2`` again from Gram forms (per-frame matrices
   ``Sgc Wo2ᵀ`` and ``centre(g1 ⊙ Sgc) Wo1ᵀ``, per-prompt ``Ec Ecᵀ``: 2r x 2r).
   Each head's T probabilities sum to one, so ``Σ_t P_ht E_ht = Σ_t<T-1 P_ht (E_ht - E_h,T-1) +
   E_h,T-1``: in that basis (:func:`_reduce`) each layer's factor has ``h(T-1) + 1`` rows, the
   last one constant (``a`` for layer 0, merged with ``c`` for layer 1), so the final factor
   ``[c a P1'; c a; c P2'; c]`` has ``r' = 2(h(T-1) + 1)`` rows: 98 for a box (T = 7), not
   ``2hT + 1 = 113``. (The statistics' linear terms use the full P; both are exact.)
4. Every image-side product is then a per-frame product plus a product with the factor:
   - the k/q/v projections of layer 1 and of the final attention:
     ``Y Wᵀ = coef ⊙ (S Wᵀ) + F (E Wᵀ) + β Wᵀ`` with ``S Wᵀ`` (N x 128) once per frame;
   - attention scores ``q_h · k_ih``: per head ``(T x d) @ (d x N)`` against the per-frame
     projections, and ``(T x r') @ (r' x N)`` against the factor;
   - token-to-image mixing ``P Y Wvᵀ = (P ⊙ coef) (S Wvᵀ) + (P F)(E Wvᵀ) + β Wvᵀ``;
   - the first transposed convolution (a per-token C -> 4·64 linear map):
     ``(c a) ⊙ (S2 W1) + [c F | c] (E2 W1) + b``, i.e. N x r' x 256 multiply-adds per prompt
     instead of N x 256 x 256.
   Nothing of size N x C is formed per prompt before the upscaler.
5. What stays: LayerNorm2d and GELU after the first transposed convolution, the second one
   (N x 4 x 64 x 128) and GELU, and the hypernetwork dot product, fused per block of tokens.
6. Streaming: the image side runs in two passes over blocks of image tokens (one per
   image-to-token attention); each block computes its probabilities, LayerNorm statistics and
   factor columns while in cache, and feeds the next token-to-image attention through an online
   softmax. Per prompt only the factor (r' x N) and two N-vectors outlive a block.

All in float32 (the Gram forms' rounding stays at the stock path's own float32 level; tested
against ``segment_anything``'s ``MaskDecoder``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention

from .mask_upscaling import convt_matrix, upscale_blocks
from .scratch import DecodeThreads, over_chunks

__all__ = ["FoldedFrame"]

# The streamed transformer covers STREAM_ROWS // B image tokens of all B prompts per block (at
# least MIN_BLOCK), so that a block's B x hT x block arrays stay in cache between the dozen
# elementwise passes over them. Not smaller: every block costs ~6 small ops per prompt, and when
# the CPU is shared each op can wait for a descheduled OpenMP thread (1024-token blocks measured
# 0.92x the CPU time of 256-token ones at 8 prompts, and a click runs as one block).
STREAM_ROWS = 8192
MIN_BLOCK = 1024
LOG2E = math.log2(math.e)


def _heads_t(x: torch.Tensor, h: int) -> torch.Tensor:
    """(h d) x N -> h x d x N (a view)."""
    return x.view(h, -1, x.shape[-1])


def _frame_rows(x: torch.Tensor, *parts: torch.Tensor | torch.nn.Linear) -> torch.Tensor:
    """Per-frame products laid out channels-first, ``[W_1; W_2; ...] @ xᵀ`` (k x N): one GEMM,
    and every per-head layout (h x d x N, or h x N x d transposed) is a view of it. ``parts``:
    weight matrices (k_j x C) or Linear layers (their weight; biases are the caller's)."""
    w = torch.cat([p.weight if isinstance(p, torch.nn.Linear) else p for p in parts], 0)
    return w @ x.T


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def _per_head(q: torch.Tensor, kt: torch.Tensor, coef: torch.Tensor | None = None, add: torch.Tensor | None = None,
              base: torch.Tensor | None = None) -> torch.Tensor:
    """``q`` B x h x T x d against per-frame ``kt`` h x d x n, times ``coef`` (B x n), plus ``q``
    against ``add`` (h x d x n), plus ``base`` (B x hT x n, updated in place): B x h x T x n.

    The per-frame operand is shared by all prompts, so the products run once per head with the
    B prompts' queries stacked (one bmm over h of (BT x d) @ (d x n), not B bmms of T = 7 rows),
    in heads-first order; the result goes back to prompts-first in the pass that adds ``base``
    (or copies), which for one prompt is no pass at all."""
    b, h, t, d = q.shape
    n = kt.shape[-1]
    qh = q[0] if b == 1 else q.transpose(0, 1).reshape(h, b * t, d)
    y = torch.bmm(qh, kt)  # h x BT x n
    if coef is not None:
        y.view(h, b, t, n).mul_(coef[None, :, None])
    if add is not None:
        y.baddbmm_(qh, add)
    y4 = y.view(h, b, t, n).transpose(0, 1)
    if base is not None:
        return base.view(b, h, t, n).add_(y4)
    return y4.contiguous()  # no copy for one prompt


def _heads(lin: torch.nn.Linear, x: torch.Tensor, h: int, scale: float = 1.0) -> torch.Tensor:
    """B x T x C tokens projected and split: B x h x T x d."""
    b, t, _ = x.shape
    y = lin(x).view(b, t, h, -1).transpose(1, 2)
    return y * scale if scale != 1.0 else y


class _Softmax:
    """Prompt tokens attending to the image tokens block by block: the softmax over the N image
    tokens accumulates online (running maximum and sum, as in flash attention), so no B x hT x N
    scores exist at once. Accumulates ``Σ_i p_i coef_i V_i`` per head against per-frame values
    (h x n x d per block) and ``Σ_i p_i fac_i`` against a per-prompt factor (B x r x n)."""

    def __init__(self, b: int, h: int, t: int, d: int, r: int, like: torch.Tensor):
        kw: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
        self.shape = (b, h, t)
        self.m = torch.full((b, h * t, 1), -math.inf, **kw)
        self.sum = torch.zeros(b, h * t, 1, **kw)
        self.pv = torch.zeros(b, h, t, d, **kw)
        self.pf = torch.zeros(b, h * t, r, **kw)

    def add(self, scores: torch.Tensor, vs: torch.Tensor, coef: torch.Tensor | None = None, fac: torch.Tensor | None = None) -> None:
        """One block: ``scores`` B x hT x n (overwritten), ``vs`` h x n x d, ``coef`` B x n, ``fac`` B x r x n."""
        b, h, t = self.shape
        m = torch.maximum(self.m, scores.amax(-1, keepdim=True))
        alpha = torch.exp2(self.m - m)
        p = torch.exp2(scores.sub_(m), out=scores)
        self.m = m
        self.sum.mul_(alpha).add_(p.sum(-1, keepdim=True))
        if fac is not None:
            self.pf.mul_(alpha).baddbmm_(p, fac.transpose(1, 2))
        if coef is not None:
            p.mul_(coef[:, None])
        self.pv.mul_(alpha.view(b, h, t, 1))
        if b == 1:
            self.pv[0].baddbmm_(p.view(h, t, -1), vs)
        else:  # per head, the B prompts' rows stacked against the shared values (one copy of p)
            ph = p.view(b, h, t, -1).transpose(0, 1).reshape(h, b * t, -1)
            self.pv.add_(torch.bmm(ph, vs).view(h, b, t, -1).transpose(0, 1))

    def merge(self, others: list[_Softmax]) -> _Softmax:
        """This accumulator with those of other blocks added (each rescaled to the common maximum)."""
        b, h, t = self.shape
        m = self.m
        for o in others:
            m = torch.maximum(m, o.m)
        alpha = torch.exp2(self.m - m)
        self.sum.mul_(alpha)
        self.pv.mul_(alpha.view(b, h, t, 1))
        self.pf.mul_(alpha)
        for o in others:
            alpha = torch.exp2(o.m - m)
            self.sum.add_(o.sum * alpha)
            self.pv.add_(o.pv * alpha.view(b, h, t, 1))
            self.pf.add_(o.pf * alpha)
        self.m = m
        return self

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised sums: ``(Σ p V, B x h x T x d; Σ p fac, B x hT x r)``."""
        b, h, t = self.shape
        inv = 1.0 / self.sum
        return self.pv * inv.view(b, h, t, 1), self.pf * inv


class _ImageSide:
    """Per-frame projections of an image state ``Y = coef ⊙ S + facᵀ E + β`` for one attention
    whose keys are ``Y + PE`` and values ``Y``: ``S Wkᵀ``, ``(β + PE) Wkᵀ + bk`` (h x d x N),
    ``S Wvᵀ`` (h x N x d) and ``β Wvᵀ + bv`` (h x 1 x d)."""

    def __init__(self, attn: Attention, ks: torch.Tensor, kp: torch.Tensor, vs: torch.Tensor, vp: torch.Tensor):
        """``ks``, ``kp``, ``vs``: (h d) x N; ``vp``: (h d)."""
        h = attn.num_heads
        self.attn = attn
        self.ks, self.kp, self.vs, self.vp = _heads_t(ks, h), _heads_t(kp, h), _heads_t(vs, h).transpose(1, 2), vp.view(h, 1, -1)

    def prompts(self, q: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompt side for queries ``q`` (B x T x C) and factor rows ``e`` (B x r x C): the
        scaled query heads (B x h x T x d), queries against the factor's keys (B x hT x r) and the
        factor's values (B x r x h x d)."""
        attn = self.attn
        h = attn.num_heads
        b, t, _ = q.shape
        d = attn.internal_dim // h
        r = e.shape[1]
        qh = _heads(attn.q_proj, q, h, _score_scale(d))
        gk = (e @ attn.k_proj.weight.T).view(b, r, h, d)
        gq = torch.einsum("bhtd,brhd->bhtr", qh, gk).reshape(b, h * t, r)
        return qh, gq, (e @ attn.v_proj.weight.T).view(b, r, h, d)

    def scores(self, qh: torch.Tensor, gq: torch.Tensor, coef: torch.Tensor, fac: torch.Tensor, s: int, e: int) -> torch.Tensor:
        """Attention scores against image tokens ``s:e`` (``coef`` B x n, ``fac`` B x r x n): B x hT x n."""
        b, h, t, _ = qh.shape
        return _per_head(qh, self.ks[:, :, s:e], coef, self.kp[:, :, s:e], base=torch.bmm(gq, fac)).view(b, h * t, -1)

    def finish(self, acc: _Softmax, gv: torch.Tensor) -> torch.Tensor:
        """The attention output (B x T x C) from the accumulated softmax."""
        pv, pf = acc.result()
        b, h, t, d = pv.shape
        out = pv + torch.einsum("bhtr,brhd->bhtd", pf.view(b, h, t, -1), gv) + self.vp[None]
        return self.attn.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


def _values_out(attn: Attention, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token values through the output projection, B x hT x C (with 1/h of its bias per row),
    and the values per head, B x h x T x d."""
    h = attn.num_heads
    vh = _heads(attn.v_proj, v, h)
    wo = attn.out_proj.weight.view(-1, h, vh.shape[-1])  # C x h x d
    vw = torch.einsum("bhtd,chd->bhtc", vh, wo).reshape(v.shape[0], -1, wo.shape[0])
    return vw + attn.out_proj.bias / h, vh


def _score_scale(d: int) -> float:
    """Attention scores are kept in base-2 units, ``q·k · log2(e) / sqrt(d)``, so that every
    softmax exponentiates with ``exp2`` (ATen's exp2 runs ~3x faster than exp here, AVX-512; the
    extra rounding of the scaled scores is ~1e-7 relative, far inside the parity tolerance)."""
    return LOG2E / math.sqrt(d)


def _softmax_tokens(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over each head's T tokens of B x h x T x n scores (along a strided axis: the long
    image axis stays contiguous, much faster than softmaxes over 7 values): B x hT x n."""
    b, h, t, n = scores.shape
    p = torch.exp2(scores.sub_(scores.amax(2, keepdim=True)), out=scores)  # scores in base-2 units
    return p.div_(p.sum(2, keepdim=True)).view(b, h * t, n)


def _reduce(x: torch.Tensor, h: int) -> torch.Tensor:
    """Rows per (head, token), B x hT x C, to the basis of probabilities that sum to one per head:
    ``Σ_ht P_ht x_ht = Σ_h Σ_t<T-1 P_ht (x_ht - x_h,T-1) + Σ_h x_h,T-1``, i.e. B x (h(T-1) + 1) x C
    (the differences, then the constant row)."""
    b, _, c = x.shape
    x4 = x.view(b, h, -1, c)
    return torch.cat([(x4[:, :, :-1] - x4[:, :, -1:]).reshape(b, -1, c), x4[:, :, -1].sum(1, keepdim=True)], 1)


def _gram_dot(vh: torch.Tensor, rt: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """``VW · X_i`` for values ``vh`` (B x h x T x d) given ``X Wo`` per head (h x d x n) and
    ``X · bo / h`` (n): B x hT x n."""
    b, h, t, _ = vh.shape
    return _per_head(vh, rt).view(b, h * t, -1).add_(rb)


def _stream(step: Callable[[_Softmax, int, int], None], blocks: list[tuple[int, int]], new: Callable[[], _Softmax],
            threads: DecodeThreads | None) -> _Softmax:
    """One pass over the blocks of image tokens: ``step(acc, s, e)`` for each, accumulating into
    ``new()``; with ``threads``, groups of blocks on the workers, each with its own accumulator,
    merged at the end (the blocks write disjoint columns of the per-token outputs)."""

    def run(part: slice) -> _Softmax:
        acc = new()
        for s, e in blocks[part]:
            step(acc, s, e)
        return acc

    accs = over_chunks(threads, run, len(blocks))
    return accs[0].merge(accs[1:])


class FoldedFrame:
    """The per-frame part of the folded decoder for one image embedding (no mask input).

    Args:
        sam: a segment-anything ``Sam`` whose transformer has two layers.
        keys: the frame's image tokens ``embedding + no_mask_embed``, N x C.
        pe: the dense positional encoding, N x C.

    Per-frame cost: products of five N x C frame matrices (and of PE) with 2048 weight rows in
    all, ~4.3 GFLOP, computed as a few GEMMs laid out channels-first (no layout copies).
    """

    def __init__(self, sam: Sam, keys: torch.Tensor, pe: torch.Tensor):
        md = sam.mask_decoder
        self.md = md
        tr = md.transformer
        self.tr = tr
        l0, l1 = tr.layers
        t2i0, i2t0 = l0.cross_attn_token_to_image, l0.cross_attn_image_to_token
        t2i1, i2t1, fin = l1.cross_attn_token_to_image, l1.cross_attn_image_to_token, tr.final_attn_token_to_image
        h = i2t0.num_heads
        n1, n2 = l0.norm4, l1.norm4
        g1, b1, g2, b2 = n1.weight, n1.bias, n2.weight, n2.bias
        wo1, wo2 = i2t0.out_proj, i2t1.out_proj
        # layer 0: the image side is the frame's (keys k0 and queries q0 against keys + PE)
        k = i2t0.internal_dim  # every cross-attention projects to (h d) = k channels
        y = _frame_rows(keys + pe, t2i0.k_proj, i2t0.q_proj)
        y[:k].add_(t2i0.k_proj.bias[:, None])
        y[k:].add_(i2t0.q_proj.bias[:, None])
        self.k0, self.q0 = _heads_t(y[:k], t2i0.num_heads), _heads_t(y[k:], h)
        self.v0 = _heads_t(_frame_rows(keys, t2i0.v_proj).add_(t2i0.v_proj.bias[:, None]), t2i0.num_heads).transpose(1, 2)
        s0c = _centre(keys)
        self.n0 = (s0c * s0c).sum(-1)
        y = _frame_rows(s0c, wo1.weight.T, wo1.bias[None] / h)
        self.r1, self.r1b = _heads_t(y[:-1], h), y[-1]
        # layer 1: keys1 = a ⊙ Sg + (a P1)ᵀ E1 + b1, Sg = S0c ⊙ g1
        sg = s0c * g1
        y = _frame_rows(sg, t2i1.k_proj, t2i1.v_proj, i2t1.q_proj)
        yp = _frame_rows(pe, t2i1.k_proj, i2t1.q_proj, fin.k_proj)  # the PE parts of three key/query projections
        yp[:k].add_((t2i1.k_proj(b1))[:, None])
        yp[k : 2 * k].add_((i2t1.q_proj(b1))[:, None])
        yp[2 * k :].add_((fin.k_proj(b2))[:, None])
        self.side1 = _ImageSide(t2i1, y[:k], yp[:k], y[k : 2 * k], t2i1.v_proj(b1))
        self.qs1, self.qp1 = _heads_t(y[2 * k :], h), _heads_t(yp[k : 2 * k], h)
        # LayerNorm 2's statistics
        sgc = _centre(sg)
        b1c = b1 - b1.mean()
        self.nsg, self.nb, self.b1c = (sgc * sgc).sum(-1), (b1c * b1c).sum(), b1c
        y = _frame_rows(sgc, wo2.weight.T, wo2.bias[None] / h, b1c[None])
        self.r2, self.r2b, self.sb = _heads_t(y[:-2], h), y[-2], y[-1]
        y = _frame_rows(_centre(sgc * g1), wo1.weight.T, wo1.bias[None] / h)
        self.rz1, self.rz1b = _heads_t(y[:-1], h), y[-1]
        # final attention and the first transposed convolution: keys2 = (c a) ⊙ S2 + fac2ᵀ E2 + b2
        s2 = sgc * g2
        y = _frame_rows(s2, fin.k_proj, fin.v_proj)
        self.side2 = _ImageSide(fin, y[:k], yp[2 * k :], y[k:], fin.v_proj(b2))
        self.w1, bc1 = convt_matrix(md.output_upscaling[0])
        self.us = s2 @ self.w1  # N x 4·C1
        self.ub = b2 @ self.w1 + bc1
        self.g2 = g2

    def transformer(self, tokens: torch.Tensor, threads: DecodeThreads | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The two-way transformer for ``tokens`` (B x T x C, output + sparse prompt tokens),
        streamed over blocks of image tokens: two passes, one per image-to-token attention, each
        also accumulating the next token-to-image attention (its queries are known by then).
        ``threads``: decode workers that share each pass's blocks (for one prompt).

        Returns ``(hs B x T x C, (coef B x N, fac B x r' x N, e B x r' x C))``: the final tokens and
        the image tokens in factored form, ``keys2 = coef ⊙ S2 + facᵀ @ e + b2``.
        """
        tr = self.tr
        l0, l1 = tr.layers
        t2i0, i2t0, i2t1 = l0.cross_attn_token_to_image, l0.cross_attn_image_to_token, l1.cross_attn_image_to_token
        b, t, c = tokens.shape
        h, d = i2t0.num_heads, i2t0.internal_dim // i2t0.num_heads
        n = self.n0.shape[0]
        r = h * t
        block = max(MIN_BLOCK, STREAM_ROWS // b)
        if threads is not None:
            block = min(block, math.ceil(n / threads.n))
        blocks = [(s, min(s + block, n)) for s in range(0, n, block)]
        pe_t = tokens
        queries = l0.norm1(l0.self_attn(q=tokens, k=tokens, v=tokens))
        qh = _heads(t2i0.q_proj, queries + pe_t, h, _score_scale(d))
        att = _stream(lambda acc, s, e: acc.add(_per_head(qh, self.k0[:, :, s:e]).view(b, r, -1), self.v0[:, s:e]),
                      blocks, lambda: _Softmax(b, h, t, d, 0, tokens), threads)
        out = att.result()[0].transpose(1, 2).reshape(b, t, h * d)
        queries = l0.norm2(queries + t2i0.out_proj(out))
        q0 = l0.norm3(queries + l0.mlp(queries))
        # layer 0, image to tokens (P1), and layer 1's token-to-image attention, whose queries
        # (after layer 1's token self-attention) do not depend on the image tokens
        kh1 = _heads(i2t0.k_proj, q0 + pe_t, h, _score_scale(d))
        vw1, v1h = _values_out(i2t0, q0)
        vw1c = _centre(vw1)
        g11 = vw1c @ vw1c.transpose(1, 2)
        e1 = vw1c * l0.norm4.weight
        ec1 = _centre(e1)
        e1, ec1r = _reduce(e1, h), _reduce(ec1, h)  # the 49-row basis: factor rows [a P1'; a]
        r1 = e1.shape[1]
        e11, ec1b = ec1r @ ec1r.transpose(1, 2), (ec1 @ self.b1c)[..., None]
        q1 = l1.norm1(q0 + l1.self_attn(q=q0 + pe_t, k=q0 + pe_t, v=q0))
        qh1, gq1, gv1 = self.side1.prompts(q1 + pe_t, e1)
        fac = torch.empty(b, 2 * r1, n, dtype=tokens.dtype, device=tokens.device)  # the factor, filled in place
        a_all, sq2 = torch.empty(2, b, n, dtype=tokens.dtype, device=tokens.device)

        def pass1(att: _Softmax, s: int, e: int) -> None:
            p1 = _softmax_tokens(_per_head(kh1, self.q0[:, :, s:e]))  # B x hT x n
            # LayerNorm 1: |x_i|² = |S0c_i|² + P1_i·(2 VW1·S0c_i + G P1_i)
            x = _gram_dot(v1h, self.r1[:, :, s:e], self.r1b[s:e]).mul_(2).baddbmm_(g11, p1)
            a = torch.rsqrt(x.mul_(p1).sum(1).add_(self.n0[s:e]).div_(c).add_(l0.norm4.eps))
            a_all[:, s:e] = a
            ap1 = fac[:, :r1, s:e]
            torch.mul(p1.view(b, h, t, -1)[:, :, :-1], a[:, None, None], out=ap1[:, :-1].view(b, h, t - 1, -1))
            ap1[:, -1] = a
            # LayerNorm 2's statistics, the terms without P2
            x = _gram_dot(v1h, self.rz1[:, :, s:e], self.rz1b[s:e]).mul_(a[:, None]).add_(ec1b)
            sq = x.mul_(p1).sum(1).mul_(2 * a).add_(a * a * self.nsg[s:e]).add_(2 * a * self.sb[s:e]).add_(self.nb)
            sq2[:, s:e] = torch.bmm(e11, ap1).mul_(ap1).sum(1).add_(sq)
            att.add(self.side1.scores(qh1, gq1, a, ap1, s, e), self.side1.vs[:, s:e], a, ap1)

        att = _stream(pass1, blocks, lambda: _Softmax(b, h, t, d, r1, tokens), threads)
        queries = l1.norm2(q1 + self.side1.finish(att, gv1))
        q2 = l1.norm3(queries + l1.mlp(queries))
        # layer 1, image to tokens (P2), and the final attention
        kh2 = _heads(i2t1.k_proj, q2 + pe_t, h, _score_scale(d))
        gq2 = torch.einsum("bhtd,brhd->bhtr", kh2, (e1 @ i2t1.q_proj.weight.T).view(b, r1, h, d)).reshape(b, r, r1)
        vw2, v2h = _values_out(i2t1, q2)
        ec2 = _centre(vw2)
        e21, e22, ec2b = ec2 @ ec1r.transpose(1, 2), ec2 @ ec2.transpose(1, 2), (ec2 @ self.b1c)[..., None]
        e2 = _reduce(ec2, h)
        e2[:, -1] += self.b1c  # the constant row: the last tokens' values and LayerNorm 1's centred bias
        e2 = torch.cat([ec1r, e2], 1) * self.g2  # B x 2(h(T-1) + 1) x C
        qhf, gqf, gvf = self.side2.prompts(q2 + pe_t, e2)
        coef = torch.empty_like(a_all)

        def pass2(att: _Softmax, s: int, e: int) -> None:
            a, ap1 = a_all[:, s:e], fac[:, :r1, s:e]
            p2 = _softmax_tokens(_per_head(kh2, self.qs1[:, :, s:e], a, self.qp1[:, :, s:e], base=torch.bmm(gq2, ap1)))
            # LayerNorm 2: the terms with P2
            x = _gram_dot(v2h, self.r2[:, :, s:e], self.r2b[s:e]).mul_(a[:, None]).add_(ec2b).mul_(2)
            x.baddbmm_(e21, ap1, alpha=2).baddbmm_(e22, p2)
            cc = torch.rsqrt(x.mul_(p2).sum(1).add_(sq2[:, s:e]).div_(c).add_(l1.norm4.eps))
            fb = fac[:, :, s:e]
            ap1.mul_(cc[:, None])
            torch.mul(p2.view(b, h, t, -1)[:, :, :-1], cc[:, None, None], out=fb[:, r1:-1].view(b, h, t - 1, -1))
            fb[:, -1] = cc
            cf = torch.mul(cc, a, out=coef[:, s:e])
            att.add(self.side2.scores(qhf, gqf, cf, fb, s, e), self.side2.vs[:, s:e], cf, fb)

        att = _stream(pass2, blocks, lambda: _Softmax(b, h, t, d, 2 * r1, tokens), threads)
        hs = tr.norm_final_attn(q2 + self.side2.finish(att, gvf))
        return hs, (coef, fac, e2)

    def decode(self, sparse: torch.Tensor, multimask_output: bool, size: tuple[int, int], threads: DecodeThreads | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks and IoU predictions for ``B`` prompts (``sparse`` B x P x C), as
        ``MaskDecoder.forward`` without mask input: ``(B x M x 4h x 4w logits, B x M)``.
        ``threads``: decode workers to share the blocks of image tokens (for one prompt)."""
        md = self.md
        b = sparse.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], 1)
        hs, image = self.transformer(tokens, threads)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        iou = md.iou_prediction_head(hs[:, 0])[:, sel]
        mask_tokens = hs[:, 1 : 1 + md.num_mask_tokens][:, sel]
        mlps = list(md.output_hypernetworks_mlps)[sel]
        hyper = torch.stack([mlp(mask_tokens[:, j]) for j, mlp in enumerate(mlps)], 1)  # B x M x 32
        coef, fac, e = image
        ew = e @ self.w1  # B x r' x 4·C1: the first transposed convolution of the factor's rows

        def convt1(i: int, s: int, e: int) -> torch.Tensor:
            x = torch.addmm(self.ub, fac[i, :, s:e].T, ew[i])
            return x.addcmul_(coef[i, s:e, None], self.us[s:e])

        return upscale_blocks(md.output_upscaling, convt1, hyper, size, threads=threads), iou
