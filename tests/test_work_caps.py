"""Issue 20: work is capped before it is done: FIFOs and devices refused unopened, frames x
pixels of a time-lapse checked after its first frame, TIFF/zarr files that declare far more
than they store refused when opened, a time budget per lazily read image."""

from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mm_core.errors import InputError


def _within(seconds: float, fn, *args):
    """Run ``fn(*args)`` in a thread; its exception or result, or fail if it blocks."""
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"{getattr(fn, '__name__', fn)} blocked for {seconds} s"
    return out


@pytest.fixture()
def fifo(tmp_path):
    path = tmp_path / "cells.tif"
    os.mkfifo(path)
    yield path
    try:  # unblock a reader left behind by a failing test
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def test_a_fifo_is_refused_without_being_opened(fifo, tmp_path):
    from mm_core.cli import main
    from mm_core.io import read_image, read_sequence
    from mm_core.io.lazy import open_lazy

    for reader in (read_image, read_sequence, open_lazy):
        got = _within(10, reader, fifo)
        assert isinstance(got.get("error"), InputError) and "not a regular file" in str(got["error"])
    got = _within(60, main, ["segment", str(fifo), "--out", str(tmp_path / "out"), "--engine", "classic"])
    assert got.get("value") == 1


def _blank_zip(n: int, side: int) -> bytes:
    buf = io.BytesIO()
    frame = io.BytesIO()
    tifffile.imwrite(frame, np.zeros((side, side), np.uint8))
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for t in range(n):
            zf.writestr(f"t{t:03d}.tif", frame.getvalue())
    return buf.getvalue()


def test_frames_times_pixels_are_capped_after_the_first_frame(tmp_path, monkeypatch):
    from mm_core.io import reader

    path = tmp_path / "movie.zip"
    path.write_bytes(_blank_zip(40, 256))  # 40 x 65,536 = 2.6 Mpx
    real, calls = reader.decode, []
    monkeypatch.setattr(reader, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(InputError, match=r"40 frames of 256x256.*MM_MAX_TOTAL_PIXELS"):
        reader.read_sequence(path, max_total_pixels=1_000_000)
    assert len(calls) == 1  # refused before the other 39 frames were decoded


def test_the_app_caps_a_time_lapse_with_its_own_setting(tmp_path, monkeypatch):
    from mm_core.app import helpers as au
    from mm_core.settings import reload_settings

    path = tmp_path / "movie.zip"
    path.write_bytes(_blank_zip(30, 128))  # 491,520 pixels in all
    monkeypatch.setenv("MM_APP_MAX_TOTAL_PIXELS", "200000")
    reload_settings()
    try:
        with pytest.raises(InputError, match="30 frames"):
            au.load_upload(path, True, tmp_path / "out")
    finally:
        monkeypatch.delenv("MM_APP_MAX_TOTAL_PIXELS")
        reload_settings()
    assert not (tmp_path / "out").exists()


def _forged_tiled_tiff(path, side=20000, same_block=True):
    """A tiled TIFF declaring side x side pixels: blank zlib tiles, or every tile at one block."""
    tile = np.zeros((256, 256), np.uint8)
    n = (-(-side // 256)) ** 2
    tifffile.imwrite(path, (tile for _ in range(n)), shape=(side, side), dtype=np.uint8, tile=(256, 256),
                     compression="zlib")
    if same_block:
        with tifffile.TiffFile(path, mode="r+b") as tf:
            page = tf.pages[0]
            first = page.dataoffsets[0]
            page.tags["TileOffsets"].overwrite([first] * n)
    return path


def test_a_tiff_whose_tiles_all_point_at_one_block_is_refused_at_once(tmp_path):
    from mm_core.io.lazy import open_lazy

    path = _forged_tiled_tiff(tmp_path / "forged.tif")
    got = _within(20, open_lazy, path)
    assert isinstance(got.get("error"), InputError) and "point at data already used" in str(got["error"])


def test_a_blank_tiff_declaring_far_more_than_it_stores_is_refused(tmp_path):
    from mm_core.io.lazy import open_lazy

    path = _forged_tiled_tiff(tmp_path / "blank.tif", side=12000, same_block=False)
    got = _within(20, open_lazy, path)
    assert isinstance(got.get("error"), InputError) and "MM_MAX_DECLARED_RATIO" in str(got["error"])


def test_a_sparse_zarr_is_refused(tmp_path):
    import zarr

    from mm_core.io.lazy import open_lazy

    z = zarr.create_array(str(tmp_path / "sparse.zarr"), shape=(60000, 60000), chunks=(1024, 1024),
                          dtype=np.uint8, fill_value=0, zarr_format=2)
    z[:1024, :1024] = np.random.default_rng(0).integers(0, 255, (1024, 1024), dtype=np.uint8)
    got = _within(20, open_lazy, tmp_path / "sparse.zarr")
    assert isinstance(got.get("error"), InputError) and "MM_MAX_DECLARED_RATIO" in str(got["error"])


def test_reading_stops_when_the_time_budget_is_spent(tmp_path, monkeypatch):
    from mm_core.io.lazy import open_lazy
    from mm_core.settings import reload_settings

    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (512, 512), dtype=np.uint8), tile=(256, 256))
    monkeypatch.setenv("MM_READ_TIME_BUDGET_S", "0")
    reload_settings()
    try:
        with open_lazy(path) as img, pytest.raises(InputError, match="MM_READ_TIME_BUDGET_S"):
            img.read(0, 256, 0, 256)
    finally:
        monkeypatch.delenv("MM_READ_TIME_BUDGET_S")
        reload_settings()


def test_an_upload_over_the_size_limit_is_refused_on_its_content_length_unread():
    import asyncio

    from mm_core.app.uploads import middleware

    mw = middleware("1mb")[0]
    seen, sent = [], []

    async def inner(scope, receive, send):
        seen.append(scope["path"])

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    app = mw.cls(inner, **mw.kwargs)

    def call(path, length):
        scope = {"type": "http", "method": "POST", "path": path,
                 "headers": [(b"content-length", str(length).encode())]}
        asyncio.run(app(scope, receive, send))

    call("/gradio_api/upload", 300 * 2**20)
    assert not seen and sent[0]["status"] == 413 and b"MM_APP_MAX_FILE_SIZE" in sent[1]["body"]
    call("/gradio_api/upload", 2**19)
    call("/gradio_api/queue/join", 300 * 2**20)
    assert seen == ["/gradio_api/upload", "/gradio_api/queue/join"]


@pytest.mark.parametrize("name", ["..", "a/..", "?"])
def test_an_upload_without_a_usable_file_name_is_refused_and_leaves_no_file(name, tmp_path, monkeypatch):
    import tempfile

    import gradio as gr
    from starlette.testclient import TestClient

    from mm_core.app.uploads import middleware

    system_tmp, cache = tmp_path / "tmp", tmp_path / "gradio"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))  # where Gradio spools an upload's body
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    with gr.Blocks() as demo:
        gr.File()
    demo.max_file_size = 2**20  # what launch(max_file_size="1mb") sets
    app = gr.routes.App.create_app(demo, app_kwargs={"middleware": middleware("1mb")})
    client = TestClient(app)
    body = b"\x89PNG" + b"x" * 200_000

    refused = client.post("/gradio_api/upload", files=[("files", ("cells.png", body)), ("files", (name, body))])
    assert refused.status_code == 400
    assert not list(system_tmp.iterdir())  # neither the refused part nor the good one before it stays
    assert repr(name) in refused.text and "give the file a name" in refused.text

    stored = client.post("/gradio_api/upload", files=[("files", ("...png", body))])
    assert stored.status_code == 200 and Path(stored.json()[0]).read_bytes() == body
    assert not list(system_tmp.iterdir())


def test_an_unsafe_file_name_split_over_many_pieces_stops_the_upload_before_its_body():
    import asyncio

    from starlette.formparsers import MultiPartException

    from mm_core.app.uploads import RefuseUnsafeNames

    head = b'--B\r\nContent-Disposition: form-data; name="files"; filename="x/.."\r\n\r\n'
    body = head + b"SECRET" * 100 + b"\r\n--B--\r\n"
    pieces = [body[i:i + 7] for i in range(0, len(body), 7)]
    got = []

    async def inner(scope, receive, send):
        while (message := await receive())["more_body"]:
            got.append(message["body"])

    async def receive():
        return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces)}

    scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload",
             "headers": [(b"content-type", b"multipart/form-data; boundary=B")]}
    with pytest.raises(MultiPartException, match="'x/..' names no file"):
        asyncio.run(RefuseUnsafeNames(inner)(scope, receive, None))
    assert b"".join(got) == body[: len(b"".join(got))] and b"SECRET" not in b"".join(got)
