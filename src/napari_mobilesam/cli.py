"""``mobilesam``: MobileSAM without a GUI - embeddings, prompted segmentation, segment-everything, weights.

Every command reads frames lazily, writes each finished frame at once and resumes where it stopped.
``--workers N`` / ``--scheduler ADDRESS`` run the frames as dask.distributed tasks. Errors about the
user's input print one line and exit with status 2 (``MOBILESAM_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ._threads import configure_openmp

configure_openmp()  # before anything imports torch: OpenMP threads sleep instead of spinning (see _threads)
from .cli_parser import SAMPLER_OPTIONS
from .engine.io import InputError
from .engine.labelfile import OutputLock

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


def _spec(args: argparse.Namespace, detector: str | None = None):
    from .engine.distributed import ModelSpec
    from .model.build import resolve_device
    from .model.weights import resolve_weights

    weights, decoder = args.weights, args.decoder
    if not args.scheduler:  # a remote cluster resolves names itself; locally fail before any work starts
        weights = str(resolve_weights(weights))
        decoder = str(resolve_weights(decoder)) if decoder else None
        try:
            resolve_device(args.device)
        except RuntimeError as err:
            raise InputError(f"--device {args.device}: {err}") from None
    if detector and not args.scheduler and not Path(detector).is_file():
        raise InputError(f"--detector {detector} does not exist; give a YOLO .pt or .onnx file, or use --sampler blobs or grid.")
    return ModelSpec(weights=weights, device=args.device, decoder=decoder, detector=str(Path(detector).resolve()) if detector else None,
                     trust_detector=bool(getattr(args, "trust_detector", False)))


def _models_ready(run: Callable, source) -> str:
    """Load the model (and detector) where they run before any output is created; returns the model hash."""
    from .engine.jobs import ModelHashJob

    ((_, model_hash),) = list(run(ModelHashJob(), [(source, 0, None)]))
    return model_hash


def _decoder_sig(args: argparse.Namespace) -> dict:
    """--decoder in a run's resume signature (absent without one, so older partial runs still resume)."""
    return {"decoder": args.decoder} if getattr(args, "decoder", None) else {}


@contextmanager
def _runner(args: argparse.Namespace, spec) -> Iterator[Callable]:
    """``run(job, tasks)`` -> iterator of ``(task, result)`` in order: inline, or on a dask cluster."""
    if not (args.scheduler or args.workers):
        from .engine.distributed import ModelHolder, run_local

        holder = ModelHolder(spec)

        def run(job, tasks):
            return run_local(holder, job, tasks)

        run.models = holder  # type: ignore[attr-defined]  # in-process: per-batch progress (cmd_segment)
        yield run
        return
    from .engine.distributed import run_distributed, start_client

    if args.workers is not None and (args.scheduler or args.workers < 1):
        raise InputError("Give either --workers N (N >= 1, a local cluster) or --scheduler ADDRESS, not both.")
    if not args.scheduler:  # a local cluster's shutdown chatter is noise here
        import logging

        logging.getLogger("distributed").setLevel(logging.ERROR)
    client = start_client(args.scheduler, args.workers)
    _say(args, f"dask cluster: {len(client.nthreads())} workers" + (f", dashboard {client.dashboard_link}" if args.scheduler else ""))
    try:
        yield lambda job, tasks: run_distributed(client, spec, job, tasks)
    finally:
        cluster = None if args.scheduler else client.cluster
        client.close()
        if cluster is not None:
            cluster.close()


def _preprocess(args: argparse.Namespace, source) -> dict:
    """--channels / --contrast, checked against the image's frames."""
    from .engine.image import preprocess_options

    try:
        return preprocess_options(args.channels, args.contrast, source.frame_shape)
    except ValueError as err:
        raise InputError(f"{source.path}: {err}") from None


def _checked_store(args: argparse.Namespace, run: Callable, source, path: str | None, prep: dict) -> str | None:
    """Validate ``--embeddings`` against the model (where it runs) and the image as pre-processed
    with ``prep`` (from ``_preprocess``); returns its absolute path."""
    if not path:
        return None
    from .engine.store import EmbeddingStore, image_fingerprint

    model_hash = _models_ready(run, source)
    store = EmbeddingStore.open(path, model_hash, image_fingerprint(source, prep), mode="r")
    _say(args, f"reusing {store.done_count}/{store.n_frames} embeddings from {path}")
    return str(Path(path).resolve())


def _file_hash(path: str | None) -> str | None:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=12).hexdigest() if path else None


# ------------------------------------------------------------------------------------------- commands
def cmd_embed(args: argparse.Namespace) -> int:
    import torch

    from .engine.embeddings import Embedding
    from .engine.io import open_image, with_channel_axis
    from .engine.jobs import EmbedJob
    from .engine.store import EmbeddingStore, image_fingerprint

    source = with_channel_axis(open_image(args.image), args.channel_axis)
    spec = _spec(args)
    out = Path(args.output)
    prep = _preprocess(args, source)
    with OutputLock(out, _command_line()), _runner(args, spec) as run:
        model_hash = _models_ready(run, source)
        if args.overwrite and out.exists():
            EmbeddingStore.remove(out)  # raises unless it is an embedding store
        store = EmbeddingStore.open(out, model_hash, image_fingerprint(source, prep), n_frames=source.n_frames,
                                    original_size=source.hw, dtype="float16" if args.half else "float32")
        bad = store.verify()  # damaged embeddings are computed again
        if bad:
            _say(args, f"{out}: frame(s) {', '.join(map(str, bad[:10]))} failed their checksum; computing them again")
        todo = store.todo()
        if len(todo) < store.n_frames:
            _say(args, f"{out}: {store.n_frames - len(todo)} of {store.n_frames} frames already stored; resuming")
        hw, input_size = tuple(store.meta["original_size"]), tuple(store.meta["input_size"])
        with _bar(args, len(todo), "embed") as bar:
            for (_, t, _), (feats, pixels) in run(EmbedJob(prep), [(source, t, None) for t in todo]):
                store.save(t, Embedding(torch.from_numpy(feats)[None], hw, input_size), frame_hash=pixels)
                bar.update()
    _say(args, f"wrote {out}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from .engine.io import LabelWriter, open_image, read_objects, with_channel_axis
    from .engine.jobs import SegmentJob
    from .engine.store import image_fingerprint

    session = _from_session(args) if getattr(args, "session", None) else None
    if not (args.points or args.boxes):
        raise InputError("Give prompts: --points POINTS.csv and/or --boxes SHAPES.csv (napari layers saved as CSV), or --session DIR.")
    source = with_channel_axis(open_image(args.image), args.channel_axis)
    if session is not None:
        from .engine.session import check_image

        check_image(session, tuple(source.leading_shape) + tuple(source.frame_shape), source.read)
    refine = None
    if args.refine:  # points naming one of its labels refine it (engine/refine.py)
        from .engine.refine import open_labels, read_refinements

        refine = open_labels(args.refine, source)
        prompts = read_refinements(source, args.points, args.boxes, refine)
    else:
        ids = {} if session is None else {"shape_ids": session.shape_ids or None, "shape_masks": session.shape_masks or None}
        prompts = read_objects(source, args.points, args.boxes, **ids)  # the widget's rules (engine/prompts.py)
    if not prompts:
        raise InputError(f"{args.points or args.boxes} holds no prompts.")
    spec = _spec(args)
    prep = _preprocess(args, source)
    signature = {"command": "segment", "image": image_fingerprint(source, prep), "points": _file_hash(args.points),
                 "boxes": _file_hash(args.boxes), "weights": args.weights, "multimask": args.multimask, **_decoder_sig(args)}
    if refine is not None:
        signature["refine"] = _file_hash(args.refine)
    inputs = [p for p in (args.image, args.points, args.boxes, args.embeddings, args.refine) if p]
    with ExitStack() as stack:
        writer = LabelWriter(args.output, source.leading_shape, source.hw, signature, overwrite=args.overwrite, inputs=inputs,
                             lock=stack.enter_context(OutputLock(args.output, _command_line())))
        _say_repaired(args, writer)
        with _runner(args, spec) as run:
            job = SegmentJob(store=_checked_store(args, run, source, args.embeddings, prep), multimask=args.multimask, preprocess=prep,
                             refine=None if refine is None else refine.path)
            if writer.todo():
                model_hash = _models_ready(run, source)  # nothing is written before the model has loaded
                if session is not None:
                    from .engine.session import check_model

                    check_model(session, model_hash)
            for _ in range(2):  # the second pass recomputes frames that fail their checksum
                todo = writer.todo()
                for t in todo:
                    if t not in prompts:
                        writer.write(t, np.zeros(source.hw, np.uint32) if refine is None else np.asarray(refine.read(t), np.uint32))
                todo = writer.todo()
                models = getattr(run, "models", None)  # in this process: the bar moves per batch of objects
                with _bar(args, sum(len(prompts[t]) for t in todo), "segment", unit="object", mininterval=0) as bar:
                    if models is not None:
                        models.progress = bar.update
                    for (_, t, _), labels in run(job, [(source, t, prompts[t]) for t in todo]):
                        writer.write(t, labels)
                        if models is None:
                            bar.update(len(prompts[t]))
                        ids = np.array([ob.label_id for ob in prompts[t]], np.int64)
                        empty = ids[~np.isin(ids, labels)] if ids.size else ids
                        if empty.size:  # the model found no mask (or only pixels the user's labels hold)
                            where = f" frame {t}" if source.n_frames > 1 else ""
                            print(f"warning: {source.path}{where}: object{'s' * (empty.size > 1)} {', '.join(map(str, empty[:10]))} "
                                  "came out empty (no pixel written); try a box or more points.", file=sys.stderr)
                if models is not None:
                    models.progress = None
                if not _say_repaired(args, writer, writer.verify()):
                    break
        _say(args, f"wrote {writer.finish()}")
    return 0


def _from_session(args: argparse.Namespace):
    """``--session DIR``: its prompt files, and how the model saw the image (unless given), into ``args``."""
    from .engine.session import load_session

    if args.points or args.boxes:
        raise InputError("Give either --session DIR or --points/--boxes, not both: a session holds its own prompts.")
    session = load_session(args.session)
    args.points = str(session.points_csv) if session.points_csv else None
    args.boxes = str(session.boxes_csv) if session.boxes_csv else None
    prep = session.preprocess
    if args.contrast is None and prep.get("contrast_limits") is not None:
        args.contrast = [float(v) for v in prep["contrast_limits"]]
    if args.channels is None and prep.get("channels"):
        args.channels = [int(v) for v in prep["channels"]]
    if args.channel_axis is None and prep.get("channel_axis") is not None:
        args.channel_axis = int(prep["channel_axis"])
    recorded = str(session.model.get("weights") or "")
    if args.weights == "mobile_sam" and recorded and recorded != "mobile_sam" and Path(recorded).is_file():  # --weights not given
        args.weights = recorded
        _say(args, f"using the weights recorded in the session: {recorded} (give --weights to choose others)")
    if not (args.points or args.boxes):
        raise InputError(f"{args.session} holds no prompts.")
    return session


def _say_repaired(args: argparse.Namespace, writer, bad: list[int] | None = None) -> list[int]:
    bad = writer.repaired if bad is None else bad
    if bad:
        _say(args, f"{writer.store_path}: frame(s) {', '.join(map(str, bad[:10]))} failed their checksum; computing them again")
    return bad


def _command_line() -> str:
    return " ".join(["mobilesam", *sys.argv[1:]])[:300]


def _outputs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    from .engine.io import _is_zarr, list_images

    src, out = Path(args.image), Path(args.output)
    if src.is_dir() and not _is_zarr(src):
        if out.suffix.lower() in (".tif", ".tiff") or (out.exists() and not out.is_dir()):
            raise InputError(f"{src} is a folder, so -o must be a folder for the label files, not {out}.")
        pairs = [(f, out / f"{f.name.split('.')[0]}_labels.{args.format}") for f in list_images(src)]
        names = [o.name for _, o in pairs]
        clash = sorted({f.name for f, o in pairs if names.count(o.name) > 1})
        if clash:
            raise InputError(f"{', '.join(clash)} would share an output name in {out}; rename them or run them separately.")
        return pairs
    if out.suffix and out.suffix.lower() not in (".tif", ".tiff", ".zarr") and not out.is_dir():
        raise InputError(f"-o {out}: labels are written as .tif or .zarr (ids above 255 do not fit a {out.suffix} image); "
                         f"give {out.with_suffix('.tif')} or a folder.")
    if out.suffix.lower() not in (".tif", ".tiff", ".zarr"):
        return [(src, out / f"{src.name.split('.')[0]}_labels.{args.format}")]
    return [(src, out)]


def cmd_everything(args: argparse.Namespace) -> int:
    import numpy as np

    from .engine.io import LabelWriter, open_image, with_channel_axis
    from .engine.jobs import EverythingJob
    from .engine.store import image_fingerprint

    sampler = args.sampler or ("object-aware" if args.detector else "grid")
    if sampler == "object-aware" and not args.detector:
        raise InputError("--sampler object-aware needs --detector PATH (e.g. ObjectAwareModel.pt); or use --sampler blobs or grid.")
    if args.detector and sampler != "object-aware":
        raise InputError(f"--detector is only used by --sampler object-aware, not {sampler}.")
    options = {}
    for opt, (name, samplers) in SAMPLER_OPTIONS.items():
        value = getattr(args, opt)
        if value is not None:
            if sampler not in samplers:
                raise InputError(f"--{opt.replace('_', '-')} applies to --sampler {' or '.join(samplers)}, not {sampler}.")
            options[name] = value
    pairs = _outputs(args)
    if args.embeddings and len(pairs) > 1:
        raise InputError("--embeddings works with a single image, not a folder.")
    if args.embeddings and args.tile:
        raise InputError("--embeddings holds whole-frame embeddings; tiles need their own: drop --embeddings or --tile.")
    if args.tile_overlap is not None and not args.tile:
        raise InputError("--tile-overlap needs --tile PX.")
    if args.tile:
        from .engine.tiles import tile_settings

        try:
            tile_settings(args.tile, args.tile_overlap)
        except ValueError as err:
            raise InputError(f"--tile {args.tile} --tile-overlap {args.tile_overlap}: {err}") from None
    spec = _spec(args, args.detector)
    sources, writers = [], {}
    with ExitStack() as stack:
        for path, out in pairs:
            source = with_channel_axis(open_image(path), args.channel_axis)
            prep = _preprocess(args, source)
            options.update(prep)  # iter_segment_everything takes channels / contrast_limits
            link = _link_mode(args, pairs, source)
            signature = {"command": "everything", "image": image_fingerprint(source), "sampler": sampler, "options": options,
                         "weights": args.weights, "detector": _file_hash(args.detector), **_decoder_sig(args),
                         **({"link": link, "fill": not args.no_fill} if link != "none" else {})}
            lock = stack.enter_context(OutputLock(out, _command_line()))
            writers[source.path] = LabelWriter(out, source.leading_shape, source.hw, signature, overwrite=args.overwrite,
                                               inputs=[path], lock=lock, staged=link != "none")  # linked: built in OUT.partial.zarr
            _say_repaired(args, writers[source.path])
            sources.append(source)
        done_before = sum(w.done_count for w in writers.values() if not w.complete) + sum(w.n_frames for w in writers.values() if w.complete)
        if done_before:
            _say(args, f"resuming: {done_before} frames already finished")
        with _runner(args, spec) as run:
            job = EverythingJob(sampler, options, _checked_store(args, run, sources[0], args.embeddings, prep))  # one image
            if any(w.todo() for w in writers.values()):
                _models_ready(run, sources[0])  # model and detector load before any output is created
            finish = (lambda w: w.finish()) if link == "none" else (
                lambda w: _finish_linked(args, w, sources[0], spec, prep, link, job.store))
            for _ in range(2):  # the second pass recomputes frames that fail their checksum
                tasks = [(s, t, None) for s in sources for t in writers[s.path].todo()]
                with _bar(args, len(tasks), "everything") as bar:
                    for (source, t, _), labels in run(job, tasks):
                        writer = writers[source.path]
                        offset = writer.offset(t, int(labels.max(initial=0)))
                        writer.write(t, np.where(labels > 0, labels + np.uint32(offset), 0).astype(np.uint32))
                        _say_objects(args, bar, source, t, labels, sampler)
                        if writer.done_count == writer.n_frames and not _say_repaired(args, writer, writer.verify()):
                            finish(writer)
                        bar.update()
                if not any([_say_repaired(args, w, w.verify()) for w in writers.values() if not w.complete]):
                    break
            for w in writers.values():
                finish(w)
    _say(args, f"wrote {pairs[0][1] if len(pairs) == 1 else f'{len(pairs)} label files to {args.output}'}")
    return 0


def _link_mode(args: argparse.Namespace, pairs: list, source) -> str:
    """--link, or its default from the file's axes (ImageJ/OME Z -> 3d, T -> time); checks --tracks."""
    from .engine.linkpass import axes_link, file_axes

    link = args.link or (axes_link(file_axes(source.path), len(source.leading_shape)) if len(pairs) == 1 else "none")
    if args.link is None and link != "none":
        _say(args, f"linking frames as --link {link} (from the file's axes; --link none to keep each frame alone)")
    if args.tracks and link != "time":
        raise InputError("--tracks needs --link time (tracks through a time-lapse).")
    if link == "none":
        return link
    if len(pairs) > 1:
        raise InputError(f"--link {link} links the frames of one stack; give one image file, not a folder.")
    if len(source.leading_shape) != 1:
        raise InputError(f"--link {link} needs a stack with one leading axis (Z or T); {source.path} has frames "
                         f"{source.leading_shape}. Use --link none.")
    return link


def _finish_linked(args: argparse.Namespace, writer, source, spec, prep: dict, link: str, store: str | None):
    """The link pass over the finished frames (SAM fill-ins, laptrack), then the linked TIFF and --tracks."""

    from ._progress import drive
    from .engine.distributed import ModelHolder
    from .engine.image import to_rgb_uint8
    from .engine.jobs import use_stored_embedding
    from .engine.linkpass import iter_link_stack
    from .engine.tracks import write_tracks

    if writer.complete:
        if args.tracks and not Path(args.tracks).exists():
            raise InputError(f"{writer.path} is already linked; pass --overwrite to link again and write --tracks {args.tracks}.")
        return writer.path
    holder = None if args.no_fill else ModelHolder(spec)

    def read_image(t: int):
        frame = source.read(t)
        return to_rgb_uint8(frame, channel_axis=-1 if frame.ndim == 3 else None, channels=prep.get("channels"),
                            contrast_limits=prep.get("contrast_limits"))

    def key(t: int):
        return use_stored_embedding(holder, store, source, t) if store else None

    with _bar(args, writer.n_frames, f"link {link}") as bar:
        def show(p) -> None:
            bar.n = p[0]
            bar.set_postfix_str(p[2].split(", ", 1)[-1] if ", " in p[2] else "", refresh=True)

        work = iter_link_stack(writer.n_frames, writer.read, link, predictor=holder.predictor if holder else None,
                               read_image=read_image, key=key, fill=not args.no_fill)
        links = drive(work, show)
    path = writer.finish(transform=links.iter_relabel)
    what = "tracks" if link == "time" else "objects"
    _say(args, f"{len(links.tracks)} {what} over {writer.n_frames} frames" + (f", {len(links.parents)} with a parent" if link == "time" else ""))
    if args.tracks:
        write_tracks(args.tracks, (writer.read_output(t) for t in range(writer.n_frames)), links, overwrite=args.overwrite)
        _say(args, f"wrote tracks to {args.tracks}")
    return path


def _say_objects(args: argparse.Namespace, bar, source, t, labels, sampler: str) -> None:
    """Objects found in one frame; a warning (even with --quiet) when there are none."""
    import numpy as np

    n = int(np.count_nonzero(np.bincount(labels.ravel())[1:])) if labels.size else 0
    where = f"{Path(str(source.path)).name} frame {t}"
    if n:
        if not args.quiet:
            bar.write(f"{where}: {n} objects", file=sys.stderr)
        return
    hint = {
        "blobs": "give --diameter PX (typical object diameter), --polarity dark for dark objects, a lower --threshold, "
                 "or --min-snr 0 for faint objects",
        "object-aware": "check that the detector was trained on objects like these, or try --sampler blobs",
        "grid": "lower --min-score / --min-stability, or try --sampler blobs",
    }.get(sampler, "try another --sampler")
    bar.write(f"warning: {where}: 0 objects; {hint}.", file=sys.stderr)


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
    prep = _preprocess(args, source)
    holder_spec = _spec(args)
    from .engine.distributed import ModelHolder

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
            raise ValueError("'mobilesam weights' lists the registry; use 'mobilesam weights fetch NAME' to download.")
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
        raise ValueError(f"Unknown weights name(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}.")
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
