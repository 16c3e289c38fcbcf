"""The ``mobilesam`` command line: argument parser, help texts and option tables (commands in cli.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .engine.prompts import RULES

__all__ = ["EXAMPLES", "build_parser", "sampler_options"]

EXAMPLES = """\
examples:
  mobilesam embed movie.tif -o movie.emb.zarr            # encode every frame once
  mobilesam segment movie.tif --points clicks.csv --boxes boxes.csv -o labels.tif
  mobilesam everything nuclei.tif -o nuclei_labels.tif --sampler blobs --diameter 20
  mobilesam everything plate/ -o plate_labels/ --detector ObjectAwareModel.pt --workers 4
  mobilesam weights fetch mobile_sam                     # pre-download (e.g. on a cluster login node)

Run 'mobilesam COMMAND --help' for a command's options. Interrupted runs resume when re-run."""


def sampler_options() -> dict[str, tuple[str, tuple[str, ...]]]:
    """``--flag`` dest -> (engine option, samplers it applies to), from the registered samplers' options
    dataclasses (engine/samplers/): every option with help text is a flag of ``mobilesam everything``."""
    from .engine.samplers import option_specs

    return {name: (name, spec.samplers) for name, spec in option_specs().items()}


def _add_sampler_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per sampler option (engine/samplers/), with its help, type and per-sampler defaults."""
    from .engine.samplers import get_sampler, option_specs, sampler_names

    every = set(sampler_names())
    for name, spec in option_specs().items():
        common = set(spec.samplers) == every
        if name in ("min_score", "min_stability"):  # None: the sampler's own default
            i = 0 if name == "min_score" else 1
            values = {n: get_sampler(n).score_defaults[i] for n in sampler_names()}
        else:
            values = {n: v for n, v in spec.defaults.items() if v is not None}
        if len(set(values.values())) == 1 and (common or len(values) == len(spec.samplers)):
            default = f" (default {next(iter(values.values()))})"
        elif values:
            by_value: dict = {}
            for n, v in values.items():
                by_value.setdefault(v, []).append(n)
            default = " (default " + ", ".join(f"{v} for {'/'.join(ns)}" for v, ns in by_value.items()) + ")"
        else:
            default = ""
        text = ("" if common else "/".join(spec.samplers) + ": ") + spec.help + default
        typ = _fraction if spec.kind == "fraction" else spec.type
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, choices=spec.choices, metavar=spec.metavar,
                           help=text.replace("%", "%%"))


# ------------------------------------------------------------------------------------------- parser
def _fraction(text: str) -> float:
    """A number from 0 to 1 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is a fraction of the object's pixels: give 0..1 (0.5: half visible)")
    return value


def _common(model: bool = True, cluster: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    if model:
        g = p.add_argument_group("model")
        g.add_argument("--weights", default="mobile_sam", metavar="NAME|PATH", help="registry name (see 'mobilesam weights') or checkpoint file (default: mobile_sam)")
        g.add_argument("--decoder", metavar="NAME|PATH", help="MobileSAMv2's prompt-guided decoder instead of the checkpoint's: mobilesamv2 "
                       "(downloaded, verified) or a Prompt_guided_Mask_Decoder.pt; needed by --weights efficientvit_l2 / l2.pt")
        g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
        g = p.add_argument_group("image (what the model sees; recorded in stores and resume checks)")
        g.add_argument("--channel-axis", type=int, metavar="A", help="a stack axis that holds channels, e.g. 1 for (T, C, H, W)")
        g.add_argument("--channels", type=int, nargs="+", metavar="I", help="colour/multichannel frames: 1-3 channels as R, G, B")
        g.add_argument("--contrast", type=float, nargs=2, metavar=("LO", "HI"), help="intensity window (default: 1-99.8 percentiles per frame)")
    if cluster:
        g = p.add_argument_group("scale-out (dask.distributed; inputs and weights must be readable by every worker)")
        g.add_argument("--workers", type=int, metavar="N", help="start a local cluster of N worker processes")
        g.add_argument("--scheduler", metavar="ADDRESS", help="use a running cluster, e.g. tcp://10.0.0.5:8786")
    g = p.add_argument_group("general")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


class _TopParser(argparse.ArgumentParser):
    """Top-level help: commands grouped by purpose, common options, examples (like git/docker)."""

    GROUPS = (("segmentation", ("segment", "everything", "embed")), ("models and training", ("weights", "distill", "evaluate")))

    def format_help(self) -> str:
        sub = next(a for a in self._actions if isinstance(a, argparse._SubParsersAction))
        helps = {a.dest: a.help for a in sub._choices_actions}
        lines = [f"usage: {self.usage}", "", self.description or "", ""]
        for title, names in self.GROUPS:
            lines.append(f"{title}:")
            lines += [f"  {n:<12}{helps[n]}" for n in names if n in helps]
            lines.append("")
        lines += ["common options:",
                  "  --weights NAME|PATH   model weights (default mobile_sam)   --device cpu|cuda|mps|auto",
                  "  --workers N | --scheduler ADDRESS   run frames on a dask cluster   -q, --quiet   --version", "",
                  self.epilog or "", ""]
        return "\n".join(lines)


def build_parser(commands: dict[str, Callable]) -> argparse.ArgumentParser:
    """The ``mobilesam`` argument parser (sub-commands embed, segment, everything, weights, + distill/evaluate);
    ``commands`` maps those four names to their functions."""
    from .engine.samplers import get_sampler, sampler_names

    fmt = argparse.RawDescriptionHelpFormatter
    parser = _TopParser(
        prog="mobilesam", usage="mobilesam COMMAND [options]", formatter_class=fmt, epilog=EXAMPLES,
        description="Segment microscopy images with MobileSAM / MobileSAMv2, headless and at scale.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", parser_class=argparse.ArgumentParser, prog="mobilesam")
    io_parent, all_parent = _common(model=False, cluster=False), _common()

    e = sub.add_parser("embed", usage="mobilesam embed IMAGE -o EMB.zarr [options]", parents=[all_parent], formatter_class=fmt, help="precompute image embeddings into a zarr store",
                       description="Encode every frame once and store the embeddings (segment, everything and the napari "
                       "widget reuse a matching store and skip the encoder).",
                       epilog="example:\n  mobilesam embed movie.tif -o movie.emb.zarr --workers 4")
    e.add_argument("image", metavar="IMAGE", help="TIFF/OME-TIFF, zarr/OME-Zarr, PNG or JPEG; leading axes are frames")
    e.add_argument("-o", "--output", required=True, metavar="EMB.zarr", help="embedding store to create or complete")
    e.add_argument("--half", action="store_true", help="store float16 (half the disk, ~1e-3 relative error)")
    e.add_argument("--overwrite", action="store_true", help="discard an existing store instead of completing it")
    e.set_defaults(func=commands["embed"])

    s = sub.add_parser("segment", usage="mobilesam segment IMAGE (--points CSV [--boxes CSV] | --session DIR) -o LABELS [options]", parents=[all_parent], formatter_class=fmt, help="segment objects from napari point/box prompts",
                       description="Prompts are napari CSV files (File > Save Selected Layers... on a Points or Shapes layer), "
                       "with the widget's rules (columns 'label' 1/0, 'object', 'label_id', 'mask'): " + RULES,
                       epilog="example:\n  mobilesam segment movie.tif --points clicks.csv -o labels.tif --embeddings movie.emb.zarr")
    s.add_argument("image", metavar="IMAGE", help="image file the prompts were drawn on")
    s.add_argument("--points", metavar="POINTS.csv", help="napari Points layer CSV")
    s.add_argument("--boxes", metavar="SHAPES.csv", help="napari Shapes layer CSV (rectangles)")
    s.add_argument("-o", "--output", required=True, metavar="LABELS.tif|.zarr", help="label image to write")
    s.add_argument("--embeddings", metavar="EMB.zarr", help="reuse embeddings from 'mobilesam embed'")
    s.add_argument("--multimask", action="store_true", help="every object takes the best of SAM's 3 masks (single clicks always do, as in the widget)")
    s.add_argument("--refine", metavar="LABELS.tif", help="existing labels (any tool): a point whose label_id is one of its labels refines "
                   "that label (its mask + box + those points); the other labels are copied unchanged, new objects fill background")
    s.add_argument("--session", metavar="DIR", help="replay a session saved from napari (File > Save Layers... > MobileSAM session): "
                   "its prompts, ids, mask choices and contrast, painted Segment by Segment as the widget wrote them; refused if made "
                   "with other weights or on another image; warns where the result differs from the session's labels.tif (hand edits)")
    s.add_argument("--overwrite", action="store_true", help="redo every frame instead of resuming")
    s.set_defaults(func=commands["segment"])

    v = sub.add_parser("everything", usage="mobilesam everything IMAGE_OR_DIR -o OUT [--sampler S] [options]", parents=[all_parent], formatter_class=fmt, help="segment every object (MobileSAMv2 / grid / blobs)",
                       description="Label every object of each frame; ids are unique across a stack. Samplers: "
                       + "; ".join(f"{n} ({get_sampler(n).help})" for n in sampler_names())
                       + ". Default: object-aware with --detector, else blobs.",
                       epilog="examples:\n  mobilesam everything cells.tif -o cells_labels.tif --detector ObjectAwareModel.pt\n"
                       "  mobilesam everything wells/ -o labels/ --sampler blobs --diameter 25 --format zarr --workers 8")
    v.add_argument("image", metavar="IMAGE_OR_DIR", help="image file, stack, or a folder of images")
    v.add_argument("-o", "--output", required=True, metavar="OUT", help="label file (.tif/.zarr), or a folder for folder input")
    v.add_argument("--sampler", choices=sampler_names(), help="default: object-aware with --detector, else blobs")
    v.add_argument("--detector", metavar="PATH", help="YOLO detect/segment .pt (read without running code) or .onnx, e.g. MobileSAMv2's ObjectAwareModel.pt")
    v.add_argument("--trust-detector", action="store_true", help="also load detector files that need full unpickling: such a file can run any code, use only files from a trusted source")
    v.add_argument("--format", choices=("tif", "zarr"), default="tif", help="output format for folder input (default tif)")
    v.add_argument("--embeddings", metavar="EMB.zarr", help="reuse embeddings from 'mobilesam embed' (single image only)")
    v.add_argument("--overwrite", action="store_true", help="redo every frame instead of resuming")
    _add_sampler_flags(v.add_argument_group("sampler options"))
    k = v.add_argument_group("stacks (z-stacks and time-lapses; see docs/stacks.md)")
    k.add_argument("--link", choices=("none", "3d", "time"), help="3d: one id per object through the slices; time: one id per "
                   "track, divisions start two daughter tracks; none: each frame alone (default: from the file's axes, Z -> 3d, "
                   "T -> time, else none)")
    k.add_argument("--tracks", metavar="PATH", help="with --link time: write the tracks, a folder in the Cell Tracking "
                   "Challenge format (maskTTT.tif + res_track.txt) or a .geff file")
    k.add_argument("--no-fill", action="store_true", help="with --link: do not ask SAM for objects the sampler missed on a frame")
    v.set_defaults(func=commands["everything"])

    if "propagate" in commands:
        q = sub.add_parser("propagate", usage="mobilesam propagate IMAGE --labels LABELS --from-frame K -o OUT [options]", parents=[all_parent],
                           formatter_class=fmt, help="propagate every label of one frame through a stack",
                           description="Every object labelled on frame K is followed into the next and previous frames, all at once "
                           "(one embedding and one decode batch per frame); each object stops on its own where its predicted IoU or "
                           "its overlap with the previous frame drops below the thresholds. New masks fill background only.")
        q.add_argument("image", metavar="IMAGE", help="a stack (T or Z, H, W[, C])")
        q.add_argument("--labels", required=True, metavar="LABELS", help="labels of frame K: an (H, W) file or a stack like IMAGE")
        q.add_argument("--from-frame", required=True, type=int, metavar="K", help="the frame whose labels are propagated")
        q.add_argument("-o", "--output", required=True, metavar="OUT", help="label stack to write (.tif)")
        q.add_argument("--min-score", type=float, default=0.5, metavar="S", help="stop where the predicted IoU is below S (default 0.5)")
        q.add_argument("--min-overlap", type=float, default=0.3, metavar="F", help="stop where the IoU with the previous frame is below F (default 0.3)")
        q.add_argument("--overwrite", action="store_true", help="replace OUT if it exists; propagated masks may cover labels of LABELS")
        q.set_defaults(func=commands["propagate"])
    w = sub.add_parser("weights", usage="mobilesam weights [list | fetch NAME...]", parents=[io_parent], formatter_class=fmt, help="list or pre-download model weights",
                       description="Without arguments: list the registry, the cache folder and what is cached.",
                       epilog="examples:\n  mobilesam weights\n  mobilesam weights fetch mobile_sam vit_t_lm")
    w.add_argument("action", nargs="?", choices=("list", "fetch"), default="list")
    w.add_argument("names", nargs="*", metavar="NAME", help="registry names to fetch (default: mobile_sam)")
    w.set_defaults(func=commands["weights"])

    try:  # distill/evaluate live in their own module; the other commands work without it
        from .distill_cli import add_commands
    except ImportError:  # an install without that module: the other commands still work
        return parser
    add_commands(sub)  # a bug in it must show, not hide the commands
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-mobilesam")
    except PackageNotFoundError:
        return "0.0.0"
