"""Weights registry: download via pooch from a local server/file URL, cache, hash check, offline message."""

from __future__ import annotations

import http.server
import threading
from functools import partial

import pooch
import pytest

from napari_mobilesam._progress import drive
from napari_mobilesam.model import weights
from napari_mobilesam.model.weights import WeightsSpec, WeightsUnavailableError


@pytest.fixture
def served(tmp_path):
    """A file served over HTTP on 127.0.0.1 (loopback only)."""
    root = tmp_path / "srv"
    root.mkdir()
    payload = b"not really weights, but bytes with a known hash" * 1000
    (root / "w.pt").write_bytes(payload)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/w.pt", root / "w.pt"
    server.shutdown()


@pytest.fixture
def registry(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_MOBILESAM_CACHE", str(tmp_path / "cache"))
    table = dict(weights.REGISTRY)
    monkeypatch.setattr(weights, "REGISTRY", table)
    return table


def _spec(urls, file, good=True):
    h = pooch.file_hash(str(file), "sha256")
    return WeightsSpec("test_w", "test_w.pt", tuple(urls), "sha256:" + (h if good else "0" * 64), "test")


def test_download_http_with_progress_and_cache(registry, served, tmp_path):
    url, file = served
    registry["test_w"] = _spec([url], file)
    gen = weights.iter_fetch("test_w")
    progress = []
    path = drive(gen, progress.append)
    assert path == tmp_path / "cache" / "test_w.pt"
    assert path.read_bytes() == file.read_bytes()
    assert progress and progress[-1][0] == file.stat().st_size
    file.unlink()  # a second call is served from the cache, no network
    assert weights.download_weights("test_w") == path


def test_file_url_and_mirror_fallback(registry, served):
    _, file = served
    registry["test_w"] = _spec(["http://127.0.0.1:9/unreachable.pt", file.as_uri()], file)
    path = weights.download_weights("test_w")
    assert path.read_bytes() == file.read_bytes()


def test_wrong_hash_is_rejected(registry, served):
    url, file = served
    registry["test_w"] = _spec([url], file, good=False)
    with pytest.raises(WeightsUnavailableError, match="test_w"):
        weights.download_weights("test_w")
    assert not (weights.cache_dir() / "test_w.pt").exists()


def test_offline_error_names_the_fixes(registry, monkeypatch):
    registry["mobile_sam"] = WeightsSpec("mobile_sam", "mobile_sam.pt", ("http://127.0.0.1:9/mobile_sam.pt",), None, "x")
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve_weights("mobile_sam")
    msg = str(info.value)
    assert "--weights PATH" in msg and "NAPARI_MOBILESAM_WEIGHTS_MOBILE_SAM" in msg
    assert str(weights.cache_dir() / "mobile_sam.pt") in msg


def test_env_override(registry, monkeypatch, checkpoint):
    monkeypatch.setenv("NAPARI_MOBILESAM_WEIGHTS_MOBILE_SAM", str(checkpoint))
    assert weights.resolve_weights(None) == checkpoint
    monkeypatch.setenv("NAPARI_MOBILESAM_WEIGHTS_MOBILE_SAM", "/nope.pt")
    with pytest.raises(FileNotFoundError, match="NAPARI_MOBILESAM_WEIGHTS_MOBILE_SAM"):
        weights.resolve_weights("mobile_sam")


def test_registry_facts():
    assert weights.REGISTRY["mobile_sam"].known_hash == "xxh128:8eadbc88aeb9d8c7e0b4b60c3db48bd0"
    assert weights.REGISTRY["mobile_sam"].urls[0].endswith("MobileSAM/raw/master/weights/mobile_sam.pt")
    assert weights.REGISTRY["vit_t_lm"].known_hash == "xxh128:72ec5074774761a6e5c05a08942f981e"


def test_cached_file_with_bad_hash_is_refetched(registry, served):
    url, file = served
    registry["test_w"] = _spec([url], file)
    cached = weights.cache_dir() / "test_w.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    assert weights.download_weights("test_w").read_bytes() == file.read_bytes()
