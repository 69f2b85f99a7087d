"""The learned object-size model: scale profile, bins, training, the shipped model, and the
generalist head's size search starting from it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi

from mm_core.engines.base import MatchMaps
from mm_core.heads.learned import SizeModel, load_head
from mm_core.heads.learned.generalist import GeneralistHead
from mm_core.heads.learned.size import (
    BINS_PER_OCTAVE,
    bin_to_diameter,
    diameter_to_bin,
    scale_profile,
    sigmas,
)
from mm_core.transforms import resize_map

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _cells(shape=(256, 256), d=16.0, seed=0, texture=0.0):
    """Disks of diameter ``d`` on a jittered grid, optionally with fine texture inside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    step = 1.6 * d
    k = 0
    for y in np.arange(d, shape[0] - d / 2, step):
        for x in np.arange(d, shape[1] - d / 2, step):
            k += 1
            cy, cx = y + rng.uniform(-0.2, 0.2) * d, x + rng.uniform(-0.2, 0.2) * d
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= (d / 2) ** 2] = k
    img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.0)
    if texture:
        img = img * (1 + texture * ndi.gaussian_filter(rng.normal(size=shape), 1.0))
    return np.clip(img * 0.7 + 0.1 + rng.normal(0, 0.02, shape), 0, 1).astype(np.float32), lab


def test_bins_and_diameters_are_inverse():
    for d in (3.0, 10.0, 57.0):
        assert bin_to_diameter(diameter_to_bin(d)) == pytest.approx(d)
    assert diameter_to_bin(2 * 10.0) - diameter_to_bin(10.0) == pytest.approx(BINS_PER_OCTAVE)


def test_zooming_the_image_shifts_its_profile_along_the_scale_axis():
    img, _ = _cells((256, 256), d=10.0)
    big = resize_map(img, (512, 512))
    p1, p2 = scale_profile(img), scale_profile(big)
    assert p1.shape == (8, len(sigmas()))
    k = BINS_PER_OCTAVE  # 2x zoom = one octave
    a, b = p1[:, 2:-k - 2], p2[:, k + 2:-2]
    shifted = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    unshifted = np.corrcoef(p1[:, 2:-k - 2].ravel(), p2[:, 2:-k - 2].ravel())[0, 1]
    assert shifted > 0.95 and shifted > unshifted
    # contrast does not change the profile
    assert np.allclose(scale_profile(img * 3 + 1), p1, atol=1e-3)


def test_shipped_size_model_reads_disk_sizes_and_texture_does_not_fool_it():
    model = load_head("size-classic")
    assert isinstance(model, SizeModel) and "size-classic" in model.describe()
    for d, tex in ((8.0, 0.0), (20.0, 0.0), (40.0, 0.6)):
        img, _ = _cells((384, 384), d=d, texture=tex)
        got = model.estimate(img)
        assert d / 1.5 <= got <= d * 1.5, (d, tex, got)


def _maps(img, mode="automatic", scale=5.0):
    fg = ndi.gaussian_filter(img, 1.0)
    return MatchMaps(foreground=fg.astype(np.float32), centers=fg.astype(np.float32), scale=scale,
                     image_shape=img.shape, engine="classic", mode=mode, conditioning="test")


def test_generalist_search_starts_at_the_size_model_in_automatic_mode_only():
    img, _ = _cells((256, 256), d=24.0)
    head = GeneralistHead("classic", base=4, levels=2, tile=64)
    auto = head.start_scale(_maps(img, "automatic"), img)
    assert 24.0 / 1.5 <= auto <= 24.0 * 1.5
    assert head.start_scale(_maps(img, "exemplar"), img) == 5.0  # the boxes' size
    off = GeneralistHead("classic", base=4, levels=2, tile=64, size_model="")
    assert off.start_scale(_maps(img, "automatic"), img) == 5.0


@pytest.mark.parametrize("broken", ["missing", "corrupt", "not a size model"])
def test_a_broken_size_model_warns_and_the_engine_scale_is_used(tmp_path, broken):
    img, _ = _cells((128, 128), d=12.0)
    folder = tmp_path / "size"
    if broken == "corrupt":
        SizeModel(width=8).save_pretrained(folder)
        (folder / "model.safetensors").write_bytes(b"not safetensors")
    elif broken == "not a size model":
        GeneralistHead("classic", base=4, levels=2).save_pretrained(folder)
    head = GeneralistHead("classic", base=4, levels=2, tile=64, size_model=str(folder))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        assert head.start_scale(_maps(img), img) == 5.0
        assert head.start_scale(_maps(img), img) == 5.0  # warned once, loaded once
    msgs = [str(w.message) for w in got]
    assert len(msgs) == 1 and "the size search starts at the engine's scale" in msgs[0]


def test_train_size_cli_learns_disk_sizes(tmp_path):
    from mm_core.train.cli import main

    root = tmp_path / "seg" / "disks"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, d in enumerate((6, 9, 12, 16, 20, 26)):
        img, lab = _cells((160, 160), d=float(d), seed=i)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        tifffile.imwrite(root / "masks" / f"im{i}.tif", lab.astype(np.uint16))
    out = tmp_path / "size"
    argv = ["size", "--data", str(root), "--out", str(out), "--epochs", "3", "--steps", "40", "--batch-size", "16",
            "--variants", "4", "--lr", "3e-3", "--val-fraction", "0.2", "--no-progress", "--set", "width=8"]
    assert main(argv) == 0
    model = load_head(out)
    assert isinstance(model, SizeModel) and "mm_core.train size" in model.config["info"]["train_command"]
    img, _ = _cells((160, 160), d=14.0, seed=9)
    untrained = SizeModel(width=8)
    err = abs(np.log(model.estimate(img) / 14.0))
    assert err < np.log(1.5) and err < abs(np.log(untrained.estimate(img) / 14.0))
    assert main([*argv[:6], "4", *argv[7:], "--resume"]) == 0  # resumes at epoch 3, runs epoch 4
    assert (out / "log.csv").read_text().count("\n") == 5


class _SizedHead:
    """A head with its own size search: records the scale it was asked to read the maps at."""

    def __init__(self, task):
        self.task, self.seen = task, []

    def fit_scale(self, maps, image):
        return 33.0

    def predict(self, maps, image, scale=None):
        self.seen.append(scale)
        lab = np.zeros(image.shape[:2], np.int32)
        lab[10:40, 10:40] = 1
        return lab if self.task == "segment" else (lab.astype(np.float32) / lab.sum(), np.array([[25.0, 25.0]]))


@pytest.mark.parametrize("task", ["segment", "count"])
def test_results_report_the_size_the_head_read_the_objects_at(task):
    """A head that reads the size itself: its size is the result's (checks, count patches); the engine's is kept."""
    from mm_core.engines.classic import ClassicEngine
    from mm_core.pipelines import run_count, run_segment

    img, _ = _cells((96, 96), d=12.0)
    head = _SizedHead(task)
    res = (run_segment if task == "segment" else run_count)(ClassicEngine(), head, img)
    assert head.seen == [33.0] and res.maps.scale == 33.0
    assert 0 < res.maps.info["engine_scale"] != 33.0
    if task == "count":
        assert res.count == 1 and int(res.points["n"].sum()) == 1


def test_intensity_augmentation_changes_the_views_not_their_sizes(tmp_path):
    from mm_core.train.data import find_segmentation
    from mm_core.errors import MMError
    from mm_core.train.size import prepare

    root = tmp_path / "disks"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    img, lab = _cells((160, 160), d=14.0)
    Image.fromarray((img * 255).astype(np.uint8)).save(root / "images" / "a.png")
    tifffile.imwrite(root / "masks" / "a.tif", lab.astype(np.uint16))
    samples = find_segmentation(root)
    p0, b0, _ = prepare(samples, 3, seed=0, progress=False)
    p1, b1, _ = prepare(samples, 3, seed=0, progress=False, augment="zoom+intensity")
    assert p0.shape == p1.shape
    # the whole image is never altered; the first view is the same crop (same true size), its intensities altered
    assert np.allclose(p0[0], p1[0]) and np.allclose(b0[:2], b1[:2]) and not np.allclose(p0[1], p1[1])
    with pytest.raises(MMError, match="unknown size augmentation"):
        prepare(samples, 1, seed=0, augment="colour")


def test_the_size_model_is_not_part_of_the_generalist_checkpoint(tmp_path):
    img, _ = _cells((128, 128), d=12.0)
    head = GeneralistHead("classic", base=4, levels=2, tile=64)
    keys = set(head.state_dict())
    head.start_scale(_maps(img), img)  # loads size-classic
    assert head.size_model() is not None and set(head.state_dict()) == keys
    assert load_head(head.save_pretrained(tmp_path / "g")).config["size_model"] == "size-classic"


def test_the_size_model_runs_once_per_segment_call(monkeypatch):
    """The pipeline asks the head for its size (fit_scale), then predicts at it: one size-model run, not two."""
    import mm_core

    calls = []
    orig = SizeModel.estimate
    monkeypatch.setattr(SizeModel, "estimate", lambda self, g: calls.append(1) or orig(self, g))
    img, _ = _cells((128, 128), d=12.0)
    res = mm_core.segment(img, engine="classic", head="generalist-classic")
    assert len(calls) == 1 and res.maps.scale == pytest.approx(orig(load_head("size-classic"), img), rel=0.05)


def test_train_size_refuses_too_few_or_unannotated_images(tmp_path, capsys):
    from mm_core.train.cli import main

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    img, lab = _cells((96, 96), d=12.0)
    Image.fromarray((img * 255).astype(np.uint8)).save(root / "images" / "a.png")
    tifffile.imwrite(root / "masks" / "a.tif", lab.astype(np.uint16))
    argv = ["size", "--data", str(root), "--out", str(tmp_path / "out"), "--epochs", "1", "--steps", "1", "--no-progress"]
    assert main(argv) == 2 and "needs a validation image" in capsys.readouterr().err
    Image.fromarray((img * 255).astype(np.uint8)).save(root / "images" / "b.png")
    tifffile.imwrite(root / "masks" / "a.tif", np.zeros_like(lab, np.uint16))
    tifffile.imwrite(root / "masks" / "b.tif", np.zeros_like(lab, np.uint16))
    assert main(argv) == 2 and "has annotated objects" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()
