"""The live reference is reproducible: the same seed gives the same checkpoint, on any machine."""

from __future__ import annotations

import torch

from napari_mobilesam.testing.reference import random_checkpoint


def test_seeded_checkpoint_is_reproducible(tmp_path, checkpoint):
    fresh = torch.load(random_checkpoint(tmp_path), map_location="cpu", weights_only=True)
    cached = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert fresh.keys() == cached.keys()
    assert all(torch.equal(fresh[k], cached[k]) for k in fresh)
    # every float tensor is perturbed away from the default init (BatchNorm statistics and attention biases too)
    assert not torch.all(fresh["image_encoder.patch_embed.seq.0.bn.running_var"] == 1)
    assert fresh["image_encoder.layers.1.blocks.0.attn.attention_biases"].abs().sum() > 0
