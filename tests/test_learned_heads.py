"""Learned heads: shapes, a few training steps lower the loss, checkpoints round-trip,
engine mismatch is refused, linking and the exemplar objective behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import disk_labels
from scipy import ndimage as ndi

from mm_core.engines.base import MatchMaps
from mm_core.errors import InputError
from mm_core.heads.learned import (
    CountingHead,
    LinkingHead,
    SegmentationHead,
    exemplar_attention_loss,
    links_from_probabilities,
    load_head,
)
from mm_core.heads.learned.inputs import gather_inputs, sample_inputs
from mm_core.heads.learned.segmentation import seg_targets
from mm_core.heads.learned.tracking import tracks_from_links

pytestmark = pytest.mark.usefixtures("torch_one_thread")


TINY = {"stem": 8, "dim": 16, "depth": 2, "heads": 2, "tile": 64, "tile_overlap": 8}


def disks(shape=(64, 64), centres=((16, 16), (16, 40), (44, 28), (46, 50)), r=7):
    """Instance labels of disks (two of them touching) and a blurred image of them."""
    lab = disk_labels(shape, r, centres)
    img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.0)
    return lab, img


def fake_maps(img: np.ndarray, lab: np.ndarray, engine="classic", n_features=5, scale=14.0) -> MatchMaps:
    """Maps at half resolution, as an engine would return them."""
    fg = ndi.zoom(img, 0.5, order=1)
    ce = ndi.zoom(ndi.distance_transform_edt(lab > 0).astype(np.float32) / 7, 0.5, order=1)
    rng = np.random.default_rng(0)
    feats = np.stack([ndi.gaussian_filter(fg, s) for s in range(1, n_features + 1)]) + \
        0.01 * rng.standard_normal((n_features, *fg.shape)).astype(np.float32)
    return MatchMaps(foreground=fg.astype(np.float32), centers=np.clip(ce, 0, 1).astype(np.float32), scale=scale,
                     image_shape=img.shape, engine=engine, mode="automatic", conditioning="test",
                     features=feats.astype(np.float32) if n_features else None)


def test_inputs_resample_maps_onto_the_working_grid():
    lab, img = disks()
    inp = gather_inputs(fake_maps(img, lab), img)
    assert inp.base.shape == (3, 64, 64) and inp.n_features == 5
    base, feats = sample_inputs(inp, (0, 0, 64, 64), (64, 64))
    assert feats.shape == (5, 64, 64)
    np.testing.assert_allclose(base[0].numpy(), np.clip(img, -1, 3), atol=1e-5)  # identity region = image
    base2, feats2 = sample_inputs(inp, (0, 0, 32, 32), (64, 64))  # 2x zoom on the top-left quarter
    assert base2.shape == (3, 64, 64) and feats2.shape == (5, 64, 64)
    assert abs(float(base2[0].mean()) - float(img[:32, :32].mean())) < 0.02


@pytest.mark.parametrize("n_features", [0, 5])
def test_forward_shapes(n_features):
    torch.manual_seed(0)
    feats = torch.randn(2, n_features, 40, 56) if n_features else None
    base = torch.randn(2, 3, 40, 56)
    seg = SegmentationHead("classic", n_features, **TINY)
    assert seg(base, feats).shape == (2, 3, 40, 56)
    cnt = CountingHead("classic", n_features, stem=8, width=16)
    assert cnt(base, feats).shape == (2, 1, 40, 56)
    gated = CountingHead("classic", n_features, stem=8, width=16, fg_gate=True)
    far = base.clone()
    far[:, 1] = 0.0  # no foreground anywhere: the gated density is zero
    assert gated(base, feats).shape == (2, 1, 40, 56) and float(gated(far, feats).abs().max()) == 0.0


def test_predict_outputs_at_input_resolution():
    lab, img = disks((72, 90))
    maps = fake_maps(img, lab)
    torch.manual_seed(0)
    labels = SegmentationHead("classic", 5, **TINY).predict(maps, img)
    assert labels.shape == img.shape and labels.dtype == np.int32
    density, points = CountingHead("classic", 5, stem=8, width=16, tile=64).predict(maps, img)
    assert density.shape == img.shape and density.min() >= 0
    assert points.ndim == 2 and points.shape[1] == 2


def test_seg_targets_split_touching_objects():
    lab, _ = disks(centres=((20, 14), (20, 27)), r=7)  # overlapping disks: the second overwrites
    t = seg_targets(lab)
    assert t.shape == (3, 64, 64)
    assert set(np.unique(t[0])) == {0.0, 1.0}
    assert t[1].max() == pytest.approx(1.0) and t[1][lab == 0].max() == 0
    assert t[2][20, 20:22].max() == 1.0  # the contact line is boundary
    for k in (1, 2):  # every object's distance peaks at 1
        assert t[1][lab == k].max() == pytest.approx(1.0)


def _train(head, batch, steps=25, lr=3e-3):
    torch.manual_seed(0)
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    head.train()
    losses = []
    for _ in range(steps):
        loss = head.loss(head(*batch[:-1]), batch[-1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def test_segmentation_head_learns_on_a_tiny_batch():
    lab, img = disks()
    inp = gather_inputs(fake_maps(img, lab), img)
    base, feats = sample_inputs(inp, (0, 0, 64, 64), (64, 64))
    target = torch.as_tensor(seg_targets(lab))
    torch.manual_seed(0)
    head = SegmentationHead("classic", 5, **TINY)
    losses = _train(head, (base[None], feats[None], target[None]))
    assert losses[-1] < 0.6 * losses[0]


def test_counting_head_learns_on_a_tiny_batch():
    lab, img = disks()
    inp = gather_inputs(fake_maps(img, lab), img)
    base, feats = sample_inputs(inp, (0, 0, 64, 64), (64, 64))
    torch.manual_seed(0)
    head = CountingHead("classic", 5, stem=8, width=16)
    pts = np.array([[16, 16], [16, 40], [44, 28], [46, 50]], float)
    target = torch.as_tensor(head.targets(pts, (64, 64)))
    assert float(target.sum()) == pytest.approx(4 * head.config["density_scale"], rel=1e-3)
    losses = _train(head, (base[None], feats[None], target[None]), steps=30)
    assert losses[-1] < 0.6 * losses[0]


def test_checkpoint_round_trip_and_engine_refusal(tmp_path):
    lab, img = disks()
    maps = fake_maps(img, lab)
    torch.manual_seed(1)
    for head in (SegmentationHead("classic", 5, **TINY), CountingHead("classic", 5, stem=8, width=16)):
        folder = head.save_pretrained(tmp_path / head.head_type)
        assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
        back = load_head(folder)
        assert type(back) is type(head) and back.config["engine"] == "classic"
        base, feats = sample_inputs(gather_inputs(maps, img), (0, 0, 64, 64), (64, 64))
        with torch.no_grad():
            torch.testing.assert_close(head.eval()(base[None], feats[None]), back(base[None], feats[None]),
                                       rtol=0, atol=0)
        a, b = head.predict(maps, img), back.predict(maps, img)
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            np.testing.assert_array_equal(x, y)
        with pytest.raises(InputError, match="trained on the classic engine"):
            load_head(folder, engine="ldm")
        with pytest.raises(InputError, match="--engine classic"):
            back.predict(fake_maps(img, lab, engine="ldm"), img)
        with pytest.raises(InputError, match="feature channels"):
            back.predict(fake_maps(img, lab, n_features=3), img)


def test_load_head_refuses_bad_checkpoints(tmp_path):
    from mm_core.errors import ModelUnavailableError

    with pytest.raises(InputError, match="no head checkpoint"):
        load_head(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="config.json"):
        load_head(tmp_path / "empty")
    head = SegmentationHead("classic", 0, **TINY)
    folder = head.save_pretrained(tmp_path / "bad")
    other = SegmentationHead("classic", 0, **{**TINY, "dim": 8})
    other.save_pretrained(tmp_path / "other")
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match="do not fit"):
        load_head(folder)


# ----------------------------------------------------------------------------- linking
def test_links_from_probabilities_greedy_and_optimal_with_division():
    # parents 0, 1, 2; children 0..3: 0<-0, 1<-1, 2<-1 (division), 3 new; parent 2 disappears
    prob = np.array([[0.90, 0.05, 0.05, 0.1],
                     [0.05, 0.80, 0.70, 0.1],
                     [0.02, 0.05, 0.05, 0.1],
                     [0.03, 0.10, 0.20, 0.7]])
    for method in ("greedy", "optimal"):
        links, divs = links_from_probabilities(prob, 0.5, method)
        assert links == {0: 0} and divs == {1: (1, 2)}, method
    with pytest.raises(ValueError):
        links_from_probabilities(prob, 0.5, "nope")


def test_tracks_from_links_writes_ctc_table():
    a = np.array([[1, 0, 2]])
    b = np.array([[1, 3, 2]])
    c = np.array([[1, 0, 0]])
    masks, table = tracks_from_links([a, b, c], [({0: 0}, {1: (1, 2)}), ({0: 0}, {})])
    assert masks.shape == (3, 1, 3)
    rows = {tuple(r) for r in table.to_numpy()}
    assert rows == {(1, 0, 2, 0), (2, 0, 0, 0), (3, 1, 1, 2), (4, 1, 1, 2)}
    assert masks[1, 0, 1] in (3, 4) and masks[1, 0, 2] in (3, 4) and masks[2, 0, 0] == 1


def _moving_pair(shift=3):
    la, img_a = disks()
    lb, img_b = disks(centres=((16 + shift, 16), (16, 40 + shift), (44, 28), (46 - shift, 50)))
    return la, lb, img_a, img_b


def test_linking_head_learns_and_links():
    la, lb, ia, ib = _moving_pair()
    ma, mb = fake_maps(ia, la), fake_maps(ib, lb)
    torch.manual_seed(0)
    head = LinkingHead("classic", 5, dim=16, heads=2)
    tok = head.tokens(la, lb, ma, mb, ia, ib)
    assert tok[0].shape == (4, 2, 16, 16) and tok[4].shape == (4, 4, 5)
    target = torch.arange(4)
    assert head(*tok).shape == (4, 5)
    losses = _train(head, (*tok, target), steps=40, lr=5e-3)
    assert losses[-1] < 0.5 * losses[0]
    p = head.probabilities(la, lb, ma, mb, ia, ib)
    assert p.shape == (5, 4) and np.allclose(p.sum(0), 1, atol=1e-5)
    masks, table = head.link([la, lb], [ma, mb], [ia, ib])
    assert len(table) == 4 and (masks[0] > 0).sum() == (la > 0).sum()
    np.testing.assert_array_equal(np.unique(masks[0]), np.unique(masks[1]))  # every object continued


# ----------------------------------------------------------------------------- exemplar objective
def test_exemplar_attention_loss_matches_the_formula():
    attn = torch.tensor([[[0.1, 0.3], [0.2, 0.4]]])
    mask = torch.tensor([[[1, 0], [0, 1]]])
    q = np.array([0.5, 0, 0, 0.5])
    p = np.array([0.1, 0.3, 0.2, 0.4])
    expected = -(q * np.log(p + 1e-8)).sum()
    assert float(exemplar_attention_loss(attn, mask)) == pytest.approx(expected, rel=1e-5)
    # attention proportional to the mask is the minimum (entropy of q)
    best = float(exemplar_attention_loss(mask.float() + 1e-9, mask))
    assert best == pytest.approx(np.log(2), rel=1e-4) and best < expected
    # masks at a finer resolution are pooled by area
    big = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)
    assert float(exemplar_attention_loss(attn, big)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        exemplar_attention_loss(attn[0], mask)


def test_resolve_head_says_which_head_runs(tmp_path, monkeypatch):
    from mm_core.heads import registry
    from mm_core.heads.counting import DensityHead
    from mm_core.heads.learned import available_heads, checkpoints
    from mm_core.heads.registry import resolve_head
    from mm_core.heads.segmentation import WatershedHead

    head, note = resolve_head("analytic", "segment", "classic")
    assert isinstance(head, WatershedHead) and note == "analytic watershed head, as requested"
    assert isinstance(resolve_head("None", "count", "classic")[0], DensityHead)  # "none": analytic too
    monkeypatch.setattr(registry, "DEFAULTS", {})
    head, note = resolve_head(None, "count", "classic")
    assert isinstance(head, DensityHead) and "no learned count head ships" in note
    folder = SegmentationHead("classic", 0, **TINY).save_pretrained(tmp_path / "weights" / "seg-test")
    head, note = resolve_head(folder, "segment", "classic")
    assert isinstance(head, SegmentationHead) and note.startswith("learned segmentation head 'seg-test'")
    assert resolve_head(head, "segment", "ldm") == (head, head.describe())  # a head object, as it is
    with pytest.raises(InputError, match="needs a counting head"):
        resolve_head(folder, "count", "classic")
    assert isinstance(resolve_head(folder, "count", "classic", own_task=True)[0], DensityHead)  # given for all
    head, note = resolve_head(folder, "segment", "ldm")  # another engine's checkpoint: analytic, saying why
    assert isinstance(head, WatershedHead) and "trained on the classic engine" in note and str(folder) in note
    with pytest.raises(InputError, match="no head checkpoint"):  # a typo stays an error
        resolve_head(tmp_path / "sge-test", "segment", "classic")
    broken = SegmentationHead("classic", 0, **TINY).save_pretrained(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    head, note = resolve_head(broken, "segment", "classic")
    assert isinstance(head, WatershedHead) and "not a readable safetensors file" in note
    (broken / "model.safetensors").unlink()
    assert "model.safetensors" in resolve_head(broken, "segment", "classic")[1]
    for bad in (3.5, ["seg-test"], " "):
        with pytest.raises(InputError, match="head must be None, 'auto', 'analytic'"):
            resolve_head(bad, "segment", "classic")
    # shipped folders are found by name, and a default is used when configured
    monkeypatch.setattr(checkpoints, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(registry, "DEFAULTS", {("segment", "classic", "automatic"): "seg-test"})
    assert available_heads() == {"seg-test": folder}
    head, note = resolve_head("auto", "segment", "classic")
    assert isinstance(head, SegmentationHead) and "seg-test" in note
    assert isinstance(resolve_head("auto", "segment", "ldm")[0], WatershedHead)
    # defaults are per mode: this one is for automatic mode only
    head, note = resolve_head("auto", "segment", "classic", "exemplar")
    assert isinstance(head, WatershedHead) and "for automatic mode only" in note
    assert isinstance(resolve_head(folder, "segment", "classic", "exemplar")[0], SegmentationHead)  # asked for
    with pytest.raises(InputError, match="unknown mode"):
        resolve_head("auto", "segment", "classic", "boxes")
    with pytest.raises(InputError, match="unknown task"):
        resolve_head("auto", "segmentation", "classic")
    with pytest.raises(InputError, match="seg-test"):  # unknown names list the known ones
        load_head("no-such-head")
