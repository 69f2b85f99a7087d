"""Time :func:`mm_core.export.save` on a synthetic tracking result (every file: CTC folder + zip,
tracks.csv, GEFF folder + zip).

The masks are disks moving half a pixel per frame, at the size of Fluo-N2DH-SIM+ by default
(65 frames of 690 x 628, 40 tracks). Prints the best and every time of ``--repeat`` runs, in
seconds. To compare two trees, run it with ``PYTHONPATH`` set to each.

    python benchmarks/track_export.py
    python benchmarks/track_export.py --frames 200 --tracks 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
from skimage.draw import disk

from mm_core import export


def movie(frames: int, height: int, width: int, n_tracks: int, seed: int = 0) -> SimpleNamespace:
    """A tracking result: ``n_tracks`` disks of radius 12 drifting through ``frames`` frames."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((frames, height, width), np.uint16)
    centres = rng.uniform(30, [height - 30, width - 30], (n_tracks, 2))
    for t in range(frames):
        for i, c in enumerate(centres + 0.5 * t):
            masks[t][disk(c, 12, shape=(height, width))] = i + 1
    tracks = pd.DataFrame({"label": np.arange(1, n_tracks + 1), "begin": 0, "end": frames - 1, "parent": 0})
    return SimpleNamespace(masks=masks, tracks=tracks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=65)
    p.add_argument("--size", type=int, nargs=2, default=(690, 628), metavar=("H", "W"))
    p.add_argument("--tracks", type=int, default=40)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    res = movie(a.frames, *a.size, a.tracks)
    times = []
    for _ in range(a.repeat):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            export.save(res, d)
            times.append(time.perf_counter() - t0)
    print(f"export.save of {a.frames} frames {a.size[0]}x{a.size[1]}, {a.tracks} tracks: "
          f"best {min(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
