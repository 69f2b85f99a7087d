"""The app without a browser: upload loading, boxes, output folders, error handling, layout."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from mm_core import export
from mm_core.app import helpers as au
from mm_core.errors import InputError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def test_boxes_from_annotation_inclusive_corners_and_scale():
    assert au.boxes_from_annotation(None) is None
    assert au.boxes_from_annotation(("img.png", [])) is None
    b = au.boxes_from_annotation(("img.png", [(10, 20, 30, 40, "exemplar"), (5, 9, 1, 2, None)]))
    np.testing.assert_array_equal(b, [[10, 20, 31, 41], [1, 2, 6, 10]])
    # A preview shown at half size: boxes come back in image pixels.
    b = au.boxes_from_annotation(("img.png", [(10, 20, 29, 39, "exemplar")]), preview_scale=0.5)
    np.testing.assert_allclose(b, [[20, 40, 60, 80]])


def test_mode_line():
    assert "Automatic mode" in au.mode_line(None) and "Automatic mode" in au.mode_line(np.zeros((0, 4)))
    assert "1 box:" in au.mode_line(np.zeros((1, 4)))
    assert "3 boxes" in au.mode_line(np.zeros((3, 4)))


def test_request_dirs_are_fresh_and_old_ones_cleaned(tmp_path):
    a, b = au.new_request_dir(tmp_path), au.new_request_dir(tmp_path)
    assert a != b and a.parent == tmp_path and b.is_dir()
    (a / "x.txt").write_text("x")
    old = time.time() - 7200
    os.utime(a, (old, old))
    keep = tmp_path / "not_a_dir.txt"
    keep.write_text("keep")
    assert au.cleanup_old(tmp_path, max_age_s=3600) == 1
    assert not a.exists() and b.exists() and keep.exists()
    assert au.cleanup_old(tmp_path / "missing", 1) == 0


def test_load_upload_image_16bit_and_preview(tmp_path):
    loaded = au.load_upload(EXAMPLES / "nuclei_fluorescence.tif", False, tmp_path)
    assert loaded.shape == (512, 512) and loaded.frames[0].dtype == np.float32
    assert loaded.frames[0].max() > 255  # raw 16-bit intensities, not normalised
    assert "512×512" in loaded.summary and "uint16" in loaded.summary
    with Image.open(loaded.preview) as im:
        assert im.size == (512, 512) and im.mode == "RGB"
    assert loaded.preview_scale == 1.0


def test_load_upload_large_image_gets_small_preview_and_scaled_boxes(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray((np.random.default_rng(0).random((300, 2048)) * 255).astype(np.uint8)).save(path)
    loaded = au.load_upload(path, False, tmp_path)
    assert loaded.preview_scale == pytest.approx(0.5)
    with Image.open(loaded.preview) as im:
        assert im.size == (1024, 150)
    boxes = au.boxes_from_annotation((loaded.preview, [(100, 10, 149, 59, "exemplar")]), loaded.preview_scale)
    np.testing.assert_allclose(boxes, [[200, 20, 300, 120]])


def test_load_upload_multichannel_tiff(tmp_path):
    path = tmp_path / "two_channels.tif"
    rng = np.random.default_rng(1)
    tifffile.imwrite(path, (rng.random((2, 64, 80)) * 4000).astype(np.uint16), metadata={"axes": "CYX"})
    loaded = au.load_upload(path, False, tmp_path)
    assert loaded.shape == (64, 80)
    with Image.open(loaded.preview) as im:
        assert im.size == (80, 64)


def test_load_upload_sequence_and_refusals(tmp_path):
    seq = au.load_upload(EXAMPLES / "timelapse_division.tif", True, tmp_path)
    assert len(seq.frames) == 10 and seq.shape == (192, 192) and "10 frames" in seq.summary
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    with pytest.raises(InputError, match="frame"):
        au.load_upload(one, True, tmp_path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(InputError, match="bad.png"):
        au.load_upload(bad, False, tmp_path)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.tif", b"II*\x00")
    with pytest.raises(InputError):
        au.load_upload(evil, True, tmp_path)
    assert not (tmp_path.parent / "escape.tif").exists()


def test_load_upload_pixel_limit(tmp_path, mm_env):
    mm_env(MM_APP_MAX_PIXELS=100 * 100)
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(path)
    with pytest.raises(InputError, match="big.png"):
        au.load_upload(path, False, tmp_path)


def test_track_table_used_by_the_app():
    masks = np.zeros((2, 20, 20), np.int32)
    masks[0, 2:6, 2:6] = 1
    masks[1, 2:4, 2:6] = 2
    masks[1, 10:14, 10:14] = 3
    tracks = pd.DataFrame({"label": [1, 2, 3], "begin": [0, 1, 1], "end": [0, 1, 1], "parent": [0, 1, 1]})
    table = export.tracks_table(masks, tracks)
    assert list(table.columns) == ["track_id", "frame", "x", "y", "area_px", "parent"]
    assert table["track_id"].tolist() == [1, 2, 3] and table["parent"].tolist() == [0, 1, 1]
    np.testing.assert_allclose(table.loc[0, ["x", "y", "area_px"]].to_numpy(float), [3.5, 3.5, 16])
    assert export.tracks_table(np.zeros((2, 5, 5), int), tracks.iloc[:0]).empty


# ---- app.py itself (imported, not launched) -------------------------------------------------------


@pytest.fixture(scope="module")
def app_module():
    from mm_core.app import ui

    return ui


def test_app_py_is_the_thin_entry_point():
    import app
    from mm_core.app import ui

    assert app.main is ui.main and app.build_app is ui.build_app
    assert len(Path(app.__file__).read_text().splitlines()) < 30


def test_guarded_turns_errors_into_messages(app_module, caplog):
    import gradio as gr

    @app_module.guarded("testing")
    def refuse():
        raise InputError("frame 3 is 10x10 but frame 0 is 20x20")

    @app_module.guarded("testing")
    def crash():
        raise KeyError("internal detail")

    with pytest.raises(gr.Error, match="frame 3 is 10x10"):
        refuse()
    with pytest.raises(gr.Error) as info:
        crash()
    assert "while testing" in str(info.value) and "internal detail" not in str(info.value)
    assert "unexpected error while testing" in caplog.text


def test_run_without_upload_is_refused(app_module):
    import gradio as gr

    with pytest.raises(gr.Error, match="Upload"):
        app_module._inputs(None, None)


def test_on_upload_returns_annotator_value(app_module, tmp_path, monkeypatch, mm_env):
    mm_env(MM_APP_OUTPUT_ROOT=tmp_path)
    uploads = tmp_path / "uploads"  # this server's upload folder: the only place on_upload reads from
    uploads.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    (uploads / "phase_cells.png").write_bytes((EXAMPLES / "phase_cells.png").read_bytes())
    loaded, ann, summary, mode, _ = app_module.on_upload(str(uploads / "phase_cells.png"), sequence=False)
    assert ann == (loaded.preview, []) and Path(loaded.preview).is_relative_to(tmp_path)
    assert "phase_cells.png" in summary and "Automatic" in mode
    assert app_module.on_upload(None, sequence=False)[0] is None
    with pytest.raises(InputError, match="was not uploaded to this server"):
        app_module.on_upload(str(EXAMPLES / "phase_cells.png"), sequence=False)
    assert app_module.load_file(str(EXAMPLES / "phase_cells.png"), sequence=False)[0] is not None  # examples
    bad = uploads / "bad.tif"
    bad.write_bytes(b"II*\x00nonsense")
    before = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    with pytest.raises(InputError, match="bad.tif"):  # an error (for API clients too), not a warning
        app_module.on_upload(str(bad), sequence=False)
    assert sorted(p for p in tmp_path.iterdir() if p.is_dir()) == before  # no folder for a refusal
    assert app_module._empty_input()[0] is None  # what the failure listener puts in the widgets


def test_build_app_layout_and_system_fonts(app_module):
    import gradio as gr

    demo = app_module.build_app()
    tabs = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == ["Segmentation", "Counting", "Tracking"]
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    for tab in ("seg", "count", "track"):
        assert {f"{tab}-upload", f"{tab}-annotator", f"{tab}-run", f"{tab}-files", f"{tab}-showmap"} <= ids
    css = demo.theme._get_theme_css() if hasattr(demo.theme, "_get_theme_css") else ""
    assert "googleapis" not in css and "ui-sans-serif" in css
    assert all(not isinstance(f, gr.themes.GoogleFont) for f in demo.theme._font + demo.theme._font_mono)


def test_mode_js_matches_python_wording(app_module):
    js = app_module._MODE_JS
    assert au.mode_line(None) in js
    assert "**Exemplar mode** — " in js and "objects that match " in js


def test_cli_defaults_and_environment(app_module, monkeypatch):
    calls = {}

    class FakeDemo:
        def queue(self, **kw):
            calls["queue"] = kw

        def launch(self, **kw):
            calls["launch"] = kw

    monkeypatch.setattr(app_module, "build_app", lambda: FakeDemo())
    monkeypatch.setattr(app_module, "load_engine", lambda: None)
    monkeypatch.setattr(app_module, "start_cleanup", lambda: None)  # no background timer from a unit test
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    app_module.main([])
    assert calls["launch"]["server_name"] == "127.0.0.1" and calls["launch"]["server_port"] == 7860
    assert calls["launch"]["max_file_size"] and calls["queue"]["default_concurrency_limit"] >= 1
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8080")
    app_module.main([])
    assert calls["launch"]["server_name"] == "0.0.0.0" and calls["launch"]["server_port"] == 8080
    app_module.main(["--host", "127.0.0.2", "--port", "9999"])
    assert calls["launch"]["server_name"] == "127.0.0.2" and calls["launch"]["server_port"] == 9999


# ---- the run handlers, without a browser, on small synthetic images ---------------------------------


def _blobs(shape=(128, 128), n=9, seed=0, shift=(0, 0)):
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 5, shape).astype(np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(n):
        cy, cx = 20 + 40 * (k // 3) + shift[0], 20 + 40 * (k % 3) + shift[1]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 49] += 400
    return img


def _no_progress(*args, **kwargs):
    return None


@pytest.fixture
def loaded_image(tmp_path):
    path = tmp_path / "blobs.tif"
    tifffile.imwrite(path, _blobs().astype(np.uint16))
    return au.load_upload(path, False, tmp_path)


def test_run_segment_writes_downloads_and_rerenders(app_module, loaded_image, tmp_path, mm_env):
    mm_env(MM_APP_OUTPUT_ROOT=tmp_path / "out")
    ann = (loaded_image.preview, [(12, 12, 28, 28, "exemplar")])
    key, overlay, html, files, _, note, legend = app_module.run_segment(
        loaded_image, ann, 0.5, False, progress=_no_progress
    )
    cache = app_module.STORE.get(key)
    n = cache["result"].n_objects
    assert f">{n}<" in html and 5 <= n <= 13
    assert overlay.shape == (384, 384, 3) and overlay.dtype == np.uint8  # shown enlarged
    names = sorted(Path(f).name for f in files)
    assert names == ["blobs.csv", "blobs.geojson", "blobs.tif", "blobs_rois.zip", "blobs_sizes.png"]  # as the CLI
    assert tifffile.imread(next(f for f in files if f.endswith(".tif"))).max() > 0
    np.testing.assert_array_equal(cache["boxes"], [[12, 12, 29, 29]])
    again = app_module.rerender(au.segmentation_view, key, 0.0)
    assert again.shape == overlay.shape and not (again == overlay).all()
    shown = app_module._map_update(key, True)
    assert shown["visible"] and shown["value"].shape == (384, 384, 3)
    assert "Engine" in note and "Head" in note and "One colour per object" in legend
    assert ("mm-warn" in html) == bool(cache["result"].warnings)


def test_run_count_writes_downloads(app_module, loaded_image, tmp_path, mm_env):
    mm_env(MM_APP_OUTPUT_ROOT=tmp_path / "out")
    key, overlay, html, files, _, _, legend = app_module.run_count(
        loaded_image, None, 0.6, False, progress=_no_progress
    )
    res = app_module.STORE.get(key)["result"]
    assert isinstance(res.count, int) and 5 <= res.count <= 13 and f">{res.count:,d}<" in html
    assert "objects per 10×10 pixels" in legend
    points = pd.read_csv(next(f for f in files if f.endswith("_points.csv")))
    assert int(points["n"].sum()) == res.count
    density = tifffile.imread(next(f for f in files if f.endswith("_density.tif")))
    assert abs(float(density.sum()) - res.count) < 1e-3 * max(1.0, res.count)
    counts = pd.read_csv(next(f for f in files if f.endswith("counts.csv")))
    assert list(counts.columns) == ["image", "count"] and counts["image"][0] == "blobs"


def test_run_track_animation_frames_and_downloads(app_module, tmp_path, mm_env):
    mm_env(MM_APP_OUTPUT_ROOT=tmp_path / "out")
    path = tmp_path / "movie.tif"
    frames = np.stack([_blobs(shift=(0, t)) for t in range(3)]).astype(np.uint16)
    tifffile.imwrite(path, frames, imagej=True, metadata={"axes": "TYX"})
    loaded = au.load_upload(path, True, tmp_path)
    key, gif, slider, stats, files, mapview, _, play = app_module.run_track(
        loaded, None, True, progress=_no_progress
    )
    with Image.open(gif) as im:
        assert im.n_frames == 3
    first = app_module.show_frame(key, 0, False)[0]
    assert slider["maximum"] == 2 and first.shape[0] >= 384 and first.shape[2] == 3 and "tracks" in stats
    assert play["visible"] and app_module.play(key) == gif
    assert mapview["visible"] and mapview["value"].shape == (384, 384, 3)
    frame2, _ = app_module.show_frame(key, 2, False)
    assert frame2.shape == first.shape and not np.array_equal(frame2, first)
    with pytest.raises(InputError, match="frame number"):
        app_module.show_frame(key, 99, False)
    names = {Path(f).name for f in files}
    assert names == {"movie_ctc.zip", "movie_tracks.csv", "movie_tracks_geff.zip", "movie_per_frame.png"}
    assert Path(files[0]).parent.parent == au.served_root() and au.served_root().parent == tmp_path / "out"
    table = pd.read_csv(Path(files[0]).parent / "movie_tracks.csv")
    assert set(table["frame"]) <= {0, 1, 2} and len(table) >= 3


def test_example_thumbnails_small_and_cached(tmp_path):
    thumb = au.example_thumbnail(EXAMPLES / "timelapse_division.tif", True, tmp_path)
    with Image.open(thumb) as im:
        assert max(im.size) == 160 and im.mode == "RGB"
    mtime = thumb.stat().st_mtime_ns
    assert au.example_thumbnail(EXAMPLES / "timelapse_division.tif", True, tmp_path) == thumb
    assert thumb.stat().st_mtime_ns == mtime  # made once
    img = au.example_thumbnail(EXAMPLES / "crowded_cells.png", False, tmp_path, side=64)
    with Image.open(img) as im:
        assert im.size == (64, 64)


def test_past_the_app_limit_is_refused_from_the_header_naming_the_setting(app_module, tmp_path, mm_env,
                                                                          monkeypatch):
    """Issue 23: up to 100 MP by default (run tiled); past it, refused before decoding."""
    mm_env(MM_APP_OUTPUT_ROOT=tmp_path / "out")
    uploads = tmp_path / "uploads"  # this server's upload folder: the only place on_upload reads from
    uploads.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    from mm_core.app import handlers
    from mm_core.settings import get_settings

    limit = get_settings().app_max_pixels
    assert handlers.max_pixels() in (limit, au.LDM_MAX_PIXELS) and limit >= 100_000_000
    huge = uploads / "huge.tif"  # 110 MP of zeros, 120 kB compressed: decoding it would take 110 MB
    tifffile.imwrite(huge, np.zeros((11000, 10000), np.uint8), compression="zlib", tile=(1024, 1024))
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(InputError, match=r"110\.0 megapixels.*\(MM_APP_MAX_PIXELS\)"):
        app_module.on_upload(str(huge), sequence=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000_000  # never decoded
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
