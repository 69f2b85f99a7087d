"""Issue 13: no silent data loss, limits per request, safe writes, one CLI exit-code rule."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import mm_core
from mm_core.errors import InputError


def _channels(n=5, shape=(48, 40), seed=0):
    """(H, W, n) uint16 with a different bright square in each channel."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(10, 50, (*shape, n)).astype(np.uint16)
    for c in range(n):
        arr[4 + 8 * c: 10 + 8 * c, 5:15, c] = 4000
    return arr


# --------------------------------------------------------------------------- (2) channels
@pytest.mark.parametrize("extra", [0, 1, 2], ids=["unspecified", "assocalpha", "unassalpha"])
def test_every_contiguous_channel_reaches_the_composite(tmp_path, extra):
    arr = _channels()
    p = tmp_path / "five.tif"
    tifffile.imwrite(p, arr, photometric="minisblack", planarconfig="contig", extrasamples=[extra] * 4)
    img = mm_core.read_image(p)
    assert img.n_channels == 5 and "alpha_dropped" not in img.info
    assert img.data.ndim == 2 and "5" in img.info["composite"]
    for c in range(5):  # each channel's square is visible in the composite
        assert img.data[4 + 8 * c: 10 + 8 * c, 5:15].mean() > 3 * img.data[:, 20:].mean()
    for c in range(5):  # and each one can be picked
        picked = mm_core.read_image(p, channels=[c]).data
        np.testing.assert_array_equal(picked, arr[..., c].astype(np.float32))


@pytest.mark.parametrize("extra", [0, 1, 2], ids=["unspecified", "assocalpha", "unassalpha"])
def test_rgb_plus_extra_sample(tmp_path, extra):
    arr = _channels(4)
    p = tmp_path / "rgbx.tif"
    tifffile.imwrite(p, arr, photometric="rgb", extrasamples=[extra])
    img = mm_core.read_image(p)
    if extra == 0:  # "unspecified" is data: 4 channels, composited, the 4th can be picked
        assert img.n_channels == 4 and img.data.ndim == 2
        np.testing.assert_array_equal(mm_core.read_image(p, channels=3).data, arr[..., 3])
    else:  # a real alpha channel is dropped, as documented
        assert img.n_channels == 3 and img.data.shape == (48, 40, 3) and img.info["alpha_dropped"]


# --------------------------------------------------------------------------- (3) box cap, (8) API values
def _image(shape=(64, 64), seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_at_most_64_boxes_by_default(mm_env):
    from mm_core.transforms import prepare_boxes

    img = _image()
    boxes = [[i % 50, i // 50 * 5, i % 50 + 6, i // 50 * 5 + 6] for i in range(65)]
    with pytest.raises(InputError, match=r"65 exemplar boxes.*at most 64.*MM_MAX_BOXES"):
        mm_core.segment(img, boxes=boxes, engine="classic")
    with pytest.raises(InputError, match="at most 64"):
        mm_core.count(img, boxes=boxes, engine="classic")
    with pytest.raises(InputError, match="at most 64"):
        mm_core.track([img, img], boxes=boxes, engine="classic")
    assert len(prepare_boxes(boxes[:64], img.shape, max_boxes=64)) == 64
    mm_env(MM_MAX_BOXES="2")
    with pytest.raises(InputError, match="3 exemplar boxes.*at most 2"):
        mm_core.segment(img, boxes=boxes[:3], engine="classic")
    mm_env(MM_MAX_BOXES="many")
    with pytest.raises(InputError, match="MM_MAX_BOXES"):
        mm_core.segment(img, boxes=boxes[:3], engine="classic")


@pytest.mark.parametrize("boxes", ["abc", b"12", 7, {"a": 1}, object(), [[1, 2, 3, 4], [1, 2]],
                                   [["a", "b", "c", "d"]], [[1j, 0, 5, 5]], [[1, 2, 3]]])
def test_bad_boxes_raise_input_error(boxes):
    with pytest.raises(InputError, match="exemplar box"):
        mm_core.segment(_image(), boxes=boxes, engine="classic")


@pytest.mark.parametrize("engine", [3, None, object(), "bogus"])
def test_bad_engine_raises_input_error(engine):
    with pytest.raises(InputError, match="engine"):
        mm_core.count(_image(), engine=engine)


@pytest.mark.parametrize("head", ["bogus", 3, ["x"]])
def test_bad_head_raises_input_error(head):
    with pytest.raises(InputError):
        mm_core.segment(_image(), engine="classic", head=head)


@pytest.mark.parametrize("channels", ["abc", 1.5, object(), [object()], {"a": 1}, -1, 5, [], True])
def test_bad_channels_raise_input_error(tmp_path, channels):
    p = tmp_path / "x.tif"
    tifffile.imwrite(p, (_image() * 1000).astype(np.uint16))
    with pytest.raises(InputError, match="channel"):
        mm_core.read_image(p, channels=channels)


def test_box_warnings():
    from mm_core.errors import InputWarning
    from mm_core.transforms import prepare_boxes

    with pytest.warns(InputWarning, match="swapped"):
        out = prepare_boxes([[30, 30, 10, 10]], (64, 64))
    np.testing.assert_array_equal(out, [[10, 10, 30, 30]])
    with pytest.warns(InputWarning, match="covers 100% of the 64x64 image"):
        prepare_boxes([[0, 0, 64, 64]], (64, 64))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_boxes([[10, 10, 30, 30]], (64, 64))


# --------------------------------------------------------------------------- (4) boxes CSV
def test_boxes_csv_utf8_with_and_without_bom(tmp_path):
    from mm_core.cli import read_boxes_csv

    p = tmp_path / "b.csv"
    text = "image,x0,y0,x1,y1\nzelle_µ1,1,2,30,40\n"
    for data in (text.encode("utf-8"), b"\xef\xbb\xbf" + text.encode("utf-8"),
                 text.replace("\n", "\r\n").encode("utf-8-sig")):
        p.write_bytes(data)
        assert read_boxes_csv(str(p))["zelle_µ1"] == [[1, 2, 30, 40]]


@pytest.mark.parametrize("data, line, what", [
    ("image,x0,y0,x1,y1\nimg1,1,2,3,4\nzelle_\xb5,1,2,3,4\n".encode("latin-1"), 3, "not UTF-8"),
    ("image,x0,y0,x1,y1\nimg1,1,2,3,4\n".encode("utf-16"), 1, "not UTF-8"),
    (b"\xff\xfe\x00\x01garbage", 1, "not UTF-8"),
    (b"image,x0,y0,x1,y1\nimg1,1,2,3\x00,4\n", 2, "NUL"),
    (b"image,x0,y0,x1,y1\nimg1,1,2\n", 2, "expected 5 values"),
    (b"image,x0,y0,x1,y1\nimg1,1,2,3,4\nimg1,1,nan,3,4\n", 3, "finite"),
    (b"image,x0,y0,x1,y1\nimg1,1,2,3,x\n", 2, "must be numbers"),
    (b"\xef\xbb\xbfname,a\nx,1\n", 1, "header image,x0,y0,x1,y1 .found name, a"),
    (b"", 1, "found nothing"),
])
def test_boxes_csv_refusals_name_the_line(tmp_path, data, line, what):
    from mm_core.cli import read_boxes_csv

    p = tmp_path / "boxes.csv"
    p.write_bytes(data)
    with pytest.raises(InputError, match=rf"boxes.csv, line {line}: .*{what}") as info:
        read_boxes_csv(str(p))
    assert "\ufeff" not in str(info.value)


def test_cli_bad_boxes_csv_is_a_usage_error_without_traceback(tmp_path, capsys):
    from mm_core.cli import main

    img = tmp_path / "img1.tif"
    tifffile.imwrite(img, (_image() * 1000).astype(np.uint16))
    p = tmp_path / "boxes.csv"
    p.write_bytes("image,x0,y0,x1,y1\nbild_\xe4,1,2,30,40\n".encode("cp1252"))
    assert main(["segment", str(img), "--out", str(tmp_path / "o"), "--engine", "classic",
                 "--boxes", str(p)]) == 2
    err = capsys.readouterr().err
    assert "boxes.csv, line 2" in err and "UTF-8" in err and "Traceback" not in err


# --------------------------------------------------------------------------- (5) writes stay in --out
def _blob_image(shape=(64, 64)):
    from skimage.draw import disk

    img = np.full(shape, 100.0)
    for c in ((16, 16), (16, 46), (46, 20), (46, 46)):
        img[disk(c, 7, shape=shape)] = 1000.0
    return (img + np.random.default_rng(0).normal(0, 10, shape)).astype(np.uint16)


@pytest.mark.parametrize("task, names", [
    ("segment", ["img1.tif", "img1.csv"]),
    ("count", ["img1_density.tif", "img1_points.csv", "counts.csv"]),
    ("track", ["mask000.tif", "res_track.txt", "tracks.csv"]),
])
def test_cli_replaces_planted_symlinks_instead_of_writing_through(tmp_path, task, names):
    from mm_core.cli import main

    src = tmp_path / ("img1.tif" if task != "track" else "movie.tif")
    tifffile.imwrite(src, _blob_image() if task != "track" else np.stack([_blob_image()] * 5))
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    for n in names:
        (outside / n).write_text("precious")
        (out / n).symlink_to(outside / n)
    assert main([task, str(src), "--out", str(out), "--engine", "classic"]) == 0
    for n in names:
        assert (outside / n).read_text() == "precious"
        assert (out / n).is_file() and not (out / n).is_symlink() and (out / n).stat().st_size > 0
    assert sorted(p.name for p in outside.iterdir()) == sorted(names)
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from mm_core.io.atomic import atomic_path, atomic_write

    target = tmp_path / "x.bin"
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


# --------------------------------------------------------------------------- (8) CLI exit codes, messages
@pytest.fixture()
def two_images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "img1.tif", _blob_image())
    tifffile.imwrite(folder / "img2.tif", _blob_image())
    return folder


def test_exit_codes_same_rule_for_every_command(tmp_path, two_images, capsys):
    from mm_core.cli import main

    o = str(tmp_path / "o")
    assert main(["count", str(two_images), "--out", o, "--engine", "classic"]) == 0
    (two_images / "bad.tif").write_bytes(b"II*\x00garbage")
    assert main(["count", str(two_images), "--out", o, "--engine", "classic"]) == 1
    assert "bad.tif" in capsys.readouterr().err
    # track: an unusable input is refused (1), named in the message
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, _blob_image())
    assert main(["track", str(one), "--out", o, "--engine", "classic"]) == 1
    err = capsys.readouterr().err
    assert "one.tif" in err and "2 frames" in err and "Traceback" not in err
    assert main(["track", str(tmp_path / "missing.tif"), "--out", o, "--engine", "classic"]) == 1
    assert "missing.tif" in capsys.readouterr().err
    # usage errors: 2
    assert main(["segment", str(tmp_path / "empty_dir_does_not_exist"), "--out", o]) == 1
    (tmp_path / "empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "--out", o, "--engine", "classic"]) == 2
    assert main(["segment", str(two_images), "--out", o, "--engine", "classic", "--head", "no-such-head"]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["count", str(two_images), "--out", str(tmp_path / "file" / "sub"), "--engine", "classic"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(two_images)])  # --out missing
    assert exc.value.code == 2
    # evaluate: an unusable folder is a refused input
    assert main(["evaluate", str(tmp_path / "empty"), str(tmp_path / "empty")]) == 1


def test_cli_warns_for_swapped_whole_image_and_unmatched_rows(tmp_path, two_images, capsys):
    from mm_core.cli import main

    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\nimg1,24,24,8,8\nimg2,0,0,64,64\nimg9,1,1,9,9\n")
    assert main(["count", str(two_images), "--out", str(tmp_path / "o"), "--engine", "classic",
                 "--boxes", str(boxes)]) == 0
    err = capsys.readouterr().err
    assert "warning: img1.tif: exemplar box (24, 24, 8, 8) has its corners swapped" in err
    assert "warning: img2.tif: exemplar box (0, 0, 64, 64) covers 100%" in err
    assert "warning: boxes.csv, line 4: image 'img9' matches no input image" in err
