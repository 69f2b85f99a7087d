"""Tables and plots of results (summary, size histogram, tracking curve) and many files in one run."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import blobs_image
from PIL import Image

from mm_core.batching.files import run_files
from mm_core.measure import measurements_table, objects_per_frame, summary_table
from mm_core.viz.plots import png_bytes, size_histogram, tracking_plot


def _blobs(seed=0, shape=(96, 96)):
    return blobs_image(seed, shape)


def test_summary_in_px_and_um():
    lab = np.zeros((40, 40), np.int32)
    lab[0:4, 0:4], lab[10:16, 10:16], lab[20:22, 20:22] = 1, 2, 3  # areas 16, 36, 4
    t = measurements_table(lab, np.ones((40, 40)), pixel_size=0.5)
    s = summary_table(t).set_index("measurement")
    assert list(s.index[:4]) == ["area_px", "area_um2", "equivalent_diameter_px", "equivalent_diameter_um"]
    assert s.loc["area_px", "count"] == 3 and s.loc["area_px", "mean"] == pytest.approx(56 / 3)
    assert s.loc["area_px", "std"] == pytest.approx(np.std([16, 36, 4], ddof=1))
    assert s.loc["area_um2", "median"] == pytest.approx(16 * 0.25)
    assert "mean_intensity" in s.index
    empty = summary_table(measurements_table(np.zeros((8, 8), int)))
    assert (empty["count"] == 0).all() and empty["mean"].isna().all()


def test_size_histogram_png_draws_the_bars():
    t = pd.DataFrame({"equivalent_diameter_px": np.r_[np.full(30, 10.0), np.full(10, 20.0)]})
    rgb = size_histogram(t, bins=10)
    assert rgb.shape == (400, 640, 3) and rgb.dtype == np.uint8
    blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 60)
    cols = np.nonzero(blue.any(axis=0))[0]
    heights = [blue[:, c].sum() for c in (cols.min() + 2, cols.max() - 2)]
    assert heights[0] == pytest.approx(3 * heights[1], rel=0.1)  # 30 objects vs 10
    back = Image.open(io.BytesIO(png_bytes(rgb)))
    assert back.format == "PNG" and back.size == (640, 400)


def test_objects_per_frame_and_divisions_plot():
    masks = np.zeros((4, 20, 20), np.int32)
    masks[:2, 2:6, 2:6] = 1  # parent in frames 0-1
    masks[2:, 2:5, 2:5], masks[2:, 10:13, 10:13] = 2, 3  # two daughters from frame 2
    masks[:, 15:18, 15:18] = 4
    tracks = pd.DataFrame({"label": [1, 2, 3, 4], "begin": [0, 2, 2, 0], "end": [1, 3, 3, 3], "parent": [0, 1, 1, 0]})
    pf = objects_per_frame(masks, tracks)
    assert pf["objects"].tolist() == [2, 2, 3, 3] and pf["divisions"].tolist() == [0, 0, 1, 0]
    assert pf["cumulative_divisions"].tolist() == [0, 0, 1, 1]
    rgb = tracking_plot(pf)
    assert rgb.shape == (400, 640, 3) and ((rgb[..., 0] > 200) & (rgb[..., 2] < 60)).any()  # the division bar


def test_many_files_one_table_one_zip(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", _blobs(1), imagej=True, resolution=(1 / 0.24, 1 / 0.24),
                     metadata={"unit": "um"})
    (src / "broken.tif").write_text("not an image")
    with zipfile.ZipFile(src / "more.zip", "w") as zf:
        for i in range(2):
            buf = io.BytesIO()
            tifffile.imwrite(buf, _blobs(5 + i))
            zf.writestr(f"sub/z{i}.tif", buf.getvalue())
    seen = []
    res = run_files([src / "a.tif", src / "broken.tif", src / "more.zip"], "segment", tmp_path / "out",
                    progress=lambda f, d: seen.append(f))
    s = res.summary.set_index("image")
    assert list(s.index) == ["a.tif", "broken.tif", "z0.tif", "z1.tif"]
    assert s.loc["broken.tif", "status"] == "failed" and "not a PNG, JPEG, BMP or TIFF" in s.loc["broken.tif", "message"]
    assert (s.drop("broken.tif")["count"] == 4).all()
    assert s.loc["a.tif", "mean_area_um2"] == pytest.approx(s.loc["a.tif", "mean_area_px"] * 0.24**2)
    assert s.loc["a.tif", "pixel_size"] == "0.24 µm (from file)"
    assert seen == sorted(seen) and seen[-1] == 1.0
    names = zipfile.ZipFile(res.zip_path).namelist()
    for stem in ("a", "z0", "z1"):
        assert {f"{stem}.tif", f"{stem}.csv", f"{stem}.geojson"} <= set(names)
    assert {"manifest.csv", "summary.csv"} <= set(names) and not any(n.startswith((".", "_inputs")) for n in names)
    assert not (tmp_path / "out" / "_inputs").exists()
