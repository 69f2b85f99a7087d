"""Time for a many-files run in the app (through its API): prints seconds.

``python benchmarks/app_many_files.py [n] [task]`` (default 20 files, ``seg``): the first ``n``
images of ``../shared/data/seg/dsb2018_stage1_test/images`` (``count``: VGG cells) are sent to
the tab's "many files" run of the app launched in this process (weight-free engine).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = {"seg": REPO.parent / "shared" / "data" / "seg" / "dsb2018_stage1_test" / "images",
        "count": REPO.parent / "shared" / "data" / "count" / "vgg_cells" / "images"}


def main(n: int = 20, tab: str = "seg") -> None:
    from gradio_client import Client, handle_file

    from mm_core.app import ui

    files = sorted(p for p in DATA[tab].iterdir() if p.suffix in (".tif", ".png"))[:n]
    if len(files) < n:
        sys.exit(f"need {n} images in {DATA[tab]}")
    ui.load_engine()
    demo = ui.build_app()
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name="127.0.0.1", server_port=7932, prevent_thread_lock=True, quiet=True)
    client = Client("http://127.0.0.1:7932/", verbose=False, download_files=False)
    t0 = time.time()
    job = client.submit([handle_file(str(f)) for f in files], "", api_name=f"/{tab}_batch")
    last = None
    while not job.done():
        units = job.status().progress_data
        desc = units[0].desc if units else None
        if desc and desc != last:
            print(f"  {time.time() - t0:6.0f} s  {desc}", flush=True)
            last = desc
        time.sleep(1)
    table, gallery, _ = job.result()
    dt = time.time() - t0
    rows = table["value"]["data"] if "value" in table else table["data"]
    print(f"{n} files ({tab}): {dt:.1f} s from Run to table, gallery and zip ({dt / n:.1f} s per file); "
          f"{len(rows)} rows", flush=True)
    demo.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20, sys.argv[2] if len(sys.argv) > 2 else "seg")
