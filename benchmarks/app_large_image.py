"""Time to result in the app (through its API) for a large image run tiled: prints seconds.

``python benchmarks/app_large_image.py [side]`` (default 4000): a synthetic side² nuclei-like image
is uploaded to the app launched in this process (weight-free engine) and segmented.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile


def main(side: int = 4000) -> None:
    from gradio_client import Client, handle_file
    from skimage.draw import disk

    from mm_core.app import ui

    rng = np.random.default_rng(0)
    img = np.full((side, side), 100.0, np.float32)
    for _ in range(side * side // 1600):
        img[disk(tuple(rng.integers(8, side - 8, 2)), 6, shape=img.shape)] = 900.0
    path = Path(tempfile.mkdtemp()) / f"big_{side}.tif"
    tifffile.imwrite(path, (img + rng.normal(0, 10, img.shape)).astype(np.uint16))
    ui.load_engine()
    demo = ui.build_app()
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name="127.0.0.1", server_port=7931, prevent_thread_lock=True, quiet=True)
    client = Client("http://127.0.0.1:7931/", verbose=False, download_files=False)
    t0 = time.time()
    ann, *_ = client.predict(handle_file(str(path)), api_name="/seg_upload")
    t1 = time.time()
    job = client.submit({"image": handle_file(ann["image"]["path"]), "annotations": []}, 0.45, False, "",
                        api_name="/seg_run")
    last = None
    while not job.done():  # the progress the page shows: one step per tile, with the time left
        units = job.status().progress_data
        desc = units[0].desc if units else None
        if desc and desc != last:
            print(f"  {time.time() - t1:6.0f} s  {desc}", flush=True)
            last = desc
        time.sleep(1)
    out = job.result()
    t2 = time.time()
    n = out[1].split("mm-big-num'")[1].split(">")[1].split("<")[0]
    print(f"{side}x{side}: upload+read {t1 - t0:.1f} s, run (tiled) to result on screen {t2 - t1:.1f} s, "
          f"{n} objects", flush=True)
    demo.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4000)
