"""End to end: segment everything with linking, functional test model, blobs sampler, synthetic
z-stack (3D ground truth) and time-lapse with a division (CTC ground truth, py-ctcmetrics).

The figures are printed (``-s``) and asserted with a margin below what the committed test model
reaches; that model is weak (see tests/test_functional.py), so they say what linking adds on
top of its masks, not what MobileSAM reaches on real nuclei.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_mobilesam import segment_everything
from napari_mobilesam.engine.everything import iter_segment_everything
from napari_mobilesam.engine.tracks import write_ctc
from napari_mobilesam.testing.stacks import (
    synthetic_timelapse,
    synthetic_volume,
    write_ctc_gt,
)

pytestmark = pytest.mark.slow
BLOBS = {"diameter": 30.0, "min_score": 0.0}


def iou_best(lab: np.ndarray, m: np.ndarray) -> float:
    ids, inter = np.unique(lab[m], return_counts=True)
    best = 0.0
    for j, n in zip(ids, inter):
        if j:
            best = max(best, n / np.logical_or(m, lab == j).sum())
    return best


def measures(lab: np.ndarray, gt: np.ndarray) -> dict:
    """recall (best IoU >= 0.5 over the whole stack: 3D recall / whole tracks), whole (of the objects
    found on some frame, those whose 2D matches (IoU >= 0.5) carry one id on every frame), merged
    (ids covering at least half of two or more ground-truth objects), per-frame recall (2D IoU >= 0.5)."""
    objs = np.unique(gt)[1:]
    rec = [iou_best(lab, gt == i) >= 0.5 for i in objs]
    whole = []
    for i in objs:
        ids = set()
        for z in range(len(gt)):
            m = gt[z] == i
            for j in np.unique(lab[z][m]):
                if j and np.logical_and(m, lab[z] == j).sum() / np.logical_or(m, lab[z] == j).sum() >= 0.5:
                    ids.add(int(j))
        if ids:
            whole.append(len(ids) == 1)
    merged = 0
    for j in np.unique(lab)[1:]:
        ids, n = np.unique(gt[lab == j], return_counts=True)
        covered = [i for i, c in zip(ids, n) if i and c >= 0.5 * (gt == i).sum()]
        merged += len(covered) > 1
    per = [iou_best(lab[z], gt[z] == i) >= 0.5 for z in range(len(gt)) for i in np.unique(gt[z])[1:]]
    return {"recall": np.mean(rec), "whole": np.mean(whole), "merged": merged, "ids": len(np.unique(lab)) - 1,
            "per_frame_recall": np.mean(per)}


def oracle_link(plain: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The best any linker can do with these per-slice masks: each nucleus gets, on every slice, the
    per-slice mask that matches it best (IoU); -> 3D IoU per nucleus."""
    out = []
    for i in np.unique(gt)[1:]:
        m = gt == i
        o = np.zeros_like(m)
        for z in range(len(gt)):
            ks = [k for k in np.unique(plain[z][m[z]]) if k]
            if ks:
                o[z] = plain[z] == max(ks, key=lambda k: (m[z] & (plain[z] == k)).sum() / (m[z] | (plain[z] == k)).sum())  # noqa: B023
        out.append((o & m).sum() / (o | m).sum())
    return np.array(out)


def test_3d_nuclei_end_to_end(fpredictor):
    vol, gt = synthetic_volume(8, (256, 256), 10, seed=5, radius=(10, 22))
    plain_labels = segment_everything(vol, fpredictor, "blobs", rgb=False, **BLOBS)
    plain = measures(plain_labels, gt)
    lab = segment_everything(vol, fpredictor, "blobs", rgb=False, link="3d", **BLOBS)
    linked = measures(lab, gt)
    best = oracle_link(plain_labels, gt)
    linked_iou = np.array([iou_best(lab, gt == i) for i in np.unique(gt)[1:]])
    print("3d: per-slice labels", plain, "\n3d: linked", linked, "\n3d: oracle linking of the per-slice masks: 3D recall",
          (best >= 0.5).mean(), "mean IoU3D", best.mean().round(3), "; linked mean IoU3D", linked_iou.mean().round(3))
    # 3D recall is bounded by the per-slice masks, not by the linker: the linked objects reach what an
    # oracle linking the same masks reaches (stage-3 model: 3D recall 0.7 vs oracle 0.6, mean IoU3D
    # 0.607 vs 0.600, SAM fill-ins add missed slices; stage-1 model: 0.2 both)
    assert linked["recall"] >= (best >= 0.5).mean() and linked_iou.mean() >= best.mean() - 0.02
    # measured (2026-12-05, stage-3 test model): per-slice 3D recall 0.0, whole 0.0, 62 ids, per-slice 2D
    # recall 0.78; linked: 3D recall 0.7 (oracle 0.6), whole 1.0, merged 0, 10 ids for 10 nuclei
    assert plain["recall"] == 0.0 and plain["whole"] <= 0.2  # per-slice ids: a nucleus is many objects
    assert linked["recall"] >= 0.5 and linked["whole"] >= 0.9
    assert linked["merged"] == 0
    assert linked["ids"] < plain["ids"] / 3


def test_time_lapse_end_to_end(fpredictor, tmp_path):
    from ctc_metrics.scripts.evaluate import evaluate_sequence

    mov, gt, tracks = synthetic_timelapse(6, (256, 256), 10, seed=5, divide_at=3)
    g = write_ctc_gt(tmp_path / "01_GT", gt, tracks)
    scores = {}
    for name, link in (("none", "none"), ("time", "time")):
        gen = iter_segment_everything(mov, fpredictor, "blobs", rgb=False, link=link, **BLOBS)
        links = None
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                lab = stop.value
                break
            links = p.links if p.links is not None else links
        if links is None:  # unlinked: every per-frame object is its own one-frame track
            from napari_mobilesam.engine.link import Linker

            links = Linker("3d", min_iou=1.01, max_gap=0)  # links nothing
            for f in lab:
                links.add(f)
            links = links.solve(int(lab[lab > 0].min()))
            lab = np.stack(list(links.iter_relabel(lab)))
        res = write_ctc(tmp_path / name / "01_RES", lab, links)
        m = evaluate_sequence(str(res), str(g), metrics=["TRA", "DET", "LNK"], threads=1)
        scores[name] = {k: round(float(m[k]), 3) for k in ("TRA", "DET", "LNK")} | measures(lab, gt)
    print("time: per-frame labels", scores["none"], "\ntime: linked", scores["time"])
    # measured (2026-12-05, stage-3 test model): per-frame TRA 0.817 DET 0.921 LNK 0.0; linked TRA 0.915 DET 0.921
    # LNK 0.874 (stage-1 model: per-frame TRA 0.872 DET 0.983; linked TRA 0.980 LNK 0.962)
    assert scores["none"]["LNK"] == 0.0
    # stage-3 test model: LNK 0.87, TRA 0.92, one label over two touching cells in one frame
    assert scores["time"]["LNK"] >= 0.8 and scores["time"]["TRA"] >= 0.88 and scores["time"]["merged"] <= 1
    assert scores["time"]["TRA"] >= scores["none"]["TRA"]
    assert scores["time"]["DET"] >= scores["none"]["DET"] - 0.02
