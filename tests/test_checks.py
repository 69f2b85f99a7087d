"""Self-checks of results (mm_core.checks) and the one whole-number count (pipelines)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import disk_labels
from scipy import ndimage as ndi

from mm_core import checks
from mm_core.engines.base import MatchMaps
from mm_core.pipelines import count_from_density


def _maps(fg: np.ndarray, scale: float, mode: str = "automatic") -> MatchMaps:
    return MatchMaps(foreground=fg.astype(np.float32), centers=fg.astype(np.float32), scale=scale,
                     image_shape=fg.shape, engine="classic", mode=mode, conditioning="")


def _disks(shape=(200, 200), r=8, step=40) -> np.ndarray:
    centres = [(y, x) for y in range(step // 2, shape[0], step) for x in range(step // 2, shape[1], step)]
    return disk_labels(shape, r, centres)


def test_good_segmentation_has_no_warning():
    lab = _disks()
    assert checks.check_segmentation(lab, _maps(lab > 0, 17.0)) == []


def test_tiled_image_warns_with_a_suggestion():
    lab = np.arange(1, 401, dtype=np.int32).reshape(20, 20).repeat(10, 0).repeat(10, 1)  # the image tiled
    warns = checks.check_segmentation(lab, _maps(np.ones(lab.shape), 12.0))
    assert any("cover 100%" in w for w in warns)
    assert all("Try: draw a box around one typical object." in w for w in warns)
    # In exemplar mode with one box the suggestion is a second box.
    warns = checks.check_segmentation(lab, _maps(np.ones(lab.shape), 12.0, "exemplar"), n_boxes=1)
    assert all("add a second box" in w for w in warns)


def test_fragments_and_scale_mismatch_and_weak_match_warn():
    lab = _disks(r=2, step=10)  # tiny objects for a 20-px object size
    warns = " ".join(checks.check_segmentation(lab, _maps(lab > 0, 20.0)))
    assert "far smaller" in warns and "fragments" in warns
    weak = checks.check_segmentation(_disks(), _maps(np.zeros((200, 200)), 17.0))
    assert any("match map is weak" in w for w in weak)
    assert checks.check_segmentation(np.zeros((50, 50), int), _maps(np.zeros((50, 50)), 10.0))[0].startswith(
        "No objects")


def test_ragged_outlines_warn():
    rng = np.random.default_rng(0)
    lab = _disks(r=12)
    ragged = lab * (rng.random(lab.shape) > 0.35)  # holes and bites everywhere
    assert any("ragged" in w for w in checks.check_segmentation(ragged, _maps(lab > 0, 24.0)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_equals_sum_of_centres_and_density(seed):
    rng = np.random.default_rng(seed)
    dens = np.zeros((120, 150))
    pts = rng.integers(5, 115, size=(12, 2))
    np.add.at(dens, (pts[:, 0], pts[:, 1]), rng.uniform(0.6, 2.6, len(pts)))
    dens[100:110, 130:140] += 1.3 / 100  # mass with no centre near it
    dens = ndi.gaussian_filter(dens, 2.0)
    count, table = count_from_density(dens, pts[:8], scale=10.0)
    assert count == int(np.floor(dens.sum() + 0.5))
    assert int(table["n"].sum()) == count and (table["n"] >= 1).all()
    assert set(table.columns) == {"x", "y", "n"}
    # the centre-less patch got a centre of its own
    assert ((table["y"].between(95, 115)) & (table["x"].between(125, 145))).any()


def test_count_of_empty_density_is_zero():
    count, table = count_from_density(np.zeros((30, 30)), np.zeros((0, 2)), 8.0)
    assert count == 0 and len(table) == 0


def test_count_result_is_whole_and_consistent():
    from mm_core.engines.classic import ClassicEngine
    from mm_core.heads.counting import DensityHead
    from mm_core.pipelines import run_count

    classic_engine = ClassicEngine()
    rng = np.random.default_rng(3)
    img = np.zeros((160, 160), np.float32)
    lab = _disks((160, 160), r=6, step=20)
    img[lab > 0] = 1.0
    img = ndi.gaussian_filter(img, 1.0) + rng.normal(0, 0.02, img.shape)
    res = run_count(classic_engine, DensityHead(), img)
    assert isinstance(res.count, int) and res.count == int(res.points["n"].sum())
    assert abs(float(res.density.sum()) - res.count) < 1e-3 * max(res.count, 1)


def _tracks(n: int, one_frame: int) -> pd.DataFrame:
    rows = [(i + 1, 0, 9, 0) for i in range(n - one_frame)]
    rows += [(n - one_frame + i + 1, i % 10, i % 10, 0) for i in range(one_frame)]
    return pd.DataFrame(rows, columns=["label", "begin", "end", "parent"])


def test_track_checks():
    masks = np.zeros((10, 40, 40), np.int32)
    for t in range(10):
        masks[t, 2:6, 2:6], masks[t, 20:24, 20:24] = 1, 2
    assert checks.check_tracks(masks, _tracks(2, 0)) == []
    warns = checks.check_tracks(masks, _tracks(12, 10))
    assert any("single frame" in w for w in warns) and any("identities" in w for w in warns)
    div = pd.DataFrame([(1, 0, 4, 0), (2, 5, 9, 1), (3, 5, 9, 1), (4, 0, 4, 0), (5, 5, 9, 4), (6, 5, 9, 4),
                        (7, 0, 4, 0), (8, 5, 9, 7), (9, 5, 9, 7)], columns=["label", "begin", "end", "parent"])
    assert any("divisions" in w for w in checks.check_tracks(masks, div))


def test_cli_prints_each_warning_on_its_own_line(tmp_path, capsys):
    from PIL import Image

    from mm_core.cli import main

    noise = ndi.gaussian_filter(np.random.default_rng(0).random((256, 256)), 1.5)
    noise = ((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    assert main(["count", str(tmp_path / "noise.png"), "--out", str(tmp_path / "out"), "--engine", "classic"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: noise.png: ")]
    assert len(lines) >= 1 and all("Try:" in ln for ln in lines)
    pts = pd.read_csv(tmp_path / "out" / "noise_points.csv")
    counts = pd.read_csv(tmp_path / "out" / "counts.csv")
    assert int(pts["n"].sum()) == int(counts["count"].iloc[0])


# ---- issue 20: identical or near-identical frames ----------------------------------------------
def test_five_copies_of_one_frame_give_one_track_per_object_and_no_division():
    from pathlib import Path

    from mm_core.io import read_image
    from mm_core.models import Matcher

    example = Path(__file__).resolve().parents[1] / "examples" / "real_nuclei_fluorescence.tif"
    frame = read_image(example).data[:256, :256]
    res = Matcher(engine="classic").track([frame] * 5)
    per_frame = [len(np.unique(m[m > 0])) for m in res.masks]
    assert per_frame == [per_frame[0]] * 5 and per_frame[0] > 10
    assert res.n_tracks == per_frame[0] and res.n_divisions == 0
    assert not any("hardly differ" in w for w in res.warnings)


def test_new_tracks_where_the_frames_do_not_change_are_warned_about():
    import pandas as pd

    from mm_core.checks import STILL_CHANGE, check_tracks, frame_change

    rng = np.random.default_rng(0)
    frame = rng.random((64, 64)).astype(np.float32)
    assert frame_change(frame, frame) == 0.0
    assert frame_change(frame, frame + 0.001 * rng.standard_normal(frame.shape)) < STILL_CHANGE
    assert frame_change(frame, rng.random((64, 64))) > STILL_CHANGE
    masks = np.zeros((3, 64, 64), np.int32)
    masks[:, 5:15, 5:15] = 1
    masks[1:, 30:40, 30:40] = 2
    masks[2, 30:35, 30:40], masks[2, 35:40, 30:40] = 3, 4
    tracks = pd.DataFrame({"label": [1, 2, 3, 4], "begin": [0, 1, 2, 2], "end": [2, 1, 2, 2],
                           "parent": [0, 0, 2, 2]})
    moving = check_tracks(masks, tracks, still=[False, False, False])
    assert not any("hardly differ" in w for w in moving)
    still = check_tracks(masks, tracks, still=[False, True, True])
    assert any("1 new tracks and 1 divisions begin at frames that hardly differ" in w for w in still)
# --------------------------------------------------------------------------- boxes (issue 23)
def _cells_with_nuclei(seed=0):
    """Nine cells (r 25) with bright nuclei (r 7) on a dark background."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    img = np.full((256, 256), 50.0)
    for i in range(3):
        for j in range(3):
            c = (40 + 70 * i + rng.integers(-5, 5), 40 + 70 * j + rng.integers(-5, 5))
            rr, cc = disk(c, 25, shape=img.shape)
            img[rr, cc] = 120
            rr, cc = disk(c, 7, shape=img.shape)
            img[rr, cc] = 255
    return img + rng.normal(0, 5, img.shape)


def _texture_and_objects(seed=1):
    """Eight bright disks on the left; a smooth sinusoidal texture (background) on the right."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    img = np.full((200, 200), 40.0)
    for i in range(4):
        for j in range(2):
            rr, cc = disk((25 + 50 * i, 25 + 50 * j), 9, shape=img.shape)
            img[rr, cc] = 200
    yy, xx = np.mgrid[:200, :200]
    img[:, 110:] += 30 * np.sin(xx[:, 110:] / 6.0) * np.cos(yy[:, 110:] / 7.0)
    return img + rng.normal(0, 4, img.shape)


def test_matches_that_do_not_resemble_the_box_warn():
    lab = _disks(r=4, step=20)  # objects 9 px across
    box = np.array([[0, 0, 40, 40]])  # a box drawn around something 40 px across
    warns = checks.check_segmentation(lab, _maps(lab > 0, 9.0, "exemplar"), boxes=box)
    assert any("do not resemble the box" in w and "far smaller" in w for w in warns)
    fitting = np.array([[5, 5, 15, 15]])
    assert not any("resemble" in w for w in checks.check_segmentation(lab, _maps(lab > 0, 9.0, "exemplar"),
                                                                      boxes=fitting))


def test_box_on_background_warns_end_to_end():
    from mm_core import Matcher

    img, m = _texture_and_objects(), Matcher(engine="classic")
    on_bg = m.segment(img, boxes=[[150, 150, 160, 160]])
    assert any("matched nothing" in w for w in on_bg.warnings)
    assert any("matched nothing" in w for w in m.count(img, boxes=[[150, 150, 160, 160]]).warnings)
    on_object = m.segment(img, boxes=[[16, 16, 35, 35]])
    assert on_object.n_objects >= 8 and on_object.warnings == []


def test_analytic_exemplar_head_picks_one_kind_among_two():
    """A box on one of 8 bright disks beside a textured half: the analytic head keeps the 8 disks.
    (The default CellMatch model does not pick one kind among several: docs/quality.md.)"""
    from mm_core import Matcher

    img = _texture_and_objects()
    on_object = Matcher(engine="classic", head="analytic").segment(img, boxes=[[16, 16, 35, 35]])
    assert on_object.n_objects == 8 and on_object.warnings == []


def test_count_far_from_the_objects_seen_warns():
    fg = np.zeros((200, 200), bool)
    fg[:100, :100] = True  # room for about 20 objects of a 20 x 20 box (ellipse area 314)
    maps = _maps(fg, 20.0, "exemplar")
    box = np.array([[0, 0, 20, 20]])
    far = checks.check_count(60, 60, maps, boxes=box)
    assert any("far from the objects seen" in w and "about 32" in w for w in far)
    assert any("fewer were counted" in w for w in checks.check_count(12, 12, maps, boxes=box))
    assert not any("objects seen" in w for w in checks.check_count(40, 40, maps, boxes=box))


def test_count_warning_names_the_centres_the_table_holds():
    from mm_core import Matcher

    res = Matcher(engine="classic").count(_cells_with_nuclei(), boxes=[[215, 100, 250, 135]])
    said = [w for w in res.warnings if "object centres were found" in w]
    assert said and said[0].startswith(f"Only {len(res.points)} object centres")
