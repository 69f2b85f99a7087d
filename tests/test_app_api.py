"""The app through its API (gradio_client), as scripts and load tests use it.

Refusals reach the client as errors with the message; every handler is guarded;
results are kept small, per session, and freed; downloads are stored once;
request folders are private.
"""

from __future__ import annotations

import json
import stat
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile

gradio_client = pytest.importorskip("gradio_client")
from conftest import free_port
from gradio_client import Client, handle_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app, launched in this process on loopback, with its own folders."""
    root = tmp_path_factory.mktemp("app")
    mp = pytest.MonkeyPatch()
    mp.setenv("MM_ENGINE", "classic")
    mp.setenv("MM_APP_OUTPUT_ROOT", str(root / "requests"))
    mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio"))
    from mm_core.app import helpers as au
    from mm_core.app import lifecycle, ui
    from mm_core.settings import reload_settings

    reload_settings()  # each test reads the settings again, from this module's environment
    ui.load_engine()
    lifecycle.STORE.idle_s = 600.0
    demo = ui.build_app()
    demo.queue(default_concurrency_limit=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_api=False,
                allowed_paths=[str(au.served_root())], quiet=True)
    lifecycle.STORE.start_timer(0.1)
    yield {"url": f"http://127.0.0.1:{port}/", "root": root, "requests": root / "requests",
           "store": lifecycle.STORE, "demo": demo}
    demo.close()
    mp.undo()
    reload_settings()


@pytest.fixture()
def image_file(tmp_path):
    from skimage.draw import disk

    img = np.full((96, 96), 100.0)
    for c in ((20, 20), (20, 70), (70, 25), (72, 72)):
        img[disk(c, 8, shape=img.shape)] = 1000.0
    p = tmp_path / "cells.tif"
    tifffile.imwrite(p, (img + np.random.default_rng(0).normal(0, 10, img.shape)).astype(np.uint16))
    return p


def _client(server):
    return Client(server["url"], verbose=False, download_files=False)


def test_refused_upload_is_an_error_for_api_clients_and_leaves_no_folder(server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all\n" * 5)
    from mm_core.app import helpers as au

    before = set(au.served_root().iterdir())
    client = _client(server)
    with pytest.raises(Exception, match="notes.png is a text file"):
        client.predict(handle_file(str(bad)), api_name="/seg_upload")
    after = set(au.served_root().iterdir())
    assert after == before


def _raw_event(server, api_name: str, data: list, event_data) -> dict:
    """Send one event as a hostile script would (any event data), return Gradio's final message."""
    client = _client(server)
    fn_index = next(i for i, e in client.endpoints.items() if e.api_name == api_name)
    session = "hostile0123"
    body = json.dumps({"data": data, "event_data": event_data, "fn_index": fn_index,
                       "trigger_id": None, "session_hash": session}).encode()
    req = urllib.request.Request(server["url"] + "gradio_api/queue/join", body,
                                 {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()
    with urllib.request.urlopen(server["url"] + f"gradio_api/queue/data?session_hash={session}",
                                timeout=60) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError("no process_completed message")


def test_gallery_index_out_of_range_is_a_clear_error(server):
    for event_data in ({"index": 99, "value": None}, None, {"index": "x"}):
        msg = _raw_event(server, "/seg_example", [], event_data)
        assert msg["success"] is False
        assert "the example number must be a whole number from 0 to" in msg["output"]["error"]


def test_run_keeps_a_small_result_and_guards_every_handler(server, image_file):
    client = _client(server)
    ann, summary, *_ = client.predict(handle_file(str(image_file)), api_name="/seg_upload")
    assert "96×96" in summary
    value = {"image": handle_file(ann["image"]["path"]), "annotations": []}
    out = client.predict(value, 0.5, False, "", api_name="/seg_run")
    assert "objects" in out[1]
    store = server["store"]
    key = next(k for k in list(store._items) if k.startswith(client.session_hash))
    assert store._items[key].nbytes < 200_000  # labels + uint8 picture + small maps, no features
    for bad in ("abc", None, [1, 2]):
        with pytest.raises(Exception, match="the opacity cannot be"):
            client.predict(bad, api_name="/seg_opacity")
    with pytest.raises(Exception, match="greater than maximum value 1"):
        client.predict(7, api_name="/seg_opacity")
    assert client.predict(0.2, api_name="/seg_opacity")["path"]  # still works after the refusals
    # downloads are stored once: in the private request folder, not copied to Gradio's cache
    files = [Path(f["path"]) for f in out[2]]
    from mm_core.app import helpers as au

    assert files and all(f.parent.parent == au.served_root() for f in files)
    folders = [p for p in au.served_root().iterdir() if p.is_dir()]
    assert folders and all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in folders)
    cached = {p.read_bytes() for p in (server["root"] / "gradio").rglob("*") if p.is_file()}
    assert not {f.read_bytes() for f in files} & cached


def test_idle_results_are_freed_for_api_clients(server, image_file):
    """An API client never sends a heartbeat: its result goes after the idle time, by the timer."""
    store = server["store"]
    client = _client(server)
    ann, *_ = client.predict(handle_file(str(image_file)), api_name="/count_upload")
    client.predict({"image": handle_file(ann["image"]["path"]), "annotations": []}, 0.5, False, "",
                   api_name="/count_run")
    key = next(k for k in list(store._items) if k.startswith(client.session_hash))
    folder = store._items[key].folder
    assert folder.is_dir()
    store.idle_s = 0.2
    try:
        import time

        deadline = time.time() + 10
        while (key in store or folder.exists()) and time.time() < deadline:  # the folder goes just after the key
            time.sleep(0.1)
    finally:
        store.idle_s = 600.0
    assert key not in store and not folder.exists()
    with pytest.raises(Exception, match="this result was cleared from the server"):
        client.predict(0.3, api_name="/count_opacity")


def test_a_page_load_does_not_copy_the_kept_results(server):
    """Gradio deep-copies the page config (each state's delete callback too) on every ``/config``;
    the store of every session's results must not come along (it made the server run out of memory)."""
    copies = []

    class Tripwire:
        def __deepcopy__(self, memo):
            copies.append(1)
            return self

    key = server["store"].put("tripwire-session:seg", Tripwire())
    try:
        urllib.request.urlopen(server["url"] + "config", timeout=30).read()
    finally:
        server["store"].drop(key)
    assert not copies


# ---- issue 20: the app reads only what it was sent, deletes and serves only what it made -------


def _hostile_client(server):
    """A client that sends file paths as they are (gradio_client would upload a local file first)."""
    client = _client(server)
    for ep in client.endpoints.values():
        ep._upload_file = lambda f, data_index: {"path": f["path"], "meta": {"_type": "gradio.FileData"}}
    return client


def _png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(path)
    return path


def test_a_server_path_sent_as_an_upload_is_refused(server, tmp_path):
    from mm_core.app import helpers as au

    served = au.served_root()  # what Gradio itself lets through
    client = _hostile_client(server)
    for secret in (_png(served / "another_session" / "secret.png"), _png(tmp_path / "elsewhere.png")):
        for api in ("/seg_upload", "/track_upload"):
            with pytest.raises(Exception) as info:
                client.predict({"path": str(secret), "meta": {"_type": "gradio.FileData"}}, api_name=api)
            assert "Loaded" not in str(info.value)
    with pytest.raises(Exception, match="was not uploaded to this server"):
        client.predict({"path": str(served / "another_session" / "secret.png"),
                        "meta": {"_type": "gradio.FileData"}}, api_name="/seg_upload")


def test_pre_existing_content_of_the_output_root_is_kept_and_not_served(server, image_file):
    import os
    import time

    from mm_core.app import helpers as au
    from mm_core.settings import get_settings

    root, max_age = au.output_root(), get_settings().app_max_age_s
    old = _png(root / "old" / "secret.png").parent
    past = time.time() - 10 * max_age
    os.utime(old, (past, past))
    os.chmod(root, 0o755)
    client = _client(server)
    ann, *_ = client.predict(handle_file(str(image_file)), api_name="/seg_upload")
    out = client.predict({"image": handle_file(ann["image"]["path"]), "annotations": []}, 0.5, False, "",
                         api_name="/seg_run")
    au.cleanup_old(root, max_age)  # what the app's timer runs
    assert (old / "secret.png").is_file()  # not made by the app: not deleted
    assert stat.S_IMODE(root.stat().st_mode) == 0o755  # the root's mode is left as it is

    def status(path) -> int:
        try:
            with urllib.request.urlopen(server["url"] + "gradio_api/file=" + str(path), timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status(old / "secret.png") == 403  # only live results are served
    assert status(out[2][0]["path"]) == 200


def test_runs_of_every_tab_share_one_queue(server):
    fns = server["demo"].fns.values()
    runs = [fn for fn in fns if str(fn.api_name).endswith("_run")]
    loads = [fn for fn in fns if str(fn.api_name).endswith(("_upload", "_example"))]
    assert len(runs) == 3 and {fn.concurrency_id for fn in runs} == {"run"}
    assert len(loads) == 6 and {fn.concurrency_id for fn in loads} == {"load"}
    assert {fn.concurrency_limit for fn in loads} == {2}


def test_malformed_boxes_sent_through_the_api_get_one_message(server, image_file):
    client = _client(server)
    ann = client.predict(handle_file(str(image_file)), api_name="/seg_upload")[0]
    image = handle_file(ann["image"]["path"])
    box = {"left": 1, "top": 1, "right": 9, "bottom": 9, "label": "exemplar"}
    for bad in ([dict(box, left="abc")], [{"left": 1}], "nonsense", [[1, 2, 3, 4]], [dict(box, left=1.5)], [None]):
        with pytest.raises(Exception, match="the boxes cannot be used"):
            client.predict({"image": image, "annotations": bad}, 0.5, False, "", api_name="/seg_run")
    assert "objects" in client.predict({"image": image, "annotations": [box]}, 0.5, False, "", api_name="/seg_run")[1]


# ---- issue 23: no stale results, pixel size, tables, readable heat-map ------------------------------


def _big_cells(path: Path, side: int = 768, seed: int = 1) -> Path:
    """A synthetic image whose run takes a few seconds (time to load another file meanwhile)."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    img = np.full((side, side), 100.0)
    for _ in range(side * side // 900):
        img[disk(tuple(rng.integers(8, side - 8, 2)), 6, shape=img.shape)] = 900.0
    tifffile.imwrite(path, (img + rng.normal(0, 10, img.shape)).astype(np.uint16))
    return path


def _value(update):
    """The value of a widget update as an API client receives it (or the value itself)."""
    return update.get("value") if isinstance(update, dict) and "__type__" in update else update


def test_a_late_result_is_not_shown_under_the_next_file(server, image_file, tmp_path):
    """Issue 23: a run on A that ends after B was loaded must not fill B's outputs."""
    import time

    from gradio_client.utils import Status

    client = _client(server)
    big = _big_cells(tmp_path / "slow_a.tif")
    ann, *_ = client.predict(handle_file(str(big)), api_name="/seg_upload")
    job = client.submit({"image": handle_file(ann["image"]["path"]), "annotations": []}, 0.5, False, "",
                        api_name="/seg_run")
    deadline = time.time() + 60
    while job.status().code not in (Status.PROCESSING, Status.PROGRESS) and time.time() < deadline:
        time.sleep(0.05)
    assert not job.done(), "the run ended before the next file could be loaded"
    client.predict(handle_file(str(image_file)), api_name="/seg_upload")  # B, while A runs
    out = job.result(timeout=300)
    assert "objects" not in str(out[1])  # the count of A is not shown under B
    assert "path" not in str(out[2])  # nor A's downloads
    ann, *_ = client.predict(handle_file(str(image_file)), api_name="/seg_upload")
    out = client.predict({"image": handle_file(ann["image"]["path"]), "annotations": []}, 0.5, False, "",
                         api_name="/seg_run")
    assert "objects" in out[1] and out[2]  # B's own result shows


def test_pixel_size_field_bad_values_and_the_summary_says_which(server, image_file):
    client = _client(server)
    ann, *_, pixel = client.predict(handle_file(str(image_file)), api_name="/seg_upload")
    assert pixel == ""  # the file has no calibration
    value = {"image": handle_file(ann["image"]["path"]), "annotations": []}
    for bad in ("0", "-1", "abc"):
        with pytest.raises(Exception, match="the pixel size must be a positive number"):
            client.predict(value, 0.5, False, bad, api_name="/seg_run")
    out = client.predict(value, 0.5, False, "0.5", api_name="/seg_run")
    table, summary, note = _value(out[6]), _value(out[7]), out[9]
    assert "0.5 µm (given)" in note
    assert "area_um2" in table["headers"] and "area_px" in table["headers"]
    assert summary["data"]
    assert any(str(f["path"]).endswith(".geojson") for f in out[2])
    out = client.predict(value, 0.5, False, "", api_name="/seg_run")
    assert "unknown" in out[9] and "area_um2" not in _value(out[6])["headers"]


def test_calibrated_tiff_prefills_the_pixel_size(server, tmp_path):
    from skimage.draw import disk

    img = np.full((96, 96), 100, np.uint16)
    for c in ((20, 20), (70, 70)):
        img[disk(c, 8, shape=img.shape)] = 1000
    path = tmp_path / "calibrated.tif"
    tifffile.imwrite(path, img, imagej=True, resolution=(1 / 0.24, 1 / 0.24), metadata={"unit": "um"})
    client = _client(server)
    ann, summary, *_, pixel = client.predict(handle_file(str(path)), api_name="/seg_upload")
    assert float(pixel) == pytest.approx(0.24) and "0.24 µm/px" in summary
    out = client.predict({"image": handle_file(ann["image"]["path"]), "annotations": []}, 0.5, False, pixel,
                         api_name="/seg_run")
    assert "0.24 µm (from file)" in out[9]


def test_heat_map_stands_out_on_h_and_e_at_the_default_opacity(server):
    """Issue 23: on H&E the map's purples looked like the stain. The heat must be more colourful
    than the stained objects it is not on (chroma = max - min of RGB)."""
    from PIL import Image

    client = _client(server)
    he = REPO / "examples" / "real_he_tissue.png"
    ann, *_ = client.predict(handle_file(str(he)), api_name="/count_upload")
    out = client.predict({"image": handle_file(ann["image"]["path"]), "annotations": []}, 0.6, False, "",
                         api_name="/count_run")
    density = tifffile.imread(next(f["path"] for f in out[2] if f["path"].endswith("_density.tif")))
    picture = np.asarray(Image.open(out[0]["path"]).convert("RGB"), np.float32)
    k = picture.shape[0] // density.shape[0]
    picture = picture[::k, ::k][: density.shape[0], : density.shape[1]]
    unit = density / np.percentile(density, 99.5)
    raw = np.asarray(Image.open(he).convert("L"), np.float32)
    chroma = picture.max(-1) - picture.min(-1)
    stained = (unit < 0.05) & (raw < np.percentile(raw, 30))
    assert chroma[unit > 0.2].mean() - chroma[stained].mean() > 20


def test_many_files_one_table_one_zip_and_a_refused_file_is_one_row(server, image_file, tmp_path):
    """Issue 23: several files in one run; a broken one is a row with its reason, the others go on."""
    import zipfile

    second = tmp_path / "second.tif"
    second.write_bytes(image_file.read_bytes())
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00garbage" * 20)
    client = _client(server)
    table, gallery, zipped = client.predict([handle_file(str(p)) for p in (image_file, bad, second)], "",
                                            api_name="/seg_batch")
    table = _value(table)
    rows = {r[0]: dict(zip(table["headers"], r)) for r in table["data"]}
    assert set(rows) == {"cells.tif", "broken.tif", "second.tif"}
    assert rows["broken.tif"]["status"] != "done" and "broken.tif" in rows["broken.tif"]["message"]
    assert rows["cells.tif"]["status"] == "done" and rows["cells.tif"]["count"] == rows["second.tif"]["count"] > 0
    assert rows["cells.tif"]["mean_area_px"] > 0
    assert len(_value(gallery)) == 2
    names = zipfile.ZipFile(_value(zipped)["path"]).namelist()
    assert {"cells.tif", "cells.csv", "cells.geojson", "second.csv", "manifest.csv"} <= set(names)
    with pytest.raises(Exception, match="the pixel size must be a positive number"):
        client.predict([handle_file(str(image_file))], "-2", api_name="/seg_batch")


def test_many_time_lapses_each_in_its_own_folder(server, tmp_path):
    """Tracking's many-files run: one folder per sequence (CTC frame names repeat), a refused file is a row."""
    import zipfile

    movie = REPO / "examples" / "timelapse_division.tif"
    again = tmp_path / "again.tif"
    again.write_bytes(movie.read_bytes())
    one = tmp_path / "one_frame.tif"
    tifffile.imwrite(one, np.zeros((64, 64), np.uint16))
    client = _client(server)
    table, gallery, zipped = client.predict([handle_file(str(p)) for p in (movie, one, again)], "",
                                            api_name="/track_batch")
    table = _value(table)
    rows = {r[0]: dict(zip(table["headers"], r)) for r in table["data"]}
    assert rows["timelapse_division.tif"]["status"] == "done" and rows["again.tif"]["status"] == "done"
    assert rows["timelapse_division.tif"]["tracks"] == rows["again.tif"]["tracks"] > 0
    assert rows["one_frame.tif"]["status"] == "failed" and rows["one_frame.tif"]["message"]
    assert len(_value(gallery)) == 2
    names = set(zipfile.ZipFile(_value(zipped)["path"]).namelist())
    assert {"timelapse_division/timelapse_division_tracks.csv", "again/again_ctc.zip",
            "again/again_per_frame.png", "summary.csv"} <= names
