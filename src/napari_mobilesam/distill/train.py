"""Step 2 of distillation: train the TinyViT student to reproduce the stored teacher embeddings.

Decoupled distillation (MobileSAM, Sec. 3.2): only the image encoder is trained, with an MSE loss
on the ``256 x 64 x 64`` embedding; the teacher never runs here. AdamW, linear warm-up then cosine
decay, micro-batches with gradient accumulation, mixed precision on CUDA.

Layout of ``<work>/train/``: ``step_0000500.pt`` checkpoints (the last ``keep`` are kept; each is
a dict of tensors and numbers, loadable with ``weights_only=True``) and ``log.csv`` (step, loss, lr).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..engine.errors import SettingsError
from ..model.build import CLASSIFIER_PREFIXES, load_checkpoint, resolve_device
from ..model.tiny_vit import TinyViT
from ..model.weights import resolve_weights
from .data import FrameSource, ImagesLike
from .store import EmbeddingStore

__all__ = ["TrainConfig", "build_student", "iter_train", "latest_checkpoint", "train_student"]

_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


@dataclass
class TrainConfig:
    """Training hyper-parameters. ``steps`` (optimizer steps) overrides ``epochs`` when set.

    One optimizer step sees ``batch_size * accumulate`` frames.
    """

    epochs: float = 8.0
    steps: int | None = None
    batch_size: int = 1
    accumulate: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-5
    # AdamW's decoupled weight decay. None: 0.05 for a random student, 0 for a trained start
    # (``for_student``): decay pulls a student that matches its teacher away from it, and Adam then
    # turns the tiny gradients that follow into full-size steps.
    weight_decay: float | None = None
    warmup_steps: int = 0
    amp: bool | None = None  # None: on for CUDA, off elsewhere
    # BatchNorm on its running statistics, which stay fixed (weights still train). Right when
    # fine-tuning a trained student: batch-1 statistics are noisy and differ from inference.
    # None: frozen when the student starts trained (a checkpoint file or a module: ``for_student``); trained
    # for a random student. (Trained statistics on a student equal to its teacher made step 1's loss 1.96.)
    freeze_bn: bool | None = None
    save_every: int = 500
    keep: int = 2
    seed: int = 0
    workers: int | None = None  # data-loading processes; None: 0 on CPU, up to 8 on CUDA

    def total_steps(self, frames: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        return max(1, math.ceil(self.epochs * frames / (self.batch_size * self.accumulate)))

    def for_student(self, init: object) -> TrainConfig:
        """This config with ``freeze_bn`` and ``weight_decay`` decided by the student's start ``init``: for a
        trained one (a checkpoint file or a module) BatchNorm statistics are frozen and there is no weight
        decay; for a random one (None) both train (0.05)."""
        trained = init is not None
        return replace(self, freeze_bn=trained if self.freeze_bn is None else self.freeze_bn,
                       weight_decay=(0.0 if trained else 0.05) if self.weight_decay is None else self.weight_decay)

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``min_lr`` at ``total``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, total - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


def build_student(init: str | os.PathLike | TinyViT | None = None) -> TinyViT:
    """The student: TinyViT-5M, random (``None``), from a MobileSAM checkpoint's encoder, or as given."""
    if isinstance(init, torch.nn.Module):
        return init
    student = TinyViT()
    if init is not None:
        state = load_checkpoint(resolve_weights(init))
        enc = {k[len("image_encoder."):]: v for k, v in state.items()
               if k.startswith("image_encoder.") and not k.startswith(CLASSIFIER_PREFIXES)}
        if not enc:
            raise SettingsError(f"{init} holds no image_encoder.* weights; give a MobileSAM checkpoint (or none for a random student).")
        try:
            student.load_state_dict(enc, strict=True)
        except RuntimeError as err:
            raise SettingsError(f"{init} is not a TinyViT-5M (MobileSAM) checkpoint: {str(err).splitlines()[0]}") from err
    return student


class _Pairs(torch.utils.data.Dataset):
    """(preprocessed frame ``3 x 1024 x 1024``, teacher embedding ``256 x 64 x 64``) float32 pairs."""

    def __init__(self, source: FrameSource, store: EmbeddingStore):
        self.source, self.store = source, store

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source[index], torch.from_numpy(self.store.read(index))


class _Stream(torch.utils.data.Sampler):
    """Endless reshuffled epochs (permutation seeded by ``seed + epoch``), from sample ``start``."""

    def __init__(self, n: int, seed: int, start: int, count: int):
        self.n, self.seed, self.start, self.count = n, seed, start, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        epoch, perm = -1, None
        for p in range(self.start, self.start + self.count):
            if p // self.n != epoch:
                epoch = p // self.n
                perm = np.random.default_rng(self.seed + epoch).permutation(self.n)
            yield int(perm[p % self.n])


def _workers(requested: int | None, dev: torch.device) -> int:
    if requested is not None:
        return max(0, min(int(requested), os.cpu_count() or 1))  # more processes than cores only cost memory
    return min(8, os.cpu_count() or 1) if dev.type == "cuda" else 0


def latest_checkpoint(train_dir: str | os.PathLike) -> Path | None:
    """The training checkpoint with the highest step in ``train_dir``, or None."""
    d = Path(train_dir)
    found = [(int(m.group(1)), p) for p in d.glob("step_*.pt") if (m := _STEP_FILE.search(p.name))] if d.is_dir() else []
    return max(found)[1] if found else None


_FLOOR = 2.0**-16  # ~1.5e-5: float32 differences between the teacher's and the student's code paths (seen: 6e-6)


def embedding_loss(pred: torch.Tensor, target: torch.Tensor, stored: np.dtype | str = "float32") -> torch.Tensor:
    """MSE between the student's and the stored teacher embeddings (``B x 256 x 64 x 64``), blind to what the
    store cannot tell apart: differences within one float16 step of the target (a float16 store) or within
    2^-16 (~1.5e-5; float32 arithmetic) count as 0.

    Why: Adam scales each step to about ``lr`` whatever the gradient's size, so the ~1e-8 gradients of a
    student that already matches its teacher (MSE ~5e-8: the float16 rounding) became full-size steps
    (MSE 0.3-0.5 after one step). Without that noise such a student gets zero gradients and stays put;
    a student that differs by more than the store's precision trains as with the plain MSE.
    """
    r = pred.float() - target.float()
    tol = torch.full_like(r, _FLOOR)
    if np.dtype(stored) == np.float16:
        _, exp = torch.frexp(target.float())
        tol = torch.maximum(tol, torch.ldexp(torch.ones_like(r), exp - 11))  # float16 spacing at |target|
    r = torch.sign(r) * (r.abs() - tol).clamp(min=0)
    return (r * r).mean()


def _train_mode(model: torch.nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _save(path: Path, payload: dict) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def iter_train(
    student: TinyViT,
    images: ImagesLike | FrameSource,
    store_dir: str | os.PathLike,
    train_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
) -> Iterator[dict]:
    """Train ``student`` in place; yields ``{"stage": "train", "step", "total", "loss", "lr", "seconds"}``
    after each optimizer step (``loss`` is the MSE of that step's frames).

    Breaking out of the loop cancels; the last saved checkpoint stays, and ``resume=True`` continues
    from it with the same data order and schedule.

    Raises:
        FileExistsError: ``train_dir`` holds checkpoints and ``resume`` is False.
        ValueError: the embedding store is incomplete or was made from other images.
    """
    cfg = config or TrainConfig()
    source = images if isinstance(images, FrameSource) else FrameSource(images)
    store = EmbeddingStore(store_dir)
    if store.frames != source.describe():
        raise SettingsError(f"The teacher embeddings in {store_dir} were computed for other images; use another work folder for these images.")
    if missing := store.missing():
        raise SettingsError(f"{len(missing)} of {len(store)} teacher embeddings are missing in {store_dir}; run the precompute step to finish them.")
    dev = resolve_device(device)
    amp = dev.type == "cuda" if cfg.amp is None else cfg.amp
    amp_dtype = torch.bfloat16 if dev.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    train_dir = Path(train_dir)
    train_dir.mkdir(parents=True, exist_ok=True)

    _train_mode(student.to(dev), bool(cfg.freeze_bn))
    wd = 0.05 if cfg.weight_decay is None else float(cfg.weight_decay)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=wd)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp and amp_dtype == torch.float16)
    total = cfg.total_steps(len(source))
    step = 0
    last = latest_checkpoint(train_dir)
    if last is not None and not resume:
        raise FileExistsError(f"{train_dir} already holds training checkpoints ({last.name}); resume, or use another work folder.")
    if last is not None:
        ckpt = torch.load(last, map_location=dev, weights_only=True)
        student.load_state_dict(ckpt["student"], strict=True)
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])

    per_step = cfg.batch_size * cfg.accumulate
    count = max(0, total - step) * per_step
    loader = torch.utils.data.DataLoader(
        _Pairs(source, store), batch_size=cfg.batch_size, sampler=_Stream(len(source), cfg.seed, step * per_step, count),
        num_workers=_workers(cfg.workers, dev), pin_memory=dev.type == "cuda", persistent_workers=False,
    )
    batches = iter(loader)
    log_path = train_dir / "log.csv"
    if step and log_path.is_file():  # drop rows of steps after the checkpoint: they are redone now
        rows = log_path.read_text().splitlines(keepends=True)
        log_path.write_text("".join(r for r in rows if not r[:1].isdigit() or int(r.split(",")[0]) <= step))
    log = log_path.open("a")
    if log.tell() == 0:
        log.write("step,loss,lr,seconds\n")
    start = time.perf_counter()
    try:
        while step < total:
            lr = cfg.lr_at(step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for _ in range(cfg.accumulate):
                x, y = next(batches)
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp):
                    pred = student(x)
                loss = embedding_loss(pred, y, store.dtype) / cfg.accumulate
                scaler.scale(loss).backward()
                loss_sum += float(loss.detach())
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            seconds = time.perf_counter() - start
            log.write(f"{step},{loss_sum:.6g},{lr:.6g},{seconds:.3f}\n")
            if step % cfg.save_every == 0 or step == total:
                log.flush()
                _save(train_dir / f"step_{step:07d}.pt", {
                    "student": {k: v.detach().cpu() for k, v in student.state_dict().items()},
                    "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "step": step,
                    "total_steps": total, "config": asdict(cfg),
                })
                for old in sorted(train_dir.glob("step_*.pt"))[: -cfg.keep]:
                    old.unlink()
            yield {"stage": "train", "step": step, "total": total, "loss": loss_sum, "lr": lr, "seconds": seconds}
    finally:
        log.close()
    student.eval()


def train_student(
    images: ImagesLike | FrameSource,
    store_dir: str | os.PathLike,
    train_dir: str | os.PathLike,
    student: str | os.PathLike | TinyViT | None = None,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
) -> TinyViT:
    """Blocking :func:`iter_train`; returns the trained student (eval mode). ``student`` as in :func:`build_student`."""
    model = build_student(student)
    cfg = (config or TrainConfig()).for_student(student)
    for _ in iter_train(model, images, store_dir, train_dir, cfg, device=device, resume=resume):
        pass
    return model
