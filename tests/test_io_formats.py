"""mm_core.io on every supported format, written in the test itself, and on the real data."""

from __future__ import annotations

import io
import zipfile

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from mm_core.errors import InputError
from mm_core.io import ImageData, SequenceData, natural_key, read_image, read_sequence
from mm_core.transforms import normalize

RNG = np.random.default_rng(0)


def ramp(shape, dtype=np.uint16, scale=1000):
    """Deterministic non-constant test image."""
    arr = RNG.random(shape) * scale
    return arr.astype(dtype)


# --------------------------------------------------------------------------- TIFF dtypes


@pytest.mark.parametrize(
    "dtype", ["uint8", "uint16", "uint32", "int16", "int32", "float16", "float32", "float64"]
)
def test_tiff_dtypes(tmp_path, dtype):
    arr = ramp((20, 24), np.dtype(dtype), scale=100)
    p = tmp_path / f"img_{dtype}.tif"
    tifffile.imwrite(p, arr)
    img = read_image(p)
    assert isinstance(img, ImageData)
    assert img.data.dtype == np.float32 and img.data.shape == (20, 24)
    assert img.dtype == dtype and img.axes == "YX" and img.n_channels == 1
    assert img.source == p.name and img.info["format"] == "TIFF"
    np.testing.assert_array_equal(img.data, arr.astype(np.float32))


def test_tiff_compressed_and_rgb(tmp_path):
    rgb = ramp((16, 18, 3), np.uint8, 255)
    p = tmp_path / "rgb.tif"
    tifffile.imwrite(p, rgb, photometric="rgb", compression="zlib")
    img = read_image(p)
    assert img.data.shape == (16, 18, 3) and img.axes == "YXC" and img.n_channels == 3
    np.testing.assert_array_equal(img.data, rgb)


def test_tiff_rgba_alpha_dropped(tmp_path):
    rgba = ramp((16, 18, 4), np.uint16, 60000)
    p = tmp_path / "rgba.tif"
    tifffile.imwrite(p, rgba, photometric="rgb", extrasamples=["unassalpha"])
    img = read_image(p)
    assert img.data.shape == (16, 18, 3) and img.info["alpha_dropped"]
    np.testing.assert_array_equal(img.data, rgba[..., :3])


def test_tiff_planar_rgb_without_metadata(tmp_path):
    arr = ramp((3, 12, 14), np.uint8, 255)
    p = tmp_path / "planar.tif"
    tifffile.imwrite(p, arr, photometric="rgb", planarconfig="separate", metadata=None)
    np.testing.assert_array_equal(read_image(p).data, np.moveaxis(arr, 0, -1))


def test_tiff_big_endian_tiled_lzw_and_bilevel(tmp_path):
    arr = ramp((40, 36), np.uint16, 60000)
    tifffile.imwrite(tmp_path / "be.tif", arr.astype(">u2"), byteorder=">")
    tifffile.imwrite(tmp_path / "tiled.tif", arr, compression="lzw", tile=(16, 16))
    for name in ("be.tif", "tiled.tif"):
        np.testing.assert_array_equal(read_image(tmp_path / name).data, arr)
    mask = ramp((20, 20), np.uint8, 255) > 127
    for ext in ("tif", "png", "bmp"):
        Image.fromarray(mask).save(tmp_path / f"bw.{ext}")
        bw = read_image(tmp_path / f"bw.{ext}")
        assert bw.dtype == "bool"
        np.testing.assert_array_equal(bw.data, mask.astype(np.float32))


# --------------------------------------------------------------------------- Pillow formats


def test_png_gray_8_and_16(tmp_path):
    a8 = ramp((12, 16), np.uint8, 255)
    Image.fromarray(a8).save(tmp_path / "g8.png")
    a16 = ramp((12, 16), np.uint16, 65000)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    img8, img16 = read_image(tmp_path / "g8.png"), read_image(tmp_path / "g16.png")
    assert img8.dtype == "uint8" and img16.dtype == "uint16" and img16.info["format"] == "PNG"
    np.testing.assert_array_equal(img8.data, a8)
    np.testing.assert_array_equal(img16.data, a16)


def test_png_rgb_rgba_palette_la(tmp_path):
    rgb = ramp((12, 16, 3), np.uint8, 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = ramp((12, 16, 4), np.uint8, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    la = ramp((12, 16, 2), np.uint8, 255)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png").data, rgb)
    r = read_image(tmp_path / "rgba.png")
    assert r.data.shape == (12, 16, 3) and r.info["alpha_dropped"] and r.n_channels == 3
    np.testing.assert_array_equal(r.data, rgba[..., :3])
    g = read_image(tmp_path / "la.png")
    assert g.data.shape == (12, 16)
    np.testing.assert_array_equal(g.data, la[..., 0])
    assert read_image(tmp_path / "pal.png").data.shape == (12, 16, 3)


def test_png_16bit_rgb_keeps_precision(tmp_path):
    rgb16 = ramp((12, 16, 3), np.uint16, 65000)
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(rgb16))
    img = read_image(tmp_path / "rgb16.png")
    assert img.dtype == "uint16" and img.data.shape == (12, 16, 3)
    np.testing.assert_array_equal(img.data, rgb16)


def test_jpeg_and_bmp(tmp_path):
    gray = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (24, 1))
    rgb = np.stack([gray, gray[::-1], np.full_like(gray, 90)], -1)
    Image.fromarray(gray).save(tmp_path / "g.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "c.jpeg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    Image.fromarray(gray).save(tmp_path / "g.bmp")
    g = read_image(tmp_path / "g.jpg")
    assert g.data.shape == (24, 32) and g.info["format"] == "JPEG"
    assert np.abs(g.data - gray).mean() < 3  # lossy
    c = read_image(tmp_path / "c.jpeg")
    assert c.data.shape == (24, 32, 3) and np.abs(c.data - rgb).mean() < 4
    np.testing.assert_array_equal(read_image(tmp_path / "c.bmp").data, rgb)
    b = read_image(tmp_path / "g.bmp")
    assert b.info["format"] == "BMP"
    np.testing.assert_array_equal(b.data, gray)


def test_wrong_extension_is_sniffed(tmp_path):
    arr = ramp((12, 16), np.uint8, 255)
    Image.fromarray(arr).save(tmp_path / "x.png")
    (tmp_path / "really_png.tif").write_bytes((tmp_path / "x.png").read_bytes())
    img = read_image(tmp_path / "really_png.tif")
    assert img.info["format"] == "PNG" and "PNG" in img.info["note"]
    np.testing.assert_array_equal(img.data, arr)


# --------------------------------------------------------------------------- channels


def _ref_composite(chw):
    out = []
    for ch in chw.astype(np.float64):
        lo, hi = np.percentile(ch, [1.0, 99.8])
        out.append((ch - lo) / (hi - lo) if hi > lo else np.zeros_like(ch))
    return np.mean(out, axis=0)


@pytest.mark.parametrize("n", [2, 4, 5])
def test_multichannel_composite_and_pick(tmp_path, n):
    chw = ramp((n, 20, 22), np.uint16, 4000) * np.arange(1, n + 1, dtype=np.uint16)[:, None, None]
    p = tmp_path / f"c{n}.tif"
    tifffile.imwrite(p, chw, metadata={"axes": "CYX"}, photometric="minisblack")
    comp = read_image(p)
    assert comp.data.shape == (20, 22) and comp.n_channels == n and "composite" in comp.info
    np.testing.assert_allclose(comp.data, _ref_composite(chw), atol=1e-5)
    one = read_image(p, channels=1)
    np.testing.assert_array_equal(one.data, chw[1])
    assert one.info["channels_used"] == [1]
    pair = read_image(p, channels=[0, n - 1])
    np.testing.assert_allclose(pair.data, _ref_composite(chw[[0, n - 1]]), atol=1e-5)
    with pytest.raises(InputError, match=f"has {n} channels.*channel {n} does not exist"):
        read_image(p, channels=n)


def test_three_channels_stay_and_composite_on_request(tmp_path):
    chw = ramp((3, 16, 16), np.uint16, 4000)
    p = tmp_path / "c3.tif"
    tifffile.imwrite(p, chw, metadata={"axes": "CYX"}, photometric="minisblack")
    img = read_image(p)
    assert img.data.shape == (16, 16, 3)
    np.testing.assert_array_equal(img.data, np.moveaxis(chw, 0, -1))
    assert read_image(p, channels="composite").data.shape == (16, 16)
    with pytest.raises(InputError, match="channels must be"):
        read_image(p, channels="red")


# --------------------------------------------------------------------------- stacks


def test_imagej_hyperstack(tmp_path):
    tzcyx = ramp((4, 3, 2, 16, 20), np.uint16, 3000)
    p = tmp_path / "hyper.tif"
    tifffile.imwrite(p, tzcyx, imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(InputError, match="hyper.tif holds 4 time points.*read_sequence"):
        read_image(p)
    seq = read_sequence(p, channels=1)
    assert isinstance(seq, SequenceData) and len(seq) == 4 and seq.shape == (4, 16, 20)
    assert seq.names == ["t000", "t001", "t002", "t003"] and seq.dtype == "uint16"
    assert seq.info["time_axis"] == "T" and "max of 3" in seq.info["z_projection"]
    for t in range(4):
        np.testing.assert_array_equal(seq.frames[t], tzcyx[t, :, 1].max(axis=0))
    comp = read_sequence(p)
    np.testing.assert_allclose(comp.frames[2], _ref_composite(tzcyx[2].max(axis=0)), atol=1e-5)


def test_z_stack_projection_and_z_as_time(tmp_path):
    zyx = ramp((5, 16, 16), np.float32, 10)
    p = tmp_path / "z.tif"
    tifffile.imwrite(p, zyx, imagej=True, metadata={"axes": "ZYX"})
    img = read_image(p)
    np.testing.assert_array_equal(img.data, zyx.max(axis=0))
    assert img.info["z_projection"] == "max of 5 slices"
    seq = read_sequence(p)
    assert len(seq) == 5 and seq.info["time_axis"].startswith("Z")


def test_ome_tiff(tmp_path):
    tcyx = ramp((3, 2, 16, 18), np.uint16, 3000)
    p = tmp_path / "movie.ome.tif"
    tifffile.imwrite(p, tcyx, ome=True, metadata={"axes": "TCYX"})
    seq = read_sequence(p, channels=0)
    assert seq.shape == (3, 16, 18) and seq.info["file_axes"] == "TCYX"
    for t in range(3):
        np.testing.assert_array_equal(seq.frames[t], tcyx[t, 0])
    p1 = tmp_path / "one.ome.tif"
    tifffile.imwrite(p1, tcyx[0], ome=True, metadata={"axes": "CYX"})
    np.testing.assert_array_equal(read_image(p1, channels=[1]).data, tcyx[0, 1])


def test_plain_multipage_is_frames(tmp_path):
    pages = [ramp((16, 16), np.uint8, 255) for _ in range(4)]
    p = tmp_path / "pages.tif"
    Image.fromarray(pages[0]).save(p, save_all=True, append_images=[Image.fromarray(x) for x in pages[1:]])
    seq = read_sequence(p)
    assert len(seq) == 4 and seq.info["time_axis"].startswith("pages")
    np.testing.assert_array_equal(np.stack(seq.frames), np.stack(pages))
    with pytest.raises(InputError, match="4 pages.*time points, slices or channels"):
        read_image(p)
    np.testing.assert_array_equal(
        read_image(p, channels=2).data, pages[2]
    )  # pages read as channels on request


def test_single_image_as_sequence(tmp_path):
    p = tmp_path / "one.tif"
    tifffile.imwrite(p, ramp((16, 16)))
    assert len(read_sequence(p)) == 1


# --------------------------------------------------------------------------- folders and zips


def _frames(n=12, shape=(16, 20)):
    return [np.full(shape, t, np.uint16) + ramp(shape, np.uint16, 5) for t in range(n)]


def test_natural_key():
    names = ["t10.tif", "t2.tif", "T1.tif", "t100.tif", "t02b.tif"]
    assert sorted(names, key=natural_key) == ["T1.tif", "t2.tif", "t02b.tif", "t10.tif", "t100.tif"]


def test_folder_of_frames_natural_order_and_junk(tmp_path):
    frames = _frames()
    for t, f in enumerate(frames):
        tifffile.imwrite(tmp_path / f"t{t}.tif", f)
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "._t1.tif").write_bytes(b"\x00\x05\x16\x07 apple double")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "._t0.tif").write_bytes(b"junk")
    seq = read_sequence(tmp_path)
    assert seq.names == [f"t{t}.tif" for t in range(12)]
    np.testing.assert_array_equal(np.stack(seq.frames), np.stack(frames))
    assert seq.source == tmp_path.name and seq.info["format"] == "TIFF"
    with pytest.raises(InputError, match="is a folder.*read_sequence"):
        read_image(tmp_path)


def _zip_bytes(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tif_bytes(arr) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def _png_bytes(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_zip_of_frames_natural_order_junk_and_no_temp_files(tmp_path, monkeypatch):
    import tempfile

    frames = _frames()
    members = {
        "movie/": b"",
        "__MACOSX/movie/._t0.tif": b"junk",
        "movie/.hidden.tif": b"junk",
        "movie/readme.txt": b"hello",
        "movie/meta.json": b"{}",
    }
    members.update({f"movie/t{t}.tif": _tif_bytes(f) for t, f in enumerate(frames)})
    zp = tmp_path / "movie.zip"
    zp.write_bytes(_zip_bytes(dict(reversed(list(members.items())))))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert tempfile.gettempdir() == str(tmp)
    seq = read_sequence(zp)
    assert seq.names == [f"t{t}.tif" for t in range(12)]
    np.testing.assert_array_equal(np.stack(seq.frames), np.stack(frames))
    assert list(tmp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie.zip", "tmp"]


def test_zip_rgb_png_frames_and_single_image_zip(tmp_path):
    frames = [ramp((12, 12, 3), np.uint8, 255) for _ in range(3)]
    zp = tmp_path / "rgb.zip"
    zp.write_bytes(_zip_bytes({f"f{t}.png": _png_bytes(f) for t, f in enumerate(frames)}))
    seq = read_sequence(zp)
    assert seq.shape == (3, 12, 12, 3)
    np.testing.assert_array_equal(seq.frames[1], frames[1])
    with pytest.raises(InputError, match="holds 3 images"):
        read_image(zp)
    one = tmp_path / "one.zip"
    one.write_bytes(_zip_bytes({"docs/readme.txt": b"x", "img/cells.png": _png_bytes(frames[0])}))
    img = read_image(one)
    assert img.source == "cells.png in one.zip"
    np.testing.assert_array_equal(img.data, frames[0])


# --------------------------------------------------------------------------- normalisation


def test_normalize_constant_per_channel_and_nan():
    assert not normalize(np.full((10, 10), 7.0)).any()
    img = np.stack([np.full((10, 10), 3.0), np.arange(100, dtype=float).reshape(10, 10)], -1)
    out = normalize(img)
    assert out.dtype == np.float32 and not out[..., 0].any()
    lo, hi = np.percentile(img[..., 1], [1, 99.8])
    np.testing.assert_allclose(out[..., 1], (img[..., 1] - lo) / (hi - lo), rtol=1e-5)
    with_nan = img[..., 1].copy()
    with_nan[0, 0] = np.nan
    res = normalize(with_nan)
    assert res[0, 0] == 0 and np.isfinite(res).all()
    assert not normalize(np.full((4, 4), np.nan)).any()


# --------------------------------------------------------------------------- real data (skips when absent)

SEG_CASES = [("seg/dsb2018_stage1_test", i) for i in (0, 1, 5)] + [
    ("seg/stardist_dsb2018_example", 0),
    ("seg/isbi2012_em_cells", 0),
    ("seg/isbi2012_em_cells", 7),
    ("seg/usiigaci_phase_contrast", 0),
    ("seg/usiigaci_phase_contrast", 3),
    ("count/vgg_cells", 0),
    ("count/vgg_cells", 42),
    ("count/vgg_cells", 199),
]


@pytest.mark.parametrize("dataset,index", SEG_CASES)
def test_real_images(shared_data, dataset, index):
    files = sorted((shared_data / dataset / "images").iterdir())
    f = files[index]
    img = read_image(f)
    ref = tifffile.imread(f) if f.suffix == ".tif" else np.asarray(Image.open(f).convert("RGB"))
    if ref.ndim == 3 and ref.shape[-1] == 4:
        ref = ref[..., :3]
    assert img.data.dtype == np.float32 and img.data.shape == ref.shape
    np.testing.assert_array_equal(img.data, ref.astype(np.float32))


def test_real_dsb_rgb_images(shared_data):
    files = sorted((shared_data / "seg/dsb2018_stage1_test/images").iterdir())
    rgb = [f for f in files if tifffile.TiffFile(f).series[0].ndim == 3][:2]
    assert rgb, "the dataset lists 12 RGB images"
    for f in rgb:
        assert read_image(f).data.shape[-1] == 3


def test_real_track_sequence(shared_data, tmp_path):
    folder = shared_data / "track/Fluo-N2DH-SIM+/01"
    seq = read_sequence(folder)
    assert len(seq) == 65 and seq.shape == (65, 690, 628) and seq.dtype == "uint16"
    assert seq.names[:3] == ["t000.tif", "t001.tif", "t002.tif"] and seq.names[-1] == "t064.tif"
    np.testing.assert_array_equal(seq.frames[10], tifffile.imread(folder / "t010.tif"))
    zp = tmp_path / "sim.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        for t in (10, 2, 1):
            zf.write(folder / f"t{t:03d}.tif", f"01/t{t:03d}.tif")
    z = read_sequence(zp)
    assert z.names == ["t001.tif", "t002.tif", "t010.tif"]
    np.testing.assert_array_equal(z.frames[2], seq.frames[10])
