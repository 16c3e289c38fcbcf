"""Headless segment-everything over one file or a folder (``mobilesam everything``): see :mod:`.runs`."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .errors import InputError
from .runs import (
    RunConfig,
    RunEvent,
    checked_store,
    decoder_sig,
    file_hash,
    model_spec,
    models_ready,
    preprocess,
    repaired,
    runner,
    verified_passes,
)

__all__ = ["check_sampler", "iter_everything", "outputs"]


def check_sampler(cfg: RunConfig, given: dict) -> tuple[str, dict]:
    """The sampler (default: object-aware with a detector, else blobs) and its options from ``given``
    (option name -> (value, samplers it applies to)); an option of another sampler is refused by name."""
    from .samplers import default_sampler, get_sampler

    sampler = cfg.sampler or default_sampler(cfg.detector)
    if get_sampler(sampler).needs_detector and not cfg.detector:
        raise InputError(f"--sampler {sampler} needs --detector PATH (e.g. ObjectAwareModel.pt); or use --sampler blobs or grid.")
    if cfg.detector and not get_sampler(sampler).needs_detector:
        raise InputError(f"--detector is only used by a sampler that needs one (object-aware), not {sampler}.")
    options = {}
    for name, (value, samplers) in given.items():
        if value is not None:
            if sampler not in samplers:
                raise InputError(f"--{name.replace('_', '-')} applies to --sampler {' or '.join(samplers)}, not {sampler}.")
            options[name] = value
    return sampler, options


def outputs(cfg: RunConfig) -> list[tuple[Path, Path]]:
    """(image, label file) pairs: one file, or every image of a folder into the folder ``-o``."""
    from .io import _is_zarr, list_images

    src, out = Path(cfg.image), Path(cfg.output)
    if src.is_dir() and not _is_zarr(src):
        if out.suffix.lower() in (".tif", ".tiff") or (out.exists() and not out.is_dir()):
            raise InputError(f"{src} is a folder, so -o must be a folder for the label files, not {out}.")
        pairs = [(f, out / f"{f.name.split('.')[0]}_labels.{cfg.format}") for f in list_images(src)]
        names = [o.name for _, o in pairs]
        clash = sorted({f.name for f, o in pairs if names.count(o.name) > 1})
        if clash:
            raise InputError(f"{', '.join(clash)} would share an output name in {out}; rename them or run them separately.")
        return pairs
    if out.suffix and out.suffix.lower() not in (".tif", ".tiff", ".zarr") and not out.is_dir():
        raise InputError(f"-o {out}: labels are written as .tif or .zarr (ids above 255 do not fit a {out.suffix} image); "
                         f"give {out.with_suffix('.tif')} or a folder.")
    if out.suffix.lower() not in (".tif", ".tiff", ".zarr"):
        return [(src, out / f"{src.name.split('.')[0]}_labels.{cfg.format}")]
    return [(src, out)]


def link_mode(cfg: RunConfig, pairs: list, source) -> tuple[str, str | None]:
    """--link, or its default from the file's axes (ImageJ/OME Z -> 3d, T -> time); checks --tracks.
    Returns ``(mode, a line to say or None)``."""
    from .linkpass import axes_link, file_axes

    link = cfg.link or (axes_link(file_axes(source.path), len(source.leading_shape)) if len(pairs) == 1 else "none")
    said = None
    if cfg.link is None and link != "none":
        said = f"linking frames as --link {link} (from the file's axes; --link none to keep each frame alone)"
    if cfg.tracks and link != "time":
        raise InputError("--tracks needs --link time (tracks through a time-lapse).")
    if link == "none":
        return link, said
    if len(pairs) > 1:
        raise InputError(f"--link {link} links the frames of one stack; give one image file, not a folder.")
    if len(source.leading_shape) != 1:
        raise InputError(f"--link {link} needs a stack with one leading axis (Z or T); {source.path} has frames "
                         f"{source.leading_shape}. Use --link none.")
    return link, said


def finish_linked(cfg: RunConfig, writer, source, spec, prep: dict, link: str, store: str | None) -> Generator[RunEvent, None, Path]:
    """The link pass over the finished frames (SAM fill-ins, laptrack), then the linked TIFF and --tracks."""
    from .distributed import ModelHolder
    from .image import to_rgb_uint8
    from .jobs import use_stored_embedding
    from .linkpass import iter_link_stack
    from .tracks import write_tracks

    if writer.complete:
        if cfg.tracks and not Path(cfg.tracks).exists():
            raise InputError(f"{writer.path} is already linked; pass --overwrite to link again and write --tracks {cfg.tracks}.")
        return writer.path
    holder = None if cfg.no_fill else ModelHolder(spec)

    def read_image(t: int):
        frame = source.read(t)
        return to_rgb_uint8(frame, channel_axis=-1 if frame.ndim == 3 else None, channels=prep.get("channels"),
                            contrast_limits=prep.get("contrast_limits"))

    def key(t: int):
        return use_stored_embedding(holder, store, source, t) if store and holder is not None else None

    yield RunEvent("bar", f"link {link}", total=writer.n_frames)
    work = iter_link_stack(writer.n_frames, writer.read, link, predictor=holder.predictor if holder else None,
                           read_image=read_image, key=key, fill=not cfg.no_fill)
    while True:
        try:
            p = next(work)
        except StopIteration as done:
            links = done.value
            break
        yield RunEvent("pos", p[2].split(", ", 1)[-1] if ", " in p[2] else "", n=int(p[0]))
    yield RunEvent("end")
    path = writer.finish(transform=links.iter_relabel)
    what = "tracks" if link == "time" else "objects"
    yield RunEvent("say", f"{len(links.tracks)} {what} over {writer.n_frames} frames" + (f", {len(links.parents)} with a parent" if link == "time" else ""))
    if cfg.tracks:
        write_tracks(cfg.tracks, (writer.read_output(t) for t in range(writer.n_frames)), links, overwrite=cfg.overwrite)
        yield RunEvent("say", f"wrote tracks to {cfg.tracks}")
    return path


def _objects_found(source, t: int, labels: np.ndarray, sampler: str) -> RunEvent:
    """Objects found in one frame: a note, or a warning (even with --quiet) when there are none."""
    from .samplers import get_sampler

    n = int(np.count_nonzero(np.bincount(labels.ravel())[1:])) if labels.size else 0
    where = f"{Path(str(source.path)).name} frame {t}"
    if n:
        return RunEvent("note", f"{where}: {n} objects")
    return RunEvent("warn", f"warning: {where}: 0 objects; {get_sampler(sampler).empty_hint or 'try another --sampler'}.")


def iter_everything(cfg: RunConfig, sampler: str, options: dict) -> Generator[RunEvent, None, int]:
    """Every object of every frame of ``cfg.image`` (a file or a folder) into label files, resumable;
    ``sampler`` / ``options`` from :func:`check_sampler`."""
    from .io import LabelWriter, open_image, with_channel_axis
    from .jobs import EverythingJob
    from .labelfile import OutputLock
    from .store import image_fingerprint

    pairs = outputs(cfg)
    tile = options.get("tile")
    if cfg.embeddings and len(pairs) > 1:
        raise InputError("--embeddings works with a single image, not a folder.")
    if cfg.embeddings and tile:
        raise InputError("--embeddings holds whole-frame embeddings; tiles need their own: drop --embeddings or --tile.")
    if options.get("tile_overlap") is not None and not tile:
        raise InputError("--tile-overlap needs --tile PX.")
    if tile:
        from .tiles import tile_settings

        try:
            tile_settings(tile, options.get("tile_overlap"))
        except ValueError as err:
            raise InputError(f"--tile {tile} --tile-overlap {options.get('tile_overlap')}: {err}") from None
    spec = model_spec(cfg, cfg.detector)
    sources, writers = [], {}
    options = dict(options)
    with ExitStack() as stack:
        for path, out in pairs:
            source = with_channel_axis(open_image(path), cfg.channel_axis)
            prep = preprocess(cfg, source)
            options.update(prep)  # iter_segment_everything takes channels / contrast_limits
            link, said = link_mode(cfg, pairs, source)
            if said:
                yield RunEvent("say", said)
            signature = {"command": "everything", "image": image_fingerprint(source), "sampler": sampler, "options": options,
                         "weights": cfg.weights, "detector": file_hash(cfg.detector), **decoder_sig(cfg),
                         **({"link": link, "fill": not cfg.no_fill} if link != "none" else {})}
            lock = stack.enter_context(OutputLock(out, cfg.command_line))
            writers[source.path] = LabelWriter(out, source.leading_shape, source.hw, signature, overwrite=cfg.overwrite,
                                               inputs=[path], lock=lock, staged=link != "none")  # linked: built in OUT.partial.zarr
            yield from repaired(writers[source.path])
            sources.append(source)
        done_before = sum(w.done_count for w in writers.values() if not w.complete) + sum(w.n_frames for w in writers.values() if w.complete)
        if done_before:
            yield RunEvent("say", f"resuming: {done_before} frames already finished")
        run = stack.enter_context(runner(cfg, spec))
        store = yield from checked_store(run, sources[0], cfg.embeddings, prep)  # one image
        job = EverythingJob(sampler, options, store)
        if any(w.todo() for w in writers.values()):
            models_ready(run, sources[0])  # model and detector load before any output is created

        def finish(w) -> Generator[RunEvent, None, None]:
            if link == "none":
                w.finish()
            else:
                yield from finish_linked(cfg, w, sources[0], spec, prep, link, job.store)

        def one_pass() -> Generator[RunEvent, None, None]:
            tasks = [(s, t, None) for s in sources for t in writers[s.path].todo()]
            yield RunEvent("bar", "everything", total=len(tasks))
            for (source, t, _), labels in run(job, tasks):
                writer = writers[source.path]
                offset = writer.offset(t, int(labels.max(initial=0)))
                writer.write(t, np.where(labels > 0, labels + np.uint32(offset), 0).astype(np.uint32))
                yield _objects_found(source, t, labels, sampler)
                if writer.done_count == writer.n_frames and not (yield from repaired(writer, writer.verify())):
                    yield from finish(writer)
                yield RunEvent("step", n=1)
            yield RunEvent("end")

        yield from verified_passes(list(writers.values()), one_pass)
        for w in writers.values():
            yield from finish(w)
    yield RunEvent("say", f"wrote {pairs[0][1] if len(pairs) == 1 else f'{len(pairs)} label files to {cfg.output}'}")
    return 0
