"""Click and N boxes (ours vs the official SamPredictor) with OpenMP's passive vs default wait policy,
with and without another process burning one core.

    python benchmarks/bench_contention.py [--threads 2] [--repeats 5] [--boxes 64] [--checkpoint PATH] [--policies PASSIVE default]
                                          [--everything]

Runs ``bench_predictor.py --skip-encoder`` in fresh processes (the wait policy is read when torch
loads): OMP_WAIT_POLICY=PASSIVE (what the mobilesam command and the napari plugin set, see
napari_mobilesam._threads) and unset (libgomp's default: spin, then sleep), each quiet and
while ``python -c "while True: pass"`` runs. Configurations alternate round by round; the load
average is printed with each line (the machine may be shared).

``--everything`` adds one *Segment everything* frame through the ``mobilesam`` command, as a user runs
it (a fresh process: start-up, weights, encoder, blob boxes, decode, labels written): a synthetic
1024² frame of ~300 cells, ``mobilesam everything frame.tif -o labels.tif --sampler blobs``, wall
time (the functional test model, so that the masks are cells). The command sets the wait policy itself (``NAPARI_MOBILESAM_OMP_WAIT``, here passive or active
for "default", libgomp's spin).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(policy: str | None, burn: bool, args: argparse.Namespace) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if burn else None
    try:
        cmd = [sys.executable, str(HERE / "bench_predictor.py"), "--skip-encoder", "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--boxes", str(args.boxes)]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    return "\n".join(line for line in out.splitlines() if "click" in line or "predict_torch" in line)


def everything(policy: str | None, burn: bool, args: argparse.Namespace, ckpt: str, frame: Path, out: Path) -> str:
    """One ``mobilesam everything`` run on ``frame``: wall seconds of the whole command."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "NAPARI_MOBILESAM_OMP_WAIT")}
    env["NAPARI_MOBILESAM_OMP_WAIT"] = "passive" if policy else "active"
    env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, "-m", "napari_mobilesam.cli", "everything", str(frame), "-o", str(out), "--sampler", "blobs",
           "--weights", ckpt, "--overwrite"]
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if burn else None
    try:
        t = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    import tifffile

    n = len(set(tifffile.imread(out).ravel().tolist()) - {0})
    return f"everything, one 1024² frame (mobilesam everything, blobs)   {wall:6.1f} s wall, {n} labels"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--boxes", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--policies", nargs="+", default=["PASSIVE", "default"], choices=["PASSIVE", "default"],
                    help="wait policies to compare (the default spin can take very long on a loaded machine)")
    ap.add_argument("--everything", action="store_true", help="also one Segment everything frame through the mobilesam command")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    if args.everything:
        import tifffile

        from napari_mobilesam.testing import synthetic_checkpoint
        from napari_mobilesam.testing.synthetic import synthetic_cells

        ckpt = args.checkpoint or str(synthetic_checkpoint(tmp))  # the functional test model: cell-shaped masks
        frame = tmp / "frame.tif"
        tifffile.imwrite(frame, synthetic_cells((1024, 1024), n=300, seed=3, radius=(8, 30))[0])
    for _ in range(args.rounds):
        for burn in (False, True):
            for name in args.policies:
                policy = None if name == "default" else name
                res = run(policy, burn, args)
                if args.everything:
                    res += "\n" + everything(policy, burn, args, ckpt, frame, tmp / "labels.tif")
                load = os.getloadavg()[0]
                print(f"--- OMP_WAIT_POLICY={policy or 'default'}, {'one core busy' if burn else 'no extra load'}, "
                      f"{args.threads} threads, load {load:.1f}\n{res}", flush=True)


if __name__ == "__main__":
    main()
