"""Build a segment-anything ``Sam`` with the TinyViT encoder and load a MobileSAM checkpoint strictly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from .tiny_vit import TinyViT
from .weights import resolve_weights

__all__ = ["CheckpointError", "build_mobilesam", "load_checkpoint", "mobilesam_architecture", "resolve_device"]

# Keys of the original TinyViT classifier, present in the official checkpoint, unused by SAM.
CLASSIFIER_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")
# Wrappers seen around state dicts (training checkpoints, micro-sam exports).
WRAPPER_KEYS = ("model_state", "model_state_dict", "state_dict", "model")


class CheckpointError(ValueError):
    """The file is not a (readable) MobileSAM checkpoint."""


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` -> cuda, then mps, then cpu; anything else is checked for availability."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for, but PyTorch sees no CUDA GPU here; use 'cpu' or 'auto'.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device='mps' was asked for, but MPS is not available here; use 'cpu' or 'auto'.")
    return dev


def mobilesam_architecture(encoder: torch.nn.Module | None = None) -> Sam:
    """An untrained MobileSAM: TinyViT-5M (or ``encoder``) + SAM's prompt encoder and mask decoder."""
    embed_dim, size = 256, 1024
    return Sam(
        image_encoder=encoder if encoder is not None else TinyViT(img_size=size),
        prompt_encoder=PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=(size // 16, size // 16),
            input_image_size=(size, size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict (plain, or wrapped under a key such as ``model_state``) with ``weights_only=True``."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"Could not read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
            "The file may be truncated or not a PyTorch state dict; download it again or pick another file."
        ) from err
    for _ in range(2):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__}).")
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return state


def _check_keys(state: Mapping[str, torch.Tensor], model: torch.nn.Module, path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if not (missing or unexpected or shapes):
        return

    def show(keys: list[str]) -> str:
        return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}")
    if shapes:
        parts.append(
            "shape mismatches: "
            + show([f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in shapes])
        )
    raise CheckpointError(
        f"{path} is not a MobileSAM (TinyViT-5M) checkpoint: " + "; ".join(parts) + ".\n"
        "Use the official mobile_sam.pt, micro-sam's vit_t models, or a checkpoint exported by `mobilesam distill`."
    )


def build_mobilesam(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Sam:
    """Build MobileSAM and load weights strictly.

    Args:
        checkpoint: a registry name (``"mobile_sam"``, ``"vit_t_lm"``), a path to a ``.pt`` state
            dict in the official layout, or None for ``"mobile_sam"``.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.

    Returns:
        A ``segment_anything.modeling.Sam`` in eval mode on ``device``.

    Raises:
        FileNotFoundError / CheckpointError / WeightsUnavailableError / ValueError with the fix.
    """
    path = resolve_weights(checkpoint)
    dev = resolve_device(device)
    state = load_checkpoint(path)
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    sam = mobilesam_architecture()
    _check_keys(state, sam, path)
    sam.load_state_dict(state, strict=True)
    return sam.eval().to(dev)
