"""Decoupled distillation: teacher loading, resumable precompute, training, export, evaluate, CLI.

The teacher is a tiny segment-anything ``ImageEncoderViT`` (1 windowed block, 16 channels) that
still maps 1024² inputs to SAM's 256 x 64 x 64 embedding, paired with the reference checkpoint's
prompt encoder and mask decoder. Training tests use a tiny TinyViT except one that trains the real
TinyViT-5M for one step and exports it.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from functools import partial

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT
from segment_anything.utils.transforms import ResizeLongestSide

from napari_mobilesam.distill import (
    EmbeddingStore,
    FrameSource,
    TrainConfig,
    export_checkpoint,
    iter_precompute,
    iter_train,
    load_teacher,
    preprocess,
)
from napari_mobilesam.distill.evaluation import mask_iou
from napari_mobilesam.distill.teacher import SAM_VITS, vit_config_from_state
from napari_mobilesam.distill_cli import add_commands
from napari_mobilesam.engine.image import to_rgb_uint8
from napari_mobilesam.model.build import CheckpointError, build_mobilesam, load_checkpoint, mobilesam_architecture
from napari_mobilesam.model.tiny_vit import TinyViT


def tiny_student() -> TinyViT:
    torch.manual_seed(0)
    return TinyViT(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), mbconv_expand_ratio=1, mlp_ratio=1)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mobilesam")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder with one RGB png and a 2-frame uint16 stack: 3 training frames."""
    import tifffile
    from skimage.io import imsave

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    imsave(folder / "a.png", rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), check_contrast=False)
    tifffile.imwrite(folder / "stack.tif", rng.integers(0, 4000, (2, 48, 64), dtype=np.uint16))
    return folder


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, checkpoint):
    """A tiny SAM teacher saved as a segment-anything style full state dict."""
    torch.manual_seed(1)
    enc = ImageEncoderViT(img_size=1024, patch_size=16, embed_dim=16, depth=1, num_heads=1, mlp_ratio=2,
                          out_chans=256, use_rel_pos=True, window_size=14, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    sam = mobilesam_architecture(encoder=enc)
    heads = {k: v for k, v in load_checkpoint(checkpoint).items() if not k.startswith("image_encoder.")}
    sam.load_state_dict({**sam.state_dict(), **heads}, strict=True)
    path = tmp_path_factory.mktemp("teacher") / "tiny_sam.pt"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def precomputed(tmp_path_factory, images, teacher_file):
    """Precompute into <work>/teacher, cancelled after one frame, then resumed; records both runs."""
    work = tmp_path_factory.mktemp("work")
    teacher = load_teacher(teacher_file)
    first = []
    for event in iter_precompute(images, teacher, work / "teacher"):
        first.append(event)
        if event["computed"] == 1:
            break  # cancel: as a user would with Ctrl-C / the GUI's cancel
    missing_after_cancel = EmbeddingStore(work / "teacher").missing()
    mtime0 = EmbeddingStore(work / "teacher").path(0).stat().st_mtime_ns
    second = list(iter_precompute(images, teacher, work / "teacher"))
    return {"work": work, "teacher": teacher, "first": first, "second": second,
            "missing_after_cancel": missing_after_cancel, "mtime0": mtime0}


def test_vit_config_is_read_from_sam_state_dicts():
    for _name, (dim, depth, heads, global_idx) in SAM_VITS.items():
        with torch.device("meta"):
            enc = ImageEncoderViT(embed_dim=dim, depth=depth, num_heads=heads, global_attn_indexes=global_idx,
                                  use_rel_pos=True, window_size=14, out_chans=256)
        cfg = vit_config_from_state(enc.state_dict())
        assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["global_attn_indexes"]) == (dim, depth, heads, global_idx)
        assert (cfg["window_size"], cfg["img_size"], cfg["patch_size"], cfg["mlp_ratio"]) == (14, 1024, 16, 4.0)


def test_teacher_errors_name_the_fix(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"foo.weight": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="neither a segment-anything ViT nor a MobileSAM"):
        load_teacher(bad)
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="holds no images"):
        FrameSource(tmp_path)


def test_frames_and_preprocessing_match_the_predictor(images, sam):
    source = FrameSource(images)
    assert source.describe() == [[str(images / "a.png"), 0], [str(images / "stack.tif"), 0], [str(images / "stack.tif"), 1]]
    for i in range(len(source)):
        frame = source.frame(i)
        x, input_size = preprocess(frame)
        resized = ResizeLongestSide(1024).apply_image(to_rgb_uint8(frame))
        expected = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float())[0]
        assert x.shape == (3, 1024, 1024) and x.dtype == torch.float32
        assert input_size == resized.shape[:2]
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    stack = np.stack([source.frame(1), source.frame(2)])  # an in-memory (N, H, W) stack
    assert len(FrameSource(stack)) == 2
    torch.testing.assert_close(FrameSource(stack)[1], source[2])


def test_precompute_is_resumable_and_stores_teacher_embeddings(precomputed, images):
    assert precomputed["first"][-1]["done"] == 1
    assert precomputed["missing_after_cancel"] == [1, 2]
    computed = [e["computed"] for e in precomputed["second"]]
    assert computed == [0, 1, 2]  # only the two missing frames were encoded
    assert precomputed["second"][-1]["done"] == 3
    store = EmbeddingStore(precomputed["work"] / "teacher")
    assert store.complete() and store.path(0).stat().st_mtime_ns == precomputed["mtime0"]
    assert np.load(store.path(2)).dtype == np.float16
    with torch.inference_mode():
        expected = precomputed["teacher"].sam.image_encoder(FrameSource(images)[2][None])[0].numpy()
    np.testing.assert_allclose(store.read(2), expected, rtol=2e-3, atol=2e-3)  # float16 storage
    with pytest.raises(ValueError, match="different dtype"):
        list(iter_precompute(images, precomputed["teacher"], store.root, fp16=False))


def _train_loss(student: TinyViT, source: FrameSource, store: EmbeddingStore) -> float:
    """MSE over all frames, BatchNorm on batch statistics as in training; on a copy, since those
    forwards would update the running statistics."""
    student = copy.deepcopy(student).train()
    with torch.no_grad():
        return float(np.mean([torch.mean((student(source[i][None])[0] - torch.from_numpy(store.read(i))) ** 2)
                              for i in range(len(source))]))


def test_training_lowers_the_loss_and_resumes_exactly(precomputed, images, tmp_path):
    source, store = FrameSource(images), EmbeddingStore(precomputed["work"] / "teacher")
    cfg = TrainConfig(steps=3, lr=3e-3, save_every=1, keep=3)
    student = tiny_student()
    before = _train_loss(student, source, store)
    events = list(iter_train(student, source, store.root, tmp_path / "a", cfg))
    assert [e["step"] for e in events] == [1, 2, 3]
    after = _train_loss(student, source, store)
    assert after < 0.8 * before, (before, after)
    assert sorted(p.name for p in (tmp_path / "a").glob("step_*.pt")) == [f"step_000000{i}.pt" for i in (1, 2, 3)]
    assert len((tmp_path / "a" / "log.csv").read_text().splitlines()) == 4  # header + 3 steps

    # A run stopped after step 1 has exactly that checkpoint; resuming must continue the same run.
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "step_0000001.pt", tmp_path / "b")
    shutil.copy(tmp_path / "a" / "log.csv", tmp_path / "b")  # it logged steps 2 and 3 after that checkpoint
    with pytest.raises(FileExistsError, match="resume"):
        next(iter_train(tiny_student(), source, store.root, tmp_path / "b", cfg))
    resumed = tiny_student()
    rest = list(iter_train(resumed, source, store.root, tmp_path / "b", cfg, resume=True))
    assert [e["step"] for e in rest] == [2, 3]
    assert [r.split(",")[0] for r in (tmp_path / "b" / "log.csv").read_text().splitlines()] == ["step", "1", "2", "3"]
    # Same frames, weights and optimizer moments as the uninterrupted run. (Parameters are not compared
    # one by one: AdamW turns float noise in gradients of output-invariant directions, such as the key
    # biases, into lr-sized steps, so those differ while the function does not.)
    np.testing.assert_allclose([e["loss"] for e in rest], [e["loss"] for e in events[1:]], rtol=1e-4)
    with torch.no_grad():
        x = source[0][None]
        torch.testing.assert_close(resumed.train()(x), student.train()(x), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="TinyViT-5M"):
        export_checkpoint(student, precomputed["teacher"], tmp_path / "x.pt")
    assert not torch.equal(student.patch_embed.seq[0].bn.running_mean, tiny_student().patch_embed.seq[0].bn.running_mean)
    frozen = tiny_student()
    stats = {k: v.clone() for k, v in frozen.state_dict().items() if "running" in k}
    list(iter_train(frozen, source, store.root, tmp_path / "c", TrainConfig(steps=1, freeze_bn=True)))
    assert all(torch.equal(frozen.state_dict()[k], v) for k, v in stats.items())
    assert not torch.equal(frozen.patch_embed.seq[0].c.weight, tiny_student().patch_embed.seq[0].c.weight)


@pytest.fixture(scope="module")
def other_decoder(tmp_path_factory, checkpoint):
    """Prompt encoder + mask decoder only, perturbed so a copy from here is told apart from the reference's."""
    g = torch.Generator().manual_seed(2)
    heads = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in load_checkpoint(checkpoint).items() if not k.startswith("image_encoder.")}
    path = tmp_path_factory.mktemp("decoder") / "decoder.pt"
    torch.save(heads, path)
    return path


def test_distill_cli_trains_tinyvit_5m_and_exports_a_loadable_checkpoint(images, checkpoint, other_decoder, tmp_path):
    # Teacher and student start as the same MobileSAM: with BatchNorm frozen (the default when starting
    # from a checkpoint) the first loss is ~0 only if precompute and training feed identical pixels.
    work = tmp_path / "work"
    args = parse(["distill", str(images / "a.png"), "--teacher", str(checkpoint), "--decoder-from", str(other_decoder),
                  "--work", str(work), "--student", str(checkpoint), "--steps", "1", "--lr", "1e-3", "--device", "cpu",
                  "--fp32-embeddings"])  # float16 storage alone would give a loss of ~4e-8
    assert args.func(args) == 0
    first_loss = float((work / "train" / "log.csv").read_text().splitlines()[1].split(",")[1])
    assert first_loss < 1e-8
    out = work / "mobile_sam_distilled.pt"
    state = torch.load(out, map_location="cpu", weights_only=True)
    official = load_checkpoint(checkpoint)
    assert set(state) == set(official) and all(state[k].shape == official[k].shape for k in state)
    heads = torch.load(other_decoder, weights_only=True)
    assert all(torch.equal(state[k], heads[k]) for k in heads)  # the teacher's decoder, not the student init's
    trained = torch.load(work / "train" / "step_0000001.pt", weights_only=True)["student"]
    assert all(torch.equal(state["image_encoder." + k], v) for k, v in trained.items())
    # a student equal to its teacher stays equal (issue 24: one step used to move it to MSE 0.5)
    assert torch.equal(state["image_encoder.patch_embed.seq.0.c.weight"], official["image_encoder.patch_embed.seq.0.c.weight"])
    assert torch.equal(state["image_encoder.head.weight"], official["image_encoder.head.weight"])  # carried from init

    sam = build_mobilesam(out)  # strict
    predictor = SamPredictor(sam)
    image = to_rgb_uint8(FrameSource(images).frame(1))
    with torch.inference_mode():
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(point_coords=np.array([[30.0, 20.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 48, 64) and masks.dtype == bool and np.isfinite(scores).all()


def test_mask_iou():
    a = torch.zeros(3, 4, 4, dtype=torch.bool)
    b = torch.zeros(3, 4, 4, dtype=torch.bool)
    a[0, :2] = True  # 8 px
    b[0, 1:3] = True  # 8 px, 4 shared -> 4 / 12
    a[1, 0, 0] = True  # one empty mask -> 0
    torch.testing.assert_close(mask_iou(a, b), torch.tensor([1 / 3, 0.0, 1.0]))


def test_evaluate_cli_scores_a_model_against_itself_perfectly(checkpoint, images, tmp_path, capsys):
    args = parse(["evaluate", str(images), "--student", str(checkpoint), "--teacher", str(checkpoint),
                  "--points", "2", "--boxes", "2", "--max-frames", "1", "--device", "cpu", "--json", str(tmp_path / "r.json")])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "mIoU, 2 point prompts/frame" in table and "embedding MSE" in table
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["frames"] == 1 and len(saved["per_frame"]) == 1
    assert saved["miou_point"] == 1.0 and saved["miou_box"] == 1.0 and saved["embedding_mse"] == 0.0


def test_student_equal_to_its_teacher_stays_equal(images, checkpoint, tmp_path):
    """Issue 24: a student initialised as its teacher (loss ~5e-8 at step 1: the float16 store) scored MSE 0.5
    after one step. Causes: Adam turns the rounding noise's ~1e-8 gradients into lr-sized steps, weight decay
    pushes it off, BatchNorm statistics trained on batches of 1. Now it stays equal."""
    from napari_mobilesam.distill import iter_distill

    teacher = tiny_student().eval()
    student = copy.deepcopy(teacher)
    losses = []
    for p in iter_distill(images, teacher, tmp_path / "work", student=student, decoder_from=checkpoint,
                          config=TrainConfig(steps=4, save_every=100)):
        if p["stage"] == "train":
            losses.append(p["loss"])
            if len(losses) == 4:
                break  # before the export, which takes only a TinyViT-5M
    assert losses == [0.0] * 4
    source = FrameSource(images)
    student.eval()
    with torch.no_grad():
        for i in range(len(source)):
            x = preprocess(source.frame(i))[0][None]
            assert float(((student(x) - teacher(x)) ** 2).mean()) < 1e-12
    # the loss is the MSE above the store's precision: one float16 step of the target is free, more is not
    from napari_mobilesam.distill.train import embedding_loss

    y = torch.tensor([1.0, 1.0])
    assert float(embedding_loss(y + 2**-11, y, "float16")) == 0.0
    assert float(embedding_loss(y + 2**-8, y, "float16")) == pytest.approx((2**-8 - 2**-10) ** 2)
