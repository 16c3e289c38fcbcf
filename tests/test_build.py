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


# ------------------------------------------------------------------ micro-sam, damaged and unsafe files
@pytest.mark.parametrize("prefix", ["sam.", "module.sam."])
def test_micro_sam_training_checkpoint_loads_its_sam_part(tmp_path, state, prefix):
    """micro-sam's trainer saves model_state (keys sam.* or, under DDP, module.sam.*) beside decoder_state and optimizer state."""
    path = tmp_path / "best.pt"
    decoder_state = {"base.0.weight": torch.randn(4, 4), "out_conv.bias": torch.randn(2)}
    optimizer_state = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-5, "params": [0]}]}
    torch.save({"model_state": {prefix + k: v for k, v in state.items()}, "decoder_state": decoder_state,
                "optimizer_state": optimizer_state, "scheduler_state": {"last_epoch": 3}, "epoch": 3,
                "best_metric": 0.25, "init_data": {"model_type": "vit_t", "name": "lm"}}, path)
    with pytest.warns(UserWarning, match=r"decoder_state \(micro-sam's instance-segmentation decoder\) is not") as record:
        sam = build_mobilesam(path)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    for key, value in sam.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_micro_sam_checkpoint_with_python_objects_is_refused(tmp_path, state):
    """weights_only=True holds whatever else the file carries; the message does not advise turning it off."""
    import pathlib

    path = tmp_path / "with_path.pt"
    torch.save({"model_state": {"sam." + k: v for k, v in state.items()}, "decoder_state": {},
                "save_dir": pathlib.PurePosixPath("/data/checkpoints")}, path)
    with pytest.raises(CheckpointError) as info:
        build_mobilesam(path)
    msg = str(info.value)
    assert str(path) in msg and "pathlib.PurePosixPath" in msg and "could run code" in msg
    assert "weights_only" not in msg and "False" not in msg and "add_safe_globals" not in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, state, bad):
    broken = dict(state)
    broken["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"].clone()
    broken["mask_decoder.iou_token.weight"][0, 3] = bad
    path = tmp_path / "diverged.pt"
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=r"not finite numbers \(NaN or infinity\) in 1 of \d+ tensors: mask_decoder.iou_token.weight"):
        build_mobilesam(path)


def test_all_nan_checkpoint_is_refused(tmp_path, state):
    path = tmp_path / "nan.pt"
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}, path)
    with pytest.raises(CheckpointError, match="not finite numbers"):
        build_mobilesam(path)


def test_encoder_only_checkpoint_needs_a_decoder(tmp_path, state):
    path = tmp_path / "encoder_only.pt"
    torch.save({k: v for k, v in state.items() if k.startswith("image_encoder.")}, path)
    with pytest.raises(CheckpointError, match=r"only an image encoder \(MobileSAM TinyViT-5M\).*decoder='mobilesamv2'.*--decoder"):
        build_mobilesam(path)
