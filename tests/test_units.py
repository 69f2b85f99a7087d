"""Physical units end to end: the pixel size read from files, given, carried to tables, GEFF, OME-Zarr,
GeoJSON (QuPath) and the CLI; a wrong pixel size is one message."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import blobs_image
from skimage.draw import disk

from mm_core import Matcher, export
from mm_core.cli import main
from mm_core.errors import InputError
from mm_core.export.geojson import geojson_features, polygon_area
from mm_core.io import read_image, read_sequence
from mm_core.io.calibration import FROM_FILE, GIVEN, UNKNOWN, check_pixel_size, zarr_pixel_size


def _blobs(seed=0, shape=(96, 96)):
    return blobs_image(seed, shape)


def _write(kind: str, path, data):
    if kind == "ome":
        tifffile.imwrite(path, data, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 240, "PhysicalSizeY": 240,
                                                         "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm"})
    elif kind == "imagej":
        tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.24, 1 / 0.24),
                         metadata={"unit": "micron", "axes": "YX"})
    elif kind == "tags":
        tifffile.imwrite(path, data, resolution=(1e4 / 0.24, 1e4 / 0.24), resolutionunit="CENTIMETER")
    else:
        tifffile.imwrite(path, data)
    return path


@pytest.mark.parametrize("kind", ["ome", "imagej", "tags"])
def test_pixel_size_read_from_calibrated_tiffs(tmp_path, kind):
    img = read_image(_write(kind, tmp_path / f"{kind}.tif", _blobs()))
    assert img.pixel_size == pytest.approx(0.24) and img.pixel_size_source == FROM_FILE
    given = read_image(tmp_path / f"{kind}.tif", pixel_size="0.5")
    assert given.pixel_size == 0.5 and given.pixel_size_source == GIVEN


def test_uncalibrated_and_print_resolution_stay_in_pixels(tmp_path):
    plain = read_image(_write("plain", tmp_path / "plain.tif", _blobs()))
    assert plain.pixel_size is None and plain.pixel_size_source == UNKNOWN
    tifffile.imwrite(tmp_path / "dpi.tif", _blobs(), resolution=(72, 72), resolutionunit="INCH")
    dpi = read_image(tmp_path / "dpi.tif")
    assert dpi.pixel_size is None and "print resolution" in dpi.info["calibration"]


def test_sequence_carries_the_pixel_size(tmp_path):
    stack = np.stack([_blobs(seed=i) for i in range(3)])
    tifffile.imwrite(tmp_path / "seq.tif", stack, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"unit": "um", "axes": "TYX"})
    seq = read_sequence(tmp_path / "seq.tif")
    assert seq.pixel_size == pytest.approx(0.5) and seq.pixel_size_source == FROM_FILE


@pytest.mark.parametrize("bad", [0, -1, "abc", "0", float("nan"), True])
def test_wrong_pixel_size_is_one_message(bad, tmp_path):
    with pytest.raises(InputError, match="positive number of micrometres"):
        check_pixel_size(bad)
    with pytest.raises(InputError, match="positive number of micrometres"):
        Matcher(engine="classic").segment(_blobs(), pixel_size=bad)


def test_cli_refuses_a_wrong_pixel_size(tmp_path, capsys):
    _write("plain", tmp_path / "a.tif", _blobs())
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(tmp_path / "a.tif"), "--out", str(tmp_path / "o"), "--pixel-size", "-2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--pixel-size must be a positive number" in err and "Traceback" not in err


def test_zarr_coordinate_transformations():
    attrs = {"multiscales": [{"axes": [{"name": "c", "type": "channel"},
                                       {"name": "y", "type": "space", "unit": "micrometer"},
                                       {"name": "x", "type": "space", "unit": "micrometer"}],
                              "datasets": [{"path": "0", "coordinateTransformations": [
                                  {"type": "scale", "scale": [1.0, 0.325, 0.325]}]}]}]}
    assert zarr_pixel_size(attrs)[0] == pytest.approx(0.325)
    attrs["multiscales"][0]["axes"][2]["unit"] = "nanometer"
    assert zarr_pixel_size(attrs)[0] == pytest.approx(0.325e-3)


def test_segmentation_in_um_from_the_file_and_given(tmp_path):
    path = _write("imagej", tmp_path / "cal.tif", _blobs())
    m = Matcher(engine="classic")
    res = m.segment(path)
    assert res.pixel_size == pytest.approx(0.24) and res.pixel_size_source == FROM_FILE
    assert "0.24 µm (from file)" in res.pixel_size_note()
    t = res.table()
    assert t["area_um2"].to_numpy() == pytest.approx(t["area_px"].to_numpy() * 0.24**2)
    assert t["equivalent_diameter_um"].to_numpy() == pytest.approx(t["equivalent_diameter_px"].to_numpy() * 0.24)
    assert m.segment(path, pixel_size=0.5).pixel_size_source == GIVEN
    plain = m.segment(_blobs())
    assert plain.pixel_size is None and "area_um2" not in plain.table() and "unknown" in plain.pixel_size_note()


def test_save_writes_um_csv_and_qupath_geojson(tmp_path):
    res = Matcher(engine="classic").segment(_write("ome", tmp_path / "c.ome.tif", _blobs()))
    files = export.save(res, tmp_path / "out", "c")
    csv = pd.read_csv(tmp_path / "out" / "c.csv")
    assert "area_um2" in csv and tmp_path / "out" / "c.geojson" in files
    doc = json.loads((tmp_path / "out" / "c.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == res.n_objects
    labels = res.labels
    for f in doc["features"]:
        assert f["geometry"]["type"] == "Polygon" and f["properties"]["objectType"] == "detection"
        ring = f["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]
        lab = int(f["properties"]["name"])
        assert polygon_area(ring) == pytest.approx((labels == lab).sum())  # the outline follows the pixels
        assert f["properties"]["measurements"]["area_um2"] == pytest.approx((labels == lab).sum() * 0.24**2)


def test_geojson_polygons_match_label_areas_for_many_shapes():
    rng = np.random.default_rng(3)
    lab = np.zeros((120, 120), np.int32)
    for i in range(1, 15):
        rr, cc = disk(rng.uniform(5, 115, 2), rng.uniform(2, 12), shape=lab.shape)
        lab[rr, cc] = i
    lab[0:3, 100:120] = 20  # on the border
    from scipy.ndimage import binary_fill_holes
    from skimage.measure import label as cc_label

    checked = 0
    for f in geojson_features(lab)["features"]:
        k = int(f["properties"]["name"])
        mask = lab == k
        if cc_label(mask, connectivity=1).max() == 1:  # one piece: exact (holes filled)
            assert polygon_area(f["geometry"]["coordinates"][0]) == pytest.approx(binary_fill_holes(mask).sum())
            checked += 1
    assert checked >= 10


def test_geff_and_tracks_in_um(tmp_path):
    from mm_core.export.geff import read_geff, write_geff

    masks = np.zeros((2, 32, 32), np.uint16)
    masks[:, 4:10, 4:10] = 1
    masks[1] = 0
    masks[1, 4:10, 6:12] = 1
    write_geff(tmp_path, masks, name="g.zarr", pixel_size=0.5)
    meta = geff.GeffMetadata.read(tmp_path / "g.zarr" / "tracks")
    assert [a.unit for a in meta.axes] == ["frame", "micrometer", "micrometer"]
    nodes, _ = read_geff(tmp_path / "g.zarr")
    assert nodes.sort_values("t")["x"].tolist() == pytest.approx([6.5 * 0.5, 8.5 * 0.5])
    import zarr

    seg = zarr.open_group(str(tmp_path / "g.zarr" / "segmentation"), mode="r")
    assert seg.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]


def test_ome_zarr_labels_carry_the_scale(tmp_path):
    import zarr

    from mm_core.export.large import create_ome_zarr
    from mm_core.io.lazy import open_lazy

    path = _write("ome", tmp_path / "big.ome.tif", _blobs())
    with open_lazy(path) as img:
        assert img.pixel_size == pytest.approx(0.24)
        create_ome_zarr(tmp_path / "o.ome.zarr", img)
    lab = zarr.open_group(str(tmp_path / "o.ome.zarr" / "labels" / "segmentation"), mode="r")
    ms = lab.attrs["multiscales"][0]
    assert ms["axes"][-1]["unit"] == "micrometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([0.24, 0.24])
    with open_lazy(tmp_path / "o.ome.zarr") as back:
        assert back.pixel_size == pytest.approx(0.24)


def test_cli_pixel_size_from_file_and_given(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _write("imagej", src / "cal.tif", _blobs())
    _write("plain", src / "plain.tif", _blobs(seed=2))
    assert main(["segment", str(src), "--out", str(tmp_path / "o"), "--engine", "classic"]) == 0
    man = pd.read_csv(tmp_path / "o" / "manifest.csv").set_index("output")
    assert man.loc["cal", "pixel_size"] == "0.24 µm (from file)"
    assert man.loc["plain", "pixel_size"] == "unknown: pixels"
    assert "area_um2" in pd.read_csv(tmp_path / "o" / "cal.csv")
    assert "area_um2" not in pd.read_csv(tmp_path / "o" / "plain.csv")
    assert (tmp_path / "o" / "cal.geojson").is_file()
    assert "pixel size 0.24 µm (from file)" in capsys.readouterr().err
    assert main(["segment", str(src / "plain.tif"), "--out", str(tmp_path / "g"), "--engine", "classic",
                 "--pixel-size", "0.5"]) == 0
    t = pd.read_csv(tmp_path / "g" / "plain.csv")
    assert t["area_um2"].to_numpy() == pytest.approx(t["area_px"].to_numpy() * 0.25)


geff = pytest.importorskip("geff")


def test_image_past_the_limit_is_refused_before_decoding(tmp_path):
    """A 120 MP TIFF cut to its header: refused by its declared size, naming the setting (no data to decode)."""
    import os

    from mm_core.settings import Settings

    assert Settings().app_max_pixels == 100_000_000
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, shape=(12000, 10000), dtype="uint8")
    os.truncate(path, 4096)
    with pytest.raises(InputError, match=r"120\.0 megapixels.*limit of 100\.0 megapixels.*MM_MAX_PIXELS"):
        read_image(path, max_pixels=Settings().app_max_pixels)
