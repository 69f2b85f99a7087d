"""Many images: mm_core.batch in process and on a 2-worker Dask LocalCluster, manifest, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.draw import disk

from mm_core.batching import run as mb
from mm_core.cli import main
from mm_core.errors import InputError


def _blobs(seed, shape=(96, 96), r=9):
    rng = np.random.default_rng(seed)
    img = np.full(shape, 100.0)
    centres = [(24, 24), (24, 70), (70, 30), (72, 72), (48, 48)][: 2 + seed % 4]
    for c in centres:
        rr, cc = disk(c, r, shape=shape)
        img[rr, cc] = 1000.0
    return (img + rng.normal(0, 20, shape)).clip(0, 65535).astype(np.uint16), len(centres)


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    counts = {}
    for i in range(1, 5):
        arr, n = _blobs(i)
        tifffile.imwrite(d / f"img{i}.tif", arr)
        counts[f"img{i}"] = n
    (d / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    return d, counts


def _files(d):
    return sorted(d.glob("img*.tif")) + [d / "broken.tif"]


def test_two_worker_local_cluster_matches_in_process_run(folder, tmp_path):
    d, counts = folder
    one = mb.batch(_files(d), "segment", tmp_path / "one", workers=1, engine="classic", head="analytic",
                   progress=False)
    two = mb.batch(_files(d), "segment", tmp_path / "two", workers=2, engine="classic", head="analytic",
                   progress=False)
    for table in (one, two):
        assert list(table.columns) == ["image", "output", "status", "objects", "pixel_size", "seconds", "message"]
        assert len(table) == 5 and (table["status"] == "done").sum() == 4
        bad = table[table["status"] == "failed"]
        assert list(bad["output"]) == ["broken"] and "broken.tif" in bad["message"].iloc[0]
    for base, n in counts.items():
        a = tifffile.imread(tmp_path / "one" / f"{base}.tif")
        b = tifffile.imread(tmp_path / "two" / f"{base}.tif")
        assert np.array_equal(a, b) and a.max() == n
        assert int(two.set_index("output").loc[base, "objects"]) == n
        assert (tmp_path / "two" / f"{base}.csv").exists()


def test_resume_after_an_interrupted_run(folder, tmp_path):
    d, counts = folder
    out = tmp_path / "out"
    seen = []

    def stop_after_two(row):
        seen.append(row["output"])
        if len(seen) == 2:
            raise KeyboardInterrupt  # Ctrl-C after the second image

    with pytest.raises(KeyboardInterrupt):
        mb.batch(_files(d), "count", out, engine="classic", head="analytic", progress=False,
                 on_result=stop_after_two)
    first = pd.read_csv(out / "manifest.csv")
    assert list(first["output"]) == ["img1", "img2"]
    (out / ".img3.partial").mkdir()
    (out / ".img3.partial" / "img3_density.tif").write_bytes(b"half a file")  # killed while writing img3
    stamp = (out / "img1_density.tif").stat().st_mtime_ns
    table = mb.batch(_files(d), "count", out, resume=True, engine="classic", head="analytic", progress=False)
    assert len(table) == 5 and list(table["output"][:2]) == ["img1", "img2"]
    assert (table["message"][:2] == "resumed: outputs complete").all()
    assert (out / "img1_density.tif").stat().st_mtime_ns == stamp  # not run again
    assert set(table.loc[table["status"] == "done", "output"]) == set(counts)
    assert not (out / ".img3.partial").exists() and (out / "img3_density.tif").exists()
    got = pd.read_csv(out / "counts.csv")
    assert list(got["image"]) == ["img1", "img2", "img3", "img4"]
    assert np.allclose(got["count"], [counts[b] for b in got["image"]], atol=0.6)
    (out / "img4_points.csv").unlink()  # an output gone: img4 runs again
    again = mb.batch(_files(d), "count", out, resume=True, engine="classic", head="analytic", progress=False)
    assert again.set_index("output").loc["img4", "message"] == ""
    assert (out / "img4_points.csv").exists()


def test_unreachable_scheduler_gives_one_clear_message(folder, tmp_path, monkeypatch, capsys):
    d, _ = folder
    monkeypatch.setattr(mb, "CONNECT_TIMEOUT", 2)
    with pytest.raises(InputError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        mb.batch(_files(d), "segment", tmp_path / "o", scheduler="tcp://127.0.0.1:9", progress=False)
    code = main(["segment", str(d), "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "error: cannot reach the Dask scheduler" in err and "Traceback" not in err


def test_cli_workers_resume_and_manifest(folder, tmp_path, capsys):
    d, counts = folder
    out = tmp_path / "o"
    assert main(["segment", str(d), "--out", str(out), "--engine", "classic", "--head", "analytic"]) == 1
    assert "skipped broken.tif" in capsys.readouterr().err
    assert main(["segment", str(d), "--out", str(out), "--engine", "classic", "--head", "analytic",
                 "--resume"]) == 1
    table = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert (table.loc[table["status"] == "done", "message"] == "resumed: outputs complete").all()
    with pytest.raises(SystemExit):
        main(["segment", str(d), "--out", str(out), "--workers", "x"])
    with pytest.raises(InputError, match="at least 1"):
        mb.batch(_files(d), "segment", out, workers=0)
    assert main(["segment", str(d), "--out", str(out), "--tile", "10"]) == 2
    assert "error: --tile must be at least 64 pixels" in capsys.readouterr().err
    with pytest.raises(InputError, match="--overlap must be"):
        mb.batch(_files(d), "segment", out, tile=256, overlap=200)


def test_a_dying_worker_is_recorded_and_the_batch_finishes(folder, tmp_path):
    """A worker process that dies on one image: that image is 'failed' with a message, the rest are done."""
    import os

    import dask
    from distributed import Client, LocalCluster, WorkerPlugin

    d, counts = folder
    poison = d / "poison.tif"
    tifffile.imwrite(poison, _blobs(1)[0])

    class DieOnPoison(WorkerPlugin):  # defined here so that it is pickled by value into the workers
        def transition(self, key, start, finish, **kwargs):
            if finish == "executing" and "poison" in str(key):
                os._exit(1)

    with dask.config.set(mb.CLUSTER_CONFIG):  # the batch's own settings, on a cluster this test can reach
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=40)
        admin = Client(cluster)
        try:
            admin.register_plugin(DieOnPoison(), name="die-on-poison")
            table = mb.batch(sorted(d.glob("img*.tif")) + [poison], "segment", tmp_path / "o",
                             scheduler=cluster.scheduler_address, engine="classic", head="analytic",
                             progress=False)
        finally:
            admin.close()
            cluster.close()
    rows = table.set_index("output")
    assert rows.loc["poison", "status"] == "failed" and "died" in rows.loc["poison", "message"]
    assert (rows.drop(index="poison")["status"] == "done").all(), rows["message"].to_dict()
    assert len(rows) == len(counts) + 1
    for base, n in counts.items():
        assert tifffile.imread(tmp_path / "o" / f"{base}.tif").max() == n
    manifest = pd.read_csv(tmp_path / "o" / "manifest.csv")
    assert set(manifest["output"]) == set(counts) | {"poison"}


def test_cli_exemplar_box_on_an_image_processed_in_tiles(tmp_path, capsys):
    rng = np.random.default_rng(0)
    img = np.full((520, 520), 100.0)
    centres = [(60 + 100 * i, 60 + 100 * j) for i in range(5) for j in range(5)]
    for c in centres:
        img[disk(c, 12, shape=img.shape)] = 1000.0
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, (img + rng.normal(0, 20, img.shape)).astype(np.uint16))
    out = tmp_path / "o"
    code = main(["segment", str(path), "--out", str(out), "--engine", "classic", "--tile", "256",
                 "--box", "46", "46", "75", "75"])
    assert code == 0, capsys.readouterr().err
    row = pd.read_csv(out / "manifest.csv").iloc[0]
    labels = tifffile.imread(out / "big.tif")
    assert row["status"] == "done" and int(row["objects"]) == labels.max() == len(centres)


def _movie(path, n_frames, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(n_frames):
        img = np.full((80, 80), 100.0)
        for c in ((20, 16 + 3 * t), (58, 60 - 2 * t)):
            img[disk(c, 8, shape=img.shape)] = 1000.0
        frames.append((img + rng.normal(0, 20, img.shape)).astype(np.uint16))
    if path.suffix == ".tif":
        tifffile.imwrite(path, np.stack(frames))
    else:  # a folder of frames
        path.mkdir()
        for t, f in enumerate(frames):
            tifffile.imwrite(path / f"t{t}.tif", f)
    return path


def test_track_batch_of_two_time_lapses_resumes_the_unfinished_one(tmp_path):
    from mm_core.io import read_ctc

    seqs = [_movie(tmp_path / "a.tif", 5), _movie(tmp_path / "b", 3, seed=1)]
    out = tmp_path / "o"

    def stop(row):
        raise KeyboardInterrupt  # Ctrl-C once the first time-lapse is done

    with pytest.raises(KeyboardInterrupt):
        mb.batch(seqs, "track", out, engine="classic", head="analytic", progress=False, on_result=stop)
    first = pd.read_csv(out / "manifest.csv")
    assert list(first["output"]) == ["a"] and list(first["status"]) == ["done"] and not (out / "b").exists()
    stamp = (out / "a" / "tracks.csv").stat().st_mtime_ns
    table = mb.batch(seqs, "track", out, resume=True, engine="classic", head="analytic", progress=False)
    assert list(table.columns) == ["image", "output", "status", "tracks", "pixel_size", "seconds", "message"]
    rows = table.set_index("output")
    assert rows.loc["a", "message"] == "resumed: outputs complete" and rows.loc["b", "status"] == "done"
    assert (out / "a" / "tracks.csv").stat().st_mtime_ns == stamp  # not run again
    for name, n in (("a", 5), ("b", 3)):
        masks, tracks = read_ctc(out / name)
        assert len(masks) == n and len(tracks) == int(rows.loc[name, "tracks"]) == 2
        assert (out / name / "tracks.zarr" / "tracks").is_dir() and (out / name / "tracks_geff.zip").is_file()
@pytest.mark.slow  # starts 2 worker processes (about 30 s on the 2-core CI machine)
def test_local_workers_keep_their_scratch_under_out_and_listen_on_loopback_with_tls(folder, tmp_path,
                                                                                     monkeypatch):
    """Issue 20: no /tmp/dask-scratch-space, and no other local process can use the cluster."""
    import distributed

    seen = {}

    class Spy(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.update(kwargs, address=self.scheduler_address)
            seen["dirs"] = [p for p in (tmp_path / "o").rglob("worker-*")]

    monkeypatch.setattr(distributed, "LocalCluster", Spy)
    d, _ = folder
    table = mb.batch(sorted(d.glob("img*.tif")), "segment", tmp_path / "o", workers=2, engine="classic",
                     head="analytic", progress=False)
    assert (table["status"] == "done").all()
    assert seen["address"].startswith("tls://127.0.0.1:")  # loopback only, and TLS with a temporary key
    assert Path(seen["local_directory"]).is_relative_to(tmp_path / "o") and seen["dirs"]
    assert not (tmp_path / "o" / ".dask-scratch").exists()  # cleaned up after the batch
