"""Weights registry: name -> (URLs, hash), pooch download into a per-user cache.

Resolution order for a registry name:
1. ``NAPARI_MOBILESAM_WEIGHTS_<NAME>`` (e.g. ``NAPARI_MOBILESAM_WEIGHTS_MOBILE_SAM``): a local
   file to use instead of downloading;
2. a file already in the cache (``NAPARI_MOBILESAM_CACHE`` or the OS user cache dir) whose
   hash matches;
3. a download from the registry URLs (mirrors tried in order), hash-verified.

Offline, or when every URL fails, :class:`WeightsUnavailableError` says where to put the file
and how to pass it (``--weights PATH``, a path argument, or the environment variable).
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import pooch

from .._progress import drive
from ..engine.errors import SettingsError

__all__ = [
    "REGISTRY",
    "WeightsSpec",
    "WeightsUnavailableError",
    "cache_dir",
    "download_weights",
    "env_var_for",
    "git_blob_id",
    "iter_fetch",
    "registry_names",
    "resolve_weights",
]

CACHE_ENV = "NAPARI_MOBILESAM_CACHE"


class WeightsUnavailableError(RuntimeError):
    """Weights could not be found locally nor downloaded."""


@dataclass(frozen=True)
class WeightsSpec:
    """One registry entry.

    ``known_hash`` uses pooch's ``alg:hex`` form, or ``gitblob:hex``: a git blob id (SHA-1 of
    ``b"blob %d\\0" % size`` + the file), which is what a GitHub repository records for a file.
    ``kind``: "model" (a whole SAM), "encoder" (an image encoder that needs ``decoder=``) or
    "decoder" (a prompt encoder + mask decoder, for ``decoder=``). ``urls`` may be empty for files
    only available by hand (``page`` says where); they are then found in the cache or through the
    environment variable.
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    known_hash: str | None
    description: str
    kind: str = "model"
    page: str | None = None


REGISTRY: dict[str, WeightsSpec] = {
    "mobile_sam": WeightsSpec(
        name="mobile_sam",
        filename="mobile_sam.pt",
        urls=(
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "https://owncloud.gwdg.de/index.php/s/TuDzuwVDHd1ZDnQ/download",
        ),
        known_hash="xxh128:8eadbc88aeb9d8c7e0b4b60c3db48bd0",
        description="Official MobileSAM (TinyViT-5M distilled from SAM ViT-H), Apache-2.0.",
    ),
    "vit_t_lm": WeightsSpec(
        name="vit_t_lm",
        filename="vit_t_lm.pt",
        urls=("https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/faithful-chicken/1.1/files/vit_t.pt",),
        known_hash="xxh128:72ec5074774761a6e5c05a08942f981e",
        description="MobileSAM fine-tuned for light microscopy by micro-sam.",
    ),
    "sam_vit_b": WeightsSpec(
        name="sam_vit_b",
        filename="sam_vit_b_01ec64.pth",
        urls=("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",),
        known_hash="md5:01ec64d29a2fca3f0661936605ae66f8",
        description="SAM ViT-B (Meta, 91M-param encoder, 375 MB), Apache-2.0.",
    ),
    "sam_vit_l": WeightsSpec(
        name="sam_vit_l",
        filename="sam_vit_l_0b3195.pth",
        urls=("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",),
        known_hash="md5:0b3195507c641ddb6910d2bb5adee89c",
        description="SAM ViT-L (Meta, 308M-param encoder, 1.25 GB), Apache-2.0.",
    ),
    "sam_vit_h": WeightsSpec(
        name="sam_vit_h",
        filename="sam_vit_h_4b8939.pth",
        urls=("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",),
        known_hash="md5:4b8939a88964f0f4ff5f5b2642c598a6",
        description="SAM ViT-H (Meta, 632M-param encoder, 2.6 GB; MobileSAM's teacher), Apache-2.0.",
    ),
    "efficientvit_l2": WeightsSpec(
        name="efficientvit_l2",
        filename="l2.pt",
        urls=(),
        known_hash=None,
        description="MobileSAMv2's EfficientViT-L2 encoder (l2.pt; needs decoder='mobilesamv2'), Apache-2.0.",
        kind="encoder",
        page="the Google Drive folder linked from https://github.com/ChaoningZhang/MobileSAM/tree/master/MobileSAMv2",
    ),
    "mobilesamv2": WeightsSpec(
        name="mobilesamv2",
        filename="Prompt_guided_Mask_Decoder.pt",
        urls=("https://github.com/ChaoningZhang/MobileSAM/raw/master/MobileSAMv2/PromptGuidedDecoder/Prompt_guided_Mask_Decoder.pt",),
        known_hash="gitblob:c13b15a3a4496dbcba5f4f0d3e8453f41d818420",
        description="MobileSAMv2's prompt-guided mask decoder (for decoder=), Apache-2.0.",
        kind="decoder",
    ),
}


def registry_names(*kinds: str) -> list[str]:
    """Registry names of the given kinds ("model", "encoder", "decoder"), in registry order."""
    return [n for n, s in REGISTRY.items() if s.kind in kinds]


def cache_dir() -> Path:
    """Where downloaded weights live: ``$NAPARI_MOBILESAM_CACHE`` or the OS user cache."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(pooch.os_cache("napari-mobilesam"))


def env_var_for(name: str) -> str:
    """Environment variable that points a registry name at a local file."""
    return "NAPARI_MOBILESAM_WEIGHTS_" + name.upper().replace("-", "_")


def _spec(name: str) -> WeightsSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise SettingsError(
            f"Unknown weights name {name!r}. Known names: {', '.join(sorted(REGISTRY))}; "
            "or pass the path of a checkpoint file."
        ) from None


def _unavailable(spec: WeightsSpec, reason: str) -> WeightsUnavailableError:
    target = cache_dir() / spec.filename
    where = spec.urls[0] if spec.urls else f"{spec.filename} from {spec.page}"
    if spec.kind == "decoder":
        how = "`--decoder PATH` on the command line, the decoder's file picker in napari,\n    or build_mobilesam(..., decoder='PATH') in Python"
    else:
        how = "`--weights PATH` on the command line, the model's file picker in napari,\n    or build_mobilesam('PATH') in Python"
    return WeightsUnavailableError(
        f"Could not get the {spec.name!r} weights: {reason}\n"
        f"Download {where} on a machine with internet access, then either\n"
        f"  - put it at {target}, or\n"
        f"  - pass its path ({how}), or\n"
        f"  - set {env_var_for(spec.name)}=PATH."
    )


def iter_fetch(name: str, progress: bool = False) -> Generator[tuple[int, int], None, Path]:
    """Download (or find) registry weights, yielding ``(bytes_done, bytes_total)`` as it goes.

    The generator's return value (``StopIteration.value``) is the local path; use
    :func:`download_weights` when progress does not matter. The download runs in a helper
    thread so that progress can be yielded while it proceeds.
    """
    spec = _spec(name)
    override = os.environ.get(env_var_for(name))
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{env_var_for(name)} points to {path}, which is not a file.")
        return path
    folder = cache_dir()
    target = folder / spec.filename
    if target.is_file() and _hash_ok(target, spec.known_hash):
        return target
    if not spec.urls:
        raise _unavailable(spec, "it has no direct download link.")
    git_blob = spec.known_hash is not None and spec.known_hash.startswith("gitblob:")
    pooch_hash = None if git_blob else spec.known_hash
    if git_blob and target.is_file():  # a stale or damaged copy: pooch would keep it when given no hash
        target.unlink()
    errors = []
    for url in spec.urls:
        events: queue.Queue = queue.Queue()
        reporter = _ProgressRecorder(events.put, echo=progress)
        downloader = _file_downloader if url.startswith("file://") else pooch.HTTPDownloader(progressbar=reporter)
        result: dict = {}

        def run(url: str = url, downloader=downloader, result: dict = result, events: queue.Queue = events) -> None:
            try:
                got = pooch.retrieve(url, known_hash=pooch_hash, fname=spec.filename, path=folder, downloader=downloader)
                if git_blob and (found := git_blob_id(got)) != spec.known_hash[8:]:
                    Path(got).unlink()
                    raise SettingsError(f"the download's git blob id is {found}, expected {spec.known_hash[8:]}")
                result["path"] = got
            except Exception as exc:  # noqa: BLE001 - network/HTTP errors, hash mismatch: reported, next mirror tried
                result["error"] = exc
            finally:
                events.put(None)

        thread = threading.Thread(target=run, name=f"download-{spec.name}", daemon=True)
        thread.start()
        while (event := events.get()) is not None:
            yield event
        thread.join()
        if "path" in result:
            return Path(result["path"])
        err = result["error"]
        errors.append(f"{url}: {type(err).__name__}: {err}")
    raise _unavailable(spec, "every download failed (offline, or the file changed).\n  " + "\n  ".join(errors))


def git_blob_id(path: str | os.PathLike) -> str:
    """The id git gives the file's contents: SHA-1 of ``b"blob <size>\\0"`` followed by the bytes."""
    h = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_ok(path: Path, known_hash: str | None) -> bool:
    if known_hash is None:
        return True
    alg, value = known_hash.split(":")
    if alg == "gitblob":
        return git_blob_id(path) == value
    return pooch.file_hash(str(path), alg) == value


def _file_downloader(url: str, output_file: str, _pooch: object) -> None:
    """pooch downloader for ``file://`` URLs (institute shares, mirrors on disk, tests)."""
    src = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist")
    shutil.copyfile(src, output_file)


def download_weights(name: str, progress: bool = False) -> Path:
    """Return the local path of registry weights ``name``, downloading them if needed."""
    return drive(iter_fetch(name, progress))


def resolve_weights(checkpoint: str | os.PathLike | None) -> Path:
    """A registry name, an existing path, or None (-> ``mobile_sam``) -> a local file path."""
    if checkpoint is None:
        checkpoint = "mobile_sam"
    if isinstance(checkpoint, str) and checkpoint in REGISTRY:
        return download_weights(checkpoint)
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise IsADirectoryError(f"Checkpoint {path} is a directory; pass the .pt file inside it.")
    if isinstance(checkpoint, str) and os.sep not in checkpoint and "." not in checkpoint:
        _spec(checkpoint)  # raises "unknown weights name" with the list of names
    raise FileNotFoundError(
        f"Checkpoint file {path} does not exist. Pass an existing .pt file or one of: {', '.join(sorted(REGISTRY))}."
    )


class _ProgressRecorder:
    """A tqdm-like object for pooch's HTTPDownloader that forwards (done, total)."""

    def __init__(self, sink: Callable[[tuple[int, int]], None], echo: bool = False):
        self.sink = sink
        self.echo = echo
        self.total = 0
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n
        self.sink((self.n, self.total))
        if self.echo and self.total:
            print(f"\rdownloading: {100 * self.n // self.total:3d}%", end="", file=sys.stderr, flush=True)

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        pass
