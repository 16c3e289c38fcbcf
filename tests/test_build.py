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


# ------------------------------------------------------------------ the encoder registry
class _PatchEncoder(torch.nn.Module):
    """A toy image encoder (one 16 x 16 patch projection): B x 3 x 1024 x 1024 -> B x 256 x 64 x 64."""

    img_size = 1024

    def __init__(self) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 256, 16, stride=16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch(x)


def test_an_encoder_registered_from_a_test_file_is_recognised_and_built(tmp_path, monkeypatch, state):
    from napari_mobilesam.model import build
    from napari_mobilesam.model.build import (
        ENCODER_REGISTRY,
        EncoderSpec,
        encoder_kind,
        mobilesam_architecture,
        register_encoder,
    )

    monkeypatch.setattr(build, "ENCODER_REGISTRY", dict(ENCODER_REGISTRY))  # registrations end with the test
    spec = EncoderSpec("toy patch encoder", lambda: mobilesam_architecture(_PatchEncoder()),
                       lambda s: "image_encoder.patch.weight" in s)
    register_encoder("patch16", spec)
    toy = spec.build()
    path = tmp_path / "toy.pt"
    torch.save(toy.state_dict(), path)
    assert encoder_kind(toy.state_dict()) == "patch16"
    assert encoder_kind(state) == "tiny_vit"  # the built-in encoders are still recognised
    sam = build_mobilesam(path)
    assert isinstance(sam.image_encoder, _PatchEncoder)
    assert torch.equal(sam.image_encoder.patch.weight, toy.image_encoder.patch.weight)
    assert list(build.ENCODER_REGISTRY)[0] == "patch16" and "patch16" not in ENCODER_REGISTRY
    with pytest.raises(ValueError, match="fallback"):
        register_encoder("tiny_vit", spec)


def test_registry_names_every_encoder_kind(state):
    from napari_mobilesam.model.build import ENCODER_REGISTRY, encoder_kind

    assert set(ENCODER_REGISTRY) == {"tiny_vit", "vit_b", "vit_l", "vit_h", "efficientvit_l2"}
    assert ENCODER_REGISTRY["vit_h"].name == "SAM ViT-H"
    assert encoder_kind(ENCODER_REGISTRY["efficientvit_l2"].build().state_dict()) == "efficientvit_l2"
    vit_b_like = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
                  "image_encoder.blocks.0.attn.qkv.weight": torch.zeros(1)}
    assert encoder_kind(vit_b_like) == "vit_b"
    vit_b_like["image_encoder.patch_embed.proj.weight"] = torch.zeros(512, 3, 16, 16)
    with pytest.raises(CheckpointError, match="width 512"):
        encoder_kind(vit_b_like)
