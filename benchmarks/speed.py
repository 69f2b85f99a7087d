"""Per-stage timings of segment and count with the classic engine.

Synthetic fluorescence-like images (seeded: disks of diameter 12 px, noise) at
512x512 and 1024x1024, automatic and exemplar mode. Prints, per size and task,
the median over ``--repeat`` runs of each stage (scale + polarity, filter bank,
classifier, centre evidence, head) and the total, beside the issue's targets
(<= 0.5 s per 512^2 image, <= 2 s per 1024^2, on 2 CPU cores).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/speed.py [--repeat 3] [--sizes 512 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm_core.engines.classic import ClassicEngine
from mm_core.heads.counting import density_from_maps
from mm_core.heads.segmentation import instances_from_maps
from mm_core.transforms import normalize

TARGETS = {512: 0.5, 1024: 2.0}
STAGES = ("scale", "features", "classifier", "centers")


def synthetic(size: int, diameter: float = 12.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.float32)
    n = int(0.25 * size * size / (np.pi * diameter ** 2 / 4))
    cy, cx = rng.uniform(0, size, (2, n))
    yy, xx = np.ogrid[:size, :size]
    for y, x in zip(cy, cx):
        r0, r1 = int(max(0, y - diameter)), int(min(size, y + diameter))
        c0, c1 = int(max(0, x - diameter)), int(min(size, x + diameter))
        sub = (yy[r0:r1] - y) ** 2 + (xx[:, c0:c1] - x) ** 2 <= (diameter / 2) ** 2
        img[r0:r1, c0:c1][sub] = 1.0
    return normalize(img + rng.normal(0, 0.1, img.shape).astype(np.float32))


def run(engine, img, box, task):
    t0 = time.perf_counter()
    maps = engine.match(img, box)
    t1 = time.perf_counter()
    if task == "segment":
        instances_from_maps(maps, img)
    else:
        density_from_maps(maps, img)
    t2 = time.perf_counter()
    times = dict(maps.info["timings"])
    times["head"] = t2 - t1
    times["total"] = t2 - t0
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[512, 1024])
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    engine = ClassicEngine()
    print(f"machine: {os.uname().nodename}, {os.cpu_count()} CPUs visible, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    cols = STAGES + ("head", "total")
    print("| size | task | mode | " + " | ".join(cols) + " | target | s per Mpixel |")
    print("|---" * (len(cols) + 6) + "|")
    for size in a.sizes:
        img = synthetic(size)
        box = np.array([[100, 100, 112, 112]], np.float32)
        run(engine, img, None, "segment")  # warm-up
        for task in ("segment", "count"):
            for mode, b in (("automatic", None), ("exemplar", box)):
                rows = [run(engine, img, b, task) for _ in range(a.repeat)]
                med = {k: float(np.median([r[k] for r in rows])) for k in cols}
                tgt = TARGETS.get(size)
                ok = "" if tgt is None else (f"<= {tgt} s " + ("ok" if med["total"] <= tgt else "MISSED"))
                print(f"| {size}^2 | {task} | {mode} | " + " | ".join(f"{med[k]:.3f}" for k in cols)
                      + f" | {ok} | {med['total'] / (size * size / 1e6):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
