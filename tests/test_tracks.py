"""Tracks out: CTC result folder, GEFF and napari Tracks data of a linked time-lapse."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mobilesam.engine.link import link_labels
from napari_mobilesam.engine.tracks import (
    tracks_layer_data,
    write_ctc,
    write_geff,
    write_tracks,
)
from napari_mobilesam.testing.stacks import synthetic_timelapse, write_ctc_gt


@pytest.fixture(scope="module")
def linked():
    _, gt, tracks = synthetic_timelapse(seed=0)
    lab, links = link_labels(gt, "time")
    return gt, tracks, lab, links


def test_ctc_folder_layout_and_score(tmp_path, linked):
    import tifffile
    from ctc_metrics.scripts.evaluate import evaluate_sequence

    gt, tracks, lab, links = linked
    res = write_ctc(tmp_path / "01_RES", lab, links)
    assert sorted(p.name for p in res.iterdir()) == [f"mask{t:03d}.tif" for t in range(len(gt))] + ["res_track.txt"]
    m5 = tifffile.imread(res / "mask005.tif")
    assert m5.dtype == np.uint16 and np.array_equal(m5, lab[5])
    table = np.loadtxt(res / "res_track.txt", dtype=np.int64).reshape(-1, 4)
    # the same lineage as the ground truth, up to the ids: 14 tracks, two daughters of one mother ending before them
    assert len(table) == len(tracks) == 14
    kids = table[table[:, 3] > 0]
    assert len(kids) == 2 and len(set(kids[:, 3])) == 1
    mother = table[table[:, 0] == kids[0, 3]][0]
    assert mother[2] == kids[0, 1] - 1 == 4
    g = write_ctc_gt(tmp_path / "01_GT", gt, tracks)
    m = evaluate_sequence(str(res), str(g), metrics=["TRA", "DET", "LNK"], threads=1)
    assert m["TRA"] == pytest.approx(1.0) and m["LNK"] == pytest.approx(1.0)


def test_geff_round_trip(tmp_path, linked):
    import geff

    _, _, _, links = linked
    path = write_tracks(tmp_path / "tracks.geff", [], links)
    g, meta = geff.read(str(path))
    n = len(links.centroids)
    assert g.number_of_nodes() == n
    # edges: along each track, plus mother -> each daughter
    assert g.number_of_edges() == n - len(links.tracks) + 2
    assert [a.name for a in meta.axes] == ["t", "y", "x"]
    mother = next(iter(links.parents.values()))
    splits = [u for u in g.nodes if g.out_degree(u) == 2]
    assert len(splits) == 1 and g.nodes[splits[0]]["track_id"] == mother
    assert {g.nodes[v]["track_id"] for v in g.successors(splits[0])} == set(links.parents)
    with pytest.raises(Exception):  # noqa: B017 - geff refuses to overwrite unless asked
        write_geff(path, links)
    write_geff(path, links, overwrite=True)


def test_napari_tracks_layer_data(linked):
    from napari.layers import Tracks

    _, _, lab, links = linked
    data, graph = tracks_layer_data(links)
    layer = Tracks(data, graph=graph)
    assert set(np.unique(layer.data[:, 0]).astype(int)) == set(np.unique(lab)[1:].astype(int))
    assert graph == {d: [p] for d, p in links.parents.items()} and len(graph) == 2
    # a centroid is the mean pixel position of that id on that frame
    tid, t = int(data[7, 0]), int(data[7, 1])
    rr, cc = np.nonzero(lab[t] == tid)
    assert data[7, 2:] == pytest.approx([rr.mean(), cc.mean()])
