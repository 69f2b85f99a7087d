"""The paper's three inference paths end to end on tiny random-weight SD parts (issue 22).

The SD parts are tiny (:mod:`mm_core.heads.authors.testing`, loaded through the engine's
own ``from_pretrained``); the heads are the real modules (LOCA with ResNet-50 and the
counting head at full size, the ViT and the tracker with fewer blocks). Random weights:
these tests check that every path runs and is wired as described, not what it finds.
On a 2-core CPU LOCA's ResNet-50 at 512 and the ViT-L tiles cost seconds each, so the
fast set runs each path once (segmentation up to the regressor feature) and the full
runs in both modes are ``slow`` (``pytest -m slow tests/test_authors_inference.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mm_core.heads.authors.flows import compute_masks, masks_to_flows
from mm_core.heads.authors.links import candidate_edges, greedy_links, links_to_ctc


# ---------------------------------------------------------------------- pure parts
def _disks():
    from skimage.draw import disk, ellipse

    lab = np.zeros((96, 96), np.int32)
    for i, (c, r) in enumerate([((20, 20), 9), ((20, 40), 9), ((65, 65), 16), ((75, 20), 7)], 1):
        lab[disk(c, r, shape=lab.shape)] = i
    lab[ellipse(48, 28, 5, 14, shape=lab.shape)] = 5
    return lab


def test_flows_to_masks_recovers_known_objects():
    lab = _disks()
    flows = 5 * masks_to_flows(lab)  # what a perfect network would output
    got = compute_masks(flows, np.where(lab > 0, 4.0, -4.0), min_size=15)
    assert got.max() == lab.max()
    for i in range(1, lab.max() + 1):  # each object found once, nearly exactly
        vals, counts = np.unique(got[lab == i], return_counts=True)
        assert vals[np.argmax(counts)] > 0 and counts.max() >= 0.95 * (lab == i).sum()


def test_flows_pointing_outward_are_rejected():
    lab = _disks()
    flows = 5 * masks_to_flows(lab)
    flows[:, lab == 3] *= -1  # object 3's flows point away from its centre
    got = compute_masks(flows, np.where(lab > 0, 4.0, -4.0))
    assert got[lab == 3].max() == 0 or np.mean(got[lab == 3] > 0) < 0.5
    assert (got[lab == 1] > 0).mean() > 0.95


def test_greedy_linking_with_a_division_and_ctc_table():
    labels = [np.array([[1, 0, 2]]), np.array([[1, 3, 2]]), np.array([[1, 2, 3]])]
    cent = {(0, 1): (0, 0), (0, 2): (0, 2), (1, 1): (0, 0), (1, 2): (0, 2), (1, 3): (0, 1),
            (2, 1): (0, 0), (2, 2): (0, 1), (2, 3): (0, 2)}
    scores = {((0, 1), (1, 1)): 0.9, ((0, 1), (1, 3)): 0.8, ((0, 2), (1, 2)): 0.4,  # below threshold
              ((1, 1), (2, 1)): 0.95, ((1, 3), (2, 2)): 0.9, ((1, 2), (2, 3)): 0.7, ((1, 1), (2, 3)): 0.6}
    links = greedy_links(candidate_edges(scores, cent), threshold=0.5)
    assert ((0, 2), (1, 2)) not in links and ((1, 1), (2, 3)) not in links  # (2, 3) already has a parent
    masks, tracks = links_to_ctc(labels, links)
    t = tracks.set_index("label")
    a = masks[0, 0, 0]
    daughters = t[t["parent"] == a]
    assert len(daughters) == 2 and t.loc[a, "end"] == 0  # frame-0 cell 1 divides
    assert masks[1, 0, 2] == masks[2, 0, 2]  # cell 2 (re-linked at t=1->2) keeps its track
    assert set(np.unique(masks)) - {0} == set(tracks["label"])


def test_region_features_and_boxes():
    from mm_core.heads.authors.track import boxes_of, region_features

    lab = _disks()
    ids, boxes = boxes_of(lab)
    assert list(ids) == [1, 2, 3, 4, 5] and boxes.shape == (5, 4)
    cents, feats = region_features(lab, np.ones(lab.shape, np.float32))
    assert cents.shape == (5, 2) and feats.shape == (5, 7)
    assert np.allclose(feats[:, 1], 1.0) and (feats[:, 6] <= 1).all()


# ---------------------------------------------------------------------- tiny SD end to end
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from mm_core.engines.ldm import LDMEngine
    from mm_core.heads.authors.testing import TINY_SD_SIZE, save_authors_tiny_pipeline

    folder = save_authors_tiny_pipeline(tmp_path_factory.mktemp("authors-sd") / "sd")
    eng = LDMEngine.from_pretrained(folder, size=TINY_SD_SIZE)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def image():
    from skimage.draw import disk

    rng = np.random.default_rng(0)
    img = rng.normal(0.1, 0.02, (90, 110)).astype(np.float32)
    for c in [(20, 20), (20, 60), (60, 30), (60, 85)]:
        img[disk(c, 9, shape=img.shape)] += 0.8
    return img


BOXES = np.array([[11, 11, 30, 30]], np.float32)


def _head(kind, **kw):
    from mm_core.heads.authors.count import AuthorsCountHead
    from mm_core.heads.authors.layout import build
    from mm_core.heads.authors.segment import AuthorsSegmentHead
    from mm_core.heads.authors.testing import TINY_SD_SIZE
    from mm_core.heads.authors.track import AuthorsTrackHead

    torch.manual_seed(1)
    cls = {"seg": AuthorsSegmentHead, "cnt": AuthorsCountHead, "tra": AuthorsTrackHead}[kind]
    return cls(build(kind, vit_depth=1, tracker_layers=1), sd_size=TINY_SD_SIZE, **kw)


@pytest.fixture(scope="module")
def count_head():
    return _head("cnt")


@pytest.mark.parametrize("boxes", [None, pytest.param(BOXES, marks=pytest.mark.slow)],
                         ids=["automatic", "exemplar"])
def test_count_end_to_end_through_the_matcher(engine, image, count_head, boxes):
    from mm_core.models import Matcher

    m = Matcher(engine=engine, head={"count": count_head})
    calls = engine.unet_calls
    res = m.count(image, boxes)
    assert engine.unet_calls == calls + 1  # one UNet pass
    assert res.maps.mode == ("automatic" if boxes is None else "exemplar")
    assert res.density.shape == image.shape
    assert res.count == int(res.points["n"].sum())
    assert abs(float(res.density.sum()) - res.count) < 1e-2 * max(1, res.count)
    raw = res.maps.info["authors"]["count512"]  # the head's own count: the 512 density's sum
    assert res.count == int(np.floor(max(raw, 0) + 0.5)) or raw < 0
    assert "paper's counting head" in res.head_note


@pytest.mark.slow
def test_count_is_deterministic_unless_unseeded(engine, image, count_head):
    a = count_head.match(engine, image, BOXES).info["authors"]["density512"]
    b = count_head.match(engine, image, BOXES).info["authors"]["density512"]
    assert np.array_equal(a, b)
    other = _head("cnt", seed=5)
    other.module.load_state_dict(count_head.module.state_dict())
    c = other.match(engine, image, BOXES).info["authors"]["density512"]
    assert not np.allclose(a, c)  # the seed reaches the pass
    loose = _head("cnt", seeded=False)
    loose.module.load_state_dict(count_head.module.state_dict())
    d1 = loose.match(engine, image, BOXES).info["authors"]["density512"]
    d2 = loose.match(engine, image, BOXES).info["authors"]["density512"]
    assert not np.array_equal(d1, d2)


def test_exemplar_embedding_reaches_the_unet(engine, image, count_head):
    sd = count_head.sd(engine)
    x01 = sd.prepare(image)
    _, emb = count_head.exemplar(sd, x01, sd.boxes512(BOXES, image.shape))
    assert emb.shape == (1, 768)
    lat = sd.latents(x01)
    plain = sd.run(lat, sd.text("count"))
    with_ex = sd.run(lat, count_head.overwrite(sd.text("count"), 2, emb))
    assert not torch.allclose(plain.cross[2], with_ex.cross[2])
    assert plain.unet.shape == (1, 320, 64, 64) and plain.cross.shape[-2:] == (64, 64)


@pytest.fixture(scope="module")
def seg_head():
    return _head("seg")


@pytest.mark.slow
def test_segment_exemplar_end_to_end_through_the_matcher(engine, image, seg_head):
    from mm_core.models import Matcher

    res = Matcher(engine=engine, head={"segment": seg_head}).segment(image, BOXES)
    assert res.labels.shape == image.shape and res.labels.dtype == np.int32
    ids = np.unique(res.labels)
    assert ids[0] == 0 and (np.diff(ids) == 1).all()  # 1..N without gaps
    assert res.maps.mode == "exemplar" and "paper's segmentation head" in res.head_note


def test_segment_automatic_maps(engine, image, seg_head):
    auto = seg_head.match(engine, image, None)
    ex = seg_head.match(engine, image, BOXES)
    assert auto.mode == "automatic" and auto.info["authors"]["feature"].shape == (1, 3, 512, 512)
    assert not torch.allclose(auto.info["authors"]["feature"], ex.info["authors"]["feature"])


@pytest.mark.slow
def test_segment_automatic_end_to_end(engine, image, seg_head):
    from mm_core.models import Matcher

    res = Matcher(engine=engine, head={"segment": seg_head}).segment(image)
    assert res.labels.shape == image.shape and res.maps.mode == "automatic"


def _fake_segmentation(monkeypatch):
    """Known objects instead of the (random-weight) ViT's: two cells, one moving right."""
    from mm_core.heads.authors import track

    calls = {"n": 0}

    def fake(vit, frame, feature, shape, replicate_grey=False):
        t = calls["n"]
        calls["n"] += 1
        lab = np.zeros(shape, np.int32)
        lab[10:25, 10 + 3 * t:25 + 3 * t] = 1
        lab[50:70, 60:80] = 2
        return lab, lab
    monkeypatch.setattr(track, "segment_labels", fake)


@pytest.mark.parametrize("boxes", [None, pytest.param(BOXES, marks=pytest.mark.slow)],
                         ids=["automatic", "exemplar"])
def test_track_path_with_known_objects(engine, image, monkeypatch, boxes):
    from mm_core.heads.authors.common import AuthorsHead
    from mm_core.models import Matcher

    _fake_segmentation(monkeypatch)
    emb = torch.nn.functional.normalize(torch.randn(80, 768, generator=torch.Generator().manual_seed(0)), dim=1)

    def light_exemplar(self, sd, x01, b, per_box=False, encoded=None):  # LOCA's ResNet-50 costs seconds
        return None, (emb[:len(b)] if per_box else emb[:1])
    monkeypatch.setattr(AuthorsHead, "exemplar", light_exemplar)
    monkeypatch.setattr(AuthorsHead, "encode", lambda self, sd, x01: None)
    head = _head("tra")
    frames = [image, np.roll(image, 3, 1)] + ([np.roll(image, 6, 1)] if boxes is not None else [])
    res = Matcher(engine=engine, head={"segment": head, "track": head}).track(frames, boxes)
    assert res.masks.shape == (len(frames),) + image.shape
    assert isinstance(res.tracks, pd.DataFrame) and list(res.tracks.columns) == ["label", "begin", "end", "parent"]
    assert set(np.unique(res.masks)) - {0} == set(res.tracks["label"])
    assert (res.tracks["begin"] <= res.tracks["end"]).all()


@pytest.mark.slow
def test_track_end_to_end_real_modules(engine, image):
    from mm_core.models import Matcher

    head = _head("tra")
    frames = [image, np.roll(image, 3, 1)]
    res = Matcher(engine=engine, head={"segment": head, "track": head}).track(frames)
    assert res.masks.shape == (2,) + image.shape
