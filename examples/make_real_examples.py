"""Copy the real example images (public domain, CC0) from the training corpus into ``examples/``.

Run from the repository root, with the development data next to it (``../shared/data``,
or ``MM_SHARED_DATA``)::

    python examples/make_real_examples.py

Each example is one image (or a crop of it) of a CC0 data set in
``../shared/data/train/seg`` (never a dev set), written losslessly; its entry in
``examples.json`` records the source, the crop and how many objects the ground truth
holds there (for the app's tests). Provenance and licence: ``examples/README.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("MM_SHARED_DATA", HERE.parents[1] / "shared" / "data")) / "train" / "seg"

#: file -> (data set, image id, crop (row0, row1, col0, col1) or None, what it shows)
REAL = {
    "real_nuclei_fluorescence.tif": (
        "bbbc039_u2os_nuclei", "IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB", None,
        "16-bit fluorescence nuclei (U2OS cells, Hoechst), BBBC039"),
    "real_he_tissue.png": (
        "dsb2018_stage1_train", "5d75a63972ef643e", None,
        "H&E-stained tissue, nuclei (DSB2018 / BBBC038 stage-1 training set)"),
    "real_brightfield_cells.png": (
        "dsb2018_stage1_train", "5e263abff938acba",
        (256, 768, 256, 768), "brightfield cells with their nuclei, 512x512 crop (DSB2018 / BBBC038)"),
}




def main(out_dir: Path = HERE) -> dict:
    """Write the real examples into ``out_dir`` and add their entries to its ``examples.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / "examples.json"
    meta = json.loads((meta_path if meta_path.is_file() else HERE / "examples.json").read_text())
    for name, (ds, ident, crop, kind) in REAL.items():
        img_path = DATA / ds / "images" / f"{ident}.tif"
        img = tifffile.imread(img_path)
        gt = tifffile.imread(DATA / ds / "masks" / img_path.name)
        if crop:
            r0, r1, c0, c1 = crop
            img, gt = img[r0:r1, c0:c1], gt[r0:r1, c0:c1]
        out = out_dir / name
        if out.suffix == ".tif":
            tifffile.imwrite(out, img, compression="zlib")
        else:
            Image.fromarray(img[..., :3] if img.ndim == 3 else img).save(out, optimize=True)
        meta[name] = {"task": "segmentation", "kind": kind, "shape": list(img.shape),
                      "n_objects": len(np.unique(gt[gt > 0])), "source": f"{ds}/{img_path.stem}",
                      "crop": list(crop) if crop else None, "licence": "CC0 1.0 (public domain)"}
        print(f"{name}: {img.shape} {img.dtype}, {meta[name]['n_objects']} objects, "
              f"{out.stat().st_size / 1e3:.0f} kB")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


if __name__ == "__main__":
    main()
