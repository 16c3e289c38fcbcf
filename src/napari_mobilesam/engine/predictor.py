"""Prompts -> masks. The one place where napari's (row, col) becomes SAM's (x, y).

:class:`Predictor` is a drop-in ``segment_anything.SamPredictor`` (``set_image``, ``predict``,
``predict_torch``, ``features``; x, y coordinates and x0, y0, x1, y1 boxes in original pixels)
that adds:

- ``set_image`` for any microscopy frame (see :mod:`napari_mobilesam.engine.image`), with an
  embedding cache keyed by frame so that revisiting a frame never re-encodes it;
- :meth:`Predictor.predict_objects`: many objects, each with its own points and/or box and/or
  mask input, decoded in one batched pass (:class:`~napari_mobilesam.model.fast_decoder.FrameDecoder`)
  and returned as cropped masks (:class:`ObjectMask`), so memory and time scale with object
  size, not with ``objects x image size``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.amg import calculate_stability_score

from ..model.fast_decoder import FrameDecoder, Scratch
from ..model.scratch import over_chunks
from .embeddings import Embedding, EmbeddingCache
from .errors import SettingsError
from .image import to_rgb_uint8
from .objects import ObjectMask, Prompt
from .prompt_checks import check_prompts, check_xy
from .upsample import MaskUpsampler
from .windows import is_large, predict_in_windows

__all__ = ["ObjectMask", "Predictor", "Prompt"]


class Predictor(SamPredictor):
    """``SamPredictor`` with microscopy input handling, an embedding cache and batched prompts.

    Args:
        sam: a segment-anything ``Sam`` (e.g. from :func:`napari_mobilesam.build_mobilesam`).
        cache_bytes: embedding cache budget in bytes (4 MiB per frame in float32).
        cache_fp16: store cached embeddings in float16.
        batch_bytes: memory budget for one decoder batch (about 30 MB per prompt).
    """

    def __init__(self, sam: Sam, cache_bytes: int = 1 << 30, cache_fp16: bool = False, batch_bytes: int = 256 << 20):
        if not isinstance(sam, Sam):
            raise TypeError(f"Predictor takes a loaded model, got {type(sam).__name__} {sam!r:.40}: "
                            "Predictor(build_mobilesam('mobile_sam')) (or a checkpoint path).")
        super().__init__(sam)
        self.cache = EmbeddingCache(cache_bytes, fp16=cache_fp16)
        self.batch_bytes = batch_bytes
        self.key: Hashable | None = None
        self._frame_decoder: FrameDecoder | None = None
        self._upsamplers: dict[tuple, MaskUpsampler] = {}
        self.scratch = Scratch()  # decode buffers, shared by the decoders of its frames
        self.pixels: np.ndarray | None = None  # (H, W, 3) uint8 of a large frame, for prompt windows
        self._window_pred: Predictor | None = None

    # ------------------------------------------------------------------ images
    def set_image(
        self,
        image: np.ndarray,
        image_format: str = "RGB",
        *,
        key: Hashable | None = None,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: tuple[float, float] | None = None,
    ) -> None:
        """Compute (or fetch from the cache) the embedding of one frame.

        Args:
            image: one frame, ``(H, W)`` or ``(H, W, C)``, any dtype (see ``to_rgb_uint8``).
            image_format: "RGB" or "BGR" for 3-channel uint8 input, as in ``SamPredictor``.
            key: a hashable id of the frame (e.g. ``(layer_name, t)``); by default a hash of
                the normalised pixels, so identical frames share one embedding.
        """
        if image_format not in ("RGB", "BGR"):
            raise SettingsError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}.")
        shape = tuple(np.shape(image))
        if channel_axis is None and len(shape) == 3 and shape[0] <= 4 < shape[-1]:
            raise SettingsError(f"Image of shape {shape} is ambiguous: set_image takes (H, W) or (H, W, C); for "
                             f"channels first (C, H, W) pass channel_axis=0, for a stack give one frame (image[t]).")
        rgb = to_rgb_uint8(image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits)
        if image_format != self.model.image_format:
            rgb = rgb[..., ::-1]
        if key is None:
            key = ("pixels", rgb.shape, hashlib.blake2b(rgb.tobytes(), digest_size=16).hexdigest())
        large = is_large(rgb.shape[:2], self.model.image_encoder.img_size)
        emb = self.cache.get(key)
        if emb is None:
            with torch.inference_mode():
                super().set_image(np.ascontiguousarray(rgb), self.model.image_format)
            emb = Embedding(self.features, self.original_size, self.input_size, rgb if large else None)
            self.cache.put(key, emb)
        elif large and emb.pixels is None:  # e.g. read from an embeddings store: keep the pixels for windows
            emb = Embedding(emb.features, emb.original_size, emb.input_size, rgb)
            self.cache.put(key, emb)
        self.set_embedding(emb, key)
        if large and self.pixels is None:  # no cache (budget 0)
            self.pixels = rgb

    def set_embedding(self, emb: Embedding, key: Hashable | None = None, frame_decoder: FrameDecoder | None = None) -> None:
        """Make ``emb`` the current frame (e.g. an embedding loaded from disk).

        ``frame_decoder``: the per-frame decoder state built earlier for this embedding (e.g. in a
        worker thread, from :attr:`frame_decoder`), so that the next decode starts at once.
        """
        self.features = emb.features.to(self.device, torch.float32)
        self.original_size = tuple(emb.original_size)
        self.input_size = tuple(emb.input_size)
        self.is_image_set = True
        self.key = key
        self._frame_decoder = frame_decoder
        self.pixels = emb.pixels

    def set_pixels(
        self,
        image: np.ndarray,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: tuple[float, float] | None = None,
    ) -> None:
        """Give the current frame's pixels after :meth:`set_embedding` (e.g. from a store), so that
        prompts on a large frame are decoded in windows (:mod:`.windows`); a no-op for other frames.
        ``image`` and the options are those ``set_image`` takes for the same frame."""
        self._require_image()
        if is_large(self.original_size, self.model.image_encoder.img_size):
            self.pixels = to_rgb_uint8(image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits)

    @property
    def needs_pixels(self) -> bool:
        """The current frame is large (:func:`.windows.is_large`) and its pixels are not here: see :meth:`set_pixels`."""
        return self.is_image_set and self.pixels is None and is_large(self.original_size, self.model.image_encoder.img_size)

    def window_predictor(self) -> Predictor:
        """A predictor for windows of this one's frames (:mod:`.windows`), sharing its model, cache and buffers."""
        if self._window_pred is None:
            sub = Predictor(self.model, cache_bytes=0, batch_bytes=self.batch_bytes)
            sub.cache, sub.scratch = self.cache, self.scratch
            self._window_pred = sub
        return self._window_pred

    def get_embedding(self) -> Embedding:
        self._require_image()
        return Embedding(self.features, self.original_size, self.input_size, self.pixels)

    def reset_image(self) -> None:
        super().reset_image()
        self.key = None
        self._frame_decoder = None
        self.pixels = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("No image is set: call set_image(frame) before predicting.")

    @property
    def frame_decoder(self) -> FrameDecoder:
        self._require_image()
        if self._frame_decoder is None:
            with torch.inference_mode():
                self._frame_decoder = FrameDecoder(self.model, self.features, self.scratch)
        return self._frame_decoder

    def _upsampler(self) -> MaskUpsampler:
        k = (tuple(self.original_size), tuple(self.input_size))
        if k not in self._upsamplers:
            self._upsamplers[k] = MaskUpsampler(self.original_size, self.input_size, self.model.image_encoder.img_size)
        return self._upsamplers[k]

    def mask_upsampler(self) -> MaskUpsampler:
        """The current frame's low-resolution -> frame mapping (``crop_logits``, ``crop_mask``,
        ``full_mask``), for samplers that decode with :meth:`decode_point_batch`."""
        self._require_image()
        return self._upsampler()

    def decode_point_batch(self, points: np.ndarray, multimask_output: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """One positive click per prompt, all decoded together (a sampler's point grid).

        Args:
            points: ``(N, 2)`` float ``(row, col)`` in the current frame's pixels.

        Returns:
            ``(low-res logits (N, M, 256, 256) float32, predicted IoU (N, M) float32)`` on the CPU,
            M = 3 with ``multimask_output`` else 1; :meth:`mask_upsampler` maps them to the frame.
        """
        self._require_image()
        xy = self.transform.apply_coords(np.asarray(points, np.float64).reshape(-1, 2)[:, ::-1], tuple(self.original_size))
        coords = torch.as_tensor(xy, dtype=torch.float32, device=self.device)[:, None]
        labels = torch.ones(len(xy), 1, dtype=torch.int, device=self.device)
        with torch.inference_mode():
            sparse, _ = self.model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low, iou = self._decode_batches(sparse, None, multimask_output)
        return low.cpu().numpy(), iou.cpu().numpy()

    # ------------------------------------------------------------------ prompts
    def _encode_prompts(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sparse (B x P x 256, padded with 'not a point' tokens) and dense embeddings."""
        pe = self.model.prompt_encoder
        embs = []
        for p in prompts:
            coords = labels = boxes = None
            if p.points is not None:
                xy = self.transform.apply_coords(p.points[:, ::-1].copy(), self.original_size)
                coords = torch.as_tensor(xy, dtype=torch.float32, device=self.device)[None]
                labels = torch.as_tensor(p.labels, dtype=torch.int64, device=self.device)[None]
            if p.box is not None:
                xyxy = p.box[[1, 0, 3, 2]][None]
                boxes = torch.as_tensor(self.transform.apply_boxes(xyxy, self.original_size), dtype=torch.float32, device=self.device)
            sparse, _ = pe(points=(coords, labels) if coords is not None else None, boxes=boxes, masks=None)
            embs.append(sparse[0])
        width = max(e.shape[0] for e in embs)
        pad = pe.not_a_point_embed.weight  # padding tokens: what SAM uses for "no point"
        sparse = torch.stack([torch.cat([e, pad.expand(width - e.shape[0], -1)]) for e in embs])
        if all(p.mask_input is None for p in prompts):
            return sparse, None
        dense = []
        for p in prompts:
            if p.mask_input is None:
                dense.append(pe.no_mask_embed.weight.reshape(-1, 1, 1).expand(-1, *pe.image_embedding_size))
            else:
                m = torch.as_tensor(np.asarray(p.mask_input, np.float32), device=self.device).reshape(1, 1, *pe.mask_input_size)
                dense.append(pe.mask_downscaling(m)[0])
        return sparse, torch.stack(dense)

    @property
    def batch_size(self) -> int:
        """Prompts per decoder pass: what fits ``batch_bytes`` at ~4 MB per prompt without mask
        input (the folded decoder: its per-prompt factor, 98 x 4096, and the logits), at most 32.

        320 boxes on the CPU's decode workers (functional test model, 2 threads): 4.20 s in passes of
        8, 3.77 s of 16, 3.70 s of 32. Prompts with mask input run :attr:`mask_batch_size` at a time.
        """
        return max(1, min(32 if self.device.type == "cpu" else 64, int(self.batch_bytes // (4 << 20))))

    @property
    def mask_batch_size(self) -> int:
        """Prompts with mask input per decoder pass: their image tokens are per prompt (~30 MB
        each in the streamed decoder), at most 8 on a CPU (more gains nothing there)."""
        return max(1, min(8 if self.device.type == "cpu" else 64, int(self.batch_bytes // (30 << 20))))

    def predict_objects(
        self,
        prompts: Sequence[Prompt],
        multimask_output: bool = False,
        select: str | int = "best",
        mask_threshold: float | None = None,
        windows: bool = False,
    ) -> list[ObjectMask]:
        """Segment one object per prompt on the current frame, in batches.

        Args:
            prompts: one :class:`Prompt` per object, (row, col) coordinates.
            multimask_output: decode SAM's three candidate masks (for ambiguous single clicks)
                and pick one per object by ``select``: "best" (highest predicted IoU) or 0-2.
            mask_threshold: logit threshold (default: the model's, 0.0).
            windows: on a frame whose long side exceeds twice the encoder's input (4096² say),
                decode prompts without ``mask_input`` in full-resolution windows around them
                (:mod:`.windows`; used for the user's clicks and boxes). Other frames: no effect.

        Returns:
            One :class:`ObjectMask` per prompt, in order.

        Note: prompts with different token counts are padded with SAM's "not a point" token;
        group prompts of one kind in one call for exact parity with per-prompt decoding.
        """
        bad = next((i for i, p in enumerate(prompts) if not isinstance(p, Prompt)), None)
        if bad is not None:
            raise TypeError(f"predict_objects takes Prompt objects, got {type(prompts[bad]).__name__} {prompts[bad]!r:.40} "
                            f"at position {bad}: e.g. [Prompt(points=[[128, 128]])] (row, col).")
        self._require_image()
        if not prompts:
            return []
        check_prompts(prompts, self.original_size)
        thr = self.model.mask_threshold if mask_threshold is None else mask_threshold
        if select != "best" and select not in (0, 1, 2):
            raise SettingsError(f"select must be 'best' or 0, 1, 2; got {select!r}.")
        if windows and self.pixels is not None:
            win = [i for i, p in enumerate(prompts) if p.mask_input is None]
            rest = [i for i, p in enumerate(prompts) if p.mask_input is not None]
            got = dict(zip(win, predict_in_windows(self, [prompts[i] for i in win], multimask_output, select, mask_threshold), strict=True))
            if rest:
                got.update(zip(rest, self.predict_objects([prompts[i] for i in rest], multimask_output, select, mask_threshold), strict=True))
            return [got[i] for i in range(len(prompts))]
        out: list[ObjectMask] = []
        up = self._upsampler()
        dec = self.frame_decoder
        step = self.batch_size
        for start in range(0, len(prompts), step):
            chunk = prompts[start : start + step]
            # group by token count so that padding never changes a result
            with torch.inference_mode():
                low, iou = self._decode_grouped(dec, chunk, multimask_output)
            idx = iou.argmax(1) if select == "best" else torch.full((len(chunk),), int(select) if multimask_output else 0)
            rows = torch.arange(len(chunk))
            chosen = low[rows, idx]  # B x 256 x 256
            stab = calculate_stability_score(up.valid(chosen), thr, 1.0)
            parts = over_chunks(self.scratch.threads(), lambda sl, c=chosen: [up.crop_mask(c[j].numpy(), thr) for j in range(len(c))[sl]], len(chunk))
            for j, (mask, offset) in enumerate(crop for part in parts for crop in part):
                logits = chosen[j].numpy()
                out.append(
                    ObjectMask(mask, offset, tuple(self.original_size), float(iou[j, idx[j]]), float(stab[j]), int(idx[j]), logits.copy())
                )
        return out

    def _decode_grouped(self, dec: FrameDecoder, prompts: Sequence[Prompt], multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            k = (0 if p.points is None else len(p.points), p.box is not None, p.mask_input is not None)
            groups.setdefault(k, []).append(i)
        m = 3 if multimask else 1
        low = torch.empty(len(prompts), m, 256, 256)
        iou = torch.empty(len(prompts), m)
        for (_, _, with_mask), group in groups.items():
            step = self.mask_batch_size if with_mask else len(group)  # mask input: image tokens per prompt
            for s in range(0, len(group), step):
                idxs = group[s : s + step]
                sparse, dense = self._encode_prompts([prompts[i] for i in idxs])
                lo, io = dec.decode(sparse, dense, multimask)
                low[idxs], iou[idxs] = lo.float().cpu(), io.float().cpu()
        return low, iou

    # ------------------------------------------------------------------ drop-in API
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``SamPredictor.predict`` (x, y points; x0, y0, x1, y1 box; ``mask_input`` 1 x 256 x 256),
        computed by the fast path (:meth:`predict_torch`).

        Returns ``(masks C x H x W bool, or float32 logits with return_logits; iou C float32;
        low_res_logits C x 256 x 256 float32)``, as ``SamPredictor.predict`` does.
        """
        self._require_image()
        if point_coords is not None and point_labels is None:
            raise SettingsError("point_labels must be given with point_coords (1 = object, 0 = background).")
        # lists are accepted as well as arrays, and a 256 x 256 mask_input as well as 1 x 256 x 256
        point_coords = None if point_coords is None else np.asarray(point_coords, np.float64).reshape(-1, 2)
        point_labels = None if point_labels is None else np.asarray(point_labels).reshape(-1)
        box = None if box is None else np.asarray(box, np.float64).reshape(-1)
        if mask_input is not None and np.ndim(mask_input) == 2:
            mask_input = np.asarray(mask_input)[None]
        if mask_input is not None and np.shape(mask_input) != (1, 256, 256):
            raise SettingsError(f"mask_input must be a 1 x 256 x 256 array of low-resolution logits (an earlier result's "
                             f"low_res_logits[i:i + 1]), got {type(mask_input).__name__} of shape {np.shape(mask_input)}.")
        check_xy(point_coords, point_labels, box, self.original_size)
        return super().predict(point_coords, point_labels, box, mask_input, multimask_output, return_logits)

    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``SamPredictor.predict_torch`` on the fast decoder, any batch size.

        Args:
            point_coords: ``B x N x 2`` float (x, y) in the resized input frame (``transform.apply_coords``).
            point_labels: ``B x N`` int (1 object, 0 background, -1 padding).
            boxes: ``B x 4`` float x0, y0, x1, y1 in the resized input frame.
            mask_input: ``B x 1 x 256 x 256`` low-resolution logits of an earlier prediction.

        Returns:
            ``(masks B x C x H x W bool, or float32 logits with return_logits; iou B x C float32;
            low_res_logits B x C x 256 x 256 float32)`` with C = 3 or 1, as ``SamPredictor``
            returns them (values equal to float32 rounding). Prompts are decoded
            :attr:`batch_size` at a time, so memory does not grow with B beyond the outputs.
        """
        self._require_image()
        points = None if point_coords is None else (point_coords, point_labels)
        with torch.inference_mode():
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low, iou = self._decode_batches(sparse, None if mask_input is None else dense, multimask_output)
        with torch.no_grad():
            masks = self._full_masks(low, return_logits)
        return masks, iou, low

    def _decode_batches(
        self, sparse: torch.Tensor, dense: torch.Tensor | None, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``FrameDecoder.decode`` in chunks of :attr:`batch_size` into ordinary (not inference-mode)
        tensors: ``(low_res B x M x 256 x 256, iou B x M)`` float32 on the model's device."""
        dec = self.frame_decoder
        b, m = sparse.shape[0], 3 if multimask else 1
        side = 4 * self.features.shape[-1]
        low = torch.empty(b, m, side, side, device=self.device)
        iou = torch.empty(b, m, device=self.device)
        step = self.batch_size if dense is None else self.mask_batch_size
        with torch.inference_mode():
            for s in range(0, b, step):
                d = None if dense is None else dense if dense.shape[0] == 1 else dense[s : s + step]
                lo, io = dec.decode(sparse[s : s + step], d, multimask)
                low[s : s + step], iou[s : s + step] = lo, io
        return low, iou

    def _full_masks(self, low: torch.Tensor, return_logits: bool) -> torch.Tensor:
        """Low-resolution logits ``B x M x 256 x 256`` -> full-resolution ``B x M x H x W`` masks
        (bool) or logits (float32), as ``Sam.postprocess_masks`` (+ threshold) computes them.

        Boolean masks on the CPU are computed only around each mask (:class:`MaskUpsampler`)."""
        thr = self.model.mask_threshold
        if return_logits or low.device.type != "cpu":
            masks = self.model.postprocess_masks(low, self.input_size, self.original_size)
            return masks if return_logits else masks > thr
        up = self._upsampler()
        b, m = low.shape[:2]
        out = torch.zeros(b, m, *self.original_size, dtype=torch.bool)
        flat, lows = out.view(b * m, *self.original_size).numpy(), low.reshape(b * m, *low.shape[2:]).numpy()

        def fill(part: slice) -> None:  # on the decode workers: numpy and torch release the GIL in the resizes
            for k in range(b * m)[part]:
                mask, (r0, c0) = up.crop_mask(lows[k], thr)
                flat[k, r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]] = mask

        over_chunks(self.scratch.threads(), fill, b * m)
        return out
