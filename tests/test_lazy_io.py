"""Whole images read lazily (zarr, OME-Zarr, big TIFF) and written as OME-Zarr + BigTIFF."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.draw import disk

zarr = pytest.importorskip("zarr")

from mm_core.batching import tasks as batch_tasks  # noqa: E402
from mm_core.batching import run as mb  # noqa: E402
from mm_core.errors import InputError  # noqa: E402
from mm_core.io.lazy import open_lazy  # noqa: E402


def _nuclei(shape=(400, 360), r=9, step=40, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full(shape, 100.0)
    centres = [(y, x) for y in range(25, shape[0] - 20, step) for x in range(25, shape[1] - 20, step)]
    for c in centres:
        rr, cc = disk(c, r, shape=shape)
        img[rr, cc] = 1000.0
    return (img + rng.normal(0, 20, shape)).clip(0, 65535).astype(np.uint16), len(centres)


def _ome_zarr(path, arr, axes="yx"):
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a} for a in axes],
                                  "datasets": [{"path": "0"}]}]
    root.create_array("0", shape=arr.shape, chunks=(1,) * (arr.ndim - 2) + (128, 128), dtype=arr.dtype)[:] = arr
    return path


def test_zarr_input_is_read_lazily_window_by_window(tmp_path):
    arr, _ = _nuclei()
    path = _ome_zarr(tmp_path / "slide.ome.zarr", arr[None, None], axes="tcyx")
    with open_lazy(path) as img:
        assert isinstance(img.array, zarr.Array)  # nothing decoded yet
        assert img.shape == arr.shape and img.axes == "TCYX"
        assert np.array_equal(img.read(10, 50, 300, 360), arr[10:50, 300:360].astype(np.float32))
    plain = zarr.create_array(str(tmp_path / "plain.zarr"), shape=arr.shape, chunks=(64, 64), dtype=arr.dtype)
    plain[:] = arr
    with open_lazy(tmp_path / "plain.zarr") as img:
        assert img.axes == "YX" and np.array_equal(img.read(0, 5, 0, 5), arr[:5, :5])


def test_zarr_without_image_or_with_unknown_axes_is_refused(tmp_path):
    g = zarr.open_group(str(tmp_path / "empty.zarr"), mode="w", zarr_format=2)
    g.create_group("nothing_here")
    with pytest.raises(InputError, match="holds no image data.*nothing_here"):
        open_lazy(tmp_path / "empty.zarr")
    arr = np.zeros((4, 64, 64), np.uint16)
    _ome_zarr(tmp_path / "q.zarr", arr, axes="qyx")
    with pytest.raises(InputError, match="axes QYX with shape \\(4, 64, 64\\)"):
        open_lazy(tmp_path / "q.zarr")
    _ome_zarr(tmp_path / "t.zarr", np.zeros((3, 1, 64, 64), np.uint16), axes="tcyx")
    with pytest.raises(InputError, match="3 time points.*axes TCYX"):
        open_lazy(tmp_path / "t.zarr")
    plain = zarr.create_array(str(tmp_path / "cube.zarr"), shape=(5, 64, 64), chunks=(1, 64, 64), dtype="u2")
    assert plain is not None
    with pytest.raises(InputError, match="no axes metadata"):
        open_lazy(tmp_path / "cube.zarr")


def test_lazy_pixel_limit_is_its_own(mm_env, tmp_path):
    arr, _ = _nuclei()
    path = _ome_zarr(tmp_path / "s.zarr", arr)
    mm_env(MM_MAX_LAZY_PIXELS="1000")
    with pytest.raises(InputError, match="MM_MAX_LAZY_PIXELS"):
        open_lazy(path)


def test_zarr_slide_segmented_in_tiles_to_ome_zarr_and_bigtiff(tmp_path):
    arr, n = _nuclei()
    path = _ome_zarr(tmp_path / "slide.ome.zarr", arr)
    out = tmp_path / "out"
    table = mb.batch([path], "segment", out, engine="classic", head="analytic", tile=200, overlap=64,
                     progress=False)
    assert list(table["status"]) == ["done"], table["message"].tolist()
    labels_tif = tifffile.imread(out / "slide.tif")
    with tifffile.TiffFile(out / "slide.tif") as tf:
        assert tf.is_bigtiff and tf.pages[0].is_tiled
    z = zarr.open_group(str(out / "slide.ome.zarr"), mode="r")
    assert z["labels"].attrs["labels"] == ["segmentation"]
    lab = np.asarray(z["labels/segmentation/0"][:])
    assert np.array_equal(lab, labels_tif) and np.array_equal(np.asarray(z["0"][:]), arr)
    assert "image-label" in z["labels/segmentation"].attrs
    assert int(table["objects"].iloc[0]) == lab.max() == n  # every nucleus once, across tile seams
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    specs = {type(s).__name__ for node in reader.Reader(parse_url(str(out / "slide.ome.zarr")))() for s in node.specs}
    assert {"Multiscales", "Labels", "Label"} <= specs  # what napari's ome-zarr reader looks for
    objects = pd.read_csv(out / "slide.csv")
    assert len(objects) == n and objects["area_px"].between(150, 400).all()


def test_big_tiff_past_the_in_memory_limit_is_read_lazily(tmp_path, monkeypatch, mm_env):
    arr, n = _nuclei((300, 520), seed=3)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, arr, tile=(128, 128), compression="zlib")
    mm_env(MM_MAX_PIXELS="50000")  # the in-memory reader refuses it
    monkeypatch.setattr(batch_tasks, "LAZY_FROM_PIXELS", 100_000)
    table = mb.batch([path], "count", tmp_path / "o", engine="classic", head="analytic", tile=256,
                     progress=False)
    assert list(table["status"]) == ["done"], table["message"].tolist()
    density = tifffile.imread(tmp_path / "o" / "big_density.tif")
    assert density.shape == arr.shape and abs(float(table["count"].iloc[0]) - n) <= 1
    assert abs(density.sum() - float(table["count"].iloc[0])) < 0.05
    points = pd.read_csv(tmp_path / "o" / "big_points.csv")
    assert points["n"].sum() == int(table["count"].iloc[0])  # the centres add up to the count
