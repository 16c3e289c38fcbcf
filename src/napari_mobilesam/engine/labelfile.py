"""Resumable label output that cannot be silently corrupted, and the lock that keeps two runs off one output.

- :class:`OutputLock`: ``OUT.lock`` beside an output, created atomically, naming the process that
  holds it (pid, host, start time, command). A second run is refused with that name; a lock left by a
  process that no longer runs on this host is taken over.
- :class:`LabelWriter`: ``OUT.zarr`` written in place, or ``OUT.partial.zarr`` assembled into
  ``OUT.tif``. Every finished frame carries a checksum (written after its pixels, before its
  completion mark); frames are verified on resume and while the TIFF is assembled, and a frame that
  fails is computed again. The input files are never removed or truncated, whatever the flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["LabelWriter", "OutputLock", "frame_checksum"]

ATTR = "mobilesam_labels"


def frame_checksum(frame: np.ndarray) -> int:
    """64-bit checksum of a frame's bytes, shape and dtype (never 0, so 0 means "none")."""
    a = np.ascontiguousarray(frame)
    h = hashlib.blake2b(f"{a.shape}{a.dtype.str}".encode(), digest_size=8)
    h.update(a.tobytes())
    return int.from_bytes(h.digest(), "little") or 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class OutputLock:
    """An exclusive lock file ``PATH.lock`` beside ``path``; a context manager (released on exit)."""

    def __init__(self, path: str | os.PathLike, command: str = "mobilesam"):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.command = command
        self.held = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.lock_path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> OutputLock:
        """Take the lock, or raise :class:`InputError` naming the run that holds it."""
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": self.command}
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._holder()
                here = other.get("host") == info["host"] and isinstance(other.get("pid"), int)
                # a lock of this process (an earlier writer not closed) is taken over; one of a dead process is stale
                stale = here and (other["pid"] == info["pid"] or not _alive(other["pid"]))
                if not other and time.time() - self.lock_path.stat().st_mtime < 5:
                    time.sleep(0.2)  # being written this moment by the other run
                    continue
                if stale or not other:
                    self.lock_path.unlink(missing_ok=True)  # its run has ended (crashed or killed)
                    continue
                raise InputError(
                    f"{self.path} is being written by another run (pid {other.get('pid')} on {other.get('host')}, started "
                    f"{other.get('started')}: {other.get('command', '?')}); wait for it to finish or choose another output. "
                    f"If that run no longer exists, delete {self.lock_path}."
                ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
            self.held = True
            return self
        raise InputError(f"Could not take the lock {self.lock_path}; delete it if no other run writes {self.path}.")

    def release(self) -> None:
        if self.held and self._holder().get("pid") == os.getpid():
            self.lock_path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> OutputLock:
        return self.acquire() if not self.held else self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class LabelWriter:
    """Label output written frame by frame, resumable, checksummed, locked.

    ``OUT.zarr`` is written in place: array ``labels`` (``leading + (H, W)``, uint32), ``max_id``
    (one entry per frame; -1 until the frame is finished) and ``checksum`` (uint64 per frame). Any
    other ``OUT`` (``.tif``) is built in ``OUT.partial.zarr`` and assembled into the TIFF when every
    frame is done, then the partial store is removed; so is a ``staged`` ``OUT.zarr`` (e.g. linked
    output: the frames are renumbered when all are done). ``signature`` (input and settings) is stored;
    resuming with another signature is refused, so results of different runs are never mixed. The
    store is created on the first :meth:`write` (a run that fails before it leaves nothing behind).

    Args:
        path: output file (``.tif``/``.tiff`` or ``.zarr``).
        leading_shape, hw: frame layout of the input; the output is ``leading_shape + hw``.
        signature: JSON-able description of input and settings.
        overwrite: discard earlier output (ours only) instead of resuming.
        inputs: the run's input files; an output that is one of them is refused.
        lock: an :class:`OutputLock` already held for ``path`` (default: take one now; :meth:`close` releases it).
        staged: build a ``.zarr`` output in ``OUT.partial.zarr`` too, and write it by :meth:`finish`.

    Attributes:
        repaired: frames that failed their checksum on opening and will be computed again.
    """

    def __init__(self, path: str | os.PathLike, leading_shape: tuple[int, ...], hw: tuple[int, int], signature: dict,
                 overwrite: bool = False, inputs: Sequence[str | os.PathLike] = (), lock: OutputLock | None = None,
                 staged: bool = False):
        self.path = Path(path)
        self.zarr_out = self.path.suffix.lower() == ".zarr"
        self.is_zarr = self.zarr_out and not staged  # written in place
        if not self.zarr_out and self.path.suffix.lower() not in (".tif", ".tiff"):
            raise InputError(f"Output {self.path}: use a .tif, .tiff or .zarr name.")
        self.store_path = self.path if self.is_zarr else self.path.with_name(self.path.name + ".partial.zarr")
        for src in inputs:
            if any(_same_file(Path(src), p) for p in (self.path, self.store_path)):
                raise InputError(f"Output {self.path} is also an input of this run ({src}); it is never replaced: choose another -o.")
        self.shape = tuple(leading_shape) + tuple(hw)
        self.n_frames = int(np.prod(leading_shape, dtype=np.int64))
        self.signature = json.loads(json.dumps(signature))
        self.repaired: list[int] = []
        self._group = None
        self.lock = lock or OutputLock(self.path).acquire()
        try:
            self._open(overwrite)
        except BaseException:
            if lock is None:
                self.lock.release()
            raise

    def _open(self, overwrite: bool) -> None:
        for p in {self.store_path, self.path}:
            if p.exists() and not self._ours(p):  # never delete or write into what we did not make
                raise InputError(f"Output {p} exists and was not written by mobilesam; choose another output path.")
            if overwrite and p.exists():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        self._max = np.full(self.n_frames, -1, np.int64)
        self._slot = np.full(self.n_frames, -1, np.int64)  # a damaged frame's largest id: its ids are given again
        self.complete = not self.is_zarr and self.path.exists()  # an assembled output (TIFF, staged zarr)
        if self.complete:
            if self._signature_of(self.path) != self.signature:
                raise InputError(f"{self.path} exists and holds results of a different run (other input or settings); "
                                 "pass --overwrite to replace it, or choose another output.")
            self._max[:] = 0
            return
        if self.store_path.exists():
            sig = self._signature_of(self.store_path)
            if sig is None:
                raise InputError(f"{self.store_path} is damaged (its zarr.json cannot be read); pass --overwrite to start again.")
            if sig != self.signature:
                raise InputError(f"{self.store_path} holds results of a different run (other input or settings); "
                                 "pass --overwrite to replace it, or choose another output.")
            self._attach()
            self.repaired = self.verify()
        self.complete = self.is_zarr and self.done_count == self.n_frames

    def _attach(self) -> None:
        import zarr

        try:
            self._group = zarr.open_group(self.store_path, mode="r+")
            self._labels, self._marks, self._sums = self._group["labels"], self._group["max_id"], self._group["checksum"]
            self._max = np.asarray(self._marks[:], np.int64)
            sums = np.asarray(self._sums[:], np.uint64)
        except Exception as err:  # noqa: BLE001 - zarr/codec errors of a damaged store have no common base
            raise InputError(f"{self.store_path} is damaged ({type(err).__name__}: {str(err)[:120]}); "
                             "pass --overwrite to start again.") from None
        self._slot = np.where((sums == 0) & (self._max >= 0), self._max, -1)  # damaged: checksum cleared, max_id kept
        self._max[sums == 0] = -1  # finished frames always carry a checksum

    def _create(self) -> None:
        import zarr

        self.store_path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(self.store_path, mode="w")
        group.attrs[ATTR] = {"signature": self.signature, "shape": list(self.shape)}
        tile = (1,) * (len(self.shape) - 2) + tuple(min(s, 2048) for s in self.shape[-2:])
        group.create_array("labels", shape=self.shape, chunks=tile, dtype="uint32", fill_value=0)
        group.create_array("max_id", shape=(self.n_frames,), chunks=(1,), dtype="int64", fill_value=-1)
        group.create_array("checksum", shape=(self.n_frames,), chunks=(1,), dtype="uint64", fill_value=0)
        self._attach()

    def _ours(self, p: Path) -> bool:
        """Written by mobilesam: our signature, or (a store whose metadata was damaged) our layout and name."""
        if self._signature_of(p) is not None:
            return True
        return p.is_dir() and (p.name.endswith(".partial.zarr") or all((p / n).is_dir() for n in ("labels", "max_id", "checksum")))

    # ------------------------------------------------------------------------------------------------
    @property
    def done_count(self) -> int:
        return int((self._max >= 0).sum())

    def is_done(self, t: int) -> bool:
        return bool(self._max[t] >= 0)

    def todo(self) -> list[int]:
        """Frames still to compute."""
        return [] if self.complete else [t for t in range(self.n_frames) if self._max[t] < 0]

    def offset(self, t: int, largest: int | None = None) -> int:
        """What to add to frame ``t``'s own ids ``1..largest``: the largest id of the finished frames, so that
        ids are unique across the stack. A damaged frame recomputed after later ones gets back the ids it had
        (those after the frames before it), as in a clean run, when ``largest`` fits in them."""
        before = int(max(0, self._max[:t].max(initial=0)))
        if largest is not None and self._slot[t] >= 0 and before + int(largest) <= self._slot[t]:
            return before
        return int(max(0, self._max.max(initial=0)))

    def _mark_unfinished(self, t: int) -> None:
        """Frame ``t`` is to be computed again; its largest id stays on disk (see :meth:`offset`)."""
        if self._max[t] >= 0:
            self._slot[t] = self._max[t]
        self._sums[t] = np.uint64(0)
        self._max[t] = -1

    def _index(self, t: int) -> tuple:
        return tuple(int(i) for i in np.unravel_index(t, self.shape[:-2])) if len(self.shape) > 2 else ()

    def write(self, t: int, labels: np.ndarray) -> None:
        """Store frame ``t`` (final ids), its checksum, then mark it finished."""
        if self._group is None:
            self._create()
        labels = np.asarray(labels, np.uint32)
        self._labels[self._index(t)] = labels
        self._marks[t] = self._max[t] = int(labels.max(initial=0))
        self._sums[t] = np.uint64(frame_checksum(labels))  # last: a frame is finished once its checksum is there
        self._slot[t] = -1

    def read(self, t: int) -> np.ndarray:
        """Finished frame ``t`` as stored, verified against its checksum."""
        frame = self._read_checked(t) if self._group is not None else None
        if frame is None:
            raise InputError(f"Frame {t} of {self.store_path} is unfinished or failed its checksum; run the same command again.")
        return frame

    def _read_checked(self, t: int) -> np.ndarray | None:
        """Frame ``t`` if it reads back with its checksum, else None."""
        try:
            frame = np.asarray(self._labels[self._index(t)], np.uint32)
            ok = int(self._sums[t]) == frame_checksum(frame)
        except Exception:  # noqa: BLE001 - a damaged chunk (e.g. zstd: unknown frame descriptor)
            return None
        return frame if ok else None

    def verify(self) -> list[int]:
        """Check every finished frame; those that fail are marked unfinished (recomputed). Returns them."""
        if self._group is None:
            return []
        bad = [t for t in range(self.n_frames) if self._max[t] >= 0 and self._read_checked(t) is None]
        for t in bad:
            self._mark_unfinished(t)
        return bad

    @staticmethod
    def _signature_of(path: Path) -> dict | None:
        """The run signature stored in a label output of ours (TIFF or zarr), else None."""
        try:
            if path.is_dir():
                import zarr

                return dict(zarr.open_group(path, mode="r").attrs)[ATTR]["signature"]
            import tifffile

            with tifffile.TiffFile(path) as tf:
                meta = (tf.shaped_metadata or [{}])[0]
            return json.loads(meta["mobilesam"])
        except Exception:  # noqa: BLE001 - not ours, or not readable: never resumed over, never deleted
            return None

    def finish(self, transform: Callable[[Iterable[np.ndarray]], Iterable[np.ndarray]] | None = None) -> Path:
        """Assemble the TIFF (frame by frame, each verified) once every frame is done; returns the output path.
        ``transform`` maps the stored frames (in order) to the frames written (e.g. linking, see linkpass.py).

        Raises:
            InputError: a frame failed its checksum while assembling; it is marked unfinished, so the
                same command run again recomputes it.
        """
        if self.is_zarr or self.complete:
            return self.path
        if self.done_count < self.n_frames:
            raise RuntimeError(f"{self.n_frames - self.done_count} frames of {self.path} are not finished.")
        bad: list[int] = []

        def frames() -> Iterable[np.ndarray]:
            for t in range(self.n_frames):
                frame = self._read_checked(t)
                if frame is None:
                    bad.append(t)
                    raise InputError(f"frame {t}")
                yield frame

        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            data = (transform or iter)(frames()) if len(self.shape) > 2 else next(iter(frames()))  # 2D: one array (tifffile reads a one-page iterator as (1, H, W))
            if self.zarr_out:
                self._write_zarr(tmp, [data] if len(self.shape) == 2 else data)
            else:
                import tifffile

                with tifffile.TiffWriter(tmp, bigtiff=4 * int(np.prod(self.shape)) > 2**31) as tw:
                    tw.write(data, shape=self.shape, dtype=np.uint32, compression="zlib", photometric="minisblack",
                             metadata={"mobilesam": json.dumps(self.signature, sort_keys=True)})
        except InputError:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            for t in bad:
                self._mark_unfinished(t)
            raise InputError(f"Frame {bad[0]} of {self.store_path} failed its checksum (the file was damaged); it was marked "
                             "unfinished: run the same command again to recompute it.") from None
        if self.zarr_out and self.path.exists():  # ours (checked on opening): an earlier output being replaced
            shutil.rmtree(self.path)
        os.replace(tmp, self.path)
        shutil.rmtree(self.store_path)
        self.complete = True
        return self.path

    def _write_zarr(self, path: Path, frames: Iterable[np.ndarray]) -> None:
        """A finished ``OUT.zarr`` (the in-place layout, every frame marked done) from ``frames`` in order."""
        import zarr

        shutil.rmtree(path, ignore_errors=True)
        group = zarr.open_group(path, mode="w")
        tile = (1,) * (len(self.shape) - 2) + tuple(min(s, 2048) for s in self.shape[-2:])
        labels = group.create_array("labels", shape=self.shape, chunks=tile, dtype="uint32", fill_value=0)
        marks = group.create_array("max_id", shape=(self.n_frames,), chunks=(self.n_frames,), dtype="int64", fill_value=-1)
        sums = group.create_array("checksum", shape=(self.n_frames,), chunks=(self.n_frames,), dtype="uint64", fill_value=0)
        top, check = np.zeros(self.n_frames, np.int64), np.zeros(self.n_frames, np.uint64)
        for t, frame in enumerate(frames):
            frame = np.asarray(frame, np.uint32)
            labels[self._index(t)] = frame
            top[t], check[t] = int(frame.max(initial=0)), frame_checksum(frame)
        marks[:], sums[:] = top, check
        group.attrs[ATTR] = {"signature": self.signature, "shape": list(self.shape)}  # last: ours once complete

    def read_output(self, t: int) -> np.ndarray:
        """Frame ``t`` of the finished output (after :meth:`finish`: the TIFF's page or the zarr's frame)."""
        if self.zarr_out:
            import zarr

            return np.asarray(zarr.open_group(self.path, mode="r")["labels"][self._index(t)], np.uint32)
        import tifffile

        return np.asarray(tifffile.imread(self.path, key=t), np.uint32)

    def close(self) -> None:
        """Release the output lock (the writer's files stay as they are)."""
        self.lock.release()
