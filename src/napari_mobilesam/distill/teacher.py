"""Teachers for distillation: any SAM-compatible model whose image encoder gives ``B x 256 x 64 x 64``.

Accepted:
- a segment-anything checkpoint (``sam_vit_b/l/h``, or a fine-tuned one such as micro-sam's
  ``vit_b_lm``): the ``ImageEncoderViT`` configuration is read from the tensor shapes, so
  non-standard ViTs work too;
- a MobileSAM checkpoint (TinyViT; e.g. to fine-tune a student from its own teacher);
- a ``segment_anything.modeling.Sam`` or a bare image-encoder ``nn.Module`` (Python API).

The teacher's prompt encoder and mask decoder are what the exported student is paired with.
A checkpoint holding only an image encoder needs ``decoder_from`` (a checkpoint that has them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, Sam

from ..engine.errors import SettingsError
from ..model.build import (
    CLASSIFIER_PREFIXES,
    CheckpointError,
    build_mobilesam,
    load_checkpoint,
    mobilesam_architecture,
    resolve_device,
)
from ..model.weights import resolve_weights

__all__ = ["SAM_VITS", "Teacher", "TeacherLike", "load_teacher", "vit_config_from_state"]

# Facts from segment-anything's build_sam.py: embed dim, depth, heads, global-attention blocks.
SAM_VITS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
ENC = "image_encoder."

TeacherLike = str | os.PathLike | Sam | torch.nn.Module


@dataclass
class Teacher:
    """A loaded teacher.

    Attributes:
        sam: the full model (eval mode); ``sam.image_encoder`` maps ``B x 3 x 1024 x 1024`` to
            ``B x 256 x 64 x 64``.
        name: ``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_custom"``, ``"mobilesam"`` or ``"module"``.
        source: the checkpoint path, or ``"<module>"``.
    """

    sam: Sam
    name: str
    source: str

    def describe(self) -> dict:
        """JSON-able identity, stored with precomputed embeddings to refuse mixing teachers."""
        size = os.path.getsize(self.source) if os.path.isfile(self.source) else None
        return {"name": self.name, "source": self.source, "bytes": size}


def vit_config_from_state(state: Mapping[str, torch.Tensor]) -> dict:
    """``ImageEncoderViT`` keyword arguments read from an encoder state dict (keys without prefix).

    Relative position tables have ``2 * size - 1`` rows, ``size`` being the window for windowed
    blocks and the token grid for global ones, and ``head_dim`` columns (hence the head count).
    """
    proj = state["patch_embed.proj.weight"]
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    grid = int(state["pos_embed"].shape[1])
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    if "blocks.0.attn.rel_pos_h" not in state:
        raise CheckpointError("This ViT has no relative position tables; only SAM-style ViTs (use_rel_pos) are supported.")
    rel = state["blocks.0.attn.rel_pos_h"]
    heads = dim // int(rel.shape[1])
    global_idx, window = [], 0
    for i in range(depth):
        size = (int(state[f"blocks.{i}.attn.rel_pos_h"].shape[0]) + 1) // 2
        if size == grid:
            global_idx.append(i)
        else:
            window = size
    return dict(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=int(state["blocks.0.mlp.lin1.weight"].shape[0]) / dim,
        out_chans=int(state["neck.0.weight"].shape[0]),
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=window,
        global_attn_indexes=tuple(global_idx),
    )


def _vit_name(cfg: dict) -> str:
    key = (cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["global_attn_indexes"])
    return next((n for n, v in SAM_VITS.items() if v == key), "vit_custom")


def _with_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encoder-only files may lack the ``image_encoder.`` prefix."""
    if any(k.startswith(ENC) for k in state):
        return dict(state)
    if any(k.startswith(("blocks.", "layers.", "patch_embed.")) for k in state):
        return {ENC + k: v for k, v in state.items()}
    return dict(state)


def _head_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = load_checkpoint(resolve_weights(path))
    keep = {k: v for k, v in state.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    if not keep:
        raise CheckpointError(f"{path} holds no prompt_encoder.* / mask_decoder.* weights; give a full SAM or MobileSAM checkpoint.")
    return keep


def _check_embedding(encoder: torch.nn.Module, name: str) -> None:
    size = getattr(encoder, "img_size", None)
    if size != 1024:
        raise SettingsError(f"The teacher {name} takes {size}-pixel inputs; SAM's decoder needs an encoder for 1024 x 1024 inputs.")


def load_teacher(
    teacher: TeacherLike,
    decoder_from: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> Teacher:
    """Load a teacher (see the module docstring).

    Args:
        teacher: checkpoint path, ``Sam`` or image-encoder module (``img_size`` attribute 1024).
        decoder_from: checkpoint providing ``prompt_encoder.*`` and ``mask_decoder.*`` when the
            teacher lacks them (required for a bare module).
        device: where the teacher runs.

    Raises:
        FileNotFoundError, CheckpointError, ValueError: with the fix.
    """
    dev = resolve_device(device)
    if isinstance(teacher, Sam):
        _check_embedding(teacher.image_encoder, "model")
        return Teacher(teacher.eval().to(dev), "module", "<module>")
    if isinstance(teacher, torch.nn.Module):
        if decoder_from is None:
            raise SettingsError("A bare image-encoder teacher needs decoder_from= (a SAM/MobileSAM checkpoint with the decoder).")
        _check_embedding(teacher, "module")
        sam = mobilesam_architecture(encoder=teacher)
        sam.load_state_dict({**sam.state_dict(), **_head_state(decoder_from)}, strict=True)
        return Teacher(sam.eval().to(dev), "module", "<module>")

    path = resolve_weights(teacher).resolve()  # a path, or a registry name such as "mobile_sam"
    state = _with_prefix(load_checkpoint(path))
    if any(k.startswith(ENC + "layers.") for k in state):  # TinyViT: a MobileSAM checkpoint
        if decoder_from is None and not any(k.startswith("mask_decoder.") for k in state):
            raise CheckpointError(f"{path} is a MobileSAM encoder without a decoder; pass decoder_from= (`--decoder-from FILE`).")
        if decoder_from is None:
            return Teacher(build_mobilesam(path, dev), "mobilesam", str(path))
        sam = mobilesam_architecture()
        enc = {k: v for k, v in state.items() if k.startswith(ENC) and not k.startswith(CLASSIFIER_PREFIXES)}
        sam.load_state_dict({**enc, **_head_state(decoder_from)}, strict=True)
        return Teacher(sam.eval().to(dev), "mobilesam", str(path))
    if ENC + "blocks.0.attn.qkv.weight" not in state:
        raise CheckpointError(
            f"{path} is neither a segment-anything ViT nor a MobileSAM checkpoint (no image_encoder.blocks.* or "
            "image_encoder.layers.* keys). Use sam_vit_b/l/h.pth, a fine-tuned SAM, or mobile_sam.pt."
        )
    enc = {k[len(ENC):]: v for k, v in state.items() if k.startswith(ENC)}
    cfg = vit_config_from_state(enc)
    encoder = ImageEncoderViT(**cfg)
    name = _vit_name(cfg)
    _check_embedding(encoder, f"{path} ({name})")
    if cfg["out_chans"] != 256 or cfg["img_size"] // cfg["patch_size"] != 64:
        raise CheckpointError(f"{path} gives a {cfg['out_chans']} x {cfg['img_size'] // cfg['patch_size']}² embedding, not SAM's 256 x 64².")
    heads = _head_state(decoder_from) if decoder_from is not None else {k: v for k, v in state.items() if not k.startswith(ENC)}
    if not heads:
        raise CheckpointError(f"{path} holds only an image encoder; pass decoder_from= (`--decoder-from FILE` on the command line), a checkpoint with the decoder.")
    sam = mobilesam_architecture(encoder=encoder)
    full = {ENC + k: v for k, v in enc.items()} | heads
    missing = sorted(set(sam.state_dict()) - set(full))
    unexpected = sorted(set(full) - set(sam.state_dict()))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match a SAM ({name}) layout: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    sam.load_state_dict(full, strict=True)
    return Teacher(sam.eval().to(dev), name, str(path))
