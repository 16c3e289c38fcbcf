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

__all__ = [
    "REGISTRY",
    "WeightsSpec",
    "WeightsUnavailableError",
    "cache_dir",
    "download_weights",
    "env_var_for",
    "iter_fetch",
    "resolve_weights",
]

CACHE_ENV = "NAPARI_MOBILESAM_CACHE"


class WeightsUnavailableError(RuntimeError):
    """Weights could not be found locally nor downloaded."""


@dataclass(frozen=True)
class WeightsSpec:
    """One registry entry. ``known_hash`` uses pooch's ``alg:hex`` form."""

    name: str
    filename: str
    urls: tuple[str, ...]
    known_hash: str | None
    description: str


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
}


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
        raise ValueError(
            f"Unknown weights name {name!r}. Known names: {', '.join(sorted(REGISTRY))}; "
            "or pass the path of a checkpoint file."
        ) from None


def _unavailable(spec: WeightsSpec, reason: str) -> WeightsUnavailableError:
    target = cache_dir() / spec.filename
    return WeightsUnavailableError(
        f"Could not get the {spec.name!r} weights: {reason}\n"
        f"Download {spec.urls[0]} on a machine with internet access, then either\n"
        f"  - put it at {target}, or\n"
        f"  - pass its path (`--weights PATH` on the command line, the model's file picker in napari,\n"
        f"    or build_mobilesam('PATH') in Python), or\n"
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
    errors = []
    for url in spec.urls:
        events: queue.Queue = queue.Queue()
        reporter = _ProgressRecorder(events.put, echo=progress)
        downloader = _file_downloader if url.startswith("file://") else pooch.HTTPDownloader(progressbar=reporter)
        result: dict = {}

        def run(url: str = url, downloader=downloader, result: dict = result) -> None:
            try:
                result["path"] = pooch.retrieve(
                    url, known_hash=spec.known_hash, fname=spec.filename, path=folder, downloader=downloader
                )
            except Exception as err:  # network/HTTP errors, hash mismatch: reported, next mirror tried
                result["error"] = err
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


def _hash_ok(path: Path, known_hash: str | None) -> bool:
    if known_hash is None:
        return True
    alg, value = known_hash.split(":")
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
