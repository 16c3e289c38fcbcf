"""Decoupled distillation (MobileSAM, Sec. 3.2): train or adapt a TinyViT encoder from any SAM teacher.

Steps, each resumable, all under one work folder:
1. ``<work>/teacher``: teacher embeddings of every frame, computed once (:func:`precompute_teacher`);
2. ``<work>/train``: the student learns them by MSE (:func:`train_student`);
3. ``<work>/mobile_sam_distilled.pt``: the student's encoder + the teacher's prompt encoder and
   mask decoder in the official ``mobile_sam.pt`` layout (:func:`export_checkpoint`).
:func:`evaluate` compares student and teacher masks on held-out images.

Example::

    from napari_mobilesam.distill import TrainConfig, distill, evaluate
    ckpt = distill("frames/", "sam_vit_b_01ec64.pth", "work/", student="mobile_sam",
                   config=TrainConfig(epochs=8), device="cuda")
    print(evaluate(ckpt, "sam_vit_b_01ec64.pth", "held_out/"))
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..engine.errors import SettingsError
from ..model.weights import resolve_weights
from .data import FrameSource, ImagesLike, preprocess
from .evaluation import evaluate, format_table, iter_evaluate
from .export import export_checkpoint
from .store import EmbeddingStore, iter_precompute, precompute_teacher
from .teacher import Teacher, TeacherLike, load_teacher
from .train import TrainConfig, build_student, iter_train, latest_checkpoint, train_student

__all__ = [
    "EXPORT_NAME",
    "EmbeddingStore",
    "FrameSource",
    "Teacher",
    "TrainConfig",
    "build_student",
    "distill",
    "evaluate",
    "export_checkpoint",
    "format_table",
    "iter_distill",
    "iter_evaluate",
    "iter_precompute",
    "iter_train",
    "latest_checkpoint",
    "load_teacher",
    "precompute_teacher",
    "preprocess",
    "train_student",
]

EXPORT_NAME = "mobile_sam_distilled.pt"


def iter_distill(
    images: ImagesLike,
    teacher: TeacherLike,
    work_dir: str | os.PathLike,
    *,
    student: str | os.PathLike | torch.nn.Module | None = None,
    config: TrainConfig | None = None,
    decoder_from: str | os.PathLike | None = None,
    fp16: bool = True,
    device: str | torch.device = "cpu",
    resume: bool = False,
    precompute_only: bool = False,
    out: str | os.PathLike | None = None,
) -> Iterator[dict]:
    """Precompute (what is missing), train, export; yields the progress dicts of each stage, then
    ``{"stage": "done", "checkpoint": path}`` (the store folder when ``precompute_only``).

    Args:
        images: training frames: a folder, file(s) or a stack array (see :class:`FrameSource`).
        teacher: SAM ``vit_b/l/h`` (or fine-tuned) / MobileSAM checkpoint, or a ``Sam``/encoder module.
        work_dir: holds ``teacher/``, ``train/`` and the exported checkpoint.
        student: ``None`` (random TinyViT-5M), a MobileSAM checkpoint or registry name to start
            from, or a TinyViT module.
        decoder_from: checkpoint with the prompt encoder/mask decoder when ``teacher`` lacks them.
        fp16: store teacher embeddings as float16.
        resume: continue training from the latest checkpoint in ``<work>/train``.
        out: exported checkpoint path (default ``<work>/mobile_sam_distilled.pt``).
    """
    work = Path(work_dir)
    source = FrameSource(images)
    store_dir, train_dir = work / "teacher", work / "train"
    loaded: Teacher | None = None
    stored = EmbeddingStore(store_dir) if (store_dir / "manifest.json").is_file() else None
    if stored is not None and stored.frames != source.describe():
        raise SettingsError(
            f"{store_dir} holds teacher embeddings of other images ({len(stored)} frames; now {len(source)}). "
            "Use another work folder for another image set, or delete it to start over."
        )
    needs_teacher = stored is None or bool(stored.missing())
    if not needs_teacher and isinstance(teacher, (str, os.PathLike)):
        _check_same_teacher(stored, teacher)
    if needs_teacher or isinstance(teacher, torch.nn.Module):
        loaded = load_teacher(teacher, decoder_from, device)
        yield from iter_precompute(source, loaded, store_dir, fp16=fp16)
    if precompute_only:
        yield {"stage": "done", "checkpoint": str(store_dir)}
        return
    model = build_student(student)
    cfg = (config or TrainConfig()).for_student(student)
    yield from iter_train(model, source, store_dir, train_dir, cfg, device=device, resume=resume)
    heads = decoder_from if decoder_from is not None else (loaded if loaded is not None else teacher)
    init = student if isinstance(student, (str, os.PathLike)) else None
    path = export_checkpoint(model, heads, out if out is not None else work / EXPORT_NAME, init=init)
    yield {"stage": "done", "checkpoint": str(path)}


def _check_same_teacher(store: EmbeddingStore, teacher: str | os.PathLike) -> None:
    """A complete store is reused without loading the teacher; make sure it is the same file."""
    path = resolve_weights(teacher).resolve()
    stored = store.manifest["teacher"]
    if stored.get("source") != str(path) or stored.get("bytes") != path.stat().st_size:
        raise SettingsError(
            f"The embeddings in {store.root} come from the teacher {stored.get('source')}, not {path}. "
            "Use another work folder for another teacher."
        )


def distill(images: ImagesLike, teacher: TeacherLike, work_dir: str | os.PathLike, **kwargs) -> Path:
    """Blocking :func:`iter_distill`; returns the exported checkpoint (or the store folder)."""
    result: dict = {}
    for result in iter_distill(images, teacher, work_dir, **kwargs):  # noqa: B007 - the last one is the result
        pass
    return Path(result["checkpoint"])
