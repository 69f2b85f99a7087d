"""Every refusal of mm_core.io, each with a hostile or broken file made in the test."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from mm_core.errors import InputError
from mm_core.io import Limits, check_content, read_image, read_sequence

RNG = np.random.default_rng(1)


def img(shape=(16, 16), dtype=np.uint16):
    return (RNG.random(shape) * 1000).astype(dtype)


def tif_bytes(arr, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def forged_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) declares width x height but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def forged_tiff(width: int, height: int) -> bytes:
    """A little-endian TIFF whose IFD declares width x height 8-bit pixels but holds 16 bytes."""
    tags = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, width * height),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    data_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(tags))
    for tag, typ, value in tags:
        value = data_offset if tag == 273 else value
        ifd += struct.pack("<HHI", tag, typ, 1) + (
            struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 16


def forged_jpeg(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to declare width x height."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def make_zip(path, members: dict, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            if isinstance(name, zipfile.ZipInfo):
                name.compress_type = compression
            zf.writestr(name, data)
    return path


# --------------------------------------------------------------------------- zip safety


def test_zip_slip_dotdot(tmp_path):
    zp = make_zip(tmp_path / "slip.zip", {"t0.tif": tif_bytes(img()), "../../evil.tif": tif_bytes(img())})
    with pytest.raises(InputError, match=r"slip.zip was refused.*'\.\./\.\./evil.tif'.*outside"):
        read_sequence(zp)
    assert not (tmp_path.parent / "evil.tif").exists()


@pytest.mark.parametrize("name", ["/etc/evil.tif", "C:/evil.tif", "\\\\server\\evil.tif"])
def test_zip_absolute_paths(tmp_path, name):
    zp = make_zip(tmp_path / "abs.zip", {"t0.tif": tif_bytes(img()), name: tif_bytes(img())})
    with pytest.raises(InputError, match="abs.zip was refused.*absolute path"):
        read_sequence(zp)


def test_zip_symlink_member(tmp_path):
    link = zipfile.ZipInfo("t1.tif")
    link.external_attr = 0o120777 << 16
    zp = make_zip(tmp_path / "link.zip", {"t0.tif": tif_bytes(img()), link: "/etc/passwd"})
    with pytest.raises(InputError, match="link.zip was refused.*t1.tif.*symbolic link"):
        read_sequence(zp)


def test_zip_bomb_by_ratio(tmp_path):
    zp = make_zip(tmp_path / "bomb.zip", {"t0.tif": b"\x00" * (8 << 20)})
    assert zp.stat().st_size < 100_000
    with pytest.raises(InputError, match="bomb.zip was refused.*expand.*zip bomb"):
        read_sequence(zp)
    with pytest.raises(InputError, match="zip bomb"):
        read_image(zp)


def test_zip_total_size_cap_from_env(mm_env, tmp_path):
    zp = make_zip(
        tmp_path / "big.zip", {f"t{t}.tif": tif_bytes(img((64, 64))) for t in range(3)}, zipfile.ZIP_STORED
    )
    assert len(read_sequence(zp)) == 3
    mm_env(MM_MAX_ZIP_BYTES="20000")
    with pytest.raises(InputError, match="big.zip was refused.*MiB.*MM_MAX_ZIP_BYTES"):
        read_sequence(zp)


def test_zip_header_that_lies_is_caught_while_reading(tmp_path):
    data = tif_bytes(img((64, 64)))
    raw = bytearray((make_zip(tmp_path / "x.zip", {"t0.tif": data})).read_bytes())
    true_size = struct.pack("<I", len(data))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header and central directory
        pos = raw.index(sig)
        assert raw[pos + off : pos + off + 4] == true_size
        raw[pos + off : pos + off + 4] = struct.pack("<I", 100)
    (tmp_path / "liar.zip").write_bytes(bytes(raw))
    # zipfile stops at the declared size (then fails its CRC check); our own byte count is a second guard
    with pytest.raises(InputError, match="liar.zip.*(expands beyond|Bad CRC)"):
        read_sequence(tmp_path / "liar.zip")


def test_zip_too_many_members_encrypted_broken_and_mixed_folders(mm_env, tmp_path):
    mm_env(MM_MAX_ZIP_MEMBERS="4")
    zp = make_zip(tmp_path / "many.zip", {f"n{i}.txt": b"x" for i in range(5)})
    with pytest.raises(InputError, match="5 entries.*MM_MAX_ZIP_MEMBERS"):
        read_sequence(zp)
    mm_env(MM_MAX_ZIP_MEMBERS=None)
    raw = bytearray(make_zip(tmp_path / "plain.zip", {"t0.tif": tif_bytes(img())}).read_bytes())
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set the 'encrypted' flag bit
        raw[raw.index(sig) + off] |= 0x1
    zp = tmp_path / "locked.zip"
    zp.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="password-protected"):
        read_sequence(zp)
    (tmp_path / "broken.zip").write_bytes(
        make_zip(tmp_path / "ok.zip", {"a.tif": b"x" * 100}).read_bytes()[:60]
    )
    with pytest.raises(InputError, match="broken.zip is not a readable zip"):
        read_sequence(tmp_path / "broken.zip")
    zp = make_zip(tmp_path / "two.zip", {"01/t0.tif": tif_bytes(img()), "01_GT/t0.tif": tif_bytes(img())})
    with pytest.raises(InputError, match="2 different folders"):
        read_sequence(zp)
    zp = make_zip(tmp_path / "none.zip", {"a.txt": b"x"})
    with pytest.raises(InputError, match="none.zip holds no PNG, JPEG, BMP or TIFF"):
        read_sequence(zp)


# --------------------------------------------------------------------------- sequence limits


def test_too_many_frames_folder_zip_and_stack(mm_env, tmp_path):
    for t in range(5):
        tifffile.imwrite(tmp_path / f"t{t}.tif", img())
    with pytest.raises(InputError, match="holds 5 frames, more than the limit of 3"):
        read_sequence(tmp_path, max_frames=3)
    zp = make_zip(tmp_path.parent / "frames.zip", {f"t{t}.tif": tif_bytes(img()) for t in range(5)})
    mm_env(MM_MAX_FRAMES="4")
    with pytest.raises(InputError, match="frames.zip holds 5 frames.*MM_MAX_FRAMES"):
        read_sequence(zp)
    assert len(read_sequence(zp, max_frames=5)) == 5  # the argument wins over the variable
    stack = tmp_path.parent / "stack.tif"
    tifffile.imwrite(stack, img((6, 16, 16)), imagej=True, metadata={"axes": "TYX"})
    with pytest.raises(InputError, match="stack.tif holds 6 frames"):
        read_sequence(stack)


def test_mixed_frame_sizes(tmp_path):
    tifffile.imwrite(tmp_path / "t000.tif", img((32, 32)))
    tifffile.imwrite(tmp_path / "t001.tif", img((32, 32)))
    tifffile.imwrite(tmp_path / "t012.tif", img((16, 24)))
    with pytest.raises(InputError, match="frame t012.tif is 24x16 but t000.tif is 32x32"):
        read_sequence(tmp_path)
    mixed = tmp_path.parent / "mixed.tif"
    with tifffile.TiffWriter(mixed) as tw:
        for shape in ((32, 32), (16, 16), (32, 32)):
            tw.write(img(shape), metadata=None)
    with pytest.raises(InputError, match="pages of mixed.tif differ in size"):
        read_sequence(mixed)


def test_rgb_and_gray_frames_mixed(tmp_path):
    Image.fromarray(img((16, 16), np.uint8)).save(tmp_path / "a1.png")
    Image.fromarray(img((16, 16, 3), np.uint8)).save(tmp_path / "a2.png")
    with pytest.raises(InputError, match="frame a2.png is 16x16 RGB but a1.png is 16x16"):
        read_sequence(tmp_path)


def test_total_pixels_cap(mm_env, tmp_path):
    mm_env(MM_MAX_TOTAL_PIXELS="1000")
    tifffile.imwrite(tmp_path / "s.tif", img((4, 16, 16)), imagej=True, metadata={"axes": "TYX"})
    with pytest.raises(InputError, match="s.tif holds .* in all.*MM_MAX_TOTAL_PIXELS"):
        read_sequence(tmp_path / "s.tif")


def test_blank_frames_noted_all_blank_refused(tmp_path):
    frames = [img(), np.zeros((16, 16), np.uint16), img()]
    for t, f in enumerate(frames):
        tifffile.imwrite(tmp_path / f"t{t}.tif", f)
    assert read_sequence(tmp_path).info["blank_frames"] == ["t1.tif"]
    blank = tmp_path.parent / "blank.tif"
    tifffile.imwrite(blank, np.zeros((3, 16, 16), np.uint16), imagej=True, metadata={"axes": "TYX"})
    with pytest.raises(InputError, match="every frame of blank.tif is blank"):
        read_sequence(blank)


# --------------------------------------------------------------------------- huge headers


@pytest.mark.parametrize("maker,ext", [(forged_png, "png"), (forged_tiff, "tif"), (forged_jpeg, "jpg")])
def test_forged_50000_header(tmp_path, maker, ext):
    p = tmp_path / f"huge.{ext}"
    p.write_bytes(maker(50_000, 50_000))
    assert p.stat().st_size < 1000
    with pytest.raises(
        InputError, match=f"huge.{ext} (is 50,000x50,000 pixels|declares an image of 2,500 megapixels)"
    ):
        read_image(p)
    with pytest.raises(InputError, match=f"huge.{ext}"):
        read_sequence(p)


def test_pixel_cap_below_pillow_guard_and_configurable(mm_env, tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(forged_png(10_000, 10_000))  # 100 Mpx: Pillow only warns, our 64 Mpx cap refuses
    with pytest.raises(InputError, match=r"big.png is 10,000x10,000 pixels.*MM_MAX_PIXELS"):
        read_image(p)
    (tmp_path / "big.jpg").write_bytes(forged_jpeg(10_000, 10_000))  # checked after Pillow's lazy open
    with pytest.raises(InputError, match=r"big.jpg is 10,000x10,000 pixels"):
        read_image(tmp_path / "big.jpg")
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, img((100, 100)))
    with pytest.raises(InputError, match="small.tif is 100x100 pixels"):
        read_image(small, max_pixels=5000)
    mm_env(MM_MAX_PIXELS="5000")
    with pytest.raises(InputError, match="small.tif is 100x100"):
        read_image(small)
    assert read_image(small, max_pixels=10_000).data.shape == (100, 100)
    mm_env(MM_MAX_PIXELS="lots")
    with pytest.raises(InputError, match="MM_MAX_PIXELS must be a positive whole number"):
        read_image(small)


def test_limits_resolve_defaults(mm_env):
    mm_env(MM_MAX_PIXELS=None, MM_MAX_FRAMES=None)
    lim = Limits.resolve()
    assert lim.max_pixels == 8192 * 8192 and lim.max_frames == 2000
    with pytest.raises(InputError, match="max_frames must be a positive"):
        Limits.resolve(max_frames=0)


# --------------------------------------------------------------------------- bad files


def test_zero_byte_and_missing(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.tif is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.tif")
    with pytest.raises(InputError, match="nothere.png does not exist"):
        read_image(tmp_path / "nothere.png")


@pytest.mark.parametrize(
    "name,content,pattern",
    [
        ("notes.png", b"x,y\n1,2\n3,4\n", "notes.png is a text file"),
        ("noise.tif", bytes(range(200, 256)) * 4, "noise.tif is not a PNG, JPEG, BMP or TIFF image"),
        ("anim.png", b"GIF89a" + b"\x00" * 40, "anim.png is a GIF file"),
        ("scan.czi", b"\x00" * 64, "scan.czi is a proprietary microscope file.*OME-TIFF"),
    ],
)
def test_not_an_image(tmp_path, name, content, pattern):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=pattern):
        read_image(tmp_path / name)


def test_text_file_among_frames_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "t0.tif", img())
    (tmp_path / "t1.png").write_text("hello, I am not a picture")
    with pytest.raises(InputError, match="t1.png is a text file"):
        read_sequence(tmp_path)


@pytest.mark.parametrize("fmt", ["png", "jpg", "tif", "tif_zlib", "tif_pages", "bmp"])
def test_truncated(tmp_path, fmt):
    arr = img((64, 64), np.uint8)
    buf = io.BytesIO()
    if fmt == "tif":
        tifffile.imwrite(buf, arr)
    elif fmt == "tif_zlib":
        tifffile.imwrite(buf, img((64, 64)), compression="zlib")
    elif fmt == "tif_pages":
        with tifffile.TiffWriter(buf) as tw:
            for _ in range(6):
                tw.write(arr, metadata=None)
    else:
        Image.fromarray(arr).save(buf, format={"jpg": "JPEG"}.get(fmt, fmt.upper()))
    data = buf.getvalue()
    p = tmp_path / f"cut.{fmt.split('_')[0]}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"cut.{p.suffix[1:]} is damaged"):
        read_image(p) if fmt != "tif_pages" else read_sequence(p)


def test_tiny_images_refused(tmp_path):
    tifffile.imwrite(tmp_path / "dot.tif", np.array([[5]], np.uint16))
    with pytest.raises(InputError, match="dot.tif is only 1x1 pixels.*at least 8x8"):
        read_image(tmp_path / "dot.tif")
    Image.fromarray(img((4, 30), np.uint8)).save(tmp_path / "strip.png")
    with pytest.raises(InputError, match="strip.png is only 30x4"):
        read_image(tmp_path / "strip.png")


def test_nan_images(tmp_path):
    tifffile.imwrite(tmp_path / "nan.tif", np.full((16, 16), np.nan, np.float32))
    with pytest.raises(InputError, match="nan.tif has no valid pixel values"):
        read_image(tmp_path / "nan.tif")
    some = img().astype(np.float32)
    some[:2, :3] = np.nan
    tifffile.imwrite(tmp_path / "some_nan.tif", some)
    out = read_image(tmp_path / "some_nan.tif").data
    assert np.isnan(out).sum() == 6 and np.isfinite(out).sum() == 250


def test_constant_image_refused_by_read_image(tmp_path):
    tifffile.imwrite(tmp_path / "flat.tif", np.full((16, 16), 7, np.uint16))
    with pytest.raises(InputError, match="flat.tif is blank: every pixel has the value 7"):
        read_image(tmp_path / "flat.tif")


def test_check_content_on_arrays():
    check_content(img(), "ok")
    check_content(np.zeros((10, 10)), "blank", allow_constant=True)
    for arr, pattern in [
        (np.zeros((10, 10)), "blank"),
        (np.ones((3, 3)), "only 3x3"),
        (np.full((9, 9), np.inf), "no valid pixel"),
        (np.ones(20), "not a 2-D image"),
        (np.array([["a"] * 9] * 9), "not a 2-D image"),
    ]:
        with pytest.raises(InputError, match=pattern):
            check_content(arr, "my image")


def test_time_lapse_in_folder_file_refused(tmp_path):
    tifffile.imwrite(tmp_path / "t0.tif", img((3, 16, 16)), imagej=True, metadata={"axes": "TYX"})
    with pytest.raises(
        InputError, match="t0.tif holds 3 time points; a folder or zip must hold one frame per file"
    ):
        read_sequence(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "01").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="holds no PNG, JPEG, BMP or TIFF images.*sub-folders: 01"):
        read_sequence(tmp_path)


def test_member_read_guard_counts_bytes(tmp_path):
    from mm_core.io.archive import read_member

    zp = make_zip(tmp_path / "z.zip", {"t0.tif": tif_bytes(img((64, 64)))})
    with zipfile.ZipFile(zp) as zf:
        info = zf.infolist()[0]
        budget = [info.file_size]
        assert len(read_member(zf, info, "z.zip", budget)) == info.file_size and budget == [0]
        with pytest.raises(InputError, match="z.zip was refused: t0.tif expands beyond"):
            read_member(zf, info, "z.zip", [1000])


def test_refusals_leave_temp_folder_untouched(tmp_path, monkeypatch):
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    files = {
        "bomb.zip": None,
        "huge.png": forged_png(50_000, 50_000),
        "cut.tif": tif_bytes(img((64, 64)))[:300],
        "text.png": b"hello",
        "empty.bmp": b"",
    }
    make_zip(tmp_path / "bomb.zip", {"t0.tif": b"\x00" * (8 << 20)})
    for name, data in files.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            read_image(tmp_path / name)
    assert list(tmp.iterdir()) == []
