"""Options the benchmarks share: ``--malloc`` (tune glibc malloc as the ``mobilesam`` command does)
and ``--threads`` (torch threads, for both sides of a comparison)."""

from __future__ import annotations

import argparse

import torch


def add_runtime_args(ap: argparse.ArgumentParser, threads_default: int | None = 0) -> None:
    ap.add_argument("--malloc", action="store_true", help="tune glibc malloc first, as the mobilesam command does (for both sides; see napari_mobilesam._malloc)")
    ap.add_argument("--threads", type=int, default=threads_default, help="torch threads for both sides (default: torch's); 1 is steadier on a shared CPU")


def apply_runtime_args(args: argparse.Namespace) -> None:
    """Tune malloc (``--malloc``) before anything large is allocated, then set torch's threads."""
    if args.malloc:
        from napari_mobilesam._malloc import tune_allocator

        print("glibc malloc tuned:", tune_allocator())
    if args.threads:
        torch.set_num_threads(args.threads)
