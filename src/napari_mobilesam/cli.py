"""``mobilesam``: MobileSAM without a GUI - embeddings, prompted segmentation, segment-everything, weights.

Every command reads frames lazily, writes each finished frame at once and resumes where it stopped.
``--workers N`` / ``--scheduler ADDRESS`` run the frames as dask.distributed tasks. Errors about the
user's input print one line and exit with status 2 (``MOBILESAM_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import ExitStack
from pathlib import Path

from ._threads import configure_openmp

configure_openmp()  # before anything imports torch: OpenMP threads sleep instead of spinning (see _threads)
from .engine.errors import InputError, SettingsError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``mobilesam`` argument parser (see cli_parser.py)."""
    from .cli_parser import build_parser as build

    return build({"embed": cmd_embed, "segment": cmd_segment, "everything": cmd_everything, "weights": cmd_weights,
                  "propagate": cmd_propagate})


# ------------------------------------------------------------------------------------------- helpers
def _bar(args: argparse.Namespace, total: int, desc: str, unit: str = "frame", mininterval: float = 0.1):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=args.quiet, file=sys.stderr, dynamic_ncols=True, mininterval=mininterval)


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


def _config(args: argparse.Namespace, **extra):
    """The run's configuration, built once from the arguments (engine/runs.py)."""
    from .engine.runs import RunConfig

    return RunConfig.from_args(args, command_line=_command_line(), **extra)


def _show(args: argparse.Namespace, work) -> int:
    """Run an engine run generator (engine/runs.py), printing what it reports; returns its status."""
    with ExitStack() as stack:
        bar = None
        while True:
            try:
                ev = next(work)
            except StopIteration as done:
                return int(done.value or 0)
            if ev.kind == "bar":
                if bar is not None:
                    bar.close()
                bar = stack.enter_context(_bar(args, ev.total, ev.text, ev.unit, mininterval=0 if ev.unit == "object" else 0.1))
                ev.update = bar.update
            elif ev.kind == "step" and bar is not None:
                bar.update(ev.n)
            elif ev.kind == "pos" and bar is not None:
                bar.n = ev.n
                bar.set_postfix_str(ev.text, refresh=True)
            elif ev.kind == "end" and bar is not None:
                bar.close()
                bar = None
            elif ev.kind == "warn":
                (bar.write if bar is not None else print)(ev.text, file=sys.stderr)
            elif ev.kind == "note" and not args.quiet:
                (bar.write if bar is not None else print)(ev.text, file=sys.stderr)
            elif ev.kind == "say":
                _say(args, ev.text)


def _command_line() -> str:
    return " ".join(["mobilesam", *sys.argv[1:]])[:300]


# ------------------------------------------------------------------------------------------- commands
def cmd_embed(args: argparse.Namespace) -> int:
    from .engine.runs import iter_embed

    return _show(args, iter_embed(_config(args)))


def cmd_segment(args: argparse.Namespace) -> int:
    from .engine.runs import iter_segment

    return _show(args, iter_segment(_config(args)))


def cmd_everything(args: argparse.Namespace) -> int:
    from .cli_parser import sampler_options
    from .engine.runs_everything import check_sampler, iter_everything

    cfg = _config(args)
    sampler, options = check_sampler(cfg, {o: (getattr(args, o), samplers) for o, (_, samplers) in sampler_options().items()})
    return _show(args, iter_everything(cfg, sampler, options))


def cmd_propagate(args: argparse.Namespace) -> int:
    """Every label of frame K through the stack (engine.propagate.iter_propagate_labels)."""
    import numpy as np
    import tifffile

    from ._progress import drive
    from .engine.io import open_image, with_channel_axis
    from .engine.labels import write_labels
    from .engine.propagate import iter_propagate_labels, render_propagated

    source = with_channel_axis(open_image(args.image), args.channel_axis)
    if len(source.leading_shape) != 1:
        raise InputError(f"{args.image}: propagate needs a stack with one leading axis (T or Z); its frames are {source.leading_shape}.")
    n = source.n_frames
    if not 0 <= args.from_frame < n:
        raise InputError(f"--from-frame {args.from_frame} is not a frame of {args.image} (0..{n - 1}).")
    out = Path(args.output)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"-o {out}: propagate writes a .tif label stack.")
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it, or choose another -o.")
    given = np.asarray(tifffile.imread(args.labels))
    if given.shape == tuple(source.hw):
        stack, start = np.zeros((n, *source.hw), np.uint32), given
    elif given.shape == (n, *source.hw):
        stack, start = given.astype(np.uint32), given[args.from_frame]
    else:
        raise InputError(f"--labels {args.labels} has shape {given.shape}; give frame {args.from_frame}'s {tuple(source.hw)} labels "
                         f"or a stack of {(n, *source.hw)}.")
    if start.min() < 0 or not start.any():
        raise InputError(f"--labels {args.labels} has no (positive) labels on frame {args.from_frame}.")
    from .engine.distributed import ModelHolder
    from .engine.runs import model_spec, preprocess

    cfg = _config(args)
    prep = preprocess(cfg, source)
    holder_spec = model_spec(cfg)

    pred = ModelHolder(holder_spec).predictor
    with _bar(args, 0, "propagate") as bar:
        def show(p) -> None:
            bar.update()
            bar.set_postfix_str(p[3], refresh=False)

        found = drive(iter_propagate_labels(pred, source.read, n, args.from_frame, start, min_score=args.min_score,
                                            min_overlap=args.min_overlap, image_kwargs=prep), show)
    stack[args.from_frame][stack[args.from_frame] == 0] = start[stack[args.from_frame] == 0]
    for t, new in render_propagated(found, tuple(source.hw)).items():
        write_labels(stack[t], new, overwrite=args.overwrite)
    tifffile.imwrite(out, stack, compression="zlib", photometric="minisblack")
    frames = {t for masks in found.values() for t in masks}
    _say(args, f"propagated {len(found)} objects over {len(frames)} frames; wrote {out}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from ._progress import drive
    from .model.weights import REGISTRY, cache_dir, env_var_for, iter_fetch

    if args.action == "list":
        if args.names:
            raise SettingsError("'mobilesam weights' lists the registry; use 'mobilesam weights fetch NAME' to download.")
        print(f"cache: {cache_dir()}  (set NAPARI_MOBILESAM_CACHE to move it)")
        width = max(len(n) for n in REGISTRY)  # one column for every name, however long
        for name, spec in REGISTRY.items():
            cached = "cached" if (cache_dir() / spec.filename).is_file() else "not cached"
            print(f"  {name:<{width}} {cached:<11} {spec.description}")
            print(f"  {'':<{width}} {'':<11} offline: --weights PATH or {env_var_for(name)}=PATH")
        return 0
    names = args.names or ["mobile_sam"]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise SettingsError(f"Unknown weights name(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}.")
    for name in names:
        with ExitStack() as stack:
            bars: list = []  # a bar only once bytes arrive: weights already cached show none (no "0.00B" bar)

            def show(progress: tuple[int, int], bars=bars, stack=stack, name=name) -> None:
                if not bars:
                    bars.append(stack.enter_context(_bar(args, progress[1], name)))
                    bars[0].unit, bars[0].unit_scale = "B", True
                bars[0].n, bars[0].total = progress
                bars[0].refresh()

            path = drive(iter_fetch(name), show)
        print(f"{name}: {path}")
    return 0


# ------------------------------------------------------------------------------------------- entry
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mobilesam`` console script; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from ._errors import is_user_error, log_unexpected

    formatwarning = warnings.formatwarning  # a warning shown here is one line: its message, not its source line
    warnings.formatwarning = lambda message, *_a, **_k: f"warning: {message}\n"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\nmobilesam: interrupted. Finished frames are saved; run the same command again to resume.", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error ends as one line; bugs are logged with a traceback
        if os.environ.get("MOBILESAM_DEBUG"):
            raise
        if not is_user_error(err):  # a bug, not the input: the traceback goes to the log (stderr by default)
            log_unexpected(err, f"mobilesam {args.command}")
            first = (str(err).strip().splitlines() or [""])[0]
            print(f"mobilesam {args.command}: internal error, please report it (its traceback is logged): "
                  f"{type(err).__name__}: {first}", file=sys.stderr)
            return 1
        msg = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print(f"mobilesam {args.command}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
