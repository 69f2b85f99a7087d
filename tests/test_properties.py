"""Property-based tests (hypothesis) of the readers and the box parsers.

Whatever bytes, shapes, dtypes or zip member names come in, a reader either
returns an image or raises :class:`~mm_core.errors.InputError`, never anything
else. Examples are few and small so the file runs in seconds.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from mm_core.errors import InputError
from mm_core.io import ImageData, SequenceData, read_image, read_sequence
from mm_core.io.boxes import BoxTable, parse_boxes_csv
from mm_core.transforms import prepare_boxes

FAST = settings(max_examples=50, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EXTENSIONS = st.sampled_from([".tif", ".png", ".jpg", ".bmp", ".zip", ".czi", ".txt", ""])


def _read_or_refuse(data: bytes, name: str, *, sequence: bool = False):
    """Write ``data`` to a file named ``name`` and read it; return the result or the InputError."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / name
        p.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out = (read_sequence if sequence else read_image)(p)
            except InputError as exc:
                assert str(exc)  # a message, never empty
                return exc
    assert isinstance(out, SequenceData if sequence else ImageData)
    return out


def _valid_files(arr: np.ndarray) -> dict[str, bytes]:
    """The same small uint8 image as PNG, JPEG, BMP, TIFF and a zip of two PNGs."""
    out = {}
    for fmt in ("PNG", "JPEG", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        out[fmt.lower()] = buf.getvalue()
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, compression="zlib")
    out["tif"] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("t0.png", out["png"])
        zf.writestr("t1.png", out["png"])
    out["zip"] = buf.getvalue()
    return out


images = hnp.arrays(np.uint8, st.tuples(st.integers(8, 24), st.integers(8, 24)),
                    elements=st.integers(0, 255))


@FAST
@given(data=st.binary(max_size=512), ext=EXTENSIONS, sequence=st.booleans())
def test_random_bytes_read_or_refuse(data, ext, sequence):
    _read_or_refuse(data, f"f{ext}", sequence=sequence)


@FAST
@given(magic=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*",
                              b"II+\x00", b"PK\x03\x04", b"PK\x05\x06"]),
       tail=st.binary(max_size=256), sequence=st.booleans())
def test_magic_then_random_bytes_read_or_refuse(magic, tail, sequence):
    _read_or_refuse(magic + tail, "f.tif", sequence=sequence)


@FAST
@given(arr=images, fmt=st.sampled_from(["png", "jpeg", "bmp", "tif", "zip"]),
       cut=st.floats(0.0, 1.0, exclude_max=True), sequence=st.booleans())
def test_truncated_valid_files_read_or_refuse(arr, fmt, cut, sequence):
    data = _valid_files(arr)[fmt]
    _read_or_refuse(data[: int(len(data) * cut)], f"cut.{fmt}", sequence=sequence)


@FAST
@given(arr=images, fmt=st.sampled_from(["png", "bmp", "tif", "zip"]), pos=st.integers(0, 10_000),
       value=st.integers(0, 255))
def test_one_corrupted_byte_read_or_refuse(arr, fmt, pos, value):
    data = bytearray(_valid_files(arr)[fmt])
    data[pos % len(data)] = value
    _read_or_refuse(bytes(data), f"bad.{fmt}", sequence=fmt == "zip")


dtypes = st.sampled_from([np.uint8, np.uint16, np.int8, np.int16, np.int32, np.uint32, np.float16,
                          np.float32, np.float64, np.bool_, np.complex64, np.int64])
shapes = hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=12)


@FAST
@given(arr=hnp.arrays(dtypes, shapes), sequence=st.booleans(), imagej=st.booleans())
def test_random_shapes_and_dtypes_read_or_refuse(arr, sequence, imagej):
    buf = io.BytesIO()
    try:
        tifffile.imwrite(buf, arr, imagej=imagej)
    except Exception:  # noqa: BLE001 - tifffile cannot write this array; nothing to read
        return
    out = _read_or_refuse(buf.getvalue(), "arr.tif", sequence=sequence)
    if not isinstance(out, InputError):
        frames = out.frames if sequence else [out.data]
        assert all(f.dtype == np.float32 and f.ndim in (2, 3) for f in frames)


member_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=30)


@FAST
@given(names=st.lists(st.one_of(member_names, st.sampled_from(
    ["../t0.png", "/abs/t0.png", "a/../../t1.png", "C:\\x\\t.png", "__MACOSX/._t0.png", ".t.png",
     "t\x00.png", "sub/", "t0.PNG", "t1.tif"])), min_size=1, max_size=5),
       arr=images, sequence=st.booleans())
def test_random_zip_member_names_read_or_refuse(names, arr, sequence):
    png = _valid_files(arr)["png"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are allowed in zips, and tried on purpose
        for i, name in enumerate(names):
            with contextlib.suppress(Exception):  # zipfile refuses to write some names
                zf.writestr(name or f"{i}", png if i % 2 == 0 else b"not an image")
    with tempfile.TemporaryDirectory() as tmp:
        before = set(Path(tmp).iterdir())
        p = Path(tmp) / "names.zip"
        p.write_bytes(buf.getvalue())
        try:
            (read_sequence if sequence else read_image)(p)
        except InputError:
            pass
        assert set(Path(tmp).iterdir()) - before == {p}  # nothing extracted next to it


@FAST
@given(data=st.binary(max_size=400))
def test_boxes_csv_random_bytes_parse_or_refuse(data):
    try:
        table = parse_boxes_csv(data, "b.csv")
    except InputError as exc:
        assert str(exc).startswith("b.csv, line ")
    else:
        assert isinstance(table, BoxTable)


cells = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(str),
                  st.text(max_size=8), st.just(""), st.just('"'), st.just("\ufeff"))


@FAST
@given(rows=st.lists(st.lists(cells, min_size=0, max_size=7), max_size=6),
       header=st.sampled_from(["image,x0,y0,x1,y1", "\ufeffimage,x0,y0,x1,y1", " Image , X0,y0,x1,y1,extra",
                               "image;x0;y0;x1;y1", ""]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
def test_boxes_csv_random_rows_parse_or_refuse(rows, header, encoding):
    text = header + "\n" + "\n".join(",".join(r) for r in rows) + "\n"
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        return
    try:
        table = parse_boxes_csv(data, "b.csv")
    except InputError as exc:
        assert str(exc).startswith("b.csv, line ") and "\ufeff" not in str(exc)
    else:
        assert all(len(b) == 4 and all(np.isfinite(b)) for boxes in table.values() for b in boxes)


box_values = st.one_of(
    st.none(), st.text(max_size=5), st.integers(), st.floats(), st.binary(max_size=4),
    st.lists(st.one_of(st.floats(), st.integers(-100, 200), st.text(max_size=2), st.none()), max_size=6),
    st.lists(st.lists(st.one_of(st.floats(-50, 150), st.integers(-50, 150), st.none()), max_size=5),
             max_size=5),
    hnp.arrays(st.sampled_from([np.float32, np.int64, np.complex64, np.bool_]),
               hnp.array_shapes(max_dims=3, max_side=5)),
)


@FAST
@given(boxes=box_values, h=st.integers(8, 100), w=st.integers(8, 100))
def test_prepare_boxes_valid_or_input_error(boxes, h, w):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = prepare_boxes(boxes, (h, w), max_boxes=64)
        except InputError:
            return
    if out is not None:
        assert out.shape[1] == 4 and (out[:, 0] >= 0).all() and (out[:, 2] <= w).all()
        assert (out[:, 2] - out[:, 0] >= 2).all() and (out[:, 3] - out[:, 1] >= 2).all()


# ---- issue 20: the app reads only files inside its upload folder --------------------------------
_SEGMENTS = st.sampled_from(["up", "a.png", "..", ".", "sub", "in.png", "link_out", "link_in", "out.png",
                             "fifo", "outside", "", "//"])


def _upload_tree(tmp: Path) -> tuple[Path, set[Path]]:
    """An upload folder with files, a sub-folder, links in and out, a FIFO; a folder beside it."""
    import os

    up, outside = tmp / "up", tmp / "outside"
    (up / "sub").mkdir(parents=True)
    outside.mkdir()
    inside = {up / "a.png", up / "sub" / "in.png"}
    for f in inside | {outside / "out.png"}:
        f.write_bytes(b"x")
    (up / "link_out").symlink_to(outside / "out.png")
    (up / "sub" / "link_out").symlink_to(outside)
    (up / "link_in").symlink_to(up / "a.png")
    os.mkfifo(up / "fifo")
    return up, {p.resolve() for p in inside}


@FAST
@given(start=st.sampled_from(["tmp", "up", "abs"]), parts=st.lists(_SEGMENTS, max_size=6))
def test_the_app_reads_only_regular_files_inside_its_upload_folder(start, parts):
    from mm_core.app.helpers import received_file

    with tempfile.TemporaryDirectory() as tmp:
        up, inside = _upload_tree(Path(tmp))
        base = {"tmp": Path(tmp), "up": up, "abs": Path("/")}[start]
        path = str(base) + "/" + "/".join(parts)
        try:
            got = received_file(path, [up])
        except InputError as exc:
            assert "not uploaded to this server" in str(exc) or "not a regular file" in str(exc)
        else:  # accepted: one of the files really inside the upload folder, nothing else
            assert got in inside


def test_received_file_refuses_the_obvious_cases(tmp_path):
    from mm_core.app.helpers import received_file

    up, _ = _upload_tree(tmp_path)
    assert received_file(up / "link_in", [up]) == (up / "a.png").resolve()
    for bad, why in ((up / "link_out", "not uploaded"), (up / "sub" / "link_out" / "out.png", "not uploaded"),
                     (up / ".." / "outside" / "out.png", "not uploaded"), ("/etc/hostname", "not uploaded"),
                     (up / "fifo", "not a regular file"), (up / "sub", "not a regular file")):
        with pytest.raises(InputError, match=why):
            received_file(bad, [up])
