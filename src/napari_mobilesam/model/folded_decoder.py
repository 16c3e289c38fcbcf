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
   (Each head's T probabilities sum to one, so ``F`` spans only ``2(h(T-1) + 1)`` directions;
   this module keeps all 2r columns plus ``c``: 113 for a box prompt, T = 7.)
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

All in float32 (the Gram forms' rounding stays at the stock path's own float32 level; tested
against ``segment_anything``'s ``MaskDecoder``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention

__all__ = ["FoldedFrame"]

# Image tokens per block in the upscaler (each becomes 16 output pixels).
UPSCALE_BLOCK = 512


def _split(x: torch.Tensor, h: int) -> torch.Tensor:
    """N x (h d) -> h x N x d (contiguous)."""
    return x.view(x.shape[0], h, -1).transpose(0, 1).contiguous()


def _split_t(x: torch.Tensor, h: int) -> torch.Tensor:
    """N x (h d) -> h x d x N (contiguous)."""
    return x.T.reshape(h, -1, x.shape[0]).contiguous()


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def _per_head(q: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
    """``q`` B x h x T x d against per-frame ``kt`` h x d x N: B x h x T x N (one bmm per prompt,
    written in place: no layout copies)."""
    b, h, t, _ = q.shape
    out = torch.empty(b, h, t, kt.shape[-1], dtype=q.dtype, device=q.device)
    for i in range(b):
        torch.bmm(q[i], kt, out=out[i])
    return out


def _per_head_mix(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Probabilities ``p`` B x h x T x N mixing per-frame values ``v`` h x N x d: B x h x T x d."""
    return torch.stack([torch.bmm(p[i], v) for i in range(p.shape[0])])


def _heads(lin: torch.nn.Linear, x: torch.Tensor, h: int, scale: float = 1.0) -> torch.Tensor:
    """B x T x C tokens projected and split: B x h x T x d."""
    b, t, _ = x.shape
    y = lin(x).view(b, t, h, -1).transpose(1, 2)
    return y * scale if scale != 1.0 else y


class _ImageSide:
    """Per-frame projections of an image state ``Y = coef ⊙ S + facᵀ E + β`` for one attention
    whose keys are ``Y + PE`` and values ``Y``: ``S Wkᵀ``, ``(β + PE) Wkᵀ + bk`` (h x d x N),
    ``S Wvᵀ`` (h x N x d) and ``β Wvᵀ + bv`` (h x 1 x d)."""

    def __init__(self, attn: Attention, s: torch.Tensor, beta: torch.Tensor, pe: torch.Tensor):
        h = attn.num_heads
        self.attn = attn
        self.ks = _split_t(s @ attn.k_proj.weight.T, h)
        self.kp = _split_t(attn.k_proj(beta + pe), h)
        self.vs = _split(s @ attn.v_proj.weight.T, h)
        self.vp = attn.v_proj(beta).view(h, 1, -1)

    def tokens_to_image(self, q: torch.Tensor, coef: torch.Tensor, fac: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Prompt tokens ``q`` (B x T x C) attend to ``Y + PE``, mixing ``Y``; ``coef`` B x N,
        ``fac`` B x r x N, ``e`` B x r x C. Returns the attention output, B x T x C."""
        attn = self.attn
        h = attn.num_heads
        b, t, _ = q.shape
        d = attn.internal_dim // h
        r = e.shape[1]
        qh = _heads(attn.q_proj, q, h, 1.0 / math.sqrt(d))  # B x h x T x d
        gk = (e @ attn.k_proj.weight.T).view(b, r, h, d)
        gq = torch.einsum("bhtd,brhd->bhtr", qh, gk).reshape(b, h * t, r)
        scores = _per_head(qh, self.ks).mul_(coef[:, None, None]).add_(_per_head(qh, self.kp))
        scores = scores.view(b, h * t, -1).baddbmm_(gq, fac)
        probs = torch.softmax(scores, dim=-1)  # B x hT x N
        pf = torch.bmm(probs, fac.transpose(1, 2)).view(b, h, t, r)
        gv = (e @ attn.v_proj.weight.T).view(b, r, h, d)
        out = _per_head_mix(probs.mul_(coef[:, None]).view(b, h, t, -1), self.vs)
        out = out + torch.einsum("bhtr,brhd->bhtd", pf, gv) + self.vp[None]
        return attn.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


def _values_out(attn: Attention, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token values through the output projection, B x hT x C (with 1/h of its bias per row),
    and the values per head, B x h x T x d."""
    h = attn.num_heads
    vh = _heads(attn.v_proj, v, h)
    wo = attn.out_proj.weight.view(-1, h, vh.shape[-1])  # C x h x d
    vw = torch.einsum("bhtd,chd->bhtc", vh, wo).reshape(v.shape[0], -1, wo.shape[0])
    return vw + attn.out_proj.bias / h, vh


def _softmax_tokens(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over each head's T tokens of B x h x T x N scores (along a strided axis: the long
    image axis stays contiguous, much faster than softmaxes over 7 values): B x hT x N."""
    b, h, t, n = scores.shape
    return torch.softmax(scores, dim=2).view(b, h * t, n)


def _gram_dot(vh: torch.Tensor, rt: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """``VW · X_i`` for values ``vh`` (B x h x T x d) given ``X Wo`` per head (h x d x N) and
    ``X · bo / h`` (N): B x hT x N."""
    b, h, t, _ = vh.shape
    return _per_head(vh, rt).view(b, h * t, -1).add_(rb)


class FoldedFrame:
    """The per-frame part of the folded decoder for one image embedding (no mask input).

    Args:
        sam: a segment-anything ``Sam`` whose transformer has two layers.
        keys: the frame's image tokens ``embedding + no_mask_embed``, N x C.
        pe: the dense positional encoding, N x C.
    """

    def __init__(self, sam: Sam, keys: torch.Tensor, pe: torch.Tensor):
        md = sam.mask_decoder
        self.md = md
        tr = md.transformer
        self.tr = tr
        l0, l1 = tr.layers
        t2i0, i2t0, i2t1 = l0.cross_attn_token_to_image, l0.cross_attn_image_to_token, l1.cross_attn_image_to_token
        kpe = keys + pe
        # layer 0: the image side is the frame's
        self.k0, self.v0 = _split_t(t2i0.k_proj(kpe), t2i0.num_heads), _split(t2i0.v_proj(keys), t2i0.num_heads)
        self.q0 = _split_t(i2t0.q_proj(kpe), i2t0.num_heads)
        s0c = _centre(keys)
        self.n0 = (s0c * s0c).sum(-1)
        n1, n2 = l0.norm4, l1.norm4
        g1, b1, g2, b2 = n1.weight, n1.bias, n2.weight, n2.bias
        wo1, wo2 = i2t0.out_proj, i2t1.out_proj
        h1, h2 = i2t0.num_heads, i2t1.num_heads
        self.r1, self.r1b = _split_t(s0c @ wo1.weight, h1), s0c @ wo1.bias / h1
        sg = s0c * g1
        # layer 1: keys1 = a ⊙ Sg + (a P1)ᵀ E1 + b1
        self.side1 = _ImageSide(l1.cross_attn_token_to_image, sg, b1, pe)
        self.qs1 = _split_t(sg @ i2t1.q_proj.weight.T, h2)
        self.qp1 = _split_t(i2t1.q_proj(b1 + pe), h2)
        # LayerNorm 2's statistics
        sgc = _centre(sg)
        b1c = b1 - b1.mean()
        self.nsg, self.sb, self.nb, self.b1c = (sgc * sgc).sum(-1), sgc @ b1c, (b1c * b1c).sum(), b1c
        z1 = _centre(sgc * g1)
        self.rz1, self.rz1b = _split_t(z1 @ wo1.weight, h1), z1 @ wo1.bias / h1
        self.r2, self.r2b = _split_t(sgc @ wo2.weight, h2), sgc @ wo2.bias / h2
        # final attention and the first transposed convolution: keys2 = (c a) ⊙ S2 + fac2ᵀ E2 + b2
        s2 = sgc * g2
        self.side2 = _ImageSide(tr.final_attn_token_to_image, s2, b2, pe)
        self.w1, bc1 = _convt_matrix(md.output_upscaling[0])
        self.us = s2 @ self.w1  # N x 4·C1
        self.ub = b2 @ self.w1 + bc1
        self.g2 = g2

    def transformer(self, tokens: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The two-way transformer for ``tokens`` (B x T x C, output + sparse prompt tokens).

        Returns ``(hs B x T x C, (coef B x N, fac B x r' x N, e B x r' x C))``: the final tokens and
        the image tokens in factored form, ``keys2 = coef ⊙ S2 + facᵀ @ e + b2``.
        """
        tr = self.tr
        l0, l1 = tr.layers
        t2i0, i2t0, i2t1 = l0.cross_attn_token_to_image, l0.cross_attn_image_to_token, l1.cross_attn_image_to_token
        b, t, c = tokens.shape
        query_pe = tokens
        queries = l0.norm1(l0.self_attn(q=tokens, k=tokens, v=tokens))
        queries = l0.norm2(queries + _tokens_to_frame(t2i0, queries + query_pe, self.k0, self.v0))
        queries = l0.norm3(queries + l0.mlp(queries))
        # layer 0, image to tokens: P1 (B x hT x N)
        h, d = i2t0.num_heads, i2t0.internal_dim // i2t0.num_heads
        p1 = _softmax_tokens(_per_head(_heads(i2t0.k_proj, queries + query_pe, h, 1.0 / math.sqrt(d)), self.q0))
        vw1, v1h = _values_out(i2t0, queries)
        vw1c = _centre(vw1)
        dot1 = _gram_dot(v1h, self.r1, self.r1b)  # B x hT x N: VW1 · S0c_i
        sq = self.n0 + 2 * (p1 * dot1).sum(1) + (torch.bmm(vw1c @ vw1c.transpose(1, 2), p1) * p1).sum(1)
        a = torch.rsqrt(sq / c + l0.norm4.eps)  # B x N
        ap1 = p1 * a[:, None]
        e1 = vw1c * l0.norm4.weight
        # layer 1
        queries = l1.norm1(queries + l1.self_attn(q=queries + query_pe, k=queries + query_pe, v=queries))
        queries = l1.norm2(queries + self.side1.tokens_to_image(queries + query_pe, a, ap1, e1))
        queries = l1.norm3(queries + l1.mlp(queries))
        h, d = i2t1.num_heads, i2t1.internal_dim // i2t1.num_heads
        kh = _heads(i2t1.k_proj, queries + query_pe, h, 1.0 / math.sqrt(d))  # B x h x T x d
        r = e1.shape[1]
        gq = (e1 @ i2t1.q_proj.weight.T).view(b, r, h, d)
        sc = _per_head(kh, self.qs1).mul_(a[:, None, None]).add_(_per_head(kh, self.qp1))  # B x h x T x N
        sc.view(b, h * t, -1).baddbmm_(torch.einsum("bhtd,brhd->bhtr", kh, gq).reshape(b, h * t, r), ap1)
        p2 = _softmax_tokens(sc)
        vw2, v2h = _values_out(i2t1, queries)
        # LayerNorm 2: X2c = a ⊙ Sgc + b1c + facᵀ ec
        fac = torch.cat([ap1, p2], 1)  # B x 2hT x N
        ec = torch.cat([_centre(e1), _centre(vw2)], 1)  # B x 2hT x C
        dotf = torch.cat([_gram_dot(v1h, self.rz1, self.rz1b), _gram_dot(v2h, self.r2, self.r2b)], 1)
        sq = (a * a) * self.nsg + 2 * a * self.sb + self.nb
        sq += 2 * (fac * dotf.mul_(a[:, None]).add_((ec @ self.b1c)[..., None])).sum(1)
        sq += (torch.bmm(ec @ ec.transpose(1, 2), fac) * fac).sum(1)
        cc = torch.rsqrt(sq / c + l1.norm4.eps)
        fac2 = torch.cat([fac * cc[:, None], cc[:, None]], 1)  # B x (2hT + 1) x N
        e2 = torch.cat([ec, self.b1c.expand(b, 1, -1)], 1) * self.g2
        coef = cc * a
        final = self.side2.tokens_to_image(queries + query_pe, coef, fac2, e2)
        hs = tr.norm_final_attn(queries + final)
        return hs, (coef, fac2, e2)

    def decode(self, sparse: torch.Tensor, multimask_output: bool, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks and IoU predictions for ``B`` prompts (``sparse`` B x P x C), as
        ``MaskDecoder.forward`` without mask input: ``(B x M x 4h x 4w logits, B x M)``."""
        md = self.md
        b = sparse.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], 1)
        hs, image = self.transformer(tokens)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        iou = md.iou_prediction_head(hs[:, 0])[:, sel]
        mask_tokens = hs[:, 1 : 1 + md.num_mask_tokens][:, sel]
        mlps = list(md.output_hypernetworks_mlps)[sel]
        hyper = torch.stack([mlp(mask_tokens[:, j]) for j, mlp in enumerate(mlps)], 1)  # B x M x 32
        return self.upscale(image, hyper, size), iou

    def upscale(self, image: tuple[torch.Tensor, torch.Tensor, torch.Tensor], hyper: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``output_upscaling`` and the hypernetwork dot product from the factored image tokens,
        fused per block of tokens; the first transposed convolution is the rank-r' product.
        hyper: B x M x 32. Returns B x M x 4h x 4w logits."""
        coef, fac, e = image
        _, ln, act1, ct2, act2 = self.md.output_upscaling
        b, m = hyper.shape[:2]
        h, w = size
        c1, c2 = ct2.weight.shape[0], ct2.weight.shape[1]
        w2, bb2 = _convt_matrix(ct2)
        ew = e @ self.w1  # B x r' x 4·C1
        n = coef.shape[1]
        out = torch.empty(b, n, 16, m, dtype=fac.dtype, device=fac.device)
        block = UPSCALE_BLOCK
        for i in range(b):
            hyp = hyper[i].T  # 32 x M
            for s in range(0, n, block):
                x = torch.addmm(self.ub, fac[i, :, s : s + block].T, ew[i])
                x = x.addcmul_(coef[i, s : s + block, None], self.us[s : s + block]).view(-1, c1)
                x = act1(F.layer_norm(x, (c1,), ln.weight, ln.bias, ln.eps))
                y = act2(torch.addmm(bb2, x, w2)).view(-1, c2)
                torch.matmul(y, hyp, out=out[i, s : s + block].view(-1, m))
        out = out.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return out.reshape(b, m, 4 * h, 4 * w)


def _tokens_to_frame(attn: Attention, q: torch.Tensor, kt: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Prompt tokens attend to the frame's image tokens, keys (h x d x N) and values (h x N x d)
    already projected."""
    h = attn.num_heads
    b, t, _ = q.shape
    d = attn.internal_dim // h
    probs = torch.softmax(_per_head(_heads(attn.q_proj, q, h, 1.0 / math.sqrt(d)), kt), dim=-1)  # B x h x T x N
    return attn.out_proj(_per_head_mix(probs, v).transpose(1, 2).reshape(b, t, h * d))


def _convt_matrix(conv: torch.nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2/stride-2 transposed conv as ``x @ W + b`` with outputs ordered (ky, kx, channel)."""
    cin, cout = conv.weight.shape[:2]
    assert conv.bias is not None  # segment-anything's upscaling convolutions have biases
    return conv.weight.permute(0, 2, 3, 1).reshape(cin, 4 * cout), conv.bias.repeat(4)
