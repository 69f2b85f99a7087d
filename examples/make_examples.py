"""Make the synthetic example images shipped in ``examples/`` (the real ones: ``make_real_examples.py``).

Run from the repository root::

    python examples/make_examples.py

The output is deterministic (fixed seeds). ``examples/examples.json`` records, for
each file, what it shows and how many objects were drawn, so tests can check that
a result is plausible.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent


def _place(rng, n, shape, rmin, rmax, min_gap, margin, tries=20000):
    """Up to ``n`` non-overlapping circles (row, col, radius)."""
    out = []
    for _ in range(tries):
        if len(out) == n:
            break
        r = rng.uniform(rmin, rmax)
        y = rng.uniform(margin + r, shape[0] - margin - r)
        x = rng.uniform(margin + r, shape[1] - margin - r)
        if all(np.hypot(y - y2, x - x2) > r + r2 + min_gap for y2, x2, r2 in out):
            out.append((y, x, r))
    return out


def _ellipse(shape, y, x, ry, rx, angle):
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    ca, sa = np.cos(angle), np.sin(angle)
    u = ((xx - x) * ca + (yy - y) * sa) / rx
    v = (-(xx - x) * sa + (yy - y) * ca) / ry
    return u * u + v * v <= 1.0


def fluorescence_nuclei(seed=1, shape=(512, 512), n=70):
    """16-bit fluorescence-like nuclei: bright textured ellipses on a dark background."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    for i, (y, x, r) in enumerate(_place(rng, n, shape, 9, 15, 3, 2), start=1):
        e = rng.uniform(0.7, 1.0)
        labels[_ellipse(shape, y, x, r * e, r / e, rng.uniform(0, np.pi)) & (labels == 0)] = i
    bright = np.concatenate([[0.0], rng.uniform(0.5, 1.0, labels.max())])
    signal = bright[labels] * (0.8 + 0.2 * ndi.gaussian_filter(rng.random(shape), 2) * 2)
    signal = ndi.gaussian_filter(signal, 1.2) * 2500 + 300
    img = rng.poisson(signal).astype(np.float32) + rng.normal(0, 20, shape)
    return np.clip(img, 0, 65535).astype(np.uint16), labels


def phase_cells(seed=2, shape=(512, 512), n=45):
    """8-bit phase-contrast-like cells: dark bodies with a bright halo on grey."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    for i, (y, x, r) in enumerate(_place(rng, n, shape, 12, 20, 6, 4), start=1):
        e = rng.uniform(0.55, 0.9)
        labels[_ellipse(shape, y, x, r * e, r / e, rng.uniform(0, np.pi)) & (labels == 0)] = i
    fg = labels > 0
    halo = ndi.binary_dilation(fg, iterations=3) & ~fg
    img = np.full(shape, 0.5, np.float32)
    img[fg] = 0.28
    img[halo] = 0.85
    img = ndi.gaussian_filter(img, 1.0) + ndi.gaussian_filter(rng.normal(0, 0.08, shape), 3) * 2
    img += rng.normal(0, 0.02, shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), labels


def counting_cells(seed=3, shape=(384, 384), n=240):
    """RGB crowded small cells (green cytoplasm, blue nuclei), may touch."""
    rng = np.random.default_rng(seed)
    pts = _place(rng, n, shape, 4.5, 6.5, -2.0, 3)
    nuc = np.zeros(shape, np.float32)
    cyt = np.zeros(shape, np.float32)
    for y, x, r in pts:
        yi, xi = int(round(y)), int(round(x))
        nuc[yi, xi] = rng.uniform(0.7, 1.0)
        cyt[yi, xi] = rng.uniform(0.6, 1.0)
    nuc = ndi.gaussian_filter(nuc, 2.2)
    cyt = ndi.gaussian_filter(cyt, 3.8)
    nuc /= nuc.max()
    cyt /= cyt.max()
    img = np.stack([0.1 * cyt, 0.75 * cyt, nuc], -1) + rng.normal(0, 0.03, (*shape, 3))
    points = np.array([(x, y) for y, x, _ in pts])
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), points


def timelapse_division(seed=4, shape=(192, 192), t_len=10, n=6, divide_at=5):
    """Nuclei drifting for ``t_len`` frames; nucleus 1 divides at frame ``divide_at``."""
    rng = np.random.default_rng(seed)
    cells = [
        dict(y=y, x=x, r=r, vy=rng.uniform(-1.5, 1.5), vx=rng.uniform(-1.5, 1.5), parent=0)
        for y, x, r in _place(rng, n, shape, 8, 10, 18, 22)
    ]
    tracks = {i + 1: [0, t_len - 1, 0] for i in range(len(cells))}
    alive = {i + 1: c for i, c in enumerate(cells)}
    frames, masks = [], []
    for t in range(t_len):
        if t == divide_at:
            mother = alive.pop(1)
            tracks[1][1] = t - 1
            for k, sign in ((len(tracks) + 1, 1), (len(tracks) + 2, -1)):
                alive[k] = dict(
                    y=mother["y"] + sign * 7,
                    x=mother["x"],
                    r=mother["r"] * 0.8,
                    vy=sign * 1.2,
                    vx=mother["vx"],
                    parent=1,
                )
                tracks[k] = [t, t_len - 1, 1]
        lab = np.zeros(shape, np.uint16)
        for k, c in alive.items():
            if t > 0:
                c["y"] = float(np.clip(c["y"] + c["vy"], 12, shape[0] - 12))
                c["x"] = float(np.clip(c["x"] + c["vx"], 12, shape[1] - 12))
            lab[_ellipse(shape, c["y"], c["x"], c["r"], c["r"] * 0.9, 0.0) & (lab == 0)] = k
        sig = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.2) * 2000 + 200
        frames.append(np.clip(rng.poisson(sig) + rng.normal(0, 15, shape), 0, 65535).astype(np.uint16))
        masks.append(lab)
    return np.stack(frames), np.stack(masks), tracks


def main(out_dir: Path = HERE) -> dict:
    """Write every example and ``examples.json`` into ``out_dir``; return the metadata."""
    HERE = Path(out_dir)
    HERE.mkdir(parents=True, exist_ok=True)
    meta = {}
    img, lab = fluorescence_nuclei()
    tifffile.imwrite(HERE / "nuclei_fluorescence.tif", img, compression="zlib")
    meta["nuclei_fluorescence.tif"] = dict(
        task="segmentation",
        kind="16-bit fluorescence nuclei",
        shape=list(img.shape),
        n_objects=int(lab.max()),
    )
    img, lab = phase_cells()
    Image.fromarray(img).save(HERE / "phase_cells.png", optimize=True)
    meta["phase_cells.png"] = dict(
        task="segmentation",
        kind="8-bit phase-contrast-like cells",
        shape=list(img.shape),
        n_objects=int(lab.max()),
    )
    img, pts = counting_cells()
    Image.fromarray(img).save(HERE / "crowded_cells.png", optimize=True)
    meta["crowded_cells.png"] = dict(
        task="counting", kind="RGB crowded cells", shape=list(img.shape), n_objects=len(pts)
    )
    frames, masks, tracks = timelapse_division()
    tifffile.imwrite(
        HERE / "timelapse_division.tif", frames, imagej=True, metadata={"axes": "TYX"}, compression="zlib"
    )
    meta["timelapse_division.tif"] = dict(
        task="tracking",
        kind="16-bit nuclei time-lapse, one division",
        shape=list(frames.shape),
        n_tracks=len(tracks),
        n_divisions=1,
        n_objects_first_frame=int(len(np.unique(masks[0])) - 1),
    )
    for name in meta:
        print(f"{name}: {(HERE / name).stat().st_size / 1024:.0f} KiB")
    # the real examples (make_real_examples.py) keep their entries
    shipped = Path(__file__).resolve().parent / "examples.json"
    real = {k: v for k, v in json.loads(shipped.read_text()).items() if "source" in v} if shipped.is_file() else {}
    meta = {**meta, **real}
    (HERE / "examples.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


if __name__ == "__main__":
    main()
