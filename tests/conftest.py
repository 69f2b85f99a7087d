"""Shared fixtures: the development data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"development data not found at {SHARED_DATA}")
    return SHARED_DATA


def shared_path(*parts: str) -> Path:
    """Path inside ../shared/data, for parametrising; may not exist."""
    return SHARED_DATA.joinpath(*parts)


@pytest.fixture(autouse=True)
def _settings_from_env():
    """Every test starts from, and leaves, settings read from its own environment.

    A test that sets an ``MM_*`` variable uses :func:`mm_env`; the cache is cleared again
    after monkeypatch restored the environment.
    """
    from mm_core.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture()
def mm_env(monkeypatch):
    """``mm_env(MM_X="1", MM_Y=None)``: set (or, with None, unset) variables; the settings are read
    again on their next use (so a bad value is refused by the call that uses it)."""
    from mm_core.settings import get_settings

    def set_env(**values):
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, str(value))
        get_settings.cache_clear()

    return set_env


@pytest.fixture()
def torch_one_thread():
    """Tiny torch models: one thread avoids oversubscribing a shared CI runner."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def free_port() -> int:
    """A free TCP port on the loopback interface (for an app under test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def blobs_image(seed: int = 0, shape=(96, 96), centres=((24, 24), (24, 70), (70, 30), (72, 72)), r: int = 9):
    """Four bright disks (radius 9) on a noisy background, uint16: a small image with 4 objects."""
    import numpy as np
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    img = np.full(shape, 100.0)
    for c in centres:
        rr, cc = disk(c, r, shape=shape)
        img[rr, cc] = 1000.0
    return (img + rng.normal(0, 20, shape)).clip(0, 65535).astype(np.uint16)


def disk_labels(shape=(80, 80), r=5, centres=((20, 20), (20, 50), (55, 30), (60, 62)), labels=None):
    """Instance labels of disks at ``centres`` (row, col), int32: radius ``r`` (one for all, or one
    per disk), label ``1..N`` or ``labels[k]``; later disks overwrite earlier ones."""
    import numpy as np

    radii = np.broadcast_to(np.asarray(r, float), (len(centres),))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for k, ((y, x), rk) in enumerate(zip(centres, radii)):
        lab[(yy - y) ** 2 + (xx - x) ** 2 <= rk * rk] = k + 1 if labels is None else labels[k]
    return lab


def write_disk_folder(root: Path, r: int, n_images: int = 3, seed: int = 0) -> Path:
    """A segmentation folder ``root/images/*.png`` + ``root/masks/*.tif``: 64² images of 5 disks of radius ``r``."""
    import numpy as np
    import tifffile
    from PIL import Image
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:64, :64]
    for i in range(n_images):
        lab = np.zeros((64, 64), np.uint16)
        for k, (y, x) in enumerate(rng.uniform(8, 56, (5, 2)), 1):
            lab[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k
        img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.0) * 200 + 20 + rng.normal(0, 4, lab.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        tifffile.imwrite(root / "masks" / f"im{i}.tif", lab)
    return root


def tiny_train_argv(kind: str, tmp_path: Path, out: Path, r: int, *settings: str) -> list[str]:
    """``python -m mm_core.train KIND`` arguments for a 1-epoch, 2-step run on a disk folder (:func:`write_disk_folder`)."""
    root = write_disk_folder(tmp_path / "seg" / "disks", r=r)
    return [kind, "--data", str(root), "--out", str(out), "--epochs", "1", "--steps", "2", "--batch-size", "2",
            "--crop", "32", "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--set", "base=4", "levels=2",
            *settings]

