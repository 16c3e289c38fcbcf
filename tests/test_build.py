"""build_mobilesam: strict loading of the official layout and clear errors for everything else."""

from __future__ import annotations

import json

import pytest
import torch

from napari_mobilesam import CheckpointError, build_mobilesam
from napari_mobilesam.model.build import load_checkpoint, resolve_device


def test_parameter_counts_match_manifest(sam, reference_dir):
    manifest = json.loads((reference_dir / "state_dict_manifest.json").read_text())["parameters"]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(sam.image_encoder) == manifest["image_encoder_without_classifier_head"]
    assert count(sam.prompt_encoder) == manifest["prompt_encoder"]
    assert count(sam.mask_decoder) == manifest["mask_decoder"]


def test_state_dict_keys_and_shapes_match_manifest(sam, reference_dir):
    manifest = json.loads((reference_dir / "state_dict_manifest.json").read_text())["state_dict"]
    ours = {k: list(v.shape) for k, v in sam.state_dict().items()}
    theirs = {k: v for k, v in manifest.items() if not k.startswith(("image_encoder.head.", "image_encoder.norm_head."))}
    assert ours == theirs


def test_loaded_values_equal_checkpoint(sam, checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key, value in sam.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.fixture(scope="module")
def state(checkpoint):
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def test_wrapped_state_dict_loads(tmp_path, state):
    path = tmp_path / "wrapped.pt"
    torch.save({"model_state": state, "epoch": 3}, path)
    sam = build_mobilesam(path)
    assert torch.equal(sam.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_mobilesam("/nonexistent/mobile_sam.pt")


def test_unknown_registry_name():
    with pytest.raises(ValueError, match="Unknown weights name 'vit_q'.*mobile_sam"):
        build_mobilesam("vit_q")


def test_corrupt_file(tmp_path, checkpoint):
    path = tmp_path / "broken.pt"
    path.write_bytes(checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="Could not read checkpoint"):
        build_mobilesam(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        build_mobilesam(path)


def test_other_architecture_names_differing_keys(tmp_path, state):
    bad = dict(state)
    bad.pop("image_encoder.neck.0.weight")
    bad["image_encoder.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    bad["mask_decoder.iou_token.weight"] = torch.zeros(2, 256)
    path = tmp_path / "other.pt"
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as info:
        build_mobilesam(path)
    msg = str(info.value)
    assert "missing keys: image_encoder.neck.0.weight" in msg
    assert "unexpected keys: image_encoder.blocks.0.attn.qkv.weight" in msg
    assert "mask_decoder.iou_token.weight (2, 256) != (1, 256)" in msg


def test_only_classifier_keys_are_dropped(tmp_path, state):
    extra = dict(state)
    extra["image_encoder.head_extra.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pt"
    torch.save(extra, path)
    with pytest.raises(CheckpointError, match="unexpected keys: image_encoder.head_extra.weight"):
        build_mobilesam(path)
    assert any(k.startswith("image_encoder.head.") for k in load_checkpoint(path))


def test_resolve_device():
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")
