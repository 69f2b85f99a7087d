"""Exports: label TIFFs, measurements, ImageJ ROIs, CTC folders, density/counts/points."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
import tifffile
from roifile import ROI_TYPE, roiread
from skimage.draw import disk, polygon2mask

from mm_core.errors import InputError
from mm_core.io import read_ctc
from mm_core.measure import tracks_from_masks
from mm_core.export import (
    ctc_frame_name,
    measurements_table,
    write_counts,
    write_ctc,
    write_ctc_zip,
    write_density,
    write_imagej_rois,
    write_labels,
    write_measurements,
    write_points,
    write_tracks_csv,
)


# --------------------------------------------------------------------------- labels
def test_labels_roundtrip_uint16_imagej(tmp_path):
    lab = np.zeros((40, 50), np.int32)
    lab[5:10, 5:20] = 1
    lab[20:30, 30:45] = 65535  # the largest id that still fits uint16
    out = write_labels(tmp_path / "labels.tif", lab)
    assert out == tmp_path / "labels.tif"
    with tifffile.TiffFile(out) as tif:
        back = tif.asarray()
        assert tif.is_imagej
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, lab)


def test_labels_switch_to_uint32_past_65535(tmp_path):
    lab = np.zeros((16, 16), np.int64)
    lab[1:4, 1:4] = 3
    lab[8:12, 8:12] = 70000  # an id past 65,535: stored as uint32, never renumbered
    out = write_labels(tmp_path / "sub" / "big.tif", lab)
    back = tifffile.imread(out)
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, lab)


@pytest.mark.parametrize("bad", [np.full((4, 4), 0.5), -np.ones((4, 4), int), np.zeros(5, int),
                                 np.array([["a"]])])
def test_labels_refuse_bad_arrays(tmp_path, bad):
    with pytest.raises(InputError):
        write_labels(tmp_path / "x.tif", bad)
    assert not (tmp_path / "x.tif").exists()


# --------------------------------------------------------------------------- measurements
def _two_objects():
    lab = np.zeros((20, 30), np.uint16)
    lab[2:6, 3:9] = 1     # 4 rows x 6 cols = 24 px
    lab[10:15, 10:15] = 7  # 5 x 5 square = 25 px
    img = np.zeros((20, 30), np.float32)
    img[2:6, 3:9] = 2.0
    img[2, 3] = 10.0
    img[10:15, 10:15] = np.arange(25, dtype=np.float32).reshape(5, 5)
    return lab, img


def test_measurements_columns_and_values(tmp_path):
    lab, img = _two_objects()
    t = measurements_table(lab, img)
    assert list(t.columns) == ["label", "area_px", "centroid_x", "centroid_y", "bbox_x0", "bbox_y0", "bbox_x1",
                               "bbox_y1", "equivalent_diameter_px", "eccentricity", "mean_intensity",
                               "min_intensity", "max_intensity"]
    assert t["label"].tolist() == [1, 7]
    assert t["area_px"].tolist() == [24, 25]
    assert t["centroid_x"].tolist() == pytest.approx([5.5, 12.0])
    assert t["centroid_y"].tolist() == pytest.approx([3.5, 12.0])
    assert t.loc[0, ["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]].tolist() == [3, 2, 9, 6]
    assert t["equivalent_diameter_px"].tolist() == pytest.approx(np.sqrt(4 * np.array([24, 25]) / np.pi))
    assert t.loc[1, "eccentricity"] == pytest.approx(0.0, abs=1e-9)  # a square
    assert 0 < t.loc[0, "eccentricity"] < 1
    assert t["mean_intensity"].tolist() == pytest.approx([(23 * 2 + 10) / 24, 12.0])
    assert t["min_intensity"].tolist() == pytest.approx([2.0, 0.0])
    assert t["max_intensity"].tolist() == pytest.approx([10.0, 24.0])

    out = write_measurements(tmp_path / "m.csv", lab, img)
    back = pd.read_csv(out)
    pd.testing.assert_frame_equal(back, t, check_dtype=False)


def test_measurements_multichannel_and_empty():
    lab, img = _two_objects()
    rgb = np.stack([img, 2 * img, np.ones_like(img)], axis=-1)
    t = measurements_table(lab, rgb)
    assert t["mean_intensity_ch1"].tolist() == pytest.approx(2 * t["mean_intensity_ch0"])
    assert t["max_intensity_ch2"].tolist() == [1.0, 1.0]
    assert "mean_intensity" not in t
    empty = measurements_table(np.zeros((8, 8), int), np.ones((8, 8)))
    assert len(empty) == 0 and "mean_intensity" in empty
    with pytest.raises(InputError, match="shape"):
        measurements_table(lab, img[:10])


# --------------------------------------------------------------------------- ImageJ ROIs
def test_imagej_rois_read_back(tmp_path):
    lab = np.zeros((60, 70), np.uint16)
    lab[disk((20, 20), 9)] = 1
    lab[0:15, 50:70] = 2  # touches the top and right border
    lab[40:55, 10:30] = 12
    out = write_imagej_rois(tmp_path / "rois.zip", lab)
    rois = roiread(out)
    assert len(rois) == 3
    assert [r.name for r in rois] == ["0001", "0002", "0012"]
    for roi in rois:
        label = int(roi.name)
        assert roi.roitype == ROI_TYPE.POLYGON
        xy = roi.coordinates()
        # ImageJ puts pixel (c, r) in [c, c+1) x [r, r+1): back to pixel centres
        poly = polygon2mask(lab.shape, np.stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5], axis=1))
        obj = lab == label
        assert (poly & obj).sum() / (poly | obj).sum() > 0.85
        assert not (poly & (lab > 0) & ~obj).any()  # never covers another object


def test_imagej_rois_empty_image(tmp_path):
    out = write_imagej_rois(tmp_path / "none.zip", np.zeros((10, 10), int))
    assert zipfile.ZipFile(out).namelist() == []


# --------------------------------------------------------------------------- Cell Tracking Challenge
def _division_sequence():
    """Track 1 divides into 2 and 3 at frame 3; track 4 lives in frames 1-5."""
    masks = np.zeros((6, 64, 64), np.uint16)
    for t in range(3):
        masks[t][disk((20, 15 + 3 * t), 6)] = 1
    for t in range(3, 6):
        masks[t][disk((12, 25), 5)] = 2
        masks[t][disk((30, 25), 5)] = 3
    for t in range(1, 6):
        masks[t][disk((50, 10 + 5 * t), 5)] = 4
    tracks = pd.DataFrame([[1, 0, 2, 0], [2, 3, 5, 1], [3, 3, 5, 1], [4, 1, 5, 0]],
                          columns=["label", "begin", "end", "parent"])
    return masks, tracks


def test_ctc_write_is_valid_and_reads_back(tmp_path):
    from ctc_metrics import validate_sequence

    masks, tracks = _division_sequence()
    res = write_ctc(tmp_path / "01_RES", masks, tracks)
    assert sorted(p.name for p in res.iterdir()) == [f"mask{t:03d}.tif" for t in range(6)] + ["res_track.txt"]
    assert (res / "res_track.txt").read_text() == "1 0 2 0\n2 3 5 1\n3 3 5 1\n4 1 5 0\n"
    assert tifffile.imread(res / "mask003.tif").dtype == np.uint16
    assert validate_sequence(str(res), threads=1)["Valid"] == 1
    back_masks, back_tracks = read_ctc(res)
    np.testing.assert_array_equal(back_masks, masks)
    pd.testing.assert_frame_equal(back_tracks, tracks, check_dtype=False)


def test_ctc_validation_catches_bad_lineage(tmp_path):
    from ctc_metrics import validate_sequence

    masks, tracks = _division_sequence()
    tracks.loc[0, "end"] = 4  # parent ends after its daughters begin, and is absent from frames 3-4
    res = write_ctc(tmp_path / "bad_RES", masks, tracks)
    with pytest.warns(UserWarning):
        assert validate_sequence(str(res), threads=1)["Valid"] == 0


def test_ctc_tracks_from_masks_and_stale_files(tmp_path):
    masks, _ = _division_sequence()
    derived = tracks_from_masks(masks)
    assert derived.values.tolist() == [[1, 0, 2, 0], [2, 3, 5, 0], [3, 3, 5, 0], [4, 1, 5, 0]]
    write_ctc(tmp_path / "res", masks)
    write_ctc(tmp_path / "res", masks[:3])  # a shorter re-run replaces the old frames
    assert sorted(p.name for p in (tmp_path / "res").glob("mask*.tif")) == ["mask000.tif", "mask001.tif",
                                                                            "mask002.tif"]
    with pytest.raises(InputError, match="16-bit"):
        write_ctc(tmp_path / "big", np.full((2, 4, 4), 70000, np.int64))


def test_tracks_csv(tmp_path):
    masks, tracks = _division_sequence()
    table = pd.read_csv(write_tracks_csv(tmp_path / "tracks.csv", masks, tracks))
    assert list(table.columns) == ["track_id", "frame", "x", "y", "area_px", "parent"]
    assert len(table) == 3 + 3 + 3 + 5  # objects over all frames
    assert table.loc[table.track_id == 2, "parent"].tolist() == [1, 1, 1]
    first = table.iloc[0]
    assert (first.track_id, first.frame, first.x, first.y) == (1, 0, 15.0, 20.0)


def test_ctc_frame_names():
    assert ctc_frame_name(7, 65) == "mask007.tif"
    assert ctc_frame_name(999, 1000) == "mask999.tif"
    assert ctc_frame_name(7, 1001) == "mask0007.tif"
    assert ctc_frame_name(1000, 1001) == "mask1000.tif"
    assert ctc_frame_name(3, 10, prefix="man_track") == "man_track003.tif"


def test_ctc_zip(tmp_path):
    masks, tracks = _division_sequence()
    out = write_ctc_zip(tmp_path / "res.zip", masks, tracks)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert names == [f"01_RES/mask{t:03d}.tif" for t in range(6)] + ["01_RES/res_track.txt"]
        zf.extractall(tmp_path / "x")
    back, back_tracks = read_ctc(tmp_path / "x" / "01_RES")
    np.testing.assert_array_equal(back, masks)
    assert back_tracks.values.tolist() == tracks.values.tolist()


# --------------------------------------------------------------------------- every file of a tracking result
def test_save_tracks_checks_encodes_and_measures_once(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import mm_core.measure
    from mm_core.export import geff as eg
    from mm_core.export import save
    from mm_core.export import tracks as et

    pytest.importorskip("geff")
    masks, tracks = _division_sequence()
    calls = {"encode": 0, "check": 0, "measure": 0, "geff": 0}

    def spy(module, name, key):
        real = getattr(module, name)

        def wrapped(*a, **k):
            calls[key] += 1
            return real(*a, **k)

        monkeypatch.setattr(module, name, wrapped)

    spy(et, "encode_mask", "encode")
    spy(mm_core.measure, "validate_track_table", "check")
    spy(et, "object_rows", "measure")
    spy(eg, "_write", "geff")
    out = tmp_path / "o"
    files = save(SimpleNamespace(masks=masks, tracks=tracks), out, "mov")
    assert calls == {"encode": len(masks), "check": 1, "measure": 1, "geff": 1}
    assert [f.name for f in files] == [f"mask{t:03d}.tif" for t in range(6)] + [
        "res_track.txt", "mov_ctc.zip", "mov_tracks.csv", "mov_tracks.zarr", "mov_tracks_geff.zip"]
    with zipfile.ZipFile(out / "mov_ctc.zip") as zf:  # the zip holds the folder's very bytes
        for name in [f"mask{t:03d}.tif" for t in range(6)] + ["res_track.txt"]:
            assert zf.read(f"01_RES/{name}") == (out / name).read_bytes()
    with zipfile.ZipFile(out / "mov_tracks_geff.zip") as zf:  # the GEFF folder, zipped as written
        zarr_files = sorted(p for p in (out / "mov_tracks.zarr").rglob("*") if p.is_file())
        assert sorted(zf.namelist()) == sorted(p.relative_to(out / "mov_tracks.zarr").as_posix() for p in zarr_files)
        assert all(zf.read(p.relative_to(out / "mov_tracks.zarr").as_posix()) == p.read_bytes() for p in zarr_files)
    back, back_tracks = read_ctc(out)
    np.testing.assert_array_equal(back, masks)
    assert back_tracks.values.tolist() == tracks.values.tolist()


def test_interrupted_track_writers_leave_no_partial_file(tmp_path, monkeypatch):
    geff = pytest.importorskip("geff")
    from mm_core.export import save_tracks

    masks, tracks = _division_sequence()
    out = tmp_path / "o"
    save_tracks(out, masks, tracks)  # an earlier complete result
    before = {p.relative_to(out): p.read_bytes() for p in (out / "tracks.zarr").rglob("*") if p.is_file()}
    names = sorted(p.name for p in out.iterdir())

    def dies(*a, **k):
        raise KeyboardInterrupt  # killed half way through the GEFF folder (its segmentation is written)

    monkeypatch.setattr(geff, "write", dies)
    with pytest.raises(KeyboardInterrupt):
        save_tracks(out, masks, tracks)
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary file or folder left
    after = {p.relative_to(out): p.read_bytes() for p in (out / "tracks.zarr").rglob("*") if p.is_file()}
    assert after == before  # the old folder is whole
    monkeypatch.undo()
    n, writestr = {"members": 0}, zipfile.ZipFile.writestr

    def dies_on_third(self, *a, **k):  # killed while the zip is half written
        n["members"] += 1
        if n["members"] == 3:
            raise MemoryError
        return writestr(self, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", dies_on_third)
    (tmp_path / "new").mkdir()
    with pytest.raises(MemoryError):
        write_ctc_zip(tmp_path / "new" / "res.zip", masks, tracks)
    assert n["members"] == 3 and list((tmp_path / "new").iterdir()) == []


def test_geff_folder_replaces_a_planted_link_without_following_it(tmp_path):
    pytest.importorskip("geff")
    from mm_core.export.geff import write_geff

    masks, tracks = _division_sequence()
    outside, out = tmp_path / "outside", tmp_path / "o"
    outside.mkdir()
    out.mkdir()
    (outside / "precious.txt").write_text("keep")
    (out / "tracks.zarr").symlink_to(outside, target_is_directory=True)
    path = write_geff(out, masks, tracks)
    assert path.is_dir() and not path.is_symlink() and (path / "tracks").is_dir()
    assert [p.name for p in outside.iterdir()] == ["precious.txt"]


def test_read_ctc_real_ground_truth(shared_data):
    gt = shared_data / "track" / "Fluo-N2DH-SIM+" / "01_GT"
    if not gt.is_dir():
        pytest.skip("Fluo-N2DH-SIM+ 01_GT not present")
    masks, tracks = read_ctc(gt)
    assert masks.shape == (65, 690, 628) and masks.dtype == np.uint16
    assert len(tracks) == 95 and int((tracks["parent"] > 0).sum()) == 59
    for t in (0, 30, 64):  # labels in a frame are exactly the tracks alive in it
        alive = set(tracks.loc[(tracks["begin"] <= t) & (tracks["end"] >= t), "label"])
        assert set(np.unique(masks[t])) - {0} == alive


def test_read_ctc_refuses_other_folders(tmp_path):
    (tmp_path / "mask000.tif").write_bytes(b"")
    with pytest.raises(InputError, match="Cell Tracking Challenge"):
        read_ctc(tmp_path)


# --------------------------------------------------------------------------- counting
def test_density_counts_points(tmp_path):
    dens = np.random.default_rng(0).random((32, 40))
    back = tifffile.imread(write_density(tmp_path / "d.tif", dens))
    assert back.dtype == np.float32 and back.shape == (32, 40)
    assert back.sum() == pytest.approx(dens.sum(), rel=1e-5)
    with pytest.raises(InputError, match="NaN"):
        write_density(tmp_path / "nan.tif", np.full((4, 4), np.nan))

    out = write_counts(tmp_path / "counts.csv", [("a.png", 12), ("b.png", 3.25)])
    assert out.read_text().splitlines() == ["image,count", "a.png,12", "b.png,3.25"]
    with pytest.raises(InputError):
        write_counts(tmp_path / "bad.csv", [("a.png", "many")])
    merged = write_counts(tmp_path / "counts.csv", [("0.png", 1), ("b.png", 4)], merge=True)  # save's way
    assert merged.read_text().splitlines() == ["image,count", "0.png,1", "a.png,12", "b.png,4"]
    (tmp_path / "junk.csv").write_text("not,a\ncounts,table\n")
    assert write_counts(tmp_path / "junk.csv", [("c", 2)], merge=True).read_text() == "image,count\nc,2\n"

    pts = pd.DataFrame({"x": [1.5, 10.0], "y": [2.0, 3.0]})
    back_pts = pd.read_csv(write_points(tmp_path / "p.csv", pts))
    assert list(back_pts.columns) == ["x", "y"] and back_pts.values.tolist() == [[1.5, 2.0], [10.0, 3.0]]
    with pytest.raises(InputError):
        write_points(tmp_path / "q.csv", pd.DataFrame({"row": [1]}))
