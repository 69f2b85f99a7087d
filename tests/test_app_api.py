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
    out = client.predict(value, 0.5, False, api_name="/seg_run")
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
    client.predict({"image": handle_file(ann["image"]["path"]), "annotations": []}, 0.5, False,
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
    out = client.predict({"image": handle_file(ann["image"]["path"]), "annotations": []}, 0.5, False,
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
            client.predict({"image": image, "annotations": bad}, 0.5, False, api_name="/seg_run")
    assert "objects" in client.predict({"image": image, "annotations": [box]}, 0.5, False, api_name="/seg_run")[1]
