"""The training recipe of the functional test model (testing/train_data.py, train_synthetic.py):
prompts on the context grid land where the crop is, Refine's wrong masks are wrong in the ways
users correct, and a short stage-3 run exports a checkpoint the 1024 model loads strictly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mobilesam.testing.train_data import (
    CROP,
    LOSS,
    PER_KIND_3,
    _bad_mask,
    in_context,
    make_crop,
    refine_prompts,
    sample_prompts,
)


@pytest.fixture(scope="module")
def crop():
    rng = np.random.default_rng(7)
    for _ in range(20):
        x, lab, off = make_crop(rng, 0.5)
        if len(np.unique(lab)) > 6:
            return x, lab, off, rng
    raise AssertionError("no crop with cells")


def test_in_context_moves_prompts_by_one_crop_and_pads_targets(crop):
    _, lab, _, rng = crop
    groups = sample_prompts(lab, rng, PER_KIND_3)
    for quadrant in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        big = in_context(groups, quadrant)
        qy, qx = quadrant
        assert big.keys() == groups.keys()
        for kind, g in groups.items():
            h = big[kind]
            for t, tb in zip(g["target"], h["target"], strict=True):
                assert t.shape == (LOSS, LOSS) and tb.shape == (2 * LOSS, 2 * LOSS)
                np.testing.assert_array_equal(tb[qy * LOSS : (qy + 1) * LOSS, qx * LOSS : (qx + 1) * LOSS], t)
                assert tb.sum() == t.sum()  # nothing of the target outside the crop
            for p, pb in zip(g.get("points", []), h.get("points", []), strict=True):
                np.testing.assert_allclose(pb - p, np.tile([qx * CROP, qy * CROP], (len(p), 1)))
            for b, bb in zip(g.get("boxes", []), h.get("boxes", []), strict=True):
                np.testing.assert_allclose(bb - b, [qx * CROP, qy * CROP] * 2)
            for m, mb in zip(g.get("masks", []), h.get("masks", []), strict=True):
                n = m.shape[-1]
                assert mb.shape == (2 * n, 2 * n)
                np.testing.assert_array_equal(mb[qy * n : (qy + 1) * n, qx * n : (qx + 1) * n], m)
                outside = np.ones(mb.shape, bool)
                outside[qy * n : (qy + 1) * n, qx * n : (qx + 1) * n] = False
                assert (mb[outside] == -np.abs(m).max()).all()  # "not the object" outside the crop


def test_refine_round_on_the_context_grid_puts_corrections_in_grid_pixels(crop):
    _, lab, _, rng = crop
    groups = in_context(sample_prompts(lab, rng, {"point": 3}), (1, 1))
    n = len(groups["point"]["target"])
    # a first-round prediction that covers the whole grid: the larger error is the spill, so the
    # correction is a negative click outside the cell, on the grid (0 .. 2 * CROP)
    low = torch.full((n, CROP // 2, CROP // 2), 5.0)
    again = refine_prompts(groups, low, rng)["point_refine"]
    for pts, labels, tgt in zip(again["points"], again["labels"], again["target"], strict=True):
        assert labels.tolist() == [1, 0]
        x, y = pts[1]
        assert 0 <= x < 2 * CROP and 0 <= y < 2 * CROP
        assert tgt[int(y) // 2, int(x) // 2] == 0  # the negative click is on the spill, not the cell


def test_bad_masks_are_wrong_but_contain_the_cell_or_lie_on_it(crop):
    _, lab, _, rng = crop
    ids = [i for i in np.unique(lab) if i and (lab == i).sum() >= 64]
    kinds = set()
    for k in range(60):
        cid = ids[k % len(ids)]
        m = lab == cid
        bad = _bad_mask(m, lab, cid, rng)
        inter = (bad & m).sum() / (bad | m).sum()
        assert bad.sum() >= 16 and inter < 1.0, "a Refine prompt's mask must differ from the cell"
        kinds.add("grown" if (bad >= m).all() and bad.sum() > m.sum() else "shrunk" if (bad <= m).all() else "moved")
    assert kinds == {"grown", "shrunk", "moved"}


@pytest.mark.slow
def test_a_short_stage3_run_exports_an_official_layout_checkpoint(tmp_path):
    from napari_mobilesam.model.build import mobilesam_architecture
    from napari_mobilesam.testing.train_synthetic import build_train_model, export_state, train

    init = tmp_path / "init.pt"
    torch.save(export_state(build_train_model(0)), init)
    out = train(tmp_path / "s3.pt", steps=5, seed=0, lr=1e-4, init=init, frozen_bn=True, refine=True,
                per_kind=PER_KIND_3, context=1.0, balance_until=0, dark=0.5)
    state = torch.load(out, map_location="cpu", weights_only=True)
    mobilesam_architecture().load_state_dict(state, strict=True)
    before = torch.load(init, map_location="cpu", weights_only=True)
    changed = [k for k in state if state[k].is_floating_point() and not torch.equal(state[k], before[k])]
    assert any(k.startswith("mask_decoder.") for k in changed) and any(k.startswith("image_encoder.") for k in changed)
    # frozen BatchNorm: the running statistics of the init are kept
    bn = [k for k in state if k.endswith("running_mean")]
    assert bn and all(torch.equal(state[k], before[k]) for k in bn)
