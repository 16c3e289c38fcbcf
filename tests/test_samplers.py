"""Blob sampler on synthetic disks, and the grid sampler against segment-anything's own generator."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mobilesam._progress import drive
from napari_mobilesam.engine.samplers import blob_boxes, grid_batch_size, iter_grid_objects

CENTRES = np.array([(30, 40), (40, 150), (100, 90), (150, 30), (160, 170), (95, 200)], float)
RADIUS = 10


def disks(shape=(192, 224), centres=CENTRES, radius=RADIUS, seed=0) -> np.ndarray:
    """Bright disks on a dark, noisy background; uint16 like a fluorescence camera."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 200.0)
    for r, c in centres:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = 1200.0
    img += np.random.default_rng(seed).normal(0, 30, shape)
    return np.clip(img, 0, None).astype(np.uint16)


def _match(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Distance from each expected centre to the nearest found one."""
    d = np.linalg.norm(found[None] - expected[:, None], axis=-1)
    return d.min(1)


@pytest.mark.parametrize("method", ["log", "dog"])
def test_blobs_find_each_disk(method):
    from napari_mobilesam import to_rgb_uint8

    rgb = to_rgb_uint8(disks())
    boxes, scores = blob_boxes(rgb, diameter=2 * RADIUS, method=method)
    assert boxes.shape == (len(CENTRES), 4) and scores.shape == (len(CENTRES),)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert _match(centres, CENTRES).max() <= 2.0
    assert np.all(np.diff(scores) <= 0)  # strongest first
    side = boxes[:, 2:] - boxes[:, :2]
    # box_scale 1.2 around the blob radius: the box encloses the disk but not much more
    assert np.all(side >= 2 * RADIUS * 0.9) and np.all(side <= 2 * RADIUS * 2.0)


def test_blobs_polarity_scale_and_cap():
    dark = (1200 - disks().astype(np.int32)).astype(np.float32)  # dark disks on bright background
    g = (dark - dark.min()) / (dark.max() - dark.min())
    wrong, _ = blob_boxes(g, diameter=2 * RADIUS, polarity="bright")  # finds the background between disks
    assert len(wrong) == 0 or _match(CENTRES, (wrong[:, :2] + wrong[:, 2:]) / 2).min() > RADIUS
    boxes, _ = blob_boxes(g, diameter=2 * RADIUS, polarity="dark")
    assert _match((boxes[:, :2] + boxes[:, 2:]) / 2, CENTRES).max() <= 2.0
    # large objects are searched on a downscaled grid: centres stay in full-resolution pixels
    big = disks(shape=(384, 448), centres=CENTRES * 2, radius=2 * RADIUS)
    boxes, _ = blob_boxes(big.astype(np.float32) / big.max(), diameter=4 * RADIUS)
    assert _match((boxes[:, :2] + boxes[:, 2:]) / 2, CENTRES * 2).max() <= 3.0
    assert len(blob_boxes(g, diameter=2 * RADIUS, polarity="dark", max_det=2)[0]) == 2
    with pytest.raises(ValueError, match="polarity"):
        blob_boxes(g, polarity="up")
    with pytest.raises(ValueError, match="method"):
        blob_boxes(g, method="hough")


def test_grid_equals_sam_generator(predictor, sam):
    """Our batch-wise loop gives the same masks as SamAutomaticMaskGenerator.generate()."""
    from segment_anything import SamAutomaticMaskGenerator

    rgb = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    opts = dict(points_per_side=3, min_score=0.0, min_stability=0.0)
    gen = iter_grid_objects(predictor, rgb, points_per_batch=4, **opts)
    steps = []
    objects = drive(gen, steps.append)
    assert steps == [(1, 3), (2, 3), (3, 3)]  # 9 points in batches of 4
    ref = SamAutomaticMaskGenerator(sam, points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    ref.predictor = predictor
    expected = [m for m in ref.generate(rgb) if m["area"] > 0]  # an empty mask is no object: we leave those out
    assert len(objects) == len(expected) > 0
    ours = sorted((o.full().tobytes(), round(o.score, 5)) for o in objects)
    theirs = sorted((m["segmentation"].tobytes(), round(m["predicted_iou"], 5)) for m in expected)
    assert ours == theirs
    assert all(o.shape == (96, 128) and o.mask.any() for o in objects)
    assert [o.score for o in objects] == sorted((o.score for o in objects), reverse=True)


def test_grid_batch_size_follows_budget():
    assert grid_batch_size((1024, 1024), 256 << 20) < grid_batch_size((128, 128), 256 << 20) <= 64
    assert grid_batch_size((4096, 4096), 1) == 1


def _median_diameter(labels: np.ndarray) -> float:
    from skimage.measure import regionprops

    return float(np.median([p.equivalent_diameter_area for p in regionprops(labels)]))


def _coins_truth() -> tuple[np.ndarray, float]:
    """scikit-image's coins() and the median coin diameter by its classic watershed segmentation."""
    from scipy import ndimage
    from skimage import data, filters, measure, segmentation

    coins = data.coins()
    markers = np.zeros_like(coins)
    markers[coins < 30], markers[coins > 150] = 1, 2
    fg = ndimage.binary_fill_holes(segmentation.watershed(filters.sobel(coins), markers) == 2)
    lab = measure.label(fg)
    sizes = np.bincount(lab.ravel())
    lab[np.isin(lab, np.flatnonzero(sizes < 50))] = 0  # specks
    return coins, _median_diameter(measure.label(lab > 0))


def _cell_truth() -> tuple[np.ndarray, float]:
    """scikit-image's cell() (one bright cell) and that cell's diameter (largest bright component)."""
    from scipy import ndimage
    from skimage import data, measure

    cell = data.cell()
    lab = measure.label(ndimage.binary_fill_holes(cell > 150))
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return cell, _median_diameter((lab == sizes.argmax()).astype(int))


def test_estimate_diameter_within_factor_1p5():
    from napari_mobilesam import to_rgb_uint8
    from napari_mobilesam.engine.samplers import _grey, estimate_diameter
    from napari_mobilesam.testing import synthetic_cells

    cases = [_coins_truth(), _cell_truth()]
    for seed in range(3):
        img, lab = synthetic_cells((256, 256), 20, seed)
        cases.append((img, _median_diameter(lab)))
    img, lab = synthetic_cells((384, 384), 60, 7, radius=(5, 15))
    cases.append((img, _median_diameter(lab)))
    img, lab = synthetic_cells((256, 256), 20, 4, polarity="dark")
    for img_, truth, polarity in [(i, t, "bright") for i, t in cases] + [(img, _median_diameter(lab), "dark")]:
        est = estimate_diameter(_grey(to_rgb_uint8(img_), polarity))
        assert truth / 1.5 <= est <= truth * 1.5, (img_.shape, truth, est)
    assert cases[0][1] > 35 and cases[1][1] > 90  # the truths themselves are sane (coins ~43 px, the cell ~110 px)


def test_blobs_automatic_diameter_on_coins_and_disks():
    from napari_mobilesam import to_rgb_uint8

    coins, truth = _coins_truth()
    boxes, scores = blob_boxes(to_rgb_uint8(coins))
    side = np.median(boxes[:, 2:] - boxes[:, :2])
    assert 15 <= len(boxes) <= 60 and truth / 1.5 <= side / 1.2 <= truth * 1.5  # one box per coin or so, coin-sized
    boxes, _ = blob_boxes(to_rgb_uint8(disks()))
    assert _match((boxes[:, :2] + boxes[:, 2:]) / 2, CENTRES).max() <= 2.0


def test_blobs_noise_gives_few_boxes():
    from napari_mobilesam import to_rgb_uint8

    noise = to_rgb_uint8(np.random.default_rng(0).normal(100, 10, (128, 512)))
    assert len(blob_boxes(noise)[0]) <= 5
    assert len(blob_boxes(noise, min_snr=None, max_det=None)[0]) > 100  # the contrast cap is what removes them
    # a faint disk in noise stands out; its contrast is its score
    img = np.random.default_rng(1).normal(100, 10, (128, 128))
    rr, cc = np.mgrid[:128, :128]
    img[(rr - 64) ** 2 + (cc - 64) ** 2 <= 100] += 25
    boxes, scores = blob_boxes(img / 255.0, diameter=20)
    assert len(boxes) >= 1 and np.abs((boxes[0, :2] + boxes[0, 2:]) / 2 - 64).max() <= 2
    assert 20 / 255 <= scores[0] <= 30 / 255  # contrast in 0..1 units (25 grey levels, minus blur at the rim)
