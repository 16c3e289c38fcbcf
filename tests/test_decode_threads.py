"""The decoder's worker threads (model.scratch.DecodeThreads): one intra-op thread each, without
changing anybody else's thread count; errors and inference mode reach the caller; when they start."""

from __future__ import annotations

import threading

import pytest
import torch

from napari_mobilesam.model.scratch import DecodeThreads, Scratch, decode_threads_wanted


def _in_fresh_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn()))
    t.start()
    t.join()
    return out["v"]


def test_workers_run_one_thread_and_leave_everyone_elses_count():
    keep = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads = DecodeThreads(2)
        try:
            counts = threads.map(lambda _: (threading.get_ident(), torch.get_num_threads()), range(8))
            assert {c for _, c in counts} == {1}  # every worker, after torch's own lazy per-thread set-up
            assert len({i for i, _ in counts}) <= 2 and threading.get_ident() not in {i for i, _ in counts}
            assert torch.get_num_threads() == 2  # the caller's count
            assert _in_fresh_thread(torch.get_num_threads) == 2  # and a thread started afterwards
            # a call from inside a worker (a prompt's blocks inside its decode) runs there, no deadlock
            inner = threads.call(lambda: threads.map(lambda x: (x, torch.get_num_threads()), range(5)))
            assert inner == [(x, 1) for x in range(5)]
        finally:
            threads.close()
    finally:
        torch.set_num_threads(keep)


def test_errors_and_inference_mode_reach_the_caller():
    threads = DecodeThreads(2)
    try:
        def boom(x):
            if x == 3:
                raise ValueError("item 3")
            return x

        with pytest.raises(ValueError, match="item 3"):
            threads.map(boom, range(6))
        with torch.inference_mode():
            t = threads.call(lambda: torch.ones(3) * 2)
        assert t.is_inference()
        assert not threads.call(lambda: torch.ones(3) * 2).is_inference()
        w = torch.ones(2, requires_grad=True)
        assert threads.call(lambda: (w * 2).sum()).requires_grad  # grad mode follows the caller too
        with torch.no_grad():
            assert not threads.call(lambda: (w * 2).sum()).requires_grad
    finally:
        threads.close()


@pytest.mark.parametrize("env, policy, expected", [
    ({}, "PASSIVE", "torch"),          # the command and the plugin: passive waiting, workers = torch's threads
    ({}, None, 0),                     # OpenMP's default spin: no workers (the caller's threads spin on their cores)
    ({"NAPARI_MOBILESAM_DECODE_THREADS": "3"}, None, 3),
    ({"NAPARI_MOBILESAM_DECODE_THREADS": "0"}, "PASSIVE", 0),
])
def test_when_workers_start(monkeypatch, env, policy, expected):
    monkeypatch.delenv("NAPARI_MOBILESAM_DECODE_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if policy:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    assert decode_threads_wanted() == (torch.get_num_threads() if expected == "torch" else expected)
    scratch = Scratch()
    made = scratch.threads()
    try:
        n = decode_threads_wanted()
        assert (made is None) == (n <= 1) and (made is None or made.n == n)
        assert scratch.threads() is made  # started once, kept
    finally:
        if made is not None:
            made.close()


def test_over_chunks_covers_every_item_in_order():
    from napari_mobilesam.model.scratch import over_chunks

    threads = DecodeThreads(2)
    try:
        for n in (0, 1, 2, 7, 40):
            parts = over_chunks(threads, lambda sl, n=n: list(range(n))[sl], n)
            assert [x for p in parts for x in p] == list(range(n))
            assert len(parts) == (1 if n < 2 else len(threads.chunks(n)))
        assert over_chunks(None, lambda sl: (sl.start, sl.stop), 9) == [(0, 9)]  # no workers: one call on the caller
    finally:
        threads.close()


def test_full_resolution_masks_cut_on_workers_are_the_callers(sam, cell_image):
    """The predictor's full-resolution masks (cut out on the decode workers) are pixel for pixel
    those cut out on the calling thread, from the same logits."""
    from napari_mobilesam import Predictor

    pred = Predictor(sam)
    pred.scratch = Scratch(start_threads=False)
    pred.set_image(cell_image)
    low = torch.randn(5, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 4
    plain = pred._full_masks(low, return_logits=False)
    threads = DecodeThreads(2)
    try:
        pred.scratch = Scratch(threads)
        assert torch.equal(pred._full_masks(low, return_logits=False), plain) and plain.any()
    finally:
        threads.close()
