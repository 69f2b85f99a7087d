"""The CLI contract: python -m mm_core {segment,count,track,evaluate}."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import blobs_image

from mm_core.cli import expand_inputs, main, read_boxes_csv
from mm_core.errors import InputError


def _blobs(shape=(96, 96), centres=((24, 24), (24, 70), (70, 30), (72, 72)), r=9, seed=0):
    return blobs_image(seed, shape, centres, r)


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in (1, 2, 10):
        tifffile.imwrite(folder / f"img{i}.tif", _blobs(seed=i))
    return folder


def test_expand_inputs_natural_order(images, tmp_path):
    (images / ".hidden.tif").write_bytes(b"x")
    (images / "notes.txt").write_text("x")
    names = [p.name for p in expand_inputs([str(images)])]
    assert names == ["img1.tif", "img2.tif", "img10.tif"]


def test_read_boxes_csv(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("image,x0,y0,x1,y1\nimg1,1,2,30,40\nimg1,5,5,20,20\nimg2.tif,0,0,10,10\n")
    boxes = read_boxes_csv(str(p))
    assert boxes["img1"] == [[1, 2, 30, 40], [5, 5, 20, 20]] and boxes["img2.tif"] == [[0, 0, 10, 10]]
    p.write_text("name,a\nx,1\n")
    with pytest.raises(InputError, match="header"):
        read_boxes_csv(str(p))
    p.write_text("image,x0,y0,x1,y1\nimg1,a,2,3,4\n")
    with pytest.raises(InputError, match="line 2"):
        read_boxes_csv(str(p))


def test_segment_writes_labels_and_measurements(images, tmp_path):
    out = tmp_path / "out"
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\nimg2,14,14,35,35\n")
    assert main(["segment", str(images), "--out", str(out), "--engine", "classic", "--boxes", str(boxes)]) == 0
    for base in ("img1", "img2", "img10"):
        labels = tifffile.imread(out / f"{base}.tif")
        table = pd.read_csv(out / f"{base}.csv")
        assert labels.shape == (96, 96) and 3 <= labels.max() <= 5
        assert len(table) == len(np.unique(labels)) - 1
        assert {"label", "area_px", "centroid_x", "mean_intensity"} <= set(table.columns)


def test_count_writes_counts_density_points(images, tmp_path):
    out = tmp_path / "out"
    assert main(["count", str(images / "img1.tif"), str(images / "img2.tif"), "--out", str(out),
                 "--engine", "classic", "--box", "14", "14", "35", "35"]) == 0
    counts = pd.read_csv(out / "counts.csv")
    assert list(counts.columns) == ["image", "count"] and list(counts["image"]) == ["img1", "img2"]
    assert np.allclose(counts["count"], 4, atol=1.0)
    density = tifffile.imread(out / "img1_density.tif")
    assert density.dtype == np.float32 and density.sum() == pytest.approx(counts["count"][0], rel=1e-3)
    assert {"x", "y"} <= set(pd.read_csv(out / "img1_points.csv").columns)


def test_bad_file_is_skipped_and_exit_code_is_nonzero(images, tmp_path, capsys):
    (images / "broken.tif").write_bytes(b"II*\x00garbage")
    out = tmp_path / "out"
    assert main(["segment", str(images), "--out", str(out), "--engine", "classic"]) == 1
    err = capsys.readouterr().err
    assert "skipped broken.tif" in err and (out / "img1.tif").exists()
    assert not (out / "broken.tif").exists()


def test_box_outside_image_is_reported(images, tmp_path, capsys):
    code = main(["segment", str(images / "img1.tif"), "--out", str(tmp_path / "o"), "--engine", "classic",
                 "--box", "500", "500", "600", "600"])
    assert code == 1 and "outside" in capsys.readouterr().err


def test_track_writes_valid_ctc(tmp_path):
    frames = np.stack([_blobs(centres=((24, 20 + 3 * t), (70, 70 - 2 * t)), seed=t) for t in range(5)])
    seq = tmp_path / "movie.tif"
    tifffile.imwrite(seq, frames)
    out = tmp_path / "res"
    assert main(["track", str(seq), "--out", str(out), "--engine", "classic"]) == 0
    assert sorted(p.name for p in out.glob("mask*.tif")) == [f"mask{t:03d}.tif" for t in range(5)]
    res = np.loadtxt(out / "res_track.txt", dtype=int, ndmin=2)
    assert res.shape[1] == 4 and len(res) == 2 and (res[:, 1] == 0).all() and (res[:, 2] == 4).all()
    from ctc_metrics import validate_sequence  # the format check the CTC uses

    assert validate_sequence(str(out), threads=1)["Valid"] == 1
    tracks = pd.read_csv(out / "tracks.csv")
    assert len(tracks) == 10
    assert sorted(p.name for p in out.iterdir()) == sorted(  # one time-lapse: its files in --out itself
        [f"mask{t:03d}.tif" for t in range(5)] + ["res_track.txt", "ctc.zip", "tracks.csv", "tracks.zarr",
                                                 "tracks_geff.zip", "per_frame.png", "manifest.csv"])
    row = pd.read_csv(out / "manifest.csv").iloc[0]
    assert (row["output"], row["status"], row["tracks"]) == ("movie", "done", 2)


@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.slow)])  # 2: ~40 s, a Dask cluster
def test_track_several_time_lapses(tmp_path, capsys, workers):
    import zipfile

    frames = np.stack([_blobs(centres=((24, 20 + 3 * t), (70, 70 - 2 * t)), seed=t) for t in range(5)])
    tifffile.imwrite(tmp_path / "A.tif", frames)
    with zipfile.ZipFile(tmp_path / "B.zip", "w") as zf:
        for t, f in enumerate(frames[:3]):
            zf.writestr(f"frame{t}.tif", _tiff_bytes(f))
    (tmp_path / "C.tif").write_bytes(b"II*\x00 not a tiff")
    out = tmp_path / "res"
    args = ["track", str(tmp_path / "A.tif"), str(tmp_path / "B.zip"), str(tmp_path / "C.tif"), "--out", str(out),
            "--engine", "classic", "--workers", workers]
    assert main(args) == 1  # C refused, named
    assert "skipped C.tif" in capsys.readouterr().err
    table = pd.read_csv(out / "manifest.csv", keep_default_na=False).set_index("output")
    assert table.loc["A", "status"] == table.loc["B", "status"] == "done", table["message"].to_dict()
    assert table.loc["C", "status"] == "failed"
    for name, n in (("A", 5), ("B", 3)):
        assert sorted(p.name for p in (out / name).glob("mask*.tif")) == [f"mask{t:03d}.tif" for t in range(n)]
        assert {"res_track.txt", "ctc.zip", "tracks.csv", "tracks.zarr", "tracks_geff.zip"} <= {
            p.name for p in (out / name).iterdir()}
    assert not (out / "C").exists()


def _tiff_bytes(arr):
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def test_evaluate_prints_one_json_line(images, tmp_path):
    gt = tmp_path / "gt"
    (gt / "masks").mkdir(parents=True)
    (gt / "images").mkdir()
    for i in (1, 2):
        lab = (tifffile.imread(images / f"img{i}.tif") > 500).astype(np.uint16)
        tifffile.imwrite(gt / "masks" / f"img{i}.tif", lab)
    proc = subprocess.run([sys.executable, "-m", "mm_core", "evaluate", str(gt / "masks"), str(gt)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["AP50"] == 1.0
    assert json.loads(lines[0])["task"] == "segment"
    assert main(["evaluate", str(gt / "masks"), str(gt), "--task", "seg"]) == 0  # 'seg' is short for 'segment'


def test_missing_output_parent_is_created_and_bad_engine_refused(images, tmp_path):
    with pytest.raises(SystemExit):
        main(["segment", str(images), "--out", str(tmp_path / "o"), "--engine", "gpu"])
