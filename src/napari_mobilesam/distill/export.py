"""Export a distilled student in the official ``mobile_sam.pt`` layout.

The file is a plain state dict: ``image_encoder.*`` from the student (TinyViT-5M, plus the unused
classifier ``head``/``norm_head`` of the official file, so strict loaders of the official code accept
it too), ``prompt_encoder.*`` and ``mask_decoder.*`` copied unchanged from the teacher.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from ..engine.errors import SettingsError
from ..model.build import CLASSIFIER_PREFIXES, build_mobilesam, load_checkpoint
from ..model.tiny_vit import TinyViT
from ..model.weights import resolve_weights
from .teacher import Teacher, _head_state

__all__ = ["export_checkpoint"]

HEAD_CLASSES = 1000  # the official checkpoint keeps TinyViT's ImageNet classifier (320 -> 1000)


def _classifier(init: str | os.PathLike | None, dim: int) -> dict[str, torch.Tensor]:
    """``image_encoder.head.*``/``norm_head.*``: from ``init`` when it has them, else a fresh (unused) layer."""
    if init is not None:
        state = {k: v for k, v in load_checkpoint(resolve_weights(init)).items() if k.startswith(CLASSIFIER_PREFIXES)}
        if state:
            return state
    norm, head = torch.nn.LayerNorm(dim), torch.nn.Linear(dim, HEAD_CLASSES)
    return {**{f"image_encoder.norm_head.{k}": v for k, v in norm.state_dict().items()},
            **{f"image_encoder.head.{k}": v for k, v in head.state_dict().items()}}


def _student_state(student: TinyViT | str | os.PathLike) -> dict[str, torch.Tensor]:
    if isinstance(student, torch.nn.Module):
        return dict(student.state_dict())
    obj = torch.load(student, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("student"), dict):  # a training checkpoint
        return obj["student"]
    state = load_checkpoint(student)
    return {k[len("image_encoder."):]: v for k, v in state.items()
            if k.startswith("image_encoder.") and not k.startswith(CLASSIFIER_PREFIXES)}


def export_checkpoint(
    student: TinyViT | str | os.PathLike,
    decoder_from: Teacher | Sam | str | os.PathLike,
    out: str | os.PathLike,
    *,
    init: str | os.PathLike | None = None,
    verify: bool = True,
) -> Path:
    """Write ``out`` in the ``mobile_sam.pt`` layout.

    Args:
        student: the trained TinyViT-5M, a training checkpoint (``<work>/train/step_*.pt``), or a
            MobileSAM checkpoint whose encoder to take.
        decoder_from: the teacher (loaded, a ``Sam``, or a checkpoint path) whose prompt encoder and
            mask decoder the student was distilled for.
        init: checkpoint the student started from; its classifier head is carried over.
        verify: load the written file with :func:`build_mobilesam` (strict) and raise if it fails.

    Raises:
        ValueError: the student is not TinyViT-5M, so the file would not load as MobileSAM.
    """
    enc = {k: v.detach().cpu().contiguous() for k, v in _student_state(student).items()}
    ref = TinyViT().state_dict()
    wrong = sorted(k for k in set(ref) | set(enc) if k not in enc or k not in ref or enc[k].shape != ref[k].shape)
    if wrong:
        raise SettingsError(
            f"The student is not a TinyViT-5M ({len(wrong)} keys differ, e.g. {wrong[:3]}); only that "
            "configuration loads as MobileSAM. Distill with the default student."
        )
    if isinstance(decoder_from, Teacher):
        decoder_from = decoder_from.sam
    if isinstance(decoder_from, Sam):
        heads = {f"{name}.{k}": v.detach().cpu().contiguous() for name in ("prompt_encoder", "mask_decoder")
                 for k, v in getattr(decoder_from, name).state_dict().items()}
    else:
        heads = _head_state(decoder_from)
    state = {**{f"image_encoder.{k}": v for k, v in enc.items()}, **_classifier(init, ref["neck.0.weight"].shape[1]), **heads}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("." + out.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out)
    if verify:
        build_mobilesam(out, device="cpu")
    return out
