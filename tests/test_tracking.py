"""Tracking head: linking on synthetic label movies, CTC validity, real GT masks, end to end."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import disk_labels
from scipy import ndimage as ndi

from mm_core.engines.base import MatchMaps
from mm_core.export import write_ctc
from mm_core.heads.linking import (
    TRACK_COLUMNS,
    LinkParams,
    boxes_from_labels,
    link_labels,
    object_features,
)
from mm_core.heads.segmentation import WatershedHead
from mm_core.heads.tracking import AnalyticLinker
from mm_core.io import read_ctc
from mm_core.pipelines import SCALE_DRIFT, run_track


def track_frames(frames, engine, boxes, keep_maps=False):
    """The tracking pipeline with the analytic heads: ``(masks, tracks, maps)``."""
    res = run_track(engine, WatershedHead(), AnalyticLinker(), frames, boxes, keep_maps=keep_maps)
    return res.masks, res.tracks, res.maps

SHAPE = (96, 128)


def disks(centres, radii, shape=SHAPE, labels=None) -> np.ndarray:
    """Label image with one disk per centre (row, col) and radius (conftest.disk_labels)."""
    return disk_labels(shape, radii, centres, labels)


def scramble(masks, seed=0):
    """Give every frame's objects random, frame-independent label values."""
    rng = np.random.default_rng(seed)
    out = []
    for m in masks:
        ids = np.unique(m[m > 0])
        lut = np.zeros(int(m.max()) + 1, np.int32)
        lut[ids] = rng.choice(np.arange(1, 1000), size=len(ids), replace=False)
        out.append(lut[m])
    return out


def label_at(masks, t, yx) -> int:
    return int(masks[t][round(yx[0]), round(yx[1])])


def ctc_valid(tmp_path, masks, tracks) -> int:
    """py-ctcmetrics' validation of a result written by mm_core.export.write_ctc."""
    from ctc_metrics import validate_sequence

    res = write_ctc(tmp_path / "01_RES", masks, tracks)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return int(validate_sequence(str(res), threads=1)["Valid"])


# ----------------------------------------------------------------------------- synthetic linking
def test_moving_disks_keep_their_tracks(tmp_path):
    T = 12
    start = np.array([[15.0, 12.0], [80.0, 15.0], [50.0, 115.0]])  # never touch (>= 22 px apart)
    vel = np.array([[1.5, 4.0], [-1.0, 3.5], [0.5, -4.0]])
    traj = [start + t * vel for t in range(T)]
    masks, tracks = link_labels(scramble([disks(c, [9, 8, 10]) for c in traj]))
    assert masks.shape == (T, *SHAPE) and masks.dtype == np.int32
    assert list(tracks.columns) == TRACK_COLUMNS
    assert len(tracks) == 3 and (tracks.begin == 0).all() and (tracks.end == T - 1).all()
    assert (tracks.parent == 0).all()
    for k in range(3):  # every disk keeps one label through the movie, distinct from the others
        ids = {label_at(masks, t, traj[t][k]) for t in range(T)}
        assert len(ids) == 1 and ids.pop() in set(tracks.label)
    assert len({label_at(masks, 0, traj[0][k]) for k in range(3)}) == 3
    assert ctc_valid(tmp_path, masks, tracks) == 1


def test_division_one_parent_two_children(tmp_path):
    # disk A divides at frame 5 into two smaller daughters moving apart; disk B just drifts
    frames = []
    for t in range(10):
        b = ((70.0, 20.0 + 2 * t), 9)
        if t < 5:
            cs, rs = [(35.0, 60.0 + t), b[0]], [12, b[1]]
        else:
            d = 8 + 2.5 * (t - 5)  # daughters 0.67 parent diameters apart at birth
            cs, rs = [(35.0 - d, 64.0), (35.0 + d, 64.0), b[0]], [8.5, 8.5, b[1]]
        frames.append(disks(cs, rs))
    masks, tracks = link_labels(scramble(frames))
    kids = tracks[tracks.parent > 0]
    assert len(kids) == 2 and kids.parent.nunique() == 1
    parent = tracks.set_index("label").loc[kids.parent.iloc[0]]
    assert parent.begin == 0 and parent.end == 4
    assert (kids.begin == 5).all() and (kids.end == 9).all()
    assert label_at(masks, 0, (35, 60)) == kids.parent.iloc[0]
    assert {label_at(masks, 9, (35 - 18, 64)), label_at(masks, 9, (35 + 18, 64))} == set(kids.label)
    # the drifting disk is untouched: one track over the whole movie
    assert len(tracks) == 4 and label_at(masks, 0, (70, 20)) == label_at(masks, 9, (70, 38))
    assert ctc_valid(tmp_path, masks, tracks) == 1
    back_masks, back_tracks = read_ctc(tmp_path / "01_RES")
    np.testing.assert_array_equal(back_masks, masks)
    pd.testing.assert_frame_equal(back_tracks, tracks.reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize("missing", [[4], [4, 5]])
def test_gap_of_one_or_two_frames_is_closed(tmp_path, missing):
    T = 10
    frames = []
    for t in range(T):
        cs, rs = [(30.0, 10.0 + 8 * t)], [9]
        if t not in missing:
            cs.append((70.0, 20.0 + 3 * t))
            rs.append(10)
        frames.append(disks(cs, rs))
    masks, tracks = link_labels(scramble(frames))
    before, after = label_at(masks, 3, (70, 29)), label_at(masks, T - 1, (70, 20 + 3 * (T - 1)))
    assert before != after  # CTC: the label must be present from begin to end, so the gap
    row = tracks.set_index("label").loc[after]  # is closed by a parent link, not a shared label
    assert row.parent == before and row.begin == missing[-1] + 1
    assert tracks.set_index("label").loc[before].end == missing[0] - 1
    assert len(tracks) == 3  # the mover, the track before the gap and its continuation
    assert ctc_valid(tmp_path, masks, tracks) == 1


def test_gap_of_three_frames_is_not_closed():
    frames = [disks([(50.0, 20.0 + 3 * t)], [10]) if t not in (3, 4, 5) else np.zeros(SHAPE, np.int32)
              for t in range(10)]
    _, tracks = link_labels(frames)
    assert len(tracks) == 2 and (tracks.parent == 0).all()


def test_objects_passing_close_are_not_swapped():
    # two disks on parallel lanes 22 px apart (1.1 diameters) pass each other head-on
    T = 14
    traj = [np.array([[40.0, 10.0 + 8 * t], [62.0, 118.0 - 8 * t]]) for t in range(T)]
    masks, tracks = link_labels(scramble([disks(c, [10, 10]) for c in traj]))
    assert len(tracks) == 2 and (tracks.parent == 0).all()
    for k in range(2):
        assert len({label_at(masks, t, traj[t][k]) for t in range(T)}) == 1


def test_features_break_a_geometric_tie():
    # two identical disks move to two spots equally far from both: geometry alone is a
    # tie, their descriptors are not
    f0 = disks([(30.0, 40.0), (56.0, 40.0)], [9, 9])
    f1 = disks([(43.0, 30.0), (43.0, 50.0)], [9, 9])
    for swap in (False, True):
        feats = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [1.0, 0.0]] if swap else
                                                               [[1.0, 0.0], [0.0, 1.0]])]
        masks, tracks = link_labels([f0, f1], feats)
        assert len(tracks) == 2
        first = masks[1][43, 50] if swap else masks[1][43, 30]
        assert masks[0][30, 40] == first


def test_empty_frames_and_empty_movie():
    frames = [disks([(40.0, 40.0)], [10]), np.zeros(SHAPE, np.int32), disks([(40.0, 44.0)], [10])]
    masks, tracks = link_labels(frames)
    assert masks[1].max() == 0 and len(tracks) == 2 and tracks.parent.tolist() == [0, 1]
    masks, tracks = link_labels([np.zeros(SHAPE, np.int32)] * 3)
    assert masks.shape == (3, *SHAPE) and len(tracks) == 0


# ----------------------------------------------------------------------------- helpers
def test_object_features_match_ndimage_mean():
    lab = disks([(20.0, 30.0), (60.0, 90.0)], [9, 14])
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(3, SHAPE[0] // 2, SHAPE[1] // 2)).astype(np.float32)
    up = np.repeat(np.repeat(feats, 2, axis=1), 2, axis=2)  # nearest-neighbour at input size
    got = object_features(lab, feats)
    want = np.stack([ndi.mean(up[c], lab, [1, 2]) for c in range(3)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert object_features(lab, None) is None


def test_boxes_from_labels_are_exclusive_xyxy():
    lab = np.zeros((20, 30), np.int32)
    lab[2:5, 7:12] = 1
    np.testing.assert_array_equal(boxes_from_labels(lab), [[7, 2, 12, 5]])
    assert boxes_from_labels(np.zeros((5, 5), np.int32)) is None
    # capped: the objects closest to the median size, never a fragment or a merge
    lab = disks([(20, 20), (20, 60), (20, 100), (70, 20), (70, 60), (70, 100)], [2, 9, 10, 11, 10, 25])
    got = boxes_from_labels(lab, max_boxes=3)
    sides = got[:, 2] - got[:, 0]
    np.testing.assert_array_equal(np.sort(sides), [21, 21, 23])  # radii 10, 10, 11


def test_over_split_object_is_rejoined_not_divided():
    # a disk drifts; in frame 3 the segmentation cut it into two touching halves
    frames = []
    for t in range(6):
        lab = disks([(48.0, 30.0 + 4 * t)], [14])
        if t == 3:
            lab[:48][lab[:48] > 0] = 2
        frames.append(lab)
    masks, tracks = link_labels(scramble(frames))
    assert len(tracks) == 1 and tracks.iloc[0].tolist() == [1, 0, 5, 0]
    assert np.unique(masks[3][masks[3] > 0]).tolist() == [1]
    _, split = link_labels(scramble(frames), params=LinkParams(merge_fragments=False))
    assert len(split) == 2  # without rejoining, the lower half is a spurious new track


def test_linking_scales_to_a_frame_full_of_debris():
    # one frame with ~3000 one-pixel objects must not blow up memory or time
    rng = np.random.default_rng(0)
    debris = disks([(48.0, 60.0)], [12])
    yy, xx = rng.integers(0, SHAPE[0], 3000), rng.integers(0, SHAPE[1], 3000)
    free = debris[yy, xx] == 0
    debris[yy[free], xx[free]] = np.arange(2, 2 + free.sum())
    frames = [disks([(48.0, 56.0)], [12]), debris, disks([(48.0, 64.0)], [12])]
    masks, tracks = link_labels(frames)
    assert masks[0][48, 56] == masks[1][48, 60] == masks[2][48, 64]
    n1 = len(np.unique(masks[1])) - 1  # (debris touching the disk may be rejoined to it)
    assert n1 > 2500 and len(tracks) == n1 and (tracks.parent == 0).all()


class _DiskEngine:
    """A test engine: maps straight from a known label movie; records the exemplars it got."""

    name = "test"

    def __init__(self, truth):
        self.truth, self.calls = truth, []

    def match(self, image, boxes=None):
        t = len(self.calls)
        self.calls.append(None if boxes is None else np.array(boxes))
        lab = self.truth[t]
        fg = (lab > 0).astype(np.float32)
        dt = ndi.distance_transform_edt(lab > 0)
        centers = np.clip(dt / 10.0, 0, 1).astype(np.float32)
        return MatchMaps(foreground=fg, centers=centers, scale=20.0, image_shape=lab.shape,
                         engine="test", mode="exemplar" if boxes is not None else "automatic",
                         conditioning="test", features=image[None].astype(np.float32))


def test_track_frames_uses_previous_objects_as_exemplars():
    T = 5
    truth = [disks([(30.0, 20.0 + 6 * t), (70.0, 100.0 - 5 * t)], [10, 10]) for t in range(T)]
    frames = [(m > 0).astype(np.float32) for m in truth]
    eng = _DiskEngine(truth)
    seed = np.array([[10, 20, 30, 40]], np.float32)
    _, tracks, maps = track_frames(frames, eng, seed, keep_maps=True)
    np.testing.assert_array_equal(eng.calls[0], seed)
    for t in range(1, T):  # frame t is matched with frame t-1's objects' boxes
        prev = np.sort(boxes_from_labels(truth[t - 1]), axis=0)
        np.testing.assert_allclose(np.sort(eng.calls[t], axis=0), prev, atol=1)
    assert len(maps) == T and len(tracks) == 2 and (tracks.end == T - 1).all()
    _, _, none = track_frames(frames, _DiskEngine(truth), None)
    assert none is None



class _DriftingEngine(_DiskEngine):
    """Like _DiskEngine, but chained exemplars make the scale shrink by 20% a frame."""

    def __init__(self, truth, frames, seed):
        super().__init__(truth)
        self.frames, self.seed, self.log = frames, seed, []

    def match(self, image, boxes=None):
        t = next(i for i, f in enumerate(self.frames) if np.array_equal(f, image))
        seeded = boxes is None or np.array_equal(boxes, self.seed)
        self.log.append((t, seeded))
        self.calls = [None] * t  # _DiskEngine reads frame t's truth
        maps = super().match(image, boxes)
        maps.scale = 20.0 if seeded else 20.0 * 0.8 ** t
        return maps


def test_track_frames_goes_back_to_the_seed_when_the_scale_drifts():
    T = 5
    truth = [disks([(30.0, 20.0 + 6 * t), (70.0, 100.0 - 5 * t)], [10, 10]) for t in range(T)]
    frames = [(m > 0).astype(np.float32) for m in truth]
    seed = np.array([[10, 20, 30, 40]], np.float32)
    eng = _DriftingEngine(truth, frames, seed)
    _, tracks, _ = track_frames(frames, eng, seed)
    # 0.8 ** t leaves [1 / 1.3, 1.3] from t = 2 on: those frames are matched again with the seed
    assert SCALE_DRIFT == 1.3
    assert eng.log == [(0, True), (1, False)] + [x for t in range(2, T) for x in ((t, False), (t, True))]
    assert len(tracks) == 2 and (tracks.end == T - 1).all()


class _DriftingSizedEngine(_DriftingEngine):
    """A drifting engine that, like the classic one, can be told the object diameter."""

    takes_diameter = True

    def match(self, image, boxes=None, diameter=None):
        self.diameters = [*getattr(self, "diameters", []), diameter]
        maps = super().match(image, boxes)
        if diameter is not None:
            maps.scale = float(diameter)
        return maps


def test_a_drifting_chain_is_matched_again_at_frame_0s_object_size():
    """Not with the frame-0 boxes, which may by then hold background (a cell that moved away)."""
    from mm_core.heads.objects import object_diameter

    T = 5
    truth = [disks([(30.0, 20.0 + 6 * t), (70.0, 100.0 - 5 * t)], [10, 10]) for t in range(T)]
    frames = [(m > 0).astype(np.float32) for m in truth]
    seed = np.array([[10, 20, 30, 40]], np.float32)
    eng = _DriftingSizedEngine(truth, frames, seed)
    _, tracks, _ = track_frames(frames, eng, seed)
    d0 = object_diameter(truth[0])
    assert eng.diameters == [None, None] + [x for _ in range(2, T) for x in (None, pytest.approx(d0, rel=0.05))]
    assert [seeded for _, seeded in eng.log] == [True, False] + [False, True] * (T - 2)  # True: no boxes
    assert len(tracks) == 2 and (tracks.end == T - 1).all()


def test_a_box_on_a_cell_the_edge_cuts_does_not_derail_tracking(tmp_path):
    """Classic engine, a box on frame 0 around a disk half outside the image that then moves in:
    every frame keeps its disks (no frame taken as one object), tracks stay whole and valid."""
    from mm_core.engines.classic import ClassicEngine

    T, rng = 10, np.random.default_rng(0)
    centres = np.array([[20.0, 0.0], [20.0, 60.0], [20.0, 100.0], [60.0, 30.0], [60.0, 75.0], [75.0, 115.0]])
    truth = [disks(centres + [0.0, 5.0 * t], [11] * len(centres)) for t in range(T)]
    frames = [(0.2 + 0.6 * (m > 0) + rng.normal(0, 0.05, m.shape)).astype(np.float32) for m in truth]
    seed = np.array([[0, 9, 12, 32]], np.float32)  # the left half of a disk cut by the edge
    masks, tracks, _ = track_frames(frames, ClassicEngine(), seed)
    assert all((m > 0).mean() < 0.5 for m in masks)
    assert all(abs(len(np.unique(m[m > 0])) - len(np.unique(g[g > 0]))) <= 1 for m, g in zip(masks, truth))
    assert len(tracks) <= len(centres) + 2
    assert ctc_valid(tmp_path, masks, tracks) == 1


# ----------------------------------------------------------------------------- real data
def _gt_subset(gt_dir, n, dst):
    (dst / "TRA").mkdir(parents=True)
    tr = pd.read_csv(gt_dir / "TRA" / "man_track.txt", sep=r"\s+", header=None, names=TRACK_COLUMNS)
    tr = tr[tr.begin < n].copy()
    tr["end"] = tr["end"].clip(upper=n - 1)
    tr.to_csv(dst / "TRA" / "man_track.txt", sep=" ", header=False, index=False)
    for t in range(n):
        (dst / "TRA" / f"man_track{t:03d}.tif").symlink_to(gt_dir / "TRA" / f"man_track{t:03d}.tif")
    return dst


def test_linking_real_gt_masks(shared_data, tmp_path):
    """Fluo-N2DH-SIM+ 01, frames 0-15 (3 divisions), labels scrambled: linking alone."""
    import tifffile

    from mm_core.evaluation.metrics import ctc_scores

    gt_dir = shared_data / "track" / "Fluo-N2DH-SIM+" / "01_GT"
    if not gt_dir.is_dir():
        pytest.skip("Fluo-N2DH-SIM+ not in the shared data")
    n = 16
    gts = [tifffile.imread(gt_dir / "TRA" / f"man_track{t:03d}.tif") for t in range(n)]
    masks, tracks = link_labels(scramble(gts, seed=3))
    res = write_ctc(tmp_path / "01_RES", masks, tracks)
    s = ctc_scores(_gt_subset(gt_dir, n, tmp_path / "01_GT"), res, metrics=("TRA", "DET", "LNK"))
    assert s["valid"] == 1
    assert s["DET"] == pytest.approx(1.0)
    assert s["TRA"] >= 0.99 and s["LNK"] >= 0.98  # measured: 1.000 / 1.000
    assert (tracks.parent > 0).sum() >= 6  # frames 10-15 hold 3 divisions in the ground truth


# ----------------------------------------------------------------------------- end to end
def test_track_end_to_end_classic_engine():
    """mm_core.track on a small synthetic movie (bright noisy blobs) with the classic engine."""
    pytest.importorskip("mm_core.engines.classic")
    import mm_core

    T, shape = 6, (128, 128)
    rng = np.random.default_rng(0)
    starts = np.array([[30.0, 25.0], [90.0, 30.0], [60.0, 95.0]])
    vel = np.array([[1.0, 3.0], [-1.5, 2.0], [1.0, -2.5]])
    frames = []
    for t in range(T):
        lab = disks(starts + t * vel, [11, 12, 10], shape)
        img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.5) * 200 + 50
        frames.append((img + rng.normal(0, 6, shape)).astype(np.float32))
    res = mm_core.track(frames, engine="classic")
    assert res.masks.shape == (T, *shape)
    assert res.n_tracks == 3 and (res.tracks.begin == 0).all() and (res.tracks.end == T - 1).all()
    for k in range(3):
        ids = {label_at(res.masks, t, starts[k] + t * vel[k]) for t in range(T)}
        assert len(ids) == 1 and 0 not in ids
