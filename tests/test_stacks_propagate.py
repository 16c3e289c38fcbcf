"""Propagate every label of a frame at once: engine (one embedding and one decode batch per frame)
against the one-object propagation, and `mobilesam propagate`."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_mobilesam.cli import main
from napari_mobilesam.engine.propagate import iter_propagate, iter_propagate_labels
from napari_mobilesam.testing.stacks import synthetic_timelapse

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def movie():
    mov, gt, _ = synthetic_timelapse(4, (256, 256), 6, seed=11, divide_at=3)
    return mov, gt


def run(gen):
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            return items, stop.value


def test_all_labels_at_once_equal_one_by_one(fpredictor, movie):
    mov, gt = movie
    start = 1
    items, found = run(iter_propagate_labels(fpredictor, lambda i: mov[i], len(mov), start, gt[start]))
    ids = [int(i) for i in np.unique(gt[start])[1:]]
    assert sorted(found) == ids and len(ids) >= 4
    assert [i for i, *_ in items][:2] == [2, 3]  # forward first, one item per frame (one embedding each)
    for i in ids:
        _, alone = run(iter_propagate(fpredictor, lambda k: mov[k], len(mov), start, gt[start] == i))
        assert sorted(found[i]) == sorted(alone), i  # each object stops on its own, where it stops alone
        for t in alone:
            assert (found[i][t] == alone[t]).mean() > 0.999
    followed = [np.logical_and(found[i][t], gt[t] == i).sum() / np.logical_or(found[i][t], gt[t] == i).sum()
                for i in ids for t in found[i]]
    assert followed and np.median(followed) > 0.5  # the functional model follows the cells


def test_cli_propagate(tmp_path, movie, fcheckpoint, fpredictor, capsys):
    mov, gt = movie
    tifffile.imwrite(tmp_path / "m.tif", mov, photometric="minisblack")
    tifffile.imwrite(tmp_path / "l.tif", gt[1].astype(np.uint16))
    out = tmp_path / "out.tif"
    args = ["propagate", str(tmp_path / "m.tif"), "--labels", str(tmp_path / "l.tif"), "--from-frame", "1", "-o", str(out),
            "--weights", str(fcheckpoint), "--device", "cpu", "-q"]
    assert main(args) == 0
    got = tifffile.imread(out)
    _, found = run(iter_propagate_labels(fpredictor, lambda i: mov[i], len(mov), 1, gt[1]))
    assert got.shape == gt.shape and np.array_equal(got[1], gt[1])
    for i, masks in found.items():
        for t, m in masks.items():
            assert (got[t][m] == i).mean() > 0.9
    assert main(args) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main([*args[:5], "7", *args[6:], "--overwrite"]) == 2
    assert "--from-frame 7 is not a frame" in capsys.readouterr().err
