"""Tracks as GEFF: written by `track`, read back with the geff package, checked against the CTC output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.draw import disk

geff = pytest.importorskip("geff")

from mm_core.cli import main  # noqa: E402
from mm_core.export import write_ctc  # noqa: E402
from mm_core.export.geff import read_geff, write_geff, write_geff_zip  # noqa: E402
from mm_core.io import read_ctc  # noqa: E402


def _check_against_ctc(geff_path, ctc_dir):
    masks, tracks = read_ctc(ctc_dir)
    nodes, edges = read_geff(geff_path)
    # one node per object per frame, with its pixels' area and centroid
    expected = [(t, int(i)) for t in range(len(masks)) for i in np.unique(masks[t]) if i > 0]
    assert sorted(zip(nodes["t"], nodes["seg_id"])) == sorted(expected)
    for _, n in nodes.iterrows():
        yy, xx = np.nonzero(masks[int(n.t)] == n.seg_id)
        assert n.area == len(yy) and abs(n.y - yy.mean()) < 1e-6 and abs(n.x - xx.mean()) < 1e-6
        assert n.track_id == n.seg_id
    # edges: consecutive appearances of a track, and parent -> daughters
    key = {nid: (int(r.t), int(r.seg_id)) for nid, r in nodes.iterrows()}
    got = sorted((key[s], key[d]) for s, d in zip(edges["source"], edges["target"]))
    want = []
    for _, r in tracks.iterrows():
        frames = [t for t in range(r.begin, r.end + 1) if (masks[t] == r.label).any()]
        want += [((a, r.label), (b, r.label)) for a, b in zip(frames, frames[1:])]
        if r.parent > 0:
            p = tracks.set_index("label").loc[r.parent]
            want.append(((int(p.end), int(r.parent)), (int(r.begin), int(r.label))))
    assert got == sorted(want)


def _division_movie():
    masks = np.zeros((5, 64, 64), np.uint16)
    for t in range(3):
        masks[t][disk((30, 20 + 2 * t), 6, shape=(64, 64))] = 1
    for t in (3, 4):
        masks[t][disk((20, 26), 5, shape=(64, 64))] = 2
        masks[t][disk((42, 26), 5, shape=(64, 64))] = 3
    masks[0][disk((50, 50), 4, shape=(64, 64))] = 4
    masks[2][disk((50, 52), 4, shape=(64, 64))] = 4  # gap at t=1
    tracks = pd.DataFrame({"label": [1, 2, 3, 4], "begin": [0, 3, 3, 0], "end": [2, 4, 4, 2],
                           "parent": [0, 1, 1, 0]})
    return masks, tracks


def test_geff_with_division_and_gap_matches_ctc(tmp_path):
    masks, tracks = _division_movie()
    write_ctc(tmp_path / "ctc", masks, tracks)
    path = write_geff(tmp_path, masks, tracks)
    geff.validate_structure(str(path / "tracks"))
    meta = geff.GeffMetadata.read(str(path / "tracks"))
    assert [a.name for a in meta.axes] == ["t", "y", "x"] and meta.directed
    assert meta.related_objects[0].type == "labels" and meta.related_objects[0].path == "../segmentation"
    import zarr

    seg = np.asarray(zarr.open_group(str(path), mode="r")["segmentation/0"][:])
    assert np.array_equal(seg, masks)
    _check_against_ctc(path, tmp_path / "ctc")
    _check_against_ctc(write_geff_zip(tmp_path / "t.zip", masks, tracks), tmp_path / "ctc")
    nodes, edges = read_geff(path)
    assert len(nodes) == 3 + 4 + 2 and len(edges) == 2 + 2 + 2 + 1  # two division edges, one gap edge


def test_track_cli_writes_geff_beside_ctc(tmp_path):
    rng = np.random.default_rng(0)
    frames = []
    for t in range(4):
        img = np.full((96, 96), 100.0)
        for c in ((24, 20 + 3 * t), (70, 70 - 2 * t)):
            img[disk(c, 9, shape=img.shape)] = 1000.0
        frames.append((img + rng.normal(0, 20, img.shape)).astype(np.uint16))
    tifffile.imwrite(tmp_path / "movie.tif", np.stack(frames), imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "res"
    assert main(["track", str(tmp_path / "movie.tif"), "--out", str(out), "--engine", "classic"]) == 0
    assert (out / "tracks.zarr" / "tracks").is_dir() and (out / "res_track.txt").exists()
    _check_against_ctc(out / "tracks.zarr", out)
    nodes, _ = read_geff(out / "tracks.zarr")
    assert nodes["seg_id"].nunique() == 2 and len(nodes) == 8


def test_geff_zip_reads_back_with_geff(tmp_path):
    import zipfile

    masks, tracks = _division_movie()
    zp = write_geff_zip(tmp_path / "o" / "tracks_geff.zip", masks, tracks)
    assert sorted(p.name for p in zp.parent.iterdir()) == ["tracks_geff.zip"]  # its scratch folder is gone
    with zipfile.ZipFile(zp) as zf:
        zf.extractall(tmp_path / "x")
    geff.validate_structure(str(tmp_path / "x" / "tracks"))
    graph, meta = geff.read(str(tmp_path / "x" / "tracks"))
    assert graph.number_of_nodes() == 9 and graph.number_of_edges() == 7
    assert meta.related_objects[0].path == "../segmentation"
    ctc = write_ctc(tmp_path / "ctc", masks, tracks)
    _check_against_ctc(zp, ctc)
