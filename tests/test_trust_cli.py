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


# ---- no traceback on the listed inputs ---------------------------------------------------------
def _frames_zip(n=3) -> bytes:
    import io
    import zipfile

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for t in range(n):
            b = io.BytesIO()
            tifffile.imwrite(b, (rng.random((32, 32)) * 1000).astype(np.uint16))
            zf.writestr(f"f{t}.tif", b.getvalue())
    return buf.getvalue()


def test_a_corrupt_deflate_stream_in_a_zip_is_one_message(tmp_path):
    from mm_core.errors import InputError
    from mm_core.io import read_sequence

    raw = _frames_zip()
    for off in range(40, len(raw) - 200, 37):  # every byte flip: a message or frames, nothing else
        bad = bytearray(raw)
        bad[off] ^= 0xFF
        p = tmp_path / "movie.zip"
        p.write_bytes(bytes(bad))
        try:
            read_sequence(p)
        except InputError as exc:
            assert "movie.zip" in str(exc)


def test_a_non_utf8_file_name_does_not_stop_the_batch(tmp_path, capsys):
    import pandas as pd

    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", _blobs(seed=1))
    tifffile.imwrite(folder / "b.tif", _blobs(seed=2))
    os.rename(os.fsencode(folder / "b.tif"), os.fsencode(folder) + b"/b\xff\xfe.tif")  # a Latin-1 name
    tifffile.imwrite(folder / "c.tif", _blobs(seed=3))
    out = tmp_path / "out"
    assert main(["segment", str(folder), "--out", str(out), "--engine", "classic", "--head", "analytic"]) == 0
    table = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert list(table["status"]) == ["done"] * 3
    assert sorted(Path(i).name[:1] for i in table["image"]) == ["a", "b", "c"]


def test_a_read_only_output_folder_is_exit_2_with_one_message(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    if os.geteuid() == 0:  # root writes anyway: every new file in it is refused as it would be
        def refused(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(out))

        monkeypatch.setattr(tempfile, "mkstemp", refused)
    src, movie = tmp_path / "cells.tif", tmp_path / "movie.tif"
    tifffile.imwrite(src, _blobs())
    tifffile.imwrite(movie, np.stack([_blobs(((24, 20 + 3 * t),), seed=t) for t in range(5)]))
    for command, given in (("segment", src), ("track", movie)):
        assert main([command, str(given), "--out", str(out), "--engine", "classic"]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err


def test_a_full_disk_during_track_leaves_no_partial_result(tmp_path, monkeypatch, capsys):
    import errno

    from mm_core.io import atomic

    src = tmp_path / "movie.tif"
    tifffile.imwrite(src, np.stack([_blobs(((24, 20 + 3 * t), (70, 70 - 2 * t)), seed=t) for t in range(5)]))
    real, calls = atomic.atomic_write, []

    def full(path, data, mode=None):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, mode)

    monkeypatch.setattr(atomic, "atomic_write", full)
    from mm_core.export import files, tracks

    monkeypatch.setattr(files, "atomic_write", full)
    monkeypatch.setattr(tracks, "atomic_write", full)
    out = tmp_path / "out"
    assert main(["track", str(src), "--out", str(out), "--engine", "classic"]) == 2  # a full output folder
    err = capsys.readouterr().err
    assert "No space left on device" in err and "incomplete" in err and "Traceback" not in err
    # nothing that looks like a result; the manifest says the time-lapse failed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["manifest.csv"]
    assert "failed" in (out / "manifest.csv").read_text()


def test_evaluate_on_a_non_utf8_counts_table_is_one_message(tmp_path, capsys):
    gt = tmp_path / "gt"
    (gt / "points").mkdir(parents=True)
    (gt / "images").mkdir()
    (gt / "points" / "a.csv").write_text("x,y\n1,2\n")
    tifffile.imwrite(gt / "images" / "a.tif", _blobs())
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "counts.csv").write_bytes(b"image,count\na\xff\xfe,3\n")
    assert main(["evaluate", str(pred), str(gt), "--task", "count"]) == 1
    err = capsys.readouterr().err
    assert "counts.csv" in err and "Traceback" not in err


def test_malformed_ome_zarr_is_one_message(tmp_path):
    import json

    from mm_core.errors import InputError
    from mm_core.io.lazy import open_lazy

    for multiscales in ([{"axes": [{"type": "space"}, {"type": "space"}], "datasets": [{"path": "0"}]}],
                        [{"axes": ["y", "x"], "datasets": []}], [{"axes": ["y", "x"]}], ["nonsense"], [{}], 7):
        z = tmp_path / "bad.zarr"
        z.mkdir(exist_ok=True)
        (z / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        (z / ".zattrs").write_text(json.dumps({"multiscales": multiscales}))
        with pytest.raises(InputError, match="bad.zarr"):
            open_lazy(z)


def test_a_full_disk_during_segment_exits_2_and_leaves_no_partial_result(tmp_path, monkeypatch, capsys):
    import errno

    from mm_core.export import files

    src = tmp_path / "img.tif"
    tifffile.imwrite(src, _blobs())

    def full(path, data, mode=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(files, "atomic_write", full)
    out = tmp_path / "out"
    assert main(["segment", str(src), "--out", str(out), "--engine", "classic"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "refused a write" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["manifest.csv"]
