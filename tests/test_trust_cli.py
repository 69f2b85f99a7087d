"""Issue 20, the CLI side: every file it writes lands at its own name (a symlink planted there is
replaced, never written through), odd inputs give one message (no traceback), nothing is written
outside ``--out``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.draw import disk

from mm_core.cli import main


def _blobs(centres=((24, 24), (24, 70), (70, 30), (72, 72)), shape=(96, 96), seed=0):
    rng = np.random.default_rng(seed)
    img = np.full(shape, 100.0)
    for c in centres:
        img[disk(c, 9, shape=shape)] = 1000.0
    return (img + rng.normal(0, 20, shape)).clip(0, 65535).astype(np.uint16)


#: What each command writes into --out (the names a hostile user could plant a link at).
OUTPUTS = {
    "segment": ["manifest.csv", "cells.tif", "cells.csv", "cells_rois.zip"],
    "count": ["manifest.csv", "counts.csv", "cells_density.tif", "cells_points.csv"],
    "track": ["mask000.tif", "mask001.tif", "res_track.txt", "ctc.zip", "tracks.csv", "tracks_geff.zip"],
}


def _victims(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    return victim


def _plant(out: Path, names: list[str], victim: Path) -> dict[Path, bytes]:
    """A symlink at each output name, to a file outside ``out``; returns the targets' contents."""
    out.mkdir(parents=True, exist_ok=True)
    before = {}
    for name in names:
        target = victim / f"target_{name}"
        target.write_bytes(b"precious " + name.encode())
        (out / name).symlink_to(target)
        before[target] = target.read_bytes()
    # a dangling link too: writing through it would create a file outside --out
    (out / ".cells.partial").symlink_to(victim / "made_by_link")
    return before


@pytest.mark.parametrize("command", ["segment", "count", "track"])
def test_a_symlink_planted_at_every_output_name_is_replaced_not_written_through(tmp_path, command):
    victim = _victims(tmp_path)
    out = tmp_path / "out"
    before = _plant(out, OUTPUTS[command], victim)
    if command == "track":
        src = tmp_path / "movie.tif"
        tifffile.imwrite(src, np.stack([_blobs(((24, 20 + 3 * t), (70, 70 - 2 * t)), seed=t) for t in range(2)]))
    else:
        src = tmp_path / "cells.tif"
        tifffile.imwrite(src, _blobs())
    code = main([command, str(src), "--out", str(out), "--engine", "classic"])
    assert code == 0
    for target, content in before.items():  # nothing outside --out changed
        assert target.read_bytes() == content, target.name
    assert sorted(p.name for p in victim.iterdir()) == sorted(t.name for t in before)
    for name in OUTPUTS[command]:  # each output is now a real file in --out
        assert not (out / name).is_symlink() and (out / name).is_file(), name
