"""The CellMatch model (issue 21): synthetic data, crops with imprecise boxes, the head in both modes
and tasks, one count, and one tiny ``python -m mm_core.train cellmatch`` run with ``--resume``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import disk_labels as _disks
from conftest import tiny_train_argv
from scipy import ndimage as ndi

from mm_core.engines.base import MatchMaps
from mm_core.heads.learned import load_head
from mm_core.heads.learned.cellmatch import (
    CellMatchCounter,
    CellMatchHead,
    engine_channels,
    instance_density,
    median_diameter,
    prompt_channels,
)
from mm_core.train import cellmatch_data as cd
from mm_core.train.synthetic import KINDS, label_map, render

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TINY = {"base": 4, "levels": 2, "tile": 64, "tile_overlap": 8}


def _maps(img, boxes=None):
    info = {} if boxes is None else {"boxes": np.asarray(boxes, float)}
    return MatchMaps(foreground=np.zeros(img.shape[:2], np.float32), centers=np.zeros(img.shape[:2], np.float32),
                     scale=10.0, image_shape=img.shape[:2], engine="classic", mode="automatic",
                     conditioning="test", info=info)


@pytest.mark.parametrize("kind", KINDS)
def test_synthetic_label_maps_and_renderings_are_seeded(kind):
    a = label_map(kind, 96, np.random.default_rng(3))
    b = label_map(kind, 96, np.random.default_rng(3))
    assert a.max() > 0 and np.array_equal(a, b)
    img = render(a, np.random.default_rng(1))
    assert img.shape == (96, 96, 3) and 0 <= img.min() and img.max() <= 1
    assert np.array_equal(img, render(a, np.random.default_rng(1)))
    assert not np.array_equal(img, render(a, np.random.default_rng(2)))  # a new picture each draw


def test_prompt_channels_mark_the_box_and_match_its_content():
    lab = _disks()
    img3 = np.repeat((lab > 0).astype(np.float32)[None], 3, 0)
    assert not prompt_channels(img3, None).any()
    p = prompt_channels(img3, np.array([[14, 14, 27, 27]]))
    assert p[0, 20, 20] == 1 and p[0, 60, 60] == 0
    assert p[1, 55, 30] > 0.8 and p[1, 40, 40] < 0.5  # the other disks match the boxed one


def test_crops_with_and_without_a_box():
    lab = _disks()
    img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1)
    item = cd.make_item("d/x", lab, img)
    rng = np.random.default_rng(0)
    x, t, w = cd.crop(item, 48, rng, exemplar=False)
    assert x.shape == (5, 48, 48) and t.shape == (4, 48, 48) and w.shape == (1, 48, 48)
    assert not x[3:].any()  # no prompt in automatic mode
    mag = t[:2].pow(2).sum(0).sqrt()
    assert torch.all((mag - t[2]).abs() < 1e-3)  # unit flows on the foreground, zero elsewhere
    x, t, w = cd.crop(item, 48, rng, exemplar=True)
    assert x[3].sum() > 0  # the box is drawn
    x2, t2, w2 = cd.crop(item, 48, np.random.default_rng(0), exemplar=False)
    x3, t3, w3 = cd.crop(item, 48, np.random.default_rng(0), exemplar=False)
    assert torch.equal(x2, x3) and torch.equal(t2, t3) and torch.equal(w2, w3)  # seeded


def test_engine_maps_are_two_more_inputs_cropped_and_zoomed_with_the_image(tmp_path, monkeypatch):
    """The ablation model (``engine_maps``): real crops carry the engine's maps, synthetic ones zeros;
    at inference the maps are made from the whole image and resized with it."""
    lab = _disks()
    img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1)
    maps = engine_channels(img)
    assert maps.shape == (2, 80, 80) and maps[0][lab > 0].mean() > maps[0][lab == 0].mean()
    item = cd.make_item("d/x", lab, img)
    item.maps = np.stack([np.full(lab.shape, 0.25), np.full(lab.shape, 0.75)]).astype(np.float16)
    x, _, w = cd.crop(item, 48, np.random.default_rng(0), exemplar=False, engine_maps=True)
    inside = w[0] > 0
    assert x.shape == (7, 48, 48) and torch.allclose(x[5][inside], torch.tensor(0.25), atol=1e-3)
    assert torch.allclose(x[6][inside], torch.tensor(0.75), atol=1e-3)
    x0, _, _ = cd.crop(item, 48, np.random.default_rng(0), exemplar=False)
    assert torch.equal(x0, x[:5])  # the same crop without the maps
    item.maps = None  # a synthetic label map: zero maps
    assert not cd.crop(item, 48, np.random.default_rng(0), exemplar=True, engine_maps=True)[0][5:].any()

    torch.manual_seed(0)
    head = CellMatchHead(**TINY, engine_maps=True)
    assert next(m for m in head.net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 7
    seen = []
    real = head._tiled
    monkeypatch.setattr(head, "_tiled", lambda inp: seen.append(inp) or real(inp))
    out = head.segment_image(img, np.array([[14, 14, 27, 27]]))  # made from the image: the disks show
    assert out["labels"].shape == img.shape and seen[-1].shape[0] == 7 and seen[-1][5].max() > 0.5
    ramp = np.stack([np.tile(np.linspace(0, 1, 80, dtype=np.float32), (80, 1))] * 2)
    head.segment_image(img, np.array([[14, 14, 27, 27]]), engine_maps=ramp)  # given: zoomed with the image
    got = seen[-1][5]
    assert got.shape[1] == round(80 * 30 / 13) and np.all(np.diff(got[got.shape[0] // 2]) >= -1e-6)
    assert abs(got.mean() - 0.5) < 0.02
    again = load_head(head.save_pretrained(tmp_path / "em"))
    assert again.config["engine_maps"] is True and "classic engine's maps" in again.describe()
    assert np.array_equal(again.segment_image(img)["labels"], head.segment_image(img)["labels"])


def test_head_runs_in_both_modes_and_counts_once(tmp_path):
    torch.manual_seed(0)
    head = CellMatchHead(**TINY)
    lab = _disks()
    img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1)
    auto = head.predict(_maps(img), img)
    boxed = head.predict(_maps(img, [[14, 14, 27, 27]]), img)
    assert auto.shape == img.shape and boxed.shape == img.shape
    assert head.zoom_for(img.shape, np.array([[0, 0, 10, 10]])) == pytest.approx(3.0)
    density, centres = head.counter().predict(_maps(img), img)
    assert density.sum() == pytest.approx(len(centres), abs=1e-3)
    folder = head.save_pretrained(tmp_path / "cm")
    again = load_head(folder, engine="ldm")  # reads the image and the boxes, so any engine
    assert isinstance(again, CellMatchHead) and isinstance(again.counter(), CellMatchCounter)
    assert np.array_equal(again.predict(_maps(img), img), auto)


def test_scale_is_measured_once_and_reused(monkeypatch):
    head = CellMatchHead(**TINY)
    img = np.zeros((64, 64), np.float32)
    calls = []
    real = head.run_at
    monkeypatch.setattr(head, "run_at", lambda *a: calls.append(1) or real(*a))
    maps = _maps(img)
    s = head.fit_scale(maps, img)
    head.predict(maps, img, scale=s)
    assert len(calls) == 1


def test_instance_density_sums_to_the_objects():
    lab = _disks()
    dens, cents = instance_density(lab)
    assert dens.sum() == pytest.approx(4.0) and len(cents) == 4
    assert np.allclose(cents[0], [20, 20], atol=0.5)
    assert median_diameter(lab) == pytest.approx(2 * np.sqrt((lab == 1).sum() / np.pi))
    assert median_diameter(np.zeros((4, 4), int)) is None


def test_train_cellmatch_cli_and_resume(tmp_path):
    from mm_core.train.cli import main

    out = tmp_path / "cm"
    argv = tiny_train_argv("cellmatch", tmp_path, out, 6, "synthetic=3")
    assert main(argv) == 0
    head = load_head(out)
    assert isinstance(head, CellMatchHead) and head.config["info"]["recipe"]["synthetic"] == 3
    assert list((tmp_path / "cache" / "cellmatch_targets").glob("*.npz"))  # targets cached for later runs
    assert main([*argv[:6], "2", *argv[7:], "--resume"]) == 0
    assert (out / "log.csv").read_text().count("\n") == 3
    em = tmp_path / "em"  # the engine-maps ablation: the classic engine's maps cached once per image
    assert main([*argv[:4], str(em), *argv[5:], "engine_maps=1"]) == 0
    assert load_head(em).config["engine_maps"] is True
    assert list((tmp_path / "cache" / "classic").glob("*.npz"))


def test_cellmatch_through_the_matcher_one_count_and_a_background_box(tmp_path, monkeypatch):
    """Segment and count with one checkpoint; the count, the centres and the density agree
    (each object counts once); a box on background says it matched nothing."""
    import mm_core

    torch.manual_seed(0)
    folder = CellMatchHead(**TINY).save_pretrained(tmp_path / "cm")
    m = mm_core.Matcher("classic", head=str(folder))
    lab = _disks((96, 96), r=6, centres=((20, 20), (20, 60), (60, 30), (70, 70)))
    lab[lab == 4] = 0
    lab[(np.mgrid[:96, :96][0] - 75) ** 2 / 100 + (np.mgrid[:96, :96][1] - 70) ** 2 / 400 <= 1] = 4  # elongated
    img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1)
    seg = m.segment(img)
    assert seg.labels.shape == img.shape and "CellMatch" in seg.head_note
    monkeypatch.setattr(CellMatchHead, "segment_image", lambda self, image, boxes=None, scale=None:
                        {"labels": lab, "zoom": 1.0, "scale": median_diameter(lab),
                         "foreground": (lab > 0).astype(np.float32), "distance": (lab > 0).astype(np.float32)})
    res = m.count(img)
    assert res.count == 4 == int(res.points["n"].sum()) == len(res.points)
    assert float(res.density.sum()) == pytest.approx(res.count, abs=0.5)
    boxed = m.segment(img, boxes=[[80, 2, 94, 14]])  # empty corner
    assert any("box" in w.lower() for w in boxed.warnings)
    assert m.count(img, boxes=[[80, 2, 94, 14]]).warnings  # not a silent count either


def test_a_broken_checkpoint_runs_the_analytic_head_and_says_so(tmp_path, capsys):
    """Issue 21's bad input: a corrupt or wrong-engine checkpoint is one message, and the analytic head runs."""
    import tifffile

    from mm_core.cli import main

    folder = CellMatchHead(**TINY).save_pretrained(tmp_path / "cm")
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    img = tmp_path / "disks.tif"
    tifffile.imwrite(img, (ndi.gaussian_filter((_disks() > 0).astype(np.float32), 1) * 200).astype(np.uint8))
    assert main(["segment", str(img), "--head", str(folder), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "head: analytic watershed head (the head" in err and "not a readable safetensors file" in err
    assert "Traceback" not in err and (tmp_path / "out" / "disks.tif").is_file()


def test_issue21_default_rule(monkeypatch, tmp_path):
    """benchmarks/cellmatch_eval.rule: no set worse by > 0.03 AP50 / 10 % MAE, the mean better;
    exemplar mode never more than 0.02 AP50 under automatic."""
    import importlib
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    sys.modules.pop("cellmatch_eval", None)
    ce = importlib.import_module("cellmatch_eval")

    def res(ap50, mae, rel):
        return {"ap50": ap50, "ap": ap50 / 2, "count_mae": mae, "mae": mae, "count_rel": rel}

    base = {s: {m: res(0.5, 10.0, 0.3) for m in ("automatic", "exemplar")} for s in ce.SEG_SETS}
    base["vgg_cells"] = {m: res(0, 15.0, 0.1) for m in ("automatic", "exemplar")}

    def new(last_auto, last_ex, vgg_mae):
        out = {f"flows/{s}": {"automatic": res(0.6 if k < 3 else last_auto, 9.0, 0.2),
                              "exemplar": res(0.6 if k < 3 else last_ex, 9.0, 0.2)}
               for k, s in enumerate(ce.SEG_SETS)}
        out["flows/vgg_cells"] = {m: res(0, vgg_mae, 0.05) for m in ("automatic", "exemplar")}
        return out

    r = ce.rule(new(0.48, 0.48, 16.0), base)
    assert r[("segment", "automatic")]["passes"] and r[("count", "automatic")]["passes"]
    assert r["box_never_worse"]["passes"]
    r = ce.rule(new(0.48, 0.44, 17.0), base)
    assert r[("segment", "automatic")]["passes"] and not r[("segment", "exemplar")]["passes"]  # -0.06 on one set
    assert not r[("count", "automatic")]["passes"]  # VGG MAE 13 % worse
    assert not r["box_never_worse"]["passes"]  # exemplar 0.02+ under automatic on the last set
    import json

    base["vgg_cells"] = {m: {"mae": 15.0, "count_rel": 0.1} for m in ("automatic", "exemplar")}
    (tmp_path / "dev.json").write_text(json.dumps(new(0.48, 0.48, 16.0)))
    (tmp_path / "baseline.json").write_text(json.dumps(base))
    text = ce.tables(tmp_path)
    assert "| isbi2012_em_cells | exemplar | 0.500 | 0.480 |" in text and "segment automatic: passes" in text
    assert "left out" not in text  # no leave-one-source-out run yet
    loo = {"flows/usiigaci_phase_contrast": {m: res(0.1, 40.0, 0.5) for m in ("automatic", "exemplar")}}
    (tmp_path / "loo_usiigaci_phase_contrast_train.json").write_text(json.dumps(loo))
    text = ce.tables(tmp_path)
    assert "| usiigaci_phase_contrast_train | usiigaci_phase_contrast | exemplar | 0.600 | 0.100 | 9.0 | 40.0 |" in text
    assert "with synthetic images" not in text  # no ablation run yet
    (tmp_path / "abl_synth.json").write_text(json.dumps(new(0.30, 0.35, 40.0)))
    text = ce.tables(tmp_path)
    assert "| isbi2012_em_cells | exemplar | 0.480 | 0.350 | 9.0 | 9.0 |" in text
    assert "| vgg_cells | automatic | - | - | 16.0 | 40.0 |" in text and "without the engine's maps |" not in text
    assert "with synthetic images) |" not in text  # no fold of the ablation's recipe yet
    synth = new(0.30, 0.35, 40.0)
    synth["flows/usiigaci_phase_contrast"]["exemplar"] = res(0.55, 7.0, 0.1)
    (tmp_path / "abl_synth.json").write_text(json.dumps(synth))
    (tmp_path / "loo_synth_usiigaci_phase_contrast_train.json").write_text(json.dumps(loo))
    text = ce.tables(tmp_path)  # the fold beside the ablation's model trained on every source
    assert ("| left out (with synthetic images) | dev set | mode | AP50, all sources | AP50, source left out"
            in text)
    assert "| usiigaci_phase_contrast_train | usiigaci_phase_contrast | exemplar | 0.550 | 0.100 | 7.0 | 40.0 |" in text
    assert "| usiigaci_phase_contrast_train | usiigaci_phase_contrast | exemplar | 0.600 | 0.100 | 9.0 | 40.0 |" in text


def test_issue21_defaults_keep_a_box_never_worse(monkeypatch):
    """benchmarks/cellmatch_eval.pick_defaults: a mode becomes the new model's where the rule passes;
    exemplar segmentation follows automatic when the baseline exemplar default would make a box worse."""
    import importlib
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    sys.modules.pop("cellmatch_eval", None)
    ce = importlib.import_module("cellmatch_eval")

    def res(ap50):
        return {"ap50": ap50, "ap": ap50 / 2, "count_mae": 9.0, "mae": 9.0, "count_rel": 0.2}

    last = ce.SEG_SETS[-1]
    base = {s: {"automatic": res(0.5), "exemplar": res(0.6 if s == last else 0.3)} for s in ce.SEG_SETS}
    new = {f"flows/{s}": {"automatic": res(0.48 if s == last else 0.6), "exemplar": res(0.47 if s == last else 0.6)}
           for s in ce.SEG_SETS}
    pick = ce.pick_defaults(new, base)
    assert not ce.rule(new, base)[("segment", "exemplar")]["passes"]  # 0.47 vs 0.6 on the last set
    assert pick[("segment", "automatic")]["model"] == "new" and pick[("segment", "exemplar")]["model"] == "new"
    assert "never worse" in pick[("segment", "exemplar")]["why"] and pick["box_gap"] == pytest.approx(-0.01)
    new[f"flows/{last}"]["exemplar"] = res(0.40)  # the new model's own box is worse: exemplar stays the baseline's
    pick = ce.pick_defaults(new, base)
    assert pick[("segment", "exemplar")] == {"model": "baseline", "why": "rule fails"}
    assert pick["box_gap"] == pytest.approx(-0.3)
    base = {s: {m: res(0.5) for m in ("automatic", "exemplar")} for s in ce.SEG_SETS}  # the baseline's box is fine
    new = {f"flows/{s}": {"automatic": res(0.6), "exemplar": res(0.45 if s == last else 0.6)} for s in ce.SEG_SETS}
    pick = ce.pick_defaults(new, base)
    assert pick[("segment", "exemplar")]["model"] == "baseline" and pick["box_gap"] == pytest.approx(-0.1)


def test_validation_slice_scores_both_modes_per_source(monkeypatch):
    """benchmarks/cellmatch_eval.py val: AP50 and count error per source and mode; the score is the
    mean over sources of the two modes' AP50 (a model that finds everything without a box and
    nothing with one scores 0.5)."""
    import importlib
    import sys
    from argparse import Namespace
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    sys.modules.pop("cellmatch_eval", None)
    ce = importlib.import_module("cellmatch_eval")
    gt = _disks()
    monkeypatch.setattr(ce, "val_items", lambda limit: iter([("a", (gt > 0).astype(np.float32), gt),
                                                             ("a", (gt > 0).astype(np.float32), gt),
                                                             ("b", (gt > 0).astype(np.float32), gt)]))

    class Head:
        def segment_image(self, image, boxes=None):
            return {"labels": gt if boxes is None else np.zeros_like(gt)}

    monkeypatch.setattr(ce, "_head", lambda path: Head())
    out = ce.cmd_val(Namespace(head="x", limit=None))
    pick = ("ap50", "count_rel", "count_mae", "n")
    assert {k: out["a"]["automatic"][k] for k in pick} == {"ap50": 1.0, "count_rel": 0.0, "count_mae": 0.0, "n": 2}
    assert {k: out["b"]["exemplar"][k] for k in pick} == {"ap50": 0.0, "count_rel": 1.0, "count_mae": float(gt.max()), "n": 1}
    assert out["mean over sources"]["automatic"]["ap50"] == 1.0 and out["score"] == 0.5


def test_zoom_follows_boxes_and_found_sizes_within_limits():
    head = CellMatchHead(**TINY)
    assert head.zoom_for((100, 100), None) == 1.0
    assert head.zoom_for((100, 100), None, found=60.0) == pytest.approx(0.5)
    assert head.zoom_for((100, 100), None, found=1.0) == pytest.approx(4.0)  # capped at 4x
    assert head.zoom_for((100, 100), np.array([[0, 0, 300, 300]])) == pytest.approx(0.25)
    assert head.zoom_for((4000, 4000), None, found=3.0) == pytest.approx(1.0)  # 16 MP working-grid cap


@pytest.mark.parametrize(("rule", "found", "passes"), [
    ("both", 5.0, 2), ("both", 200.0, 2), ("both", 30.0, 1),
    ("zoom_out", 5.0, 1), ("zoom_out", 200.0, 2), ("none", 5.0, 1), ("none", 200.0, 1)])
def test_second_pass_follows_the_setting(monkeypatch, rule, found, passes):
    import mm_core.heads.learned.cellmatch as cm

    head = CellMatchHead(**TINY, second_pass=rule)
    zooms = []
    real = head.run_at
    monkeypatch.setattr(head, "run_at", lambda im, bx, z, *rest: zooms.append(z) or real(im, bx, z, *rest))
    monkeypatch.setattr(cm, "median_diameter", lambda labels: found)
    head.segment_image(_disks())
    assert len(zooms) == passes
    assert zooms[0] == 1.0
    head.segment_image(_disks(), boxes=np.array([[15, 15, 26, 26]]))  # a box: never a second pass
    assert len(zooms) == passes + 1


def test_shipped_cellmatch_is_small_reads_the_engine_maps_and_is_the_segment_default():
    """The shipped weights: <= 10 MB, the picked second pass, the engine's maps as inputs, reachable
    by name, the segmentation default in both modes and no counting default (issue 21's rule,
    docs/quality.md)."""
    from mm_core.heads.learned.checkpoints import WEIGHTS_DIR
    from mm_core.heads.registry import DEFAULTS

    folder = WEIGHTS_DIR / "cellmatch"
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 10 * 2**20
    assert {k: v for k, v in DEFAULTS.items() if v == "cellmatch"} == {
        ("segment", "classic", "automatic"): "cellmatch", ("segment", "classic", "exemplar"): "cellmatch"}
    import mm_core

    m = mm_core.Matcher("classic", head="cellmatch")
    head = m.head("segment")
    assert isinstance(head, CellMatchHead) and head.config["second_pass"] == "none"
    assert head.config["engine_maps"] and "the classic engine's maps" in head.describe()
    img = ndi.gaussian_filter((_disks(r=8) > 0).astype(np.float32), 1.0)
    res = m.segment(img)
    assert res.n_objects == 4 and "learned CellMatch model 'cellmatch'" in res.head_note


@pytest.mark.parametrize(("norm", "upsample"), [("group", "bilinear"), ("batch", "transpose")])
def test_one_unet_serves_both_learned_heads(norm, upsample):
    from mm_core.heads.learned.layers import UNet

    torch.manual_seed(0)
    net = UNet(5, 4, base=4, levels=3, norm=norm, upsample=upsample).eval()
    x = torch.rand(2, 5, 32, 48)
    out = net(x)
    assert out.shape == (2, 4, 32, 48) and out.is_contiguous()
    # channels-last weights (the CPU speed-up) give the numbers of the plain layout
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    plain = UNet(5, 4, base=4, levels=3, norm=norm, upsample=upsample).eval()
    plain.load_state_dict(net.state_dict())
    plain.to(memory_format=torch.contiguous_format)
    assert next(m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)).weight.is_contiguous()
    torch.testing.assert_close(plain(x), out, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="norm"):
        UNet(5, 4, norm="layer")
    with pytest.raises(ValueError, match="upsample"):
        UNet(5, 4, upsample="nearest")
