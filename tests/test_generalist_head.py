"""The generalist head: targets, size loop, count shares, imprecise boxes, defaults and fallback,
and one tiny ``python -m mm_core.train generalist`` run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import disk_labels as _disks
from conftest import tiny_train_argv
from scipy import ndimage as ndi

from mm_core.engines.base import MatchMaps
from mm_core.heads import registry
from mm_core.heads.learned import load_head
from mm_core.heads.learned.generalist import (
    DENSITY_SCALE,
    GeneralistHead,
    targets,
)
from mm_core.heads.objects import object_diameter
from mm_core.train import generalist_data as gd

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TINY = {"base": 4, "levels": 2, "tile": 64, "tile_overlap": 8, "size_model": ""}  # search from the engine scale


def _maps(img, scale=10.0, engine="classic"):
    fg = ndi.gaussian_filter(img, 1.0)
    return MatchMaps(foreground=np.clip(fg, 0, 1).astype(np.float32), centers=fg.astype(np.float32), scale=scale,
                     image_shape=img.shape, engine=engine, mode="automatic", conditioning="test")


def test_targets_size_and_density():
    lab = _disks()
    t = targets(lab, 16.0)
    assert t.shape == (5, 80, 80)
    d = object_diameter(lab)
    assert d == pytest.approx(2 * np.sqrt((lab == 1).sum() / np.pi))
    # log size is log(d / target) on objects and 0 off them
    assert np.allclose(t[3][lab == 1], np.log(d / 16.0), atol=1e-5) and np.all(t[3][lab == 0] == 0)
    # one unit of density per object (up to the Gaussian's tail)
    assert t[4].sum() / DENSITY_SCALE == pytest.approx(4.0, abs=0.05)
    assert object_diameter(np.zeros((5, 5), int)) == 0.0


def test_size_search_keeps_the_scale_where_objects_come_out_at_the_working_size(monkeypatch):
    head = GeneralistHead("classic", **TINY, scale_search="trials", scale_passes=7, scale_range=3.0)
    img = (_disks() > 0).astype(np.float32)
    inp = head.inputs(_maps(img, scale=10.0), img)
    true = {"d": 17.0}
    monkeypatch.setattr(head, "_probe", lambda inp, t: true["d"])  # objects read at their true size
    s, trials = head.estimate_scale(inp)
    assert len(trials) == 7 and trials[0] == pytest.approx(10 / 3) and trials[-1] == pytest.approx(30.0)
    assert s == pytest.approx(17.0, rel=1e-6)
    true["d"] = 60.0  # beyond the trials: the size read at the closest trial
    assert head.estimate_scale(inp)[0] == pytest.approx(60.0)
    monkeypatch.setattr(head, "_probe", lambda inp, t: None)  # nothing found: the engine's scale
    assert head.estimate_scale(inp)[0] == pytest.approx(10.0)


def test_cheap_size_searches_engine_and_refine(monkeypatch):
    head = GeneralistHead("classic", **TINY, scale_search="none")
    img = (_disks() > 0).astype(np.float32)
    inp = head.inputs(_maps(img, scale=10.0), img)

    def no_probe(inp, t):
        raise AssertionError("the engine strategy must not probe")

    monkeypatch.setattr(head, "_probe", no_probe)
    assert head.estimate_scale(inp) == (10.0, [])
    calls = []
    true = {"d": 17.0}

    def probe(inp, t):
        calls.append(t)
        return true["d"]

    monkeypatch.setattr(head, "_probe", probe)
    head.config.update(scale_search="refine", scale_passes=3, scale_range=3.0)
    s, trials = head.estimate_scale(inp)
    # probe at the engine's scale, read 17, probe at 17, read 17 again (within 10 %): stop
    assert s == pytest.approx(17.0) and trials == pytest.approx([10.0, 17.0]) and calls == trials
    head.config["scale_passes"] = 1
    assert head.estimate_scale(inp) == (pytest.approx(17.0), [10.0])
    true["d"] = 60.0  # refine stays within scale_range of the engine's scale
    head.config["scale_passes"] = 3
    assert head.estimate_scale(inp)[0] == pytest.approx(30.0)
    monkeypatch.setattr(head, "_probe", lambda inp, t: None)
    assert head.estimate_scale(inp)[0] == pytest.approx(10.0)
    head.config["scale_search"] = "magic"
    with pytest.raises(ValueError, match="unknown scale_search"):
        head.estimate_scale(inp)
    # a given scale skips the search
    head.config["scale_search"] = "refine"
    monkeypatch.setattr(head, "_probe", no_probe)
    assert head.predict_maps(_maps(img, scale=10.0), img, scale=12.0)["scale"] == 12.0


def test_probe_reads_sizes_per_object_and_in_input_pixels(monkeypatch):
    head = GeneralistHead("classic", **TINY)
    img = (_disks() > 0).astype(np.float32)

    def fake(base, feats=None):  # everything is object, twice the working size
        out = torch.zeros(base.shape[0], 5, *base.shape[-2:])
        out[:, 0] = 5.0
        out[:, 3] = float(np.log(2.0))
        return out

    monkeypatch.setattr(head, "forward", fake)
    inp = head.inputs(_maps(img, scale=8.0), img)
    assert head._probe(inp, 8.0) == pytest.approx(16.0)  # zoom 2: 32 working px = 16 input px
    assert head._probe(inp, 4.0) == pytest.approx(16.0 * 2 / 3)  # zoom capped at 3


def test_generalist_predicts_counts_and_round_trips(tmp_path):
    torch.manual_seed(0)
    head = GeneralistHead("classic", **TINY)
    img = (_disks() > 0).astype(np.float32)
    maps = _maps(img)
    labels = head.predict(maps, img)
    assert labels.shape == img.shape and labels.dtype == np.int32
    dens, centres = head.counter().predict(maps, img)
    assert dens.shape == img.shape and dens.min() >= 0 and centres.shape[1] == 2
    assert len(centres) == labels.max()
    folder = head.save_pretrained(tmp_path / "g")
    again = load_head(folder, engine="classic")
    assert isinstance(again, GeneralistHead)
    assert np.array_equal(again.predict(maps, img), labels)
    from mm_core.errors import InputError

    with pytest.raises(InputError, match="trained on the classic engine"):
        again.predict(_maps(img, engine="ldm"), img)


def test_imprecise_boxes_and_crops():
    rng = np.random.default_rng(0)
    box = np.array([10, 20, 30, 30], np.float32)
    out = np.stack([gd.imprecise_box(box, rng) for _ in range(200)])
    w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    assert (w > 0).all() and (h > 0).all()
    assert w.max() > 30 and (w / h).max() > 3.0  # enlarged and stretched boxes occur
    lab = _disks((120, 120))
    item = gd.GItem("set/a", "automatic", np.stack([lab > 0, lab > 0, lab > 0]).astype(np.float16), lab,
                    object_diameter(lab), 10.0)
    b, t, wt = gd.crop(item, 64, 16.0, None)
    assert b.shape == (3, 64, 64) and t.shape == (5, 64, 64) and wt.shape == (1, 64, 64)
    # the validation crop puts objects at the target diameter
    assert object_diameter(ndi.label(t[0].numpy() > 0.5)[0]) == pytest.approx(16.0, rel=0.15)
    b1, t1, _ = gd.crop(item, 64, 16.0, np.random.default_rng(3))
    b2, t2, _ = gd.crop(item, 64, 16.0, np.random.default_rng(3))
    assert torch.equal(b1, b2) and torch.equal(t1, t2)  # seeded


def test_train_generalist_cli(tmp_path):
    from mm_core.train.cli import main

    out = tmp_path / "g"
    argv = tiny_train_argv("generalist", tmp_path, out, 4, "tile=64")
    assert main(argv) == 0
    head = load_head(out, engine="classic")
    assert isinstance(head, GeneralistHead) and "generalist" in head.config["info"]["train_command"]
    assert main([*argv[:6], "2", *argv[7:], "--resume"]) == 0  # resumes at epoch 1 and runs epoch 2
    assert (out / "log.csv").read_text().count("\n") == 3


def test_generalist_serves_segment_and_count_through_the_matcher(tmp_path, monkeypatch):
    """One checkpoint, two tasks; a broken shipped default falls back to the analytic head, saying why."""
    import mm_core
    from mm_core.heads.learned import checkpoints
    from mm_core.heads.learned.generalist import GeneralistCounter

    folder = GeneralistHead("classic", base=8, levels=2).save_pretrained(tmp_path / "weights" / "g-test")
    m = mm_core.Matcher("classic", head=str(folder))
    assert isinstance(m.head("segment"), GeneralistHead) and isinstance(m.head("count"), GeneralistCounter)
    assert "g-test" in m.head_note
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    monkeypatch.setattr(checkpoints, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(registry, "DEFAULTS", {("segment", "classic", "automatic"): "g-test"})
    head, note = mm_core.Matcher("classic")._load_head("segment")
    assert head.describe() == "analytic watershed head" and "not a readable safetensors file" in note


def test_default_rule_per_mode_and_task(monkeypatch):
    """benchmarks/generalist_eval.rule: >= 3 of 4 wins in AP50 and AP, no loss > 0.05 AP50; count also needs MAE."""
    import importlib
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    sys.modules.pop("generalist_eval", None)
    ge = importlib.import_module("generalist_eval")

    def scores(learned_ap50, analytic_ap50=0.5):
        return {"ap50": learned_ap50, "ap": learned_ap50 / 2}, {"ap50": analytic_ap50, "ap": analytic_ap50 / 2}

    def dev(auto_last, ex_last, mae_auto, mae_ex):
        out = {}
        for k, name in enumerate(ge.SEG_SETS):
            la, aa = scores(0.6 if k < 3 else auto_last)
            le, ae = scores(0.6 if k < 3 else ex_last)
            out[name] = {"automatic/learned": la, "automatic/analytic": aa, "exemplar/learned": le,
                         "exemplar/analytic": ae}
        out["vgg_cells"] = {"automatic/learned": {"mae": mae_auto}, "automatic/analytic": {"mae": 10.0},
                            "exemplar/learned": {"mae": mae_ex}, "exemplar/analytic": {"mae": 10.0}}
        return out

    r = ge.rule(dev(auto_last=0.46, ex_last=0.44, mae_auto=9.0, mae_ex=9.0))
    assert r[("segment", "automatic")]["passes"] and r[("count", "automatic")]["passes"]
    assert not r[("segment", "exemplar")]["passes"]  # loses by 0.06 AP50 on the fourth set
    assert not r[("count", "exemplar")]["passes"]  # a better MAE alone is not enough
    r = ge.rule(dev(auto_last=0.46, ex_last=0.46, mae_auto=11.0, mae_ex=9.0))
    assert r[("segment", "automatic")]["passes"] and not r[("count", "automatic")]["passes"]
    assert r[("count", "exemplar")]["passes"]
    assert "counting fails" in ge.verdict(dev(0.46, 0.46, 11.0, 9.0))[0]
