"""Embedding store: round trip, reuse gives the same masks as encoding, mismatches are refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_mobilesam import Prompt
from napari_mobilesam.engine.store import EmbeddingStore, EmbeddingStoreMismatch, image_fingerprint, model_fingerprint


@pytest.fixture(scope="module")
def frames(cell_image) -> np.ndarray:
    return np.stack([cell_image[:96, :128], cell_image[100:196, 200:328]])


def test_round_trip_and_reuse(tmp_path, sam, predictor, frames):
    mh, fp = model_fingerprint(sam), image_fingerprint(frames)
    store = EmbeddingStore.open(tmp_path / "e.zarr", mh, fp, n_frames=2, original_size=(96, 128))
    assert store.todo() == [0, 1] and not store.has(0)
    predictor.set_image(frames[1], key=("store-test", 1))
    emb = predictor.get_embedding()
    store.save(1, emb)
    again = EmbeddingStore.open(tmp_path / "e.zarr", mh, fp, mode="r")
    assert again.has(1) and not again.has(0) and again.todo() == [0]
    loaded = again.load(1)
    assert loaded.original_size == emb.original_size and loaded.input_size == emb.input_size
    torch.testing.assert_close(loaded.features, emb.features.float(), rtol=0, atol=0)
    with pytest.raises(KeyError, match="no stored embedding"):
        again.load(0)
    # masks from the stored embedding equal masks from encoding
    prompt = [Prompt(points=[[40, 60]]), Prompt(box=[10, 10, 60, 90])]
    direct = predictor.predict_objects(prompt)
    predictor.set_embedding(loaded, key="from-disk")
    reused = predictor.predict_objects(prompt)
    for a, b in zip(direct, reused):
        np.testing.assert_array_equal(a.full(), b.full())


def test_half_precision(tmp_path, predictor, frames):
    store = EmbeddingStore.open(tmp_path / "h.zarr", "m", image_fingerprint(frames), n_frames=2, original_size=(96, 128), dtype="float16")
    predictor.set_image(frames[0], key=("store-test", 0))
    emb = predictor.get_embedding()
    store.save(0, emb)
    err = (store.load(0).features - emb.features).norm() / emb.features.norm()
    assert 0 < float(err) < 2e-3


def test_mismatches_are_refused(tmp_path, sam, frames):
    mh, fp = model_fingerprint(sam), image_fingerprint(frames)
    EmbeddingStore.open(tmp_path / "e.zarr", mh, fp, n_frames=2, original_size=(96, 128))
    other = copy.deepcopy(sam)
    with torch.no_grad():
        other.image_encoder.neck[0].weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(EmbeddingStoreMismatch, match="other model weights"):
        EmbeddingStore.open(tmp_path / "e.zarr", model_fingerprint(other), fp)
    changed = frames.copy()
    changed[-1, 5, 5] ^= 1
    with pytest.raises(EmbeddingStoreMismatch, match="pixel values differ"):
        EmbeddingStore.open(tmp_path / "e.zarr", mh, image_fingerprint(changed))
    with pytest.raises(EmbeddingStoreMismatch, match="shape"):
        EmbeddingStore.open(tmp_path / "e.zarr", mh, image_fingerprint(frames[:1]))
    with pytest.raises(EmbeddingStoreMismatch, match="preprocess"):
        EmbeddingStore.open(tmp_path / "e.zarr", mh, image_fingerprint(frames, {"channels": [0]}))
    with pytest.raises(ValueError, match="does not exist"):
        EmbeddingStore.open(tmp_path / "none.zarr", mh, fp, mode="r")


def test_cache_backed_by_a_store(tmp_path, sam, predictor, frames):
    """EmbeddingCache.back_with: stored frames are found, read once, then served from memory."""
    from napari_mobilesam.engine.embeddings import EmbeddingCache

    store = EmbeddingStore.open(tmp_path / "e.zarr", model_fingerprint(sam), image_fingerprint(frames),
                                n_frames=len(frames), original_size=frames.shape[1:3])
    predictor.set_image(frames[0])
    emb = predictor.cache.get(predictor.key)
    store.save(0, emb)
    reads, saved = [], []
    cache = EmbeddingCache()
    cache.back_with(lambda k: k[0] == "s" and store.has(k[1]), lambda k: reads.append(k) or store.load(k[1]),
                    lambda k, e: saved.append(k))
    assert ("s", 0) in cache and ("s", 1) not in cache and ("x", 0) not in cache
    assert cache.get(("s", 1)) is None
    got = cache.get(("s", 0))
    assert torch.equal(got.features, emb.features.float()) and got.original_size == emb.original_size
    cache.get(("s", 0))
    assert reads == [("s", 0)]  # read from disk once
    assert saved == []  # what was read back is not saved again
    cache.put(("s", 1), emb)
    assert saved == [("s", 1)] and ("s", 1) in cache
    cache.back_with(None, None)
    cache.clear()
    assert ("s", 0) not in cache


def test_a_store_mismatch_in_the_widget_names_the_widgets_fixes(fsam, tmp_path):
    """Issue 24: the widget's store check said "(or pass --overwrite)", a flag of the command line."""
    from napari.layers import Image

    from napari_mobilesam.gui.stores import StoreLink

    img = Image(np.zeros((32, 32), np.uint8), name="cells")
    made = EmbeddingStore.open(tmp_path / "e.zarr", "another-model", image_fingerprint(np.zeros((32, 32), np.uint8)), n_frames=1, original_size=(32, 32))
    assert made.n_frames == 1
    with pytest.raises(EmbeddingStoreMismatch) as err:
        StoreLink(tmp_path / "e.zarr", fsam, img)
    text = str(err.value)
    assert "--" not in text and "-o path" not in text, text
    assert "pick the weights it was made with as 'model'" in text and "choose another 'embeddings' path" in text
