"""``python -m mm_core.train``: dataset readers, engine cache, one-epoch runs that write loadable heads,
resume, and the exemplar objective / UNet-feature heads on a tiny random-weight LDM engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage as ndi

from mm_core.train.data import find_counting, find_segmentation, find_tracking, load_points
from mm_core.errors import InputError, MMError
from mm_core.heads.learned import load_head
from mm_core.train.cli import main

SMALL = ["--set", "stem=8", "dim=16", "depth=2", "heads=2", "tile=64", "tile_overlap=8"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _disk_scene(rng, shape=(96, 96), n=7, r=6, shift=(0, 0), centres=None):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    if centres is None:
        centres = rng.uniform(r + 2, np.array(shape) - r - 2, size=(n, 2))
    lab = np.zeros(shape, np.uint16)
    for k, (y, x) in enumerate(centres, 1):
        lab[(yy - y - shift[0]) ** 2 + (xx - x - shift[1]) ** 2 <= r * r] = k
    img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.0) * 200 + 20 + rng.normal(0, 4, shape)
    return lab, np.clip(img, 0, 255).astype(np.uint8), centres


@pytest.fixture
def seg_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "seg" / "disks"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        lab, img, _ = _disk_scene(rng)
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        tifffile.imwrite(root / "masks" / f"im{i}.tif", lab)
    return root


@pytest.fixture
def count_folder(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "count" / "dots"
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    for i in range(3):
        _, img, c = _disk_scene(rng, r=4, n=12)
        Image.fromarray(img).save(root / "images" / f"c{i}.png")
        (root / "points" / f"c{i}.csv").write_text("x,y\n" + "".join(f"{x:.1f},{y:.1f}\n" for y, x in c))
    return root


@pytest.fixture
def ctc_folder(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "track" / "moving"
    (root / "01").mkdir(parents=True)
    (root / "01_GT" / "TRA").mkdir(parents=True)
    centres = None
    for t in range(5):
        lab, img, centres = _disk_scene(rng, n=5, shift=(2 * t, t), centres=centres)
        tifffile.imwrite(root / "01" / f"t{t:03d}.tif", img)
        tifffile.imwrite(root / "01_GT" / "TRA" / f"man_track{t:03d}.tif", lab)
    (root / "01_GT" / "TRA" / "man_track.txt").write_text("".join(f"{k} 0 4 0\n" for k in range(1, 6)))
    return root


def test_readers_find_every_layout(tmp_path, seg_folder, count_folder, ctc_folder):
    assert [s.name for s in find_segmentation(seg_folder)] == [f"im{i}" for i in range(3)]
    assert len(find_segmentation(seg_folder.parent)) == 3  # parent folder: searched one level down
    cp = tmp_path / "cellpose"
    cp.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(cp / "a_img.png")
    Image.fromarray(np.ones((8, 8), np.uint8)).save(cp / "a_masks.png")
    (s,) = find_segmentation(cp)
    assert s.name == "a" and s.target.name == "a_masks.png"
    assert len(find_counting(count_folder)) == 3
    pts = load_points(find_counting(count_folder)[0].target)
    assert pts.shape == (12, 2)
    (seq,) = find_tracking(ctc_folder)
    assert seq.image.name == "01" and seq.kind == "ctc"
    with pytest.raises(InputError, match="no segmentation training data"):
        find_segmentation(count_folder)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="columns x and y"):
        load_points(bad)


def test_engine_cache_runs_the_engine_once(tmp_path):
    from mm_core.engines.classic import ClassicEngine
    from mm_core.train.cache import EngineCache

    rng = np.random.default_rng(3)
    _, img, _ = _disk_scene(rng)
    img = img.astype(np.float32) / 255
    cache = EngineCache(ClassicEngine(), tmp_path / "cache")
    a = cache.match(img)
    b = cache.match(img)
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(a.foreground, b.foreground)
    assert b.scale == pytest.approx(a.scale) and b.engine == "classic"
    np.testing.assert_allclose(a.features, b.features, rtol=1e-2, atol=1e-3)  # stored as float16
    cache.match(img, np.array([[10, 10, 30, 30]], np.float32))  # other boxes: another entry
    assert cache.misses == 2 and len(list((tmp_path / "cache" / "classic").glob("*.npz"))) == 2


def test_cache_writes_from_many_writers_never_clash(tmp_path):
    """Two trainings side by side share one cache folder: writers of the same entry must not
    rename each other's temporary file (they once did, and one training died at its start)."""
    from concurrent.futures import ThreadPoolExecutor

    from mm_core.train.cache import atomic_savez

    path = tmp_path / "entry.npz"
    data = np.arange(200_000, dtype=np.float32)

    def write(i):
        atomic_savez(path, labels=data + i)
        return i

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(write, range(64))) == list(range(64))
    with np.load(path) as z:
        assert z["labels"].shape == data.shape and float(z["labels"][0]) in set(map(float, range(64)))
    assert [p.name for p in tmp_path.iterdir()] == ["entry.npz"]


@pytest.mark.parametrize("task", ["segment", "count"])
def test_cli_trains_one_epoch_and_writes_a_loadable_head(tmp_path, task, seg_folder, count_folder, capsys,
                                                         monkeypatch):
    from mm_core.engines.classic import ClassicEngine

    # the cache key includes a hash of the engine's source; pin it so edits made while this runs don't matter
    monkeypatch.setattr("mm_core.train.cache.engine_version", lambda engine: "pinned")

    data = seg_folder if task == "segment" else count_folder
    out = tmp_path / "head"
    args = [task, "--data", str(data), "--out", str(out), "--epochs", "1", "--steps", "2", "--batch-size", "2",
            "--crop", "64", "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--name", "tiny"]
    args += SMALL if task == "segment" else ["--subset", "1:3", "--set", "stem=8", "width=16", "tile=64",
                                             "tile_overlap=8"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    expect = "2 training / 1 validation" if task == "segment" else "1 training / 1 validation"
    assert expect in printed and "head written to" in printed
    head = load_head(out, engine="classic")
    assert head.config["info"]["name"] == "tiny" and "python -m mm_core.train" in head.config["info"]["train_command"]
    img = np.asarray(Image.open(min((data / "images").iterdir())), np.float32) / 255
    out_pred = head.predict(ClassicEngine().match(img), img)
    assert (out_pred if task == "segment" else out_pred[0]).shape == img.shape
    if task == "count":
        return
    # resume: one more epoch continues from the saved state and reuses every cached map
    args[args.index("--epochs") + 1] = "2"
    assert main(args + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed" in printed and "epoch 2:" in printed and "epoch 1:" not in printed
    assert "0 engine runs" in printed
    assert len((out / "log.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs


def test_cli_trains_the_linking_head(tmp_path, ctc_folder, capsys):
    out = tmp_path / "link"
    assert main(["track", "--data", str(ctc_folder), "--out", str(out), "--epochs", "1", "--steps", "3",
                 "--batch-size", "2", "--cache-dir", "none", "--no-progress", "--set", "dim=16", "heads=2"]) == 0
    head = load_head(out)
    assert head.head_type == "linking" and head.engine == "classic"


def test_cli_reports_bad_data_clearly(tmp_path, capsys):
    assert main(["segment", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    with pytest.raises(SystemExit):  # argparse usage error
        main(["segment", "--out", str(tmp_path / "o")])


# ----------------------------------------------------------------------------- LDM engine (tiny, random)
@pytest.fixture(scope="module")
def tiny_ldm():
    pytest.importorskip("diffusers")
    from mm_core.engines.ldm import LDMEngine
    from mm_core.engines.ldm.testing import TINY_SIZE, build_tiny_components

    parts = build_tiny_components(seed=0)
    return LDMEngine.from_components(**parts, device="cpu", dtype=torch.float32, size=TINY_SIZE)


def test_exemplar_projector_objective_trains_on_tiny_ldm(tiny_ldm):
    from mm_core.heads.learned import exemplar_attention_loss

    eng = tiny_ldm
    rng = np.random.default_rng(0)
    lab, img, _ = _disk_scene(rng, shape=(128, 128), n=6, r=10)
    x01 = eng.prepare(img.astype(np.float32) / 255)
    lat = eng.encode(x01)
    box = np.array([[20, 20, 44, 44]], np.float32)
    mask = torch.as_tensor(lab > 0)[None].float()
    params = [p for m in (eng.projector.conv, eng.projector.linear) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2)
    torch.manual_seed(0)
    losses = []
    for _ in range(6):
        loss = exemplar_attention_loss(eng.exemplar_cross_attention(x01, [box], lat), mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert min(losses[1:]) < losses[0]
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params))  # gradients reached it
    for p, b in zip(params, before):  # leave the module-scoped engine as it was
        p.data.copy_(b)
        p.requires_grad_(False)


def test_segmentation_head_on_tiny_ldm_unet_features(tiny_ldm, tmp_path):
    from mm_core.heads.learned import SegmentationHead
    from mm_core.heads.learned.inputs import gather_inputs, sample_inputs
    from mm_core.heads.learned.segmentation import seg_targets

    rng = np.random.default_rng(1)
    lab, img, _ = _disk_scene(rng, shape=(128, 128), n=6, r=10)
    img = img.astype(np.float32) / 255
    maps = tiny_ldm.match(img)
    assert maps.engine == "ldm" and maps.features is not None
    inp = gather_inputs(maps, img)
    base, feats = sample_inputs(inp, (0, 0, 128, 128), (64, 64))
    target = torch.as_tensor(seg_targets(lab[::2, ::2]))[None]
    torch.manual_seed(0)
    head = SegmentationHead("ldm", inp.n_features, stem=8, dim=16, depth=2, heads=2, tile=64, tile_overlap=8)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = head.loss(head(base[None], feats[None]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]
    folder = head.save_pretrained(tmp_path / "ldm_seg")
    assert load_head(folder, engine="ldm").predict(maps, img).shape == img.shape
    with pytest.raises(InputError, match="trained on the ldm engine"):
        load_head(folder, engine="classic")


def test_exemplar_projector_training_writes_heads_the_engine_loads(tiny_ldm, tmp_path, seg_folder):
    import argparse

    from mm_core.train.data import find_segmentation
    from mm_core.train.exemplar import exemplar_task
    from mm_core.train.loop import FitConfig, fit

    eng = tiny_ldm
    saved = {k: v.clone() for k, v in eng.projector.head_state_dict().items()}
    samples = find_segmentation(seg_folder)
    args = argparse.Namespace(batch_size=1)
    head, step, validate = exemplar_task(args, samples[:2], samples[2:], eng, {})
    result = fit(head, step, validate, tmp_path / "proj", FitConfig(epochs=2, steps_per_epoch=2, progress=False),
                 log=lambda s: None)
    assert np.isfinite(result["best"]) and result["epochs_run"] == 2
    weights = tmp_path / "proj" / "model.safetensors"
    with pytest.raises(InputError, match="exemplar projector"):
        load_head(tmp_path / "proj")  # not a task head: says how to load it instead
    eng.projector.trained = False
    eng.load_heads(weights)
    assert eng.projector.trained
    eng.projector.load_state_dict(saved, strict=False)  # leave the shared engine as it was
    eng.projector.trained = False
    eng.projector.requires_grad_(False)


class _TinyHead(torch.nn.Module):
    """The least a head needs for ``fit``: parameters, a config with ``info``, ``save_pretrained``."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.config = {"info": {}}

    def save_pretrained(self, out):
        torch.save(self.state_dict(), Path(out) / "tiny.pt")


def _epochs_logged(folder):
    import csv

    with (folder / "log.csv").open(newline="") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def test_a_run_folder_is_continued_or_started_again_never_mixed(tmp_path, capsys):
    from mm_core.train.cli import main
    from mm_core.train.loop import FitConfig, fit

    head, out = _TinyHead(), tmp_path / "run"

    def go(**kw):
        cfg = FitConfig(steps_per_epoch=2, progress=False, **{"epochs": 2, **kw})
        return fit(head, lambda rng: (head.w ** 2).sum(), lambda h: float((h.w ** 2).sum()), out, cfg,
                   log=lambda s: None)

    go()
    assert _epochs_logged(out) == [1, 2]
    with pytest.raises(MMError, match="already holds a training run.*--resume.*--overwrite"):
        go()  # a fresh start would have appended epochs 1, 2 to this run's log
    assert _epochs_logged(out) == [1, 2]
    # the CLI says so before it reads any data (this data folder does not exist)
    assert main(["segment", "--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    with (out / "log.csv").open("a") as fh:
        fh.write("3,9,9,0.001,1.0\n")  # killed after logging epoch 3, before its state was saved
    assert go(epochs=4, resume=True)["epochs_run"] == 4
    assert _epochs_logged(out) == [1, 2, 3, 4]  # epoch 3 once: the stale row went
    assert go(epochs=1, overwrite=True)["epochs_run"] == 1
    assert _epochs_logged(out) == [1]
    with pytest.raises(MMError, match="pass one"):
        go(resume=True, overwrite=True)
