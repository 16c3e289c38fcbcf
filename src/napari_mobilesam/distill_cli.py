"""`mobilesam distill` and `mobilesam evaluate` (kept outside the distill package so that `mobilesam --help` does not import torch).

The entry point calls :func:`add_commands` with its subparsers object; each subcommand sets
``func(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_commands", "run_distill", "run_evaluate"]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``distill`` and ``evaluate`` subcommands."""
    d = subparsers.add_parser(
        "distill",
        help="train/adapt a MobileSAM (TinyViT) image encoder from a SAM teacher on your images",
        description="Decoupled distillation: teacher embeddings are computed once into WORK/teacher, the TinyViT "
        "student learns them by MSE (checkpoints in WORK/train), and the result is exported in the mobile_sam.pt "
        "layout (WORK/mobile_sam_distilled.pt). Every step resumes.",
    )
    d.add_argument("images", help="folder of images, or one stack file (.tif/.npy/...): every frame is a training image")
    d.add_argument("--teacher", required=True, help="SAM checkpoint (sam_vit_b/l/h .pth, a fine-tuned SAM) or MobileSAM checkpoint/name")
    d.add_argument("--work", required=True, type=Path, help="work folder (embeddings, training checkpoints, export)")
    d.add_argument("--student", default=None, help="start from this MobileSAM checkpoint or registry name (default: random TinyViT-5M)")
    d.add_argument("--decoder-from", default=None, help="checkpoint with the prompt encoder/mask decoder, if the teacher file lacks them")
    d.add_argument("--precompute", action="store_true", help="only compute the teacher embeddings (step 1), then stop")
    d.add_argument("--fp32-embeddings", action="store_true", help="store embeddings as float32 (default float16: half the disk)")
    d.add_argument("--epochs", type=float, default=8.0, help="passes over the images (default 8, as in the paper)")
    d.add_argument("--steps", type=int, default=None, help="optimizer steps in all (overrides --epochs)")
    d.add_argument("--batch-size", type=int, default=1, help="frames per micro-batch (default 1; on CPU each frame costs about 2.5 GB of memory: batch 8 peaked at 19.7 GB)")
    d.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step (gradient accumulation)")
    d.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, cosine decay)")
    d.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end of the cosine decay (default 1e-5)")
    d.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0.05 for a random student, 0 with --student)")
    d.add_argument("--warmup-steps", type=int, default=0, help="steps of linear learning-rate warm-up (default 0)")
    d.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="keep BatchNorm statistics fixed (default: on with --student, off for a random start)")
    d.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on for CUDA)")
    d.add_argument("--save-every", type=int, default=500, help="training checkpoint every N steps (and at the end)")
    d.add_argument("--keep", type=int, default=2, help="training checkpoints to keep (0: all)")
    d.add_argument("--seed", type=int, default=0, help="seed of the frame order (default 0)")
    d.add_argument("--workers", type=int, default=None, help="data-loading processes (default: 0 on CPU, up to 8 on CUDA)")
    d.add_argument("--resume", action="store_true", help="continue training from the latest checkpoint in WORK/train")
    d.add_argument("--out", type=Path, default=None, help="exported checkpoint (default WORK/mobile_sam_distilled.pt)")
    d.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    d.set_defaults(func=run_distill)

    e = subparsers.add_parser(
        "evaluate",
        help="compare a distilled student with its teacher: mask mIoU for random prompts, embedding MSE",
        description="For each held-out frame both models decode the same random point and box prompts (single-mask "
        "mode); prints the mean IoU of student vs teacher masks and the MSE of the image embeddings.",
    )
    e.add_argument("images", help="held-out folder of images or stack file (not used in training)")
    e.add_argument("--student", required=True, help="exported student checkpoint (or a registry name)")
    e.add_argument("--teacher", required=True, help="the teacher checkpoint it was distilled from")
    e.add_argument("--decoder-from", default=None, help="checkpoint with the prompt encoder/mask decoder, if the teacher lacks them")
    e.add_argument("--points", type=int, default=16, help="random point prompts per frame")
    e.add_argument("--boxes", type=int, default=16, help="box prompts per frame")
    e.add_argument("--max-frames", type=int, default=None, help="score at most this many frames (default: all)")
    e.add_argument("--seed", type=int, default=0, help="seed of the random prompts (default 0)")
    e.add_argument("--json", type=Path, default=None, help="also write the result (with per-frame rows) to this JSON file")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=run_evaluate)


def _progress(events, desc: str) -> dict:
    """Drive a progress generator with a tqdm bar per stage; returns the last event."""
    from tqdm import tqdm

    bar, stage, last = None, None, {}
    try:
        for last in events:
            if "total" not in last or last["stage"] in ("done", "result"):
                continue
            if last["stage"] != stage:
                if bar is not None:
                    bar.close()
                stage = last["stage"]
                # frames done by an earlier run count from the start, not in the rate (no "71089 frame/s")
                start = max(0, last.get("step", last.get("done", 0)) - 1)
                bar = tqdm(total=last["total"], desc=desc if stage == desc else f"{desc}: {stage}", initial=start,
                           unit="step" if stage == "train" else "frame", file=sys.stderr)
            bar.n = last.get("step", last.get("done", 0))
            if "loss" in last:
                bar.set_postfix(loss=f"{last['loss']:.4g}", lr=f"{last['lr']:.2g}", refresh=False)
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    return last


def run_distill(args: argparse.Namespace) -> int:
    from .distill import TrainConfig, iter_distill

    config = TrainConfig(
        epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr,
        min_lr=args.min_lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, amp=args.amp, freeze_bn=args.freeze_bn,
        save_every=args.save_every, keep=args.keep, seed=args.seed, workers=args.workers,
    )
    try:
        last = _progress(iter_distill(
            args.images, args.teacher, args.work, student=args.student, config=config, decoder_from=args.decoder_from,
            fp16=not args.fp32_embeddings, device=args.device, resume=args.resume, precompute_only=args.precompute,
            out=args.out,
        ), "distill")
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"mobilesam distill: error: {err}", file=sys.stderr)
        return 2
    what = "teacher embeddings" if args.precompute else "student checkpoint"
    print(f"{what}: {last['checkpoint']}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .distill.evaluation import format_table, iter_evaluate

    try:
        result = _progress(iter_evaluate(
            args.student, args.teacher, args.images, points=args.points, boxes=args.boxes, seed=args.seed,
            max_frames=args.max_frames, device=args.device, decoder_from=args.decoder_from,
        ), "evaluate")
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"mobilesam evaluate: error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0
