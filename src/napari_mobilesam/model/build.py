"""Build a segment-anything ``Sam`` from a checkpoint, recognised by its keys, and load it strictly.

Image encoders (``image_encoder.*`` keys):

- MobileSAM's TinyViT-5M (``mobile_sam.pt``, micro-sam's ``vit_t`` models, ``mobilesam distill`` exports);
- SAM ViT-B/L/H (``sam_vit_*.pth``), built with segment-anything's own builders;
- MobileSAMv2's EfficientViT-L2 (``l2.pt``: ``{'state_dict': {image_encoder.*}}``), which holds no
  prompt encoder or mask decoder and so needs ``decoder=``.

``decoder=`` replaces the prompt encoder and mask decoder with MobileSAMv2's prompt-guided decoder
(``Prompt_guided_Mask_Decoder.pt``: ``{'PromtEncoder': state_dict, 'MaskDecoder': state_dict}``,
SAM's shapes) or any file in that layout.

Which encoders exist is one table, :data:`ENCODER_REGISTRY` (as segment-anything's
``sam_model_registry``): each entry names the encoder, recognises its state dict and builds the untrained
model. :func:`register_encoder` adds one.

Every file is read with ``torch.load(weights_only=True)``; wrappers (``model_state``, ``state_dict``,
DDP's ``module.``, micro-sam's ``sam.``) are unwrapped, the weights must be finite, and the load is
strict: a missing, unexpected or misshapen key is an error that names it.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ..engine.errors import DeviceUnavailable, SettingsError, UserError
from .efficient_vit import EfficientViTL2Encoder, is_efficientvit_state
from .tiny_vit import TinyViT
from .weights import resolve_weights

__all__ = [
    "ENCODER_REGISTRY",
    "CheckpointError",
    "EncoderSpec",
    "build_mobilesam",
    "encoder_kind",
    "load_checkpoint",
    "load_decoder",
    "mobilesam_architecture",
    "register_encoder",
    "resolve_device",
]

# Keys of the original TinyViT classifier, present in the official checkpoint, unused by SAM.
CLASSIFIER_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")
# Wrappers seen around state dicts (training checkpoints, micro-sam exports).
WRAPPER_KEYS = ("model_state", "model_state_dict", "state_dict", "model")
HEAD_PREFIXES = ("prompt_encoder.", "mask_decoder.")
# MobileSAMv2's decoder file (its spelling 'PromtEncoder'; the correct one is accepted too)
DECODER_PARTS = {"PromtEncoder": "prompt_encoder.", "PromptEncoder": "prompt_encoder.", "MaskDecoder": "mask_decoder."}
SAM_VIT_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
DECODER_FIX = (
    "pass decoder='mobilesamv2' (MobileSAMv2's Prompt_guided_Mask_Decoder.pt, downloaded and verified) or "
    "decoder=PATH; on the command line --decoder, in napari the 'decoder' choice"
)


class CheckpointError(UserError):
    """The file is not a (readable) MobileSAM checkpoint (a ``ValueError``, as every ``UserError``)."""


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
        raise DeviceUnavailable("device='cuda' was asked for, but PyTorch sees no CUDA GPU here; use 'cpu' or 'auto'.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceUnavailable("device='mps' was asked for, but MPS is not available here; use 'cpu' or 'auto'.")
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


def _read(path: Path) -> object:
    """``torch.load(weights_only=True)`` with an error that names the file and the fix."""
    try:
        with warnings.catch_warnings():  # torch's "please file an issue" note on a foreign pickle: we refuse it anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # PyTorch's message advises weights_only=False, i.e. running the file's code: not passed on
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} holds Python objects besides tensors{what}. They are not loaded, because unpickling them could "
            "run code from the file. Use the official file, or save the weights alone: torch.save(model.state_dict(), path)."
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"Could not read checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}): "
            "the file is damaged, truncated or not a PyTorch state dict; download it again or pick another file."
        ) from err


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``: plain, or wrapped (``model_state``, ``state_dict`` ...).

    DDP's ``module.`` and micro-sam's ``sam.`` key prefixes are removed; of a micro-sam training
    checkpoint (``model_state`` beside ``decoder_state`` and optimizer state) only the SAM part is
    kept, with a one-line warning that ``decoder_state`` is not used.
    """
    path = Path(path)
    obj = _read(path)
    if isinstance(obj, Mapping) and any(k in obj for k in DECODER_PARTS):
        raise CheckpointError(f"{path} is a MobileSAMv2 decoder file (PromtEncoder / MaskDecoder), not a model: pass it as decoder=.")
    if isinstance(obj, Mapping) and "decoder_state" in obj and isinstance(obj.get("model_state"), Mapping):
        warnings.warn(
            f"{path.name}: micro-sam training checkpoint; its SAM weights (model_state) are used, its decoder_state "
            "(micro-sam's instance-segmentation decoder) is not.",
            UserWarning,
            stacklevel=3,
        )
    for _ in range(2):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__}).")
    state = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            k = k.removeprefix("module.").removeprefix("sam.")
            if not k.startswith("image_encoder.") and ".image_encoder." in k:  # e.g. EfficientViT-SAM's model.image_encoder.*
                k = k[k.index(".image_encoder.") + 1 :]
            state[k] = v
    return state


def load_decoder(decoder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """MobileSAMv2's decoder file (a registry name or a path) -> ``prompt_encoder.*`` / ``mask_decoder.*`` tensors."""
    path = resolve_weights(decoder)
    obj = _read(path)
    parts = [k for k in DECODER_PARTS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
    if not isinstance(obj, Mapping) or {DECODER_PARTS[k] for k in parts} != set(HEAD_PREFIXES):
        found = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path} is not a MobileSAMv2 decoder file: expected a dict holding 'PromtEncoder' and 'MaskDecoder' state "
            f"dicts (as Prompt_guided_Mask_Decoder.pt), found {found}. Use decoder='mobilesamv2' for the official one."
        )
    state = {DECODER_PARTS[p] + k.removeprefix("module."): v for p in parts for k, v in obj[p].items() if isinstance(v, torch.Tensor)}
    _check_finite(state, path)
    return state


# ------------------------------------------------------------------------------------- encoders
@dataclass(frozen=True)
class EncoderSpec:
    """One image encoder the package can build.

    Attributes:
        name: what the user reads in messages, e.g. ``"SAM ViT-B"``.
        build: an untrained ``Sam`` with this encoder, SAM's prompt encoder and mask decoder (on the CPU).
        matches: whether a state dict (``image_encoder.*`` keys, wrappers removed) holds this encoder.
    """

    name: str
    build: Callable[[], Sam]
    matches: Callable[[Mapping[str, torch.Tensor]], bool]


def _sam_vit_width(state: Mapping[str, torch.Tensor]) -> int | None:
    """The embedding width of a SAM ViT image encoder in ``state``, or None if it holds none."""
    proj = state.get("image_encoder.patch_embed.proj.weight")
    if proj is None or "image_encoder.blocks.0.attn.qkv.weight" not in state:
        return None
    return int(proj.shape[0])


def _sam_vit(kind: str) -> EncoderSpec:
    width = next(w for w, k in SAM_VIT_WIDTHS.items() if k == kind)

    def build() -> Sam:
        from segment_anything import sam_model_registry

        return sam_model_registry[kind](checkpoint=None)

    return EncoderSpec(f"SAM ViT-{kind[-1].upper()}", build, lambda state: _sam_vit_width(state) == width)


# kind -> spec. encoder_kind() asks them in this order; "tiny_vit" is asked last and takes anything,
# so that the strict key check names what differs from MobileSAM.
ENCODER_REGISTRY: dict[str, EncoderSpec] = {
    "efficientvit_l2": EncoderSpec(
        "MobileSAMv2 EfficientViT-L2", lambda: mobilesam_architecture(EfficientViTL2Encoder()), is_efficientvit_state
    ),
    **{kind: _sam_vit(kind) for kind in SAM_VIT_WIDTHS.values()},
    "tiny_vit": EncoderSpec("MobileSAM TinyViT-5M", lambda: mobilesam_architecture(), lambda state: True),
}
FALLBACK_ENCODER = "tiny_vit"


def register_encoder(kind: str, spec: EncoderSpec) -> None:
    """Add an image encoder (or replace one): checkpoints that ``spec.matches`` are then built with it.

    It is asked before the built-in encoders, so a specific matcher can claim files MobileSAM would take.
    """
    if kind == FALLBACK_ENCODER:
        raise SettingsError(f"{kind!r} is the fallback encoder and cannot be replaced.")
    ENCODER_REGISTRY.pop(kind, None)
    items = list(ENCODER_REGISTRY.items())
    ENCODER_REGISTRY.clear()
    ENCODER_REGISTRY.update([(kind, spec), *items])


def encoder_kind(state: Mapping[str, torch.Tensor]) -> str:
    """Which image encoder a state dict holds: a key of :data:`ENCODER_REGISTRY` ("tiny_vit", "vit_b",
    "vit_l", "vit_h", "efficientvit_l2", or a registered one)."""
    for kind, spec in ENCODER_REGISTRY.items():
        if kind != FALLBACK_ENCODER and spec.matches(state):
            return kind
    width = _sam_vit_width(state)
    if width is not None:
        raise CheckpointError(f"A SAM ViT image encoder of width {width} is not one of ViT-B/L/H (768/1024/1280).")
    return FALLBACK_ENCODER  # also anything unknown: the strict check then names what differs from MobileSAM


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")


def _check_keys(state: Mapping[str, torch.Tensor], model: torch.nn.Module, path: Path, what: str = "a MobileSAM (TinyViT-5M) checkpoint") -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {_show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_show(unexpected)}")
    if shapes:
        parts.append("shape mismatches: " + _show([f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in shapes]))
    raise CheckpointError(
        f"{path} is not {what}: " + "; ".join(parts) + ".\n"
        "Use the official mobile_sam.pt, micro-sam's vit_t models, a checkpoint exported by `mobilesam distill`, "
        "SAM's sam_vit_b/l/h.pth, or MobileSAMv2's l2.pt with decoder=."
    )


def _check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights that are NaN or infinite: a damaged file or a diverged training run."""
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(
            f"{path} holds weights that are not finite numbers (NaN or infinity) in {len(bad)} of {len(state)} tensors: "
            f"{_show(bad)}. The file is damaged or comes from a training run that diverged; download it again or use an earlier checkpoint."
        )


def build_mobilesam(
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    decoder: str | os.PathLike | None = None,
) -> Sam:
    """Build SAM with the image encoder the checkpoint holds and load weights strictly.

    Args:
        checkpoint: a registry name (``"mobile_sam"``, ``"vit_t_lm"``, ``"sam_vit_b"`` / ``_l`` / ``_h``,
            ``"efficientvit_l2"``), a path to a checkpoint (TinyViT, SAM ViT-B/L/H or EfficientViT-L2;
            see the module docstring), or None for ``"mobile_sam"``.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
        decoder: MobileSAMv2's prompt encoder + mask decoder, replacing the checkpoint's: the registry
            name ``"mobilesamv2"`` or a path to a ``{'PromtEncoder', 'MaskDecoder'}`` file. Required for
            an encoder-only checkpoint (``l2.pt``).

    Returns:
        A ``segment_anything.modeling.Sam`` in eval mode on ``device``; its image encoder takes
        ``B x 3 x 1024 x 1024`` and gives ``B x 256 x 64 x 64``.

    Raises:
        FileNotFoundError / CheckpointError / WeightsUnavailableError / ValueError with the fix.
    """
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a registry name (e.g. 'mobile_sam'), a file path or None, got "
                        f"{type(checkpoint).__name__} {checkpoint!r:.40}.")
    path = resolve_weights(checkpoint)
    dev = resolve_device(device)
    state = load_checkpoint(path)
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    kind = encoder_kind(state)
    name = ENCODER_REGISTRY[kind].name
    if decoder is not None:
        heads = load_decoder(decoder)
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)} | heads
    elif not any(k.startswith(HEAD_PREFIXES) for k in state) and any(k.startswith("image_encoder.") for k in state):
        raise CheckpointError(f"{path} holds only an image encoder ({name}), no prompt encoder or mask decoder: {DECODER_FIX}.")
    sam = ENCODER_REGISTRY[kind].build()
    what = "a MobileSAM (TinyViT-5M) checkpoint" if kind == "tiny_vit" else f"a {name} checkpoint"
    _check_keys(state, sam, path, what + (" with MobileSAMv2's decoder" if decoder is not None else ""))
    _check_finite(state, path)
    sam.load_state_dict(state, strict=True)
    return sam.eval().to(dev)
