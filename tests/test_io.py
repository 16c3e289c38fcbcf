"""Image readers, napari CSV prompts (written by napari's own writer), resumable label output."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_mobilesam.engine.io import InputError, LabelWriter, open_image, read_prompts, with_channel_axis


@pytest.fixture
def stack() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 60000, (2, 3, 40, 50), dtype=np.uint16)


def _check(source, data: np.ndarray, frame_ndim: int = 2) -> None:
    assert source.shape == data.shape and source.dtype == data.dtype.name and source.frame_ndim == frame_ndim
    flat = data.reshape(-1, *data.shape[data.ndim - frame_ndim :])
    assert source.n_frames == len(flat)
    for t in (0, len(flat) - 1):
        np.testing.assert_array_equal(source.read(t), flat[t])
    np.testing.assert_array_equal(source.to_dask().compute(), data)


@pytest.mark.parametrize("kwargs", [{}, {"bigtiff": True, "compression": "zlib"}, {"imagej": True}], ids=["tiff", "bigtiff", "imagej"])
def test_tiff_variants(tmp_path, stack, kwargs):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", **kwargs)
    source = open_image(path)
    if kwargs.get("imagej"):  # ImageJ hyperstacks are TZCYX: same pixels, different leading shape
        assert source.n_frames == 6 and source.hw == (40, 50)
        np.testing.assert_array_equal(source.read(4), stack.reshape(6, 40, 50)[4])
    else:
        _check(source, stack)


def test_ome_tiff_and_rgb(tmp_path, stack):
    tifffile.imwrite(tmp_path / "s.ome.tif", stack, ome=True, metadata={"axes": "TZYX"})
    _check(open_image(tmp_path / "s.ome.tif"), stack)
    rgb = np.random.default_rng(1).integers(0, 255, (2, 30, 20, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    _check(open_image(tmp_path / "rgb.tif"), rgb, 3)
    # planar (C, H, W) pages are C frames, as napari shows them; channel axis 0 reads them as (H, W, C) frames
    tifffile.imwrite(tmp_path / "planar.tif", rgb[0].transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    source = with_channel_axis(open_image(tmp_path / "planar.tif"), 0)
    assert source.shape == (30, 20, 3) and source.n_frames == 1
    np.testing.assert_array_equal(source.read(0), rgb[0])


@pytest.mark.parametrize("case", ["rgba-default", "rgb-tagged", "five-planar"])
def test_planar_tiff_reads_as_napari_shows_it(tmp_path, case):
    """Issue 24 Bad 2: tifffile's default for a (4, H, W) uint8 array is planar RGB + alpha; napari opens it as
    4 frames, so do we (it used to become one colour frame, frame 3 dropped). The same for a 3-frame file tagged
    RGB, and 5 planar channels. --channel-axis 0 picks the colour reading."""
    from napari_builtins.io import napari_get_reader

    n = {"rgba-default": 4, "rgb-tagged": 3, "five-planar": 5}[case]
    stack = np.random.default_rng(2).integers(0, 255, (n, 24, 32), dtype=np.uint8)
    path = tmp_path / "s.tif"
    kw = {"rgb-tagged": {"photometric": "rgb"}, "five-planar": {"photometric": "minisblack", "planarconfig": "separate"}}
    tifffile.imwrite(path, stack, **kw.get(case, {}))
    napari_data = napari_get_reader(str(path))(str(path))[0][0]
    source = open_image(path)
    assert source.shape == napari_data.shape == (n, 24, 32) and source.n_frames == n and source.frame_ndim == 2
    for t in range(n):
        np.testing.assert_array_equal(source.read(t), stack[t])
    colour = with_channel_axis(source, 0)
    assert colour.shape == (24, 32, n) and colour.n_frames == 1
    np.testing.assert_array_equal(colour.read(0), np.moveaxis(stack, 0, -1))


def test_zarr_and_ome_zarr(tmp_path, stack):
    import zarr

    zarr.save_array(tmp_path / "a.zarr", stack)
    _check(open_image(tmp_path / "a.zarr"), stack)
    group = zarr.open_group(tmp_path / "ome.zarr", mode="w")
    group.create_array("0", data=stack, chunks=(1, 1, 40, 50))
    group.create_array("1", data=stack[..., ::2, ::2])
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}], "axes": []}]
    _check(open_image(tmp_path / "ome.zarr"), stack)


def test_png_jpeg(tmp_path):
    import imageio.v3 as iio

    img = np.random.default_rng(2).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", img)
    _check(open_image(tmp_path / "a.png"), img[None][0], 3)
    iio.imwrite(tmp_path / "a.jpg", img)
    assert open_image(tmp_path / "a.jpg").shape == (24, 32, 3)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_image(tmp_path / "missing.tif")
    (tmp_path / "bad.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(InputError, match="bad.tif"):
        open_image(tmp_path / "bad.tif")
    (tmp_path / "a.xyz").write_bytes(b"")
    with pytest.raises(InputError, match="unsupported format"):
        open_image(tmp_path / "a.xyz")


# ---------------------------------------------------------------------------------------------- prompts
def _save_points(path, data, **features):
    from napari.layers import Points
    from napari_builtins.io._write import napari_write_points

    layer_data, meta, _ = Points(np.asarray(data, float), features=features or None).as_layer_data_tuple()
    napari_write_points(str(path), layer_data, meta)
    return path


def _save_boxes(path, rects):
    from napari.layers import Shapes
    from napari_builtins.io._write import napari_write_shapes

    layer_data, meta, _ = Shapes([np.asarray(r, float) for r in rects], shape_type="rectangle").as_layer_data_tuple()
    napari_write_shapes(str(path), layer_data, meta)
    return path


@pytest.fixture
def source3d(tmp_path, stack):
    tifffile.imwrite(tmp_path / "s3.tif", stack[0], photometric="minisblack")  # 3 frames of 40 x 50
    return open_image(tmp_path / "s3.tif")


def test_points_semantics(tmp_path, source3d):
    # frame 0: two positive points (two objects) and a negative one near the second;
    # frame 2: one object (group 7) of two positive and one negative point; frame 1: group 7 again, with a given id
    pts = _save_points(tmp_path / "p.csv", [[0, 5, 5], [0, 30, 40], [0, 28, 35], [2, 10, 10], [2, 12, 14], [2, 20, 20], [1, 9, 9]],
                       label=[1, 1, 0, 1, 1, 0, 1], object=[np.nan, np.nan, np.nan, 7, 7, 7, 7], label_id=[0, 0, 0, 0, 0, 0, 0])
    prompts = read_prompts(source3d, pts)
    assert sorted(prompts) == [0, 1, 2]
    (oid, grouped), = prompts[2]
    assert grouped.points.shape == (3, 2) and list(grouped.labels) == [1, 1, 0]
    assert [i for i, _ in prompts[0]] == [1, 2] and [i for i, _ in prompts[1]] == [3] and oid == 3  # group 7: one id in frames 1 and 2
    first, second = (p for _, p in prompts[0])
    assert first.points.tolist() == [[5, 5]] and list(first.labels) == [1]
    np.testing.assert_array_equal(second.points, [[30, 40], [28, 35]])  # negative refines the nearest object
    assert list(second.labels) == [1, 0]
    # a label_id column (as napari saves the widget's points) is kept; new ids are the lowest free ones
    pts = _save_points(tmp_path / "q.csv", [[0, 5, 5], [0, 30, 40]], label=[1, 1], label_id=[12, 0])
    assert [i for i, _ in read_prompts(source3d, pts)[0]] == [12, 1]


def test_boxes_and_negative_on_box(tmp_path, source3d):
    boxes = _save_boxes(tmp_path / "b.csv", [[[1, 2, 3], [1, 2, 20], [1, 15, 20], [1, 15, 3]], [[2, 30, 30], [2, 30, 60], [2, 45, 60], [2, 45, 30]]])
    pts = _save_points(tmp_path / "n.csv", [[1, 8, 10]], label=[False])
    prompts = read_prompts(source3d, pts, boxes)
    (_, box1), = prompts[1]
    np.testing.assert_array_equal(box1.box, [2, 3, 15, 20])
    assert box1.points.tolist() == [[8, 10]] and list(box1.labels) == [0]
    (_, box2), = prompts[2]
    np.testing.assert_array_equal(box2.box, [30, 30, 39, 49])  # clipped to the last pixel centres, as in the widget


def test_prompt_errors(tmp_path, source3d):
    with pytest.raises(InputError, match=r"o.csv row 2: point at row 5, col 500 in frame 0: outside the 40 x 50 frame"):
        read_prompts(source3d, _save_points(tmp_path / "o.csv", [[0, 5, 500]]))
    with pytest.raises(InputError, match=r"f.csv row 2: point at row 5, col 5 in frame 9: in a frame the image does not have"):
        read_prompts(source3d, _save_points(tmp_path / "f.csv", [[9, 5, 5]]))
    with pytest.raises(InputError, match="3 dims"):
        read_prompts(source3d, _save_points(tmp_path / "d.csv", [[5, 5]]))
    (tmp_path / "w.csv").write_text("x,y\n1,2\n")
    with pytest.raises(InputError, match="not a napari Points CSV"):
        read_prompts(source3d, tmp_path / "w.csv")
    with pytest.raises(InputError, match="neg.csv row 2: .* a negative point with no object in its frame to refine"):
        read_prompts(source3d, _save_points(tmp_path / "neg.csv", [[0, 5, 5]], label=[0]))
    with pytest.raises(InputError, match="does not exist"):
        read_prompts(source3d, tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------------- output
@pytest.mark.parametrize("name", ["out.tif", "out.zarr"])
def test_label_writer_resume(tmp_path, name):
    out = tmp_path / name
    sig = {"input": "a", "opts": [1, 2]}
    w = LabelWriter(out, (2, 2), (8, 9), sig)
    assert w.todo() == [0, 1, 2, 3]
    w.write(0, np.full((8, 9), 3, np.uint32))
    w.write(1, np.zeros((8, 9), np.uint32))
    # a new writer (the rerun) sees frames 0 and 1 finished, and frame 2's ids start after 3
    w = LabelWriter(out, (2, 2), (8, 9), sig)
    assert w.todo() == [2, 3] and w.offset(2) == 3
    with pytest.raises(InputError, match="different run"):
        LabelWriter(out, (2, 2), (8, 9), {"input": "b"})
    for t in w.todo():
        w.write(t, np.full((8, 9), 4 + t, np.uint32))
    w.finish()
    result = tifffile.imread(out) if name.endswith(".tif") else np.asarray(__import__("zarr").open_group(out)["labels"])
    assert result.shape == (2, 2, 8, 9) and result.dtype == np.uint32
    assert [int(f[0, 0]) for f in result.reshape(4, 8, 9)] == [3, 0, 6, 7]
    if name.endswith(".tif"):
        assert not (tmp_path / "out.tif.partial.zarr").exists()
    assert LabelWriter(out, (2, 2), (8, 9), sig).todo() == []
    with pytest.raises(InputError, match="different run"):  # also once the output is complete
        LabelWriter(out, (2, 2), (8, 9), {"input": "b"})
    assert LabelWriter(out, (2, 2), (8, 9), sig, overwrite=True).todo() == [0, 1, 2, 3]


def test_label_writer_never_touches_foreign_files(tmp_path):
    tifffile.imwrite(tmp_path / "mine.tif", np.ones((8, 9), np.uint16))
    __import__("zarr").save_array(tmp_path / "mine.zarr", np.ones((8, 9)))
    for name in ("mine.tif", "mine.zarr"):
        with pytest.raises(InputError, match="not written by mobilesam"):
            LabelWriter(tmp_path / name, (), (8, 9), {"a": 1}, overwrite=True)
        assert (tmp_path / name).exists()
