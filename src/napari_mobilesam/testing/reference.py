"""Reference data made live from the official MobileSAM code, so a plain clone can run every test.

:func:`build_reference` writes, into one folder:

- ``mobile_sam_random.pt``: a state dict in the exact layout of the official ``mobile_sam.pt``
  (built by the official ``mobile_sam`` package's ``sam_model_registry["vit_t"]``) with seeded random
  values. Every float tensor is perturbed, BatchNorm running statistics and TinyViT attention biases
  included, so no default value can hide a bug.
- ``state_dict_manifest.json``: every key and shape, and the official parameter counts.
- ``photo.png`` (RGB 399 x 597, scikit-image's ``coffee`` cropped to odd sizes) and ``cell.png``
  (grey 660 x 550, scikit-image's ``cell``).
- ``cases.json``: per image, prompts in the official predictor's convention: ``point_coords`` are
  (x, y) in original pixels, ``box`` is x0, y0, x1, y1; ``boxes_batch`` is 16 boxes in one call.
- ``expected_photo.npz``, ``expected_cell.npz``: the official ``SamPredictor``'s outputs:
  ``embedding`` (1 x 256 x 64 x 64 float32) and per prompt ``NAME/mask`` (bool C x H x W),
  ``NAME/iou`` (float32 C) and ``NAME/low_res_logits`` (float32 C x 256 x 256);
  ``boxes_batch/*`` has a leading box axis.

The official code is the ``mobilesam-mirror`` package on PyPI (byte-identical to ``mobile_sam``; it
needs ``timm``), a test dependency only: the plugin never imports it. Grey frames are given to the
official predictor as RGB by repeating the channel, without rescaling.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["IMAGES", "VERSION", "build_reference", "official_sam", "perturbed_state_dict", "random_checkpoint", "reference_images"]

VERSION = 2
"""Bumped whenever the recipe changes, so a cached folder from an older recipe is rebuilt."""

SEED = 20260601
IMAGES = ("photo.png", "cell.png")

# prompt kinds as fractions of (width, height); the same kinds as ../shared/reference/cases.json
_POINT = [(0.45, 0.55)]
_POS_NEG = ([(0.3, 0.3), (0.6, 0.4), (0.5, 0.8)], [1, 1, 0])
_BOX = (0.2, 0.25, 0.7, 0.8)
_BOX_NEG_POINT = [(0.4, 0.5)]


def official_sam(seed: int = SEED):
    """The official MobileSAM ``Sam`` (mobile_sam package), default-initialised from ``seed``, on the CPU, eval mode."""
    import torch

    with warnings.catch_warnings():  # timm's deprecation and registry-overwrite warnings
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry

        with torch.random.fork_rng(devices=[]):  # the default init draws from torch's global generator
            torch.manual_seed(seed)
            return sam_model_registry["vit_t"]().eval()


def perturbed_state_dict(state: dict, seed: int = SEED) -> dict:
    """``state`` with every float tensor replaced by seeded random values of a plausible scale."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=gen, dtype=value.dtype)
        if key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(value.shape, generator=gen, dtype=value.dtype)
        elif key.endswith("running_mean"):
            out[key] = 0.1 * noise
        elif key.endswith("attention_biases"):
            out[key] = noise
        else:
            out[key] = value + 0.02 * noise
    return out


def reference_images() -> dict[str, np.ndarray]:
    """The two test images: an RGB photo with odd, non-square sides and a grey brightfield cell."""
    from skimage import data

    return {"photo.png": np.ascontiguousarray(data.coffee()[:399, :597]), "cell.png": data.cell()}


def _cases(shape: tuple[int, int], seed: int) -> dict:
    h, w = shape
    xy = lambda pts: [[x * w, y * h] for x, y in pts]  # noqa: E731
    box = [_BOX[0] * w, _BOX[1] * h, _BOX[2] * w, _BOX[3] * h]
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, 0.75, 16) * w, rng.uniform(0, 0.75, 16) * h
    bw, bh = rng.uniform(0.08, 0.3, 16) * w, rng.uniform(0.08, 0.3, 16) * h
    boxes = np.stack([x0, y0, np.minimum(x0 + bw, w - 1), np.minimum(y0 + bh, h - 1)], 1)
    return {
        "shape": [h, w],
        "prompts": {
            "point": {"point_coords": xy(_POINT), "point_labels": [1], "multimask_output": False},
            "point_multimask": {"point_coords": xy(_POINT), "point_labels": [1], "multimask_output": True},
            "points_pos_neg": {"point_coords": xy(_POS_NEG[0]), "point_labels": _POS_NEG[1], "multimask_output": False},
            "box": {"box": box, "multimask_output": False},
            "box_and_point": {"box": box, "point_coords": xy(_BOX_NEG_POINT), "point_labels": [0], "multimask_output": False},
            "boxes_batch": {"boxes": boxes.tolist(), "multimask_output": False},
        },
    }


def _official_outputs(predictor, image: np.ndarray, prompts: dict) -> dict[str, np.ndarray]:
    import torch

    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
    predictor.set_image(rgb)
    out = {"embedding": predictor.get_image_embedding().numpy()}
    with torch.inference_mode():
        for name, p in prompts.items():
            if name == "boxes_batch":
                boxes = predictor.transform.apply_boxes_torch(torch.tensor(p["boxes"], dtype=torch.float32), rgb.shape[:2])
                masks, iou, low = predictor.predict_torch(None, None, boxes=boxes, multimask_output=p["multimask_output"])
                masks, iou, low = masks.numpy(), iou.numpy(), low.numpy()
            else:
                masks, iou, low = predictor.predict(
                    point_coords=np.array(p["point_coords"]) if "point_coords" in p else None,
                    point_labels=np.array(p["point_labels"]) if "point_labels" in p else None,
                    box=np.array(p["box"]) if "box" in p else None,
                    multimask_output=p["multimask_output"],
                )
            out[f"{name}/mask"], out[f"{name}/iou"], out[f"{name}/low_res_logits"] = masks.astype(bool), iou.astype(np.float32), low.astype(np.float32)
    return out


def build_reference(folder: str | os.PathLike) -> Path:
    """Write the reference files into ``folder`` (created) unless it already holds this recipe's; returns it.

    Costs a few seconds on a CPU (two official encoder runs and a dozen decodes).
    """
    import torch
    from skimage.io import imsave

    folder = Path(folder)
    stamp = folder / "VERSION"
    if stamp.is_file() and stamp.read_text().strip() == str(VERSION):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mobile_sam_random.pt").unlink(missing_ok=True)  # an older recipe's file: make it anew
    sam = official_sam()
    state = torch.load(random_checkpoint(folder), map_location="cpu", weights_only=True)
    sam.load_state_dict(state)
    sam.eval()  # the official TinyViT attention gathers its biases in eval(): redo it after loading

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    head = sum(v.numel() for k, v in sam.image_encoder.named_parameters() if k.startswith(("head.", "norm_head.")))
    manifest = {
        "parameters": {
            "total": count(sam),
            "image_encoder": count(sam.image_encoder),
            "image_encoder_without_classifier_head": count(sam.image_encoder) - head,
            "prompt_encoder": count(sam.prompt_encoder),
            "mask_decoder": count(sam.mask_decoder),
        },
        "state_dict": {k: list(v.shape) for k, v in state.items()},
    }
    (folder / "state_dict_manifest.json").write_text(json.dumps(manifest, indent=1))

    from mobile_sam import SamPredictor

    predictor = SamPredictor(sam)
    cases = {}
    for i, (name, image) in enumerate(reference_images().items()):
        imsave(folder / name, image, check_contrast=False)
        cases[name] = _cases(image.shape[:2], SEED + i)
        np.savez_compressed(folder / f"expected_{Path(name).stem}.npz", **_official_outputs(predictor, image, cases[name]["prompts"]))
    (folder / "cases.json").write_text(json.dumps(cases, indent=1))
    stamp.write_text(str(VERSION))
    return folder


def random_checkpoint(folder: str | os.PathLike | None = None) -> Path:
    """Only the seeded official-layout checkpoint (no official outputs), for benchmarks; returns its path.

    ``folder`` defaults to ``$NAPARI_MOBILESAM_REFERENCE`` or ``~/.cache/napari-mobilesam/reference``.
    The same file as :func:`build_reference` writes (same seed, same recipe).
    """
    import torch

    folder = Path(folder or os.environ.get("NAPARI_MOBILESAM_REFERENCE") or Path.home() / ".cache" / "napari-mobilesam" / "reference")
    path = folder / "mobile_sam_random.pt"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(perturbed_state_dict(official_sam().state_dict()), tmp)
        os.replace(tmp, path)
    return path
