"""Time to result in the app, through its API, as the page shows it: prints seconds and the progress.

``python benchmarks/app_timings.py large [side]``: a synthetic side² (default 4000²) nuclei-like image,
uploaded and segmented (tiled: more than 2048 px a side).
``python benchmarks/app_timings.py files [n] [seg|count]``: the first ``n`` (default 20) images of
``../shared/data/seg/dsb2018_stage1_test/images`` (``count``: VGG cells) in one "many files" run.
The app runs in this process with the weight-free engine (``MM_ENGINE=classic``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = {"seg": REPO.parent / "shared" / "data" / "seg" / "dsb2018_stage1_test" / "images",
        "count": REPO.parent / "shared" / "data" / "count" / "vgg_cells" / "images"}


def _client():
    """The app launched on a loopback port, and a client of it."""
    from gradio_client import Client

    from mm_core.app import ui

    ui.load_engine()
    demo = ui.build_app()
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name="127.0.0.1", server_port=7931, prevent_thread_lock=True, quiet=True)
    return demo, Client("http://127.0.0.1:7931/", verbose=False, download_files=False)


def _wait(job, t0: float):
    """The job's result, printing each new progress line the page would show."""
    last = None
    while not job.done():
        units = job.status().progress_data
        desc = units[0].desc if units else None
        if desc and desc != last:
            print(f"  {time.time() - t0:6.0f} s  {desc}", flush=True)
            last = desc
        time.sleep(1)
    return job.result()


def large(side: int = 4000) -> None:
    import tifffile
    from gradio_client import handle_file
    from skimage.draw import disk

    rng = np.random.default_rng(0)
    img = np.full((side, side), 100.0, np.float32)
    for _ in range(side * side // 1600):
        img[disk(tuple(rng.integers(8, side - 8, 2)), 6, shape=img.shape)] = 900.0
    path = Path(tempfile.mkdtemp()) / f"big_{side}.tif"
    tifffile.imwrite(path, (img + rng.normal(0, 10, img.shape)).astype(np.uint16))
    demo, client = _client()
    t0 = time.time()
    ann, *_ = client.predict(handle_file(str(path)), api_name="/seg_upload")
    t1 = time.time()
    job = client.submit({"image": handle_file(ann["image"]["path"]), "annotations": []}, 0.45, False, "",
                        api_name="/seg_run")
    out = _wait(job, t1)
    n = out[1].split("mm-big-num'")[1].split(">")[1].split("<")[0]
    print(f"{side}x{side}: upload+read {t1 - t0:.1f} s, run (tiled) to result on screen {time.time() - t1:.1f} s, "
          f"{n} objects", flush=True)
    demo.close()


def files(n: int = 20, tab: str = "seg") -> None:
    from gradio_client import handle_file

    paths = sorted(p for p in DATA[tab].iterdir() if p.suffix in (".tif", ".png"))[:n]
    if len(paths) < n:
        sys.exit(f"need {n} images in {DATA[tab]}")
    demo, client = _client()
    t0 = time.time()
    table, _, _ = _wait(client.submit([handle_file(str(p)) for p in paths], "", api_name=f"/{tab}_batch"), t0)
    dt = time.time() - t0
    rows = table["value"]["data"] if "value" in table else table["data"]
    print(f"{n} files ({tab}): {dt:.1f} s from Run to table, gallery and zip ({dt / n:.1f} s per file); "
          f"{len(rows)} rows", flush=True)
    demo.close()


if __name__ == "__main__":
    what, *rest = sys.argv[1:] or ["files"]
    if what == "large":
        large(*(int(a) for a in rest))
    else:
        files(int(rest[0]) if rest else 20, rest[1] if len(rest) > 1 else "seg")
