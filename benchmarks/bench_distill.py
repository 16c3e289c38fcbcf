"""Distillation cost on this machine: seconds per training step, and what that means for the paper's recipe.

Times, in one process and interleaved (so load from other processes hits each alike):
- ``infer``: one TinyViT-5M forward in eval mode without autograd (the baseline);
- ``train``: one optimizer step at ``--batch`` frames: data (frame preprocessing + reading the stored
  teacher embedding) + forward + MSE + backward + AdamW, as ``iter_train`` does it;
- ``teacher``: one teacher forward per frame (``--teacher vit_b`` etc.: random weights, same cost),
  i.e. the one-off cost of step 1 (precompute).
Median of ``--repeats`` after one warm-up. Then extrapolates to MobileSAM's recipe: 1% of SA-1B
(~110K images), 8 epochs.

    python benchmarks/bench_distill.py                       # batch 1, teacher vit_b
    python benchmarks/bench_distill.py --batch 2 --teacher vit_h --repeats 3
    python benchmarks/bench_distill.py --amp --teacher none   # bfloat16 autocast on CPU

``--synthetic``: distillation with a meaningful teacher. The functional test model
(``napari_mobilesam.testing.synthetic_checkpoint``) is the teacher; the student is the same model
with Gaussian noise on its encoder weights (``--noise`` x each tensor's std). ``evaluate`` (as
``mobilesam evaluate``: student vs teacher mask mIoU on held-out synthetic frames) is measured
before and after ``--steps`` distillation steps on synthetic training frames.

    python benchmarks/bench_distill.py --synthetic --steps 300 --noise 0.5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT

from napari_mobilesam.distill import FrameSource, TrainConfig, iter_train
from napari_mobilesam.distill.store import EmbeddingStore
from napari_mobilesam.distill.teacher import SAM_VITS
from napari_mobilesam.model.tiny_vit import TinyViT


def _teacher(name: str) -> torch.nn.Module:
    dim, depth, heads, global_idx = SAM_VITS[name]
    return ImageEncoderViT(embed_dim=dim, depth=depth, num_heads=heads, global_attn_indexes=global_idx, use_rel_pos=True,
                           window_size=14, out_chans=256, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()


def _fake_store(root: Path, source: FrameSource) -> None:
    """A complete store of random embeddings: training cost does not depend on their values."""
    store = EmbeddingStore.create(root, source.describe(), {"name": "benchmark"}, fp16=True)
    rng = np.random.default_rng(0)
    for i in range(len(store)):
        store.write(i, rng.standard_normal((256, 64, 64)).astype(np.float16))


class _Timer:
    """Appends (wall seconds, process CPU seconds) to ``out``; CPU seconds barely depend on other load."""

    def __init__(self, out: list):
        self.out = out

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.out.append((time.perf_counter() - self.t, time.process_time() - self.c))


def _median(rows: list) -> tuple[float, float]:
    """Medians of wall and CPU seconds, the warm-up round dropped."""
    return statistics.median(r[0] for r in rows[1:]), statistics.median(r[1] for r in rows[1:])


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h ({seconds / 86400:,.1f} days)"


def _synthetic(args: argparse.Namespace) -> None:
    """Perturbed student vs functional teacher: evaluate, distil ``args.steps`` steps, evaluate again."""
    from napari_mobilesam.distill import TrainConfig, distill, evaluate, format_table
    from napari_mobilesam.testing import synthetic_cells, synthetic_checkpoint

    teacher = synthetic_checkpoint()
    held_out = np.stack([synthetic_cells((256, 256), 16, seed=s, radius=(9, 22))[0] for s in range(201, 201 + args.eval_frames)])
    train = np.stack([synthetic_cells((256, 256), 16, seed=s, radius=(8, 30))[0] for s in range(301, 301 + args.train_frames)])
    with tempfile.TemporaryDirectory() as tmp:
        state = torch.load(teacher, map_location="cpu", weights_only=True)
        gen = torch.Generator().manual_seed(0)
        for k, v in state.items():
            if k.startswith("image_encoder.") and v.is_floating_point() and v.numel() > 1 and "running_" not in k:
                state[k] = v + args.noise * v.float().std() * torch.randn(v.shape, generator=gen)
        student = Path(tmp) / "perturbed.pt"
        torch.save(state, student)
        before = evaluate(student, teacher, held_out)
        print(f"perturbed student (noise {args.noise} x std on every encoder tensor), before distillation:")
        print(format_table(before))
        cfg = TrainConfig(steps=args.steps, batch_size=1, lr=args.lr, warmup_steps=min(20, args.steps // 10), save_every=10**9)
        t0, c0 = time.perf_counter(), time.process_time()
        out = distill(train, teacher, Path(tmp) / "work", student=student, config=cfg)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        after = evaluate(out, teacher, held_out)
        print(f"\nafter {args.steps} distillation steps on {args.train_frames} synthetic frames "
              f"(teacher embeddings included: {wall:.0f} s wall, {cpu:.0f} s CPU; {wall / args.steps:.2f} s/step wall):")
        print(format_table(after))
        print(f"\nmIoU point {before['miou_point']:.3f} -> {after['miou_point']:.3f}, box {before['miou_box']:.3f} -> "
              f"{after['miou_box']:.3f}; load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="distil a perturbed functional test model (see above)")
    parser.add_argument("--steps", type=int, default=300, help="--synthetic: distillation steps")
    parser.add_argument("--noise", type=float, default=0.5, help="--synthetic: weight noise, in units of each tensor's std")
    parser.add_argument("--lr", type=float, default=2e-4, help="--synthetic: learning rate")
    parser.add_argument("--train-frames", type=int, default=32, help="--synthetic: training frames")
    parser.add_argument("--eval-frames", type=int, default=4, help="--synthetic: held-out frames")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher", default="vit_b", choices=[*SAM_VITS, "none"])
    parser.add_argument("--images", type=int, default=110_000, help="images in the recipe (1%% of SA-1B)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--amp", action="store_true", help="train with autocast (bfloat16 on CPU, as `distill --amp`)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.synthetic:
        _synthetic(args)
        return
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, (args.batch * (args.repeats + 1), 768, 1024, 3), dtype=np.uint8)  # SA-1B-like 4:3
        source = FrameSource(frames)
        _fake_store(Path(tmp) / "teacher", source)
        student = TinyViT()
        cfg = TrainConfig(steps=args.repeats + 1, batch_size=args.batch, save_every=10**9, lr=1e-4, amp=args.amp)
        train = iter_train(student, source, Path(tmp) / "teacher", Path(tmp) / "train", cfg, device="cpu")
        teacher = _teacher(args.teacher) if args.teacher != "none" else None
        x = source[0][None]
        t_infer, t_train, t_teacher = [], [], []
        for _round in range(args.repeats + 1):  # round 0 warms up
            student.eval()
            with torch.inference_mode(), _Timer(t_infer):
                student(x)
            student.train()
            with _Timer(t_train):
                next(train)  # one optimizer step, data loading included
            if teacher is not None:
                with torch.inference_mode(), _Timer(t_teacher):
                    teacher(x)
        train.close()

    (infer, infer_cpu), (step, step_cpu) = _median(t_infer), _median(t_train)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}; median of {args.repeats} after 1 warm-up")
    print(f"{'':<48} {'wall':>8}    {'CPU':>8}")
    print(f"{'student forward (eval, no grad), 1 frame':<48} {infer:8.2f} s  {infer_cpu:8.2f} s  (baseline, 1.00x)")
    print(f"{f'training step, batch {args.batch}' + (', amp' if args.amp else ''):<48} {step:8.2f} s  {step_cpu:8.2f} s  ({step / infer:.1f}x the forward)")
    per_frame = step / args.batch
    total_frames = args.images * args.epochs
    print(f"\nrecipe: {args.images:,} images x {args.epochs} epochs = {total_frames:,} frame-steps")
    print(f"  training at {per_frame:.2f} s/frame (wall) on this CPU: {_hours(total_frames * per_frame)}")
    print(f"  (at {step_cpu / args.batch:.2f} CPU-s/frame, on an idle machine with all {torch.get_num_threads()} threads: "
          f"~{_hours(total_frames * step_cpu / args.batch / torch.get_num_threads())})")
    if t_teacher:
        teach, teach_cpu = _median(t_teacher)
        print(f"{f'teacher {args.teacher} forward, 1 frame':<48} {teach:8.2f} s  {teach_cpu:8.2f} s  ({teach / infer:.1f}x the student forward)")
        print(f"  precompute (once): {args.images:,} x {teach:.2f} s = {_hours(args.images * teach)}")
        print(f"  (at {teach_cpu:.2f} CPU-s/frame, idle machine: ~{_hours(args.images * teach_cpu / torch.get_num_threads())})")


if __name__ == "__main__":
    main()
