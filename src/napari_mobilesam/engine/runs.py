"""Headless runs: the resumable, verifiable work behind ``mobilesam embed / segment / everything``.

A run is a generator that yields :class:`RunEvent` items (lines to show, progress bars, warnings)
and returns 0; the CLI parses its arguments into one :class:`RunConfig`, runs the generator and prints
what it yields. Frames run inline or as dask.distributed tasks (:func:`runner`); every finished frame
is written at once, and :func:`verified_passes` is the one resume/verify loop: frames that fail their
checksum after a pass are computed again, once.

- :func:`iter_embed`: every frame's embedding into a zarr store;
- :func:`iter_segment`: a file's prompts (CSV files or a saved session) into labels;
- :func:`~.runs_everything.iter_everything`: every object of every frame of one file or a folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["RunConfig", "RunEvent", "iter_embed", "iter_segment", "runner", "verified_passes"]


@dataclass(frozen=True)
class RunConfig:
    """Everything a headless run needs, built once from the command line (``RunConfig.from_args``).

    Paths are as given; ``contrast`` is ``(lo, hi)``; ``options`` holds the sampler's options
    (``everything``); unset values are None."""

    command: str
    image: str
    output: str
    weights: str = "mobile_sam"
    decoder: str | None = None
    device: str = "auto"
    channel_axis: int | None = None
    channels: tuple[int, ...] | None = None
    contrast: tuple[float, float] | None = None
    workers: int | None = None
    scheduler: str | None = None
    overwrite: bool = False
    embeddings: str | None = None
    # segment
    points: str | None = None
    boxes: str | None = None
    multimask: bool = False
    refine: str | None = None
    session: str | None = None
    half: bool = False  # embed
    # everything
    sampler: str | None = None
    options: dict = field(default_factory=dict)
    detector: str | None = None
    trust_detector: bool = False
    format: str = "tif"
    link: str | None = None
    tracks: str | None = None
    no_fill: bool = False
    command_line: str = ""

    @classmethod
    def from_args(cls, args: Any, **extra: Any) -> RunConfig:
        """From an ``argparse.Namespace`` (unknown attributes are ignored)."""
        names = {f for f in cls.__dataclass_fields__}
        given = {k: v for k, v in vars(args).items() if k in names}
        for k in ("channels", "contrast"):
            if given.get(k) is not None:
                given[k] = tuple(given[k])
        return cls(**{**given, **extra})


@dataclass
class RunEvent:
    """What a run reports. ``kind``: ``"say"`` (a line; hidden by --quiet), ``"warn"`` (always shown),
    ``"bar"`` (start a progress bar of ``total`` ``unit`` named ``text``; the consumer may set
    ``update`` to its bar's ``update``), ``"step"`` (advance the bar by ``n``), ``"pos"`` (move the bar to
    ``n``, ``text`` beside it), ``"note"`` (a line under the bar; hidden by --quiet), ``"end"`` (close the bar)."""

    kind: str
    text: str = ""
    n: int = 0
    total: int = 0
    unit: str = "frame"
    update: Callable[[int], object] | None = None


def file_hash(path: str | None) -> str | None:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=12).hexdigest() if path else None


def decoder_sig(cfg: RunConfig) -> dict:
    """--decoder in a run's resume signature (absent without one, so older partial runs still resume)."""
    return {"decoder": cfg.decoder} if cfg.decoder else {}


def model_spec(cfg: RunConfig, detector: str | None = None):
    """The :class:`~.distributed.ModelSpec`; locally, names and the device are resolved now (fail early)."""
    from ..model.build import resolve_device
    from ..model.weights import resolve_weights
    from .distributed import ModelSpec

    weights, decoder = cfg.weights, cfg.decoder
    if not cfg.scheduler:  # a remote cluster resolves names itself; locally fail before any work starts
        weights = str(resolve_weights(weights))
        decoder = str(resolve_weights(decoder)) if decoder else None
        try:
            resolve_device(cfg.device)
        except RuntimeError as err:
            raise InputError(f"--device {cfg.device}: {err}") from None
    if detector and not cfg.scheduler and not Path(detector).is_file():
        raise InputError(f"--detector {detector} does not exist; give a YOLO .pt or .onnx file, or use --sampler blobs or grid.")
    return ModelSpec(weights=weights, device=cfg.device, decoder=decoder, detector=str(Path(detector).resolve()) if detector else None,
                     trust_detector=cfg.trust_detector)


def models_ready(run: Callable, source) -> str:
    """Load the model (and detector) where they run before any output is created; returns the model hash."""
    from .jobs import ModelHashJob

    ((_, model_hash),) = list(run(ModelHashJob(), [(source, 0, None)]))
    return model_hash


@contextmanager
def runner(cfg: RunConfig, spec, say: Callable[[str], None] = lambda s: None) -> Iterator[Callable]:
    """``run(job, tasks)`` -> iterator of ``(task, result)`` in order: inline, or on a dask cluster."""
    if not (cfg.scheduler or cfg.workers):
        from .distributed import ModelHolder, run_local

        holder = ModelHolder(spec)

        def run(job, tasks):
            return run_local(holder, job, tasks)

        run.models = holder  # type: ignore[attr-defined]  # in-process: per-batch progress (iter_segment)
        yield run
        return
    from .distributed import run_distributed, start_client

    if cfg.workers is not None and (cfg.scheduler or cfg.workers < 1):
        raise InputError("Give either --workers N (N >= 1, a local cluster) or --scheduler ADDRESS, not both.")
    if not cfg.scheduler:  # a local cluster's shutdown chatter is noise here
        import logging

        logging.getLogger("distributed").setLevel(logging.ERROR)
    client = start_client(cfg.scheduler, cfg.workers)
    say(f"dask cluster: {len(client.nthreads())} workers" + (f", dashboard {client.dashboard_link}" if cfg.scheduler else ""))
    try:
        yield lambda job, tasks: run_distributed(client, spec, job, tasks)
    finally:
        cluster = None if cfg.scheduler else client.cluster
        client.close()
        if cluster is not None:
            cluster.close()


def preprocess(cfg: RunConfig, source) -> dict:
    """--channels / --contrast, checked against the image's frames."""
    from .image import preprocess_options

    try:
        return preprocess_options(None if cfg.channels is None else list(cfg.channels),
                                  None if cfg.contrast is None else list(cfg.contrast), source.frame_shape)
    except ValueError as err:
        raise InputError(f"{source.path}: {err}") from None


def checked_store(run: Callable, source, path: str | None, prep: dict) -> Generator[RunEvent, None, str | None]:
    """Validate ``--embeddings`` against the model (where it runs) and the image as pre-processed with
    ``prep``; returns its absolute path."""
    if not path:
        return None
    from .store import EmbeddingStore, image_fingerprint

    model_hash = models_ready(run, source)
    store = EmbeddingStore.open(path, model_hash, image_fingerprint(source, prep), mode="r")
    yield RunEvent("say", f"reusing {store.done_count}/{store.n_frames} embeddings from {path}")
    return str(Path(path).resolve())


def repaired(writer, bad: list[int] | None = None) -> Generator[RunEvent, None, list[int]]:
    """Say which frames failed their checksum (``writer.repaired`` when ``bad`` is None); returns them."""
    bad = writer.repaired if bad is None else bad
    if bad:
        yield RunEvent("say", f"{writer.store_path}: frame(s) {', '.join(map(str, bad[:10]))} failed their checksum; computing them again")
    return bad


def verified_passes(writers: list, one_pass: Callable[[], Generator[RunEvent, None, None]]) -> Generator[RunEvent, None, None]:
    """The one resume/verify loop: run ``one_pass`` (it computes and writes every frame the writers
    still lack), then verify the unfinished writers' frames; frames that fail their checksum are
    computed again by a second pass."""
    for _ in range(2):  # the second pass recomputes frames that fail their checksum
        yield from one_pass()
        bad = False
        for w in writers:
            if not w.complete and (yield from repaired(w, w.verify())):
                bad = True
        if not bad:
            return


# --------------------------------------------------------------------------------------------- embed
def iter_embed(cfg: RunConfig) -> Generator[RunEvent, None, int]:
    """Every frame's image embedding into the store ``cfg.output`` (created, completed or, with
    ``overwrite``, replaced); damaged frames are computed again."""
    import torch

    from .embeddings import Embedding
    from .io import open_image, with_channel_axis
    from .jobs import EmbedJob
    from .labelfile import OutputLock
    from .store import EmbeddingStore, image_fingerprint

    source = with_channel_axis(open_image(cfg.image), cfg.channel_axis)
    spec = model_spec(cfg)
    out = Path(cfg.output)
    prep = preprocess(cfg, source)
    with OutputLock(out, cfg.command_line), runner(cfg, spec) as run:
        model_hash = models_ready(run, source)
        if cfg.overwrite and out.exists():
            EmbeddingStore.remove(out)  # raises unless it is an embedding store
        store = EmbeddingStore.open(out, model_hash, image_fingerprint(source, prep), n_frames=source.n_frames,
                                    original_size=source.hw, dtype="float16" if cfg.half else "float32")
        bad = store.verify()  # damaged embeddings are computed again
        if bad:
            yield RunEvent("say", f"{out}: frame(s) {', '.join(map(str, bad[:10]))} failed their checksum; computing them again")
        todo = store.todo()
        if len(todo) < store.n_frames:
            yield RunEvent("say", f"{out}: {store.n_frames - len(todo)} of {store.n_frames} frames already stored; resuming")
        hw, input_size = tuple(store.meta["original_size"]), tuple(store.meta["input_size"])
        yield RunEvent("bar", "embed", total=len(todo))
        for (_, t, _), (feats, pixels) in run(EmbedJob(prep), [(source, t, None) for t in todo]):
            store.save(t, Embedding(torch.from_numpy(feats)[None], hw, input_size), frame_hash=pixels)
            yield RunEvent("step", n=1)
        yield RunEvent("end")
    yield RunEvent("say", f"wrote {out}")
    return 0


# --------------------------------------------------------------------------------------------- segment
def session_config(cfg: RunConfig) -> tuple[RunConfig, Any, list[str]]:
    """``--session DIR``: the config with the session's prompt files and, unless given, how the model saw
    the image (contrast, channels, channel axis, weights); returns ``(config, session, lines to say)``."""
    from .session import load_session

    if cfg.points or cfg.boxes:
        raise InputError("Give either --session DIR or --points/--boxes, not both: a session holds its own prompts.")
    session = load_session(str(cfg.session))
    change: dict[str, Any] = {"points": str(session.points_csv) if session.points_csv else None,
                              "boxes": str(session.boxes_csv) if session.boxes_csv else None}
    prep = session.preprocess
    if cfg.contrast is None and prep.get("contrast_limits") is not None:
        change["contrast"] = tuple(float(v) for v in prep["contrast_limits"])
    if cfg.channels is None and prep.get("channels"):
        change["channels"] = tuple(int(v) for v in prep["channels"])
    if cfg.channel_axis is None and prep.get("channel_axis") is not None:
        change["channel_axis"] = int(prep["channel_axis"])
    said = []
    recorded = str(session.model.get("weights") or "")
    if cfg.weights == "mobile_sam" and recorded and recorded != "mobile_sam" and Path(recorded).is_file():  # --weights not given
        change["weights"] = recorded
        said.append(f"using the weights recorded in the session: {recorded} (give --weights to choose others)")
    if not (change["points"] or change["boxes"]):
        raise InputError(f"{cfg.session} holds no prompts.")
    return replace(cfg, **change), session, said


def iter_segment(cfg: RunConfig) -> Generator[RunEvent, None, int]:
    """``cfg.image``'s prompts (``points`` / ``boxes`` CSV files, or a ``session``) into the label file
    ``cfg.output``, frame by frame, resumable; ``refine``: a labels file whose labels the prompts refine."""
    from .io import LabelWriter, open_image, read_objects, with_channel_axis
    from .jobs import SegmentJob
    from .labelfile import OutputLock
    from .store import image_fingerprint

    session = None
    if cfg.session:
        cfg, session, said = session_config(cfg)
        for line in said:
            yield RunEvent("say", line)
    if not (cfg.points or cfg.boxes):
        raise InputError("Give prompts: --points POINTS.csv and/or --boxes SHAPES.csv (napari layers saved as CSV), or --session DIR.")
    source = with_channel_axis(open_image(cfg.image), cfg.channel_axis)
    if session is not None:
        from .session import check_image

        check_image(session, tuple(source.leading_shape) + tuple(source.frame_shape), source.read)
    refine = None
    if cfg.refine:  # points naming one of its labels refine it (engine/refine.py)
        from .refine import open_labels, read_refinements

        refine = open_labels(cfg.refine, source)
        prompts = read_refinements(source, cfg.points, cfg.boxes, refine)
    else:
        ids = {} if session is None else {"shape_ids": session.shape_ids or None, "shape_masks": session.shape_masks or None}
        prompts = read_objects(source, cfg.points, cfg.boxes, **ids)  # the widget's rules (engine/prompts.py)
    if not prompts:
        raise InputError(f"{cfg.points or cfg.boxes} holds no prompts.")
    spec = model_spec(cfg)
    prep = preprocess(cfg, source)
    signature = {"command": "segment", "image": image_fingerprint(source, prep), "points": file_hash(cfg.points),
                 "boxes": file_hash(cfg.boxes), "weights": cfg.weights, "multimask": cfg.multimask, **decoder_sig(cfg)}
    if refine is not None:
        signature["refine"] = file_hash(cfg.refine)
    generations: dict = {}
    if session is not None:
        from .session import object_generations

        generations = object_generations(session)  # the widget's writes, replayed in order
        if generations:  # (absent without: older partial runs still resume)
            signature["generations"] = sorted([k, *v] for k, v in generations.items())
    inputs = [p for p in (cfg.image, cfg.points, cfg.boxes, cfg.embeddings, cfg.refine) if p]
    with ExitStack() as stack:
        writer = LabelWriter(cfg.output, source.leading_shape, source.hw, signature, overwrite=cfg.overwrite, inputs=inputs,
                             lock=stack.enter_context(OutputLock(cfg.output, cfg.command_line)))
        yield from repaired(writer)
        run = stack.enter_context(runner(cfg, spec))
        store = yield from checked_store(run, source, cfg.embeddings, prep)
        job = SegmentJob(store=store, multimask=cfg.multimask, preprocess=prep, refine=None if refine is None else refine.path,
                         generations=generations)
        if writer.todo():
            model_hash = models_ready(run, source)  # nothing is written before the model has loaded
            if session is not None:
                from .session import check_model

                check_model(session, model_hash)

        differ: dict[int, tuple[int, list[int]]] = {}  # frame -> how the replay differs from the session's labels

        def write(t: int, labels: np.ndarray) -> None:
            writer.write(t, labels)
            if session is not None and refine is None:
                from .session import saved_difference

                differ[t] = saved_difference(session, t, labels)

        def one_pass() -> Generator[RunEvent, None, None]:
            for t in writer.todo():
                if t not in prompts:
                    write(t, np.zeros(source.hw, np.uint32) if refine is None else np.asarray(refine.read(t), np.uint32))
            todo = writer.todo()
            models = getattr(run, "models", None)  # in this process: the bar moves per batch of objects
            bar = RunEvent("bar", "segment", total=sum(len(prompts[t]) for t in todo), unit="object")
            yield bar
            if models is not None:
                models.progress = bar.update
            try:
                for (_, t, _), labels in run(job, [(source, t, prompts[t]) for t in todo]):
                    write(t, labels)
                    if models is None:
                        yield RunEvent("step", n=len(prompts[t]))
                    ids = np.array([ob.label_id for ob in prompts[t]], np.int64)
                    empty = ids[~np.isin(ids, labels)] if ids.size else ids
                    if empty.size:  # the model found no mask (or only pixels the user's labels hold)
                        where = f" frame {t}" if source.n_frames > 1 else ""
                        yield RunEvent("warn", f"warning: {source.path}{where}: object{'s' * (empty.size > 1)} "
                                       f"{', '.join(map(str, empty[:10]))} came out empty (no pixel written); try a box or more points.")
            finally:
                if models is not None:
                    models.progress = None
            yield RunEvent("end")

        yield from verified_passes([writer], one_pass)
        if any(n for n, _ in differ.values()):
            yield RunEvent("warn", _differs_note(differ, source.n_frames > 1))
        yield RunEvent("say", f"wrote {writer.finish()}")
    return 0


def _differs_note(differ: dict[int, tuple[int, list[int]]], stack: bool) -> str:
    """The warning of a session replay that differs from the session's labels.tif (see ``session.saved_difference``)."""
    bad = [(t, n, ids) for t, (n, ids) in sorted(differ.items()) if n]
    parts = [(f"frame {t}: " if stack else "") + f"{n} px, label{'s' * (len(ids) > 1)} {', '.join(map(str, ids[:6]))}" for t, n, ids in bad[:5]]
    more = f" and {len(bad) - 5} more frames" if len(bad) > 5 else ""
    return (f"warning: the replay differs from the session's labels.tif ({'; '.join(parts)}{more}): what the prompts do not redo "
            "(hand edits, Refine, Propagate, Segment everything) is only in labels.tif; open the session in napari to keep it.")
