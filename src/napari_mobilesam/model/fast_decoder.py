"""Batched SAM mask decoding that does per frame what does not depend on the prompt.

Prompts without mask input go through the folded decoder
(:mod:`napari_mobilesam.model.folded_decoder`: the image tokens carried as a per-prompt factor of
rank ~2hT through both LayerNorms, nothing N x C per prompt before the upscaler). This module is
the path for mask input (the image tokens differ per prompt from the start) and, with
``FrameDecoder(..., folded=False)``, the previous streamed decoder, kept as the benchmarks' baseline:

Same weights and the same mathematics as ``segment_anything``'s ``MaskDecoder.predict_masks`` +
``TwoWayTransformer``, reorganised for many prompts on one frame (results agree with the stock
path to float32 rounding; tested against it):

- the image embedding is never copied once per prompt; without mask input the keys, their
  positional sum and the first layer's image-side projections are computed once per frame;
- attention to the 4096 image tokens projects the few prompt tokens *back* into the 256-d
  embedding space instead of projecting 4096 keys/values per prompt
  (``q·(W k + b) = (Wᵀq)·k + q·b``; softmax rows sum to one, so ``P(VWᵀ + b) = (PV)Wᵀ + b``);
- image-to-token attention folds the output projection into the per-prompt values
  (``Σ_h P_h V_h W_hᵀ``), one matmul over all heads;
- the 2x2/stride-2 transposed convolutions of the upscaler run as matmuls, and in single-mask
  mode only the needed hypernetwork output is evaluated.

Shapes: ``B`` prompts, ``T`` tokens per prompt, ``N = 64*64`` image tokens, ``C = 256``.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention

from .folded_decoder import FoldedFrame
from .mask_upscaling import convt_matrix, upscale_blocks
from .scratch import DecodeThreads, Scratch

__all__ = ["FrameDecoder", "Scratch"]

# Image tokens per block in the streamed decoder: STREAM_ROWS // batch, at least STREAM_BLOCK, so a
# block of the whole batch stays near 1-4 MB (in cache). Fewer, larger blocks matter for a single
# prompt: each block is a dozen small ops, and OpenMP threads that sleep between ops (as they do
# when torch also runs in another thread, e.g. napari's workers) pay a wake-up per op.
STREAM_BLOCK = 512
STREAM_ROWS = 4096


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, h, c // h).transpose(1, 2)


def _heads_first(lin: torch.nn.Linear, x: torch.Tensor, h: int) -> torch.Tensor:
    """Project B x T x C tokens and lay the heads first: h x BT x d."""
    b, t, _ = x.shape
    return lin(x).view(b, t, h, -1).permute(2, 0, 1, 3).reshape(h, b * t, -1)


def _fold_queries(attn: Attention, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The query projection folded into the token keys, so that image tokens need no projection:
    ``scores = m @ imageᵀ + m_bias`` with ``(m B x hT x C, m_bias B x hT x 1)``."""
    h = attn.num_heads
    b, t, _ = k.shape
    d = attn.internal_dim // h
    kh = _heads(attn.k_proj(k), h)  # B x h x T x d
    m = torch.einsum("bhtd,hdc->bhtc", kh, attn.q_proj.weight.view(h, d, -1)).reshape(b, h * t, -1)
    m_bias = torch.einsum("bhtd,hd->bht", kh, attn.q_proj.bias.view(h, d)).reshape(b, h * t, 1)
    return m, m_bias


def _token_self_attention(attn: Attention, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Self-attention among the few prompt tokens (cheap; same as the stock module)."""
    return attn(q=q, k=q, v=v)


def _tokens_to_image(attn: Attention, q: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """Prompt tokens attend to image tokens without projecting the image tokens.

    q: B x T x C; k_in, v_in: Bk x N x C with Bk in {1, B}. Returns B x T x C.
    """
    h = attn.num_heads
    b, t, _ = q.shape
    d = attn.internal_dim // h
    q_back, q_bias = _t2i_prepare(attn, q)  # B x hT x C, B x hT x 1, scaled
    if k_in.shape[0] == 1:
        scores = (q_back.reshape(-1, q_back.shape[-1]) @ k_in[0].T).view(b, h, t, -1)
    else:
        scores = q_back @ k_in.transpose(1, 2)
        scores = scores.view(b, h, t, -1)
    probs = torch.softmax(scores + q_bias.view(b, h, t, 1), dim=-1)  # B x h x T x N
    if v_in.shape[0] == 1:
        mixed = (probs.reshape(-1, probs.shape[-1]) @ v_in[0]).view(b, h, t, -1)
    else:
        mixed = (probs.reshape(b, h * t, -1) @ v_in).view(b, h, t, -1)  # B x h x T x C
    wv = attn.v_proj.weight.view(h, d, -1)
    out = torch.einsum("bhtc,hdc->bthd", mixed, wv) + attn.v_proj.bias.view(h, d)
    return attn.out_proj(out.reshape(b, t, h * d))


def _t2i_prepare(attn: Attention, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt queries projected back into image space: ``(q_back B x hT x C, q_bias B x hT x 1)``,
    so that the attention scores are ``q_back @ keysᵀ + q_bias``; both already carry the
    softmax's 1/sqrt(d) (a power of two for SAM's d = 16, so the scaling is exact)."""
    h = attn.num_heads
    b, t, _ = q.shape
    d = attn.internal_dim // h
    qh = _heads(attn.q_proj(q), h) * (1.0 / math.sqrt(d))  # B x h x T x d
    q_back = torch.einsum("bhtd,hdc->bhtc", qh, attn.k_proj.weight.view(h, d, -1)).reshape(b, h * t, -1)
    q_bias = torch.einsum("bhtd,hd->bht", qh, attn.k_proj.bias.view(h, d)).reshape(b, h * t, 1)
    return q_back, q_bias


def _t2i_finish(attn: Attention, scores: torch.Tensor, keys: torch.Tensor, t: int) -> torch.Tensor:
    """Softmax of scaled, biased scores (B x hT x N) and mixing of ``keys`` (B x N x C)."""
    h = attn.num_heads
    b = scores.shape[0]
    d = attn.internal_dim // h
    probs = torch.softmax(scores, dim=-1)
    mixed = torch.bmm(probs, keys).view(b, h, t, -1)  # B x h x T x C
    out = torch.einsum("bhtc,hdc->bthd", mixed, attn.v_proj.weight.view(h, d, -1)) + attn.v_proj.bias.view(h, d)
    return attn.out_proj(out.reshape(b, t, h * d))


def _image_to_tokens(
    attn: Attention, q_in: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor, inplace: bool
) -> torch.Tensor:
    """Image tokens attend to prompt tokens; the query projection is folded into the keys.

    q_in, residual: Bk x N x C (Bk in {1, B}); k, v: B x T x C. Returns ``residual`` plus the
    attention output, B x N x C (see :func:`_mix_tokens` for ``inplace``).
    Scores are laid out B x (h, T) x N so that the softmax over the few tokens runs along a
    strided axis with the long image axis contiguous (much faster than a softmax over 7 values).
    """
    h = attn.num_heads
    b, t, _ = k.shape
    d = attn.internal_dim // h
    m, m_bias = _fold_queries(attn, k)  # B x hT x C, B x hT x 1
    if q_in.shape[0] == 1:
        scores = (m.reshape(b * h * t, -1) @ q_in[0].T).view(b, h * t, -1)
    else:
        scores = m @ q_in.transpose(1, 2)
    scores = (scores + m_bias) * (1.0 / math.sqrt(d))
    probs = torch.softmax(scores.view(b, h, t, -1), dim=2).view(b, h * t, -1)  # B x hT x N
    return _mix_tokens(attn, probs, v, residual, inplace)


def _image_to_tokens_pre(
    attn: Attention, q_img: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor, inplace: bool
) -> torch.Tensor:
    """As :func:`_image_to_tokens`, with the image queries already projected: ``q_img`` h x N x d."""
    h = attn.num_heads
    b, t, _ = k.shape
    d = attn.internal_dim // h
    kh = _heads_first(attn.k_proj, k, h)
    scores = (kh @ q_img.transpose(1, 2)) * (1.0 / math.sqrt(d))  # h x BT x N
    probs = torch.softmax(scores.view(h, b, t, -1), dim=2).transpose(0, 1).reshape(b, h * t, -1)
    return _mix_tokens(attn, probs, v, residual, inplace)


def _values_out(attn: Attention, v: torch.Tensor) -> torch.Tensor:
    """Per-token values already through the output projection: B x T x C -> B x hT x C.

    Each head's attention probabilities sum to one over its T tokens, so adding bias/h to every
    row adds the output bias exactly once.
    """
    h = attn.num_heads
    d = attn.internal_dim // h
    vh = _heads(attn.v_proj(v), h)  # B x h x T x d
    wo = attn.out_proj.weight.view(-1, h, d)  # C x h x d
    vw = torch.einsum("bhtd,chd->bhtc", vh, wo).reshape(v.shape[0], -1, wo.shape[0])
    return vw + attn.out_proj.bias / h


def _mix_tokens(attn: Attention, probs: torch.Tensor, v: torch.Tensor, residual: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``residual + out_proj(concat_h P_h V_h)`` computed as ``residual + Pᵀ (V Wᵀ)``.

    probs: B x hT x N; v: B x T x C; residual: Bk x N x C with Bk in {1, B}, updated in place
    when ``inplace`` (it must then be B x N x C and not needed by the caller any more).
    """
    vw = _values_out(attn, v)
    if inplace:
        return residual.baddbmm_(probs.transpose(1, 2), vw)  # saves copying 4 MB per prompt
    return torch.bmm(probs.transpose(1, 2), vw).add_(residual)


def _tokens_to_image_pre(attn: Attention, q: torch.Tensor, k_img: torch.Tensor, v_img: torch.Tensor) -> torch.Tensor:
    """Prompt tokens attend to image tokens whose keys/values are already projected (h x N x d)."""
    h = attn.num_heads
    b, t, _ = q.shape
    d = attn.internal_dim // h
    qh = _heads_first(attn.q_proj, q, h)
    probs = torch.softmax((qh @ k_img.transpose(1, 2)) * (1.0 / math.sqrt(d)), dim=-1)  # h x BT x N
    out = (probs @ v_img).view(h, b, t, d).permute(1, 2, 0, 3).reshape(b, t, h * d)
    return attn.out_proj(out)


def _project_heads(lin: torch.nn.Linear, x: torch.Tensor, h: int) -> torch.Tensor:
    """1 x N x C -> h x N x d."""
    y = lin(x[0])
    return y.view(y.shape[0], h, -1).transpose(0, 1).contiguous()


class FrameDecoder:
    """Decode many prompts against one frame's image embedding.

    Args:
        sam: a segment-anything ``Sam`` (its prompt encoder and mask decoder are used as is).
        features: the frame's image embedding, ``1 x 256 x 64 x 64``.
        scratch: the buffers to decode in (e.g. one predictor's, shared by its frames' decoders);
            by default the decoder's own.
        folded: decode prompts without mask input with the folded decoder (default); False: the
            decoder as it was before (2026-12-04: the streamed path for every prompt, the mask
            upscaler without oneDNN's fused GELU): the benchmarks' baseline, same results to
            float32 rounding.
    """

    def __init__(self, sam: Sam, features: torch.Tensor, scratch: Scratch | None = None, folded: bool = True):
        self.sam = sam
        self.scratch = Scratch() if scratch is None else scratch
        md = sam.mask_decoder
        self.md = md
        self.transformer = md.transformer
        dev = md.iou_token.weight.device
        self.features = features.to(dev, torch.float32)
        pe = sam.prompt_encoder.get_dense_pe()
        self.pe = pe.flatten(2).transpose(1, 2)  # 1 x N x C
        self.size = features.shape[-2:]
        no_mask = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        self._shared = self._prepare_keys(self.features + no_mask)
        keys, keys_pe = self._shared
        self._folded = None
        self._baseline = not folded  # the decoder of 2026-12-04, as the benchmarks' baseline
        if folded and len(self.transformer.layers) == 2:
            self._folded = FoldedFrame(sam, keys[0], self.pe[0])
            return
        # Without mask input, the first layer's image-side projections are the same for every
        # prompt: project once per frame.
        layer0 = self.transformer.layers[0]
        t2i, i2t = layer0.cross_attn_token_to_image, layer0.cross_attn_image_to_token
        self._layer0 = (
            _project_heads(t2i.k_proj, keys_pe, t2i.num_heads),
            _project_heads(t2i.v_proj, keys, t2i.num_heads),
            _project_heads(i2t.q_proj, keys_pe, i2t.num_heads),
        )

    def _prepare_keys(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = src.flatten(2).transpose(1, 2)  # Bk x N x C
        return keys, keys + self.pe

    def decode(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder for ``B`` prompts.

        Args:
            sparse: ``B x P x 256`` sparse prompt embeddings (points and box corners).
            dense: ``B x 256 x 64 x 64`` dense embeddings of mask inputs, or None (no mask input).
            multimask_output: as in segment-anything (3 masks, else the single-mask output).

        Returns:
            ``(low_res_logits B x M x 256 x 256, iou_predictions B x M)`` with M = 3 or 1.
        """
        b = sparse.shape[0]
        threads = self._threads()
        if threads is None:
            return self._decode(sparse, dense, multimask_output, None)
        if b == 1:  # on a worker; its blocks of image tokens on all of them
            return threads.call(lambda: self._decode(sparse, dense, multimask_output, threads))

        def part(sl: slice) -> tuple[torch.Tensor, torch.Tensor]:  # whole prompts per worker (see DecodeThreads)
            return self._decode(sparse[sl], None if dense is None or dense.shape[0] == 1 else dense[sl], multimask_output, None)

        parts = threads.map(part, threads.chunks(b))
        return torch.cat([m for m, _ in parts]), torch.cat([q for _, q in parts])

    def _threads(self) -> DecodeThreads | None:
        """The predictor's decode workers (CPU only; not for the benchmarks' 2026-12-04 baseline)."""
        if self._baseline or self.features.device.type != "cpu":
            return None
        return self.scratch.threads()

    def _decode(
        self, sparse: torch.Tensor, dense: torch.Tensor | None, multimask_output: bool, threads: DecodeThreads | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode` on the calling thread; ``threads``: workers for one prompt's blocks."""
        md, tr = self.md, self.transformer
        if dense is None and self._folded is not None:
            return self._folded.decode(sparse, multimask_output, self.size, threads)
        b = sparse.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], 1)
        if dense is None and len(tr.layers) == 2:
            keys0 = self._shared[0]
            with self.scratch.borrow((b, *keys0.shape[1:]), keys0) as buf:  # the image tokens, updated in place
                hs, keys = self._decode_streamed(tokens, buf)
                return self._heads_out(hs, keys, multimask_output, threads)
        if dense is None:
            keys, keys_pe = self._shared
        else:
            keys, keys_pe = self._prepare_keys(self.features + dense)
        queries, query_pe = tokens, tokens
        for i, layer in enumerate(tr.layers):
            if layer.skip_first_layer_pe:
                queries = _token_self_attention(layer.self_attn, queries, queries)
            else:
                q = queries + query_pe
                queries = queries + _token_self_attention(layer.self_attn, q, queries)
            queries = layer.norm1(queries)
            shared = i == 0 and dense is None
            if i > 0:
                keys_pe = keys + self.pe
            if shared:
                k0, v0, q0 = self._layer0
                attn_out = _tokens_to_image_pre(layer.cross_attn_token_to_image, queries + query_pe, k0, v0)
            else:
                attn_out = _tokens_to_image(layer.cross_attn_token_to_image, queries + query_pe, keys_pe, keys)
            queries = layer.norm2(queries + attn_out)
            queries = layer.norm3(queries + layer.mlp(queries))
            i2t = layer.cross_attn_image_to_token
            own = keys.shape[0] == b and keys is not self._shared[0]  # never write into the frame's keys
            if shared:
                keys = _image_to_tokens_pre(i2t, q0, queries + query_pe, queries, keys, own)
            else:
                keys = _image_to_tokens(i2t, keys_pe, queries + query_pe, queries, keys, own)
            keys = layer.norm4(keys)
        keys_pe = keys + self.pe
        final = _tokens_to_image(tr.final_attn_token_to_image, queries + query_pe, keys_pe, keys)
        hs = tr.norm_final_attn(queries + final)
        return self._heads_out(hs, keys, multimask_output, threads)

    def _heads_out(self, hs: torch.Tensor, keys: torch.Tensor, multimask_output: bool, threads: DecodeThreads | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """IoU head, hypernetworks and upscaling from the final tokens and image tokens."""
        md = self.md
        masks_sel = slice(1, None) if multimask_output else slice(0, 1)
        iou = md.iou_prediction_head(hs[:, 0])[:, masks_sel]
        mask_tokens = hs[:, 1 : 1 + md.num_mask_tokens][:, masks_sel]
        mlps = list(md.output_hypernetworks_mlps)[masks_sel]
        hyper = torch.stack([mlp(mask_tokens[:, j]) for j, mlp in enumerate(mlps)], 1)  # B x M x 32
        return self._upscale_masks(keys, hyper, threads), iou

    def _decode_streamed(self, tokens: torch.Tensor, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-layer transformer without mask input, streaming over blocks of image tokens.

        Each image-token update (image-to-token attention, residual, LayerNorm) runs block by
        block while the block is in cache, and in the same pass accumulates the raw scores of the
        *next* token-to-image attention, whose queries are already known (a layer's token
        self-attention does not depend on the image). Per prompt, the 4096 x 256 image tokens then
        cross memory a few times instead of about twenty. Same operations, same order per element.
        ``buf``: B x N x C, where the image tokens are computed (and returned as ``keys``).
        Returns ``(hs B x T x C, keys B x N x C)``.
        """
        tr = self.transformer
        l0, l1 = tr.layers
        keys0 = self._shared[0]
        k0, v0, q0 = self._layer0
        query_pe = tokens
        queries = l0.norm1(_token_self_attention(l0.self_attn, tokens, tokens))
        queries = l0.norm2(queries + _tokens_to_image_pre(l0.cross_attn_token_to_image, queries + query_pe, k0, v0))
        queries = l0.norm3(queries + l0.mlp(queries))
        queries1 = l1.norm1(queries + _token_self_attention(l1.self_attn, queries + query_pe, queries))
        qb1 = _t2i_prepare(l1.cross_attn_token_to_image, queries1 + query_pe)
        keys1, s1 = self._stream_keys(l0.cross_attn_image_to_token, l0.norm4, queries + query_pe, queries, keys0, qb1, q0, buf)
        t = tokens.shape[1]
        queries = l1.norm2(queries1 + _t2i_finish(l1.cross_attn_token_to_image, s1, keys1, t))
        queries = l1.norm3(queries + l1.mlp(queries))
        final = tr.final_attn_token_to_image
        qbf = _t2i_prepare(final, queries + query_pe)
        keys2, s2 = self._stream_keys(l1.cross_attn_image_to_token, l1.norm4, queries + query_pe, queries, keys1, qbf, None, keys1)
        hs = tr.norm_final_attn(queries + _t2i_finish(final, s2, keys2, t))
        return hs, keys2

    def _stream_keys(
        self,
        i2t: Attention,
        norm: torch.nn.LayerNorm,
        k_tok: torch.Tensor,
        v_tok: torch.Tensor,
        residual: torch.Tensor,
        q_next: tuple[torch.Tensor, torch.Tensor],
        q_img: torch.Tensor | None,
        out: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``norm(residual + i2t(...))`` block by block, plus the next layer's token-to-image scores
        ``q_back @ (keys + pe)ᵀ + q_bias`` for ``q_next = (q_back, q_bias)`` from :func:`_t2i_prepare`.

        ``q_img``: the image queries already projected (h x N x d, layer 0), or None to fold the
        query projection into the token keys (queries = residual + pe). The keys are written to
        ``out`` (B x N x C), which may be ``residual`` itself (each block is read before it is
        written), never the frame's shared keys. Returns ``(out, scores B x hT' x N)``.
        """
        h = i2t.num_heads
        d = i2t.internal_dim // h
        b, t, _ = k_tok.shape
        n = residual.shape[1]
        scale = 1.0 / math.sqrt(d)
        if q_img is not None:
            kh = _heads_first(i2t.k_proj, k_tok, h) * scale
        else:
            m, m_bias = _fold_queries(i2t, k_tok)
            m, m_bias = m * scale, m_bias * scale
        vw = _values_out(i2t, v_tok)  # B x hT x C
        q_back, q_bias = q_next
        scores = torch.empty(b, q_back.shape[1], n, dtype=residual.dtype, device=residual.device)
        pe = self.pe[0]
        block = max(STREAM_BLOCK, STREAM_ROWS // b)
        for s in range(0, n, block):
            e = min(s + block, n)
            res = residual[:, s:e]
            if q_img is not None:
                sc = kh @ q_img[:, s:e].transpose(1, 2)  # h x BT x n
                probs = torch.softmax(sc.view(h, b, t, -1), dim=2).transpose(0, 1).reshape(b, h * t, -1)
            else:
                sc = torch.baddbmm(m_bias, m, (res + pe[s:e]).transpose(1, 2))
                probs = torch.softmax(sc.view(b, h, t, -1), dim=2).view(b, h * t, -1)
            new = norm(torch.baddbmm(res.expand(b, -1, -1), probs.transpose(1, 2), vw))
            out[:, s:e] = new
            scores[:, :, s:e] = torch.baddbmm(q_bias, q_back, (new + pe[s:e]).transpose(1, 2))
        return out, scores

    def _upscale_masks(self, keys: torch.Tensor, hyper: torch.Tensor, threads: DecodeThreads | None = None) -> torch.Tensor:
        """``output_upscaling`` and the hypernetwork dot product (:func:`upscale_blocks`) from
        the image tokens ``keys`` (B x N x C); hyper: B x M x 32. Returns B x M x 4h x 4w logits."""
        w1, b1 = convt_matrix(self.md.output_upscaling[0])
        return upscale_blocks(self.md.output_upscaling, lambda i, s, e: torch.addmm(b1, keys[i, s:e], w1), hyper, tuple(self.size),
                              fused=not self._baseline, threads=threads)
