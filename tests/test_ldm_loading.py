"""LDM engine: where the weights come from, and refusing clearly (and fast) without them."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import pytest
import torch

from mm_core import engines
from mm_core.engines.ldm import availability, load_components, resolve_model_id, weights_present
from mm_core.engines.ldm.loading import DEFAULT_MODEL_ID, MODEL_ENV
from mm_core.engines.ldm.testing import tiny_pipeline_dir
from mm_core.errors import ModelUnavailableError


@contextmanager
def no_hang(seconds: int = 120):
    """Fail (instead of hanging the suite) if the block does not return in time."""
    def boom(*_):
        raise TimeoutError(f"did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_model_id_from_argument_env_or_default(mm_env):
    mm_env(**{MODEL_ENV: None})
    assert resolve_model_id() == DEFAULT_MODEL_ID == "CompVis/stable-diffusion-v1-4"
    mm_env(**{MODEL_ENV: "/data/sd14"})
    assert resolve_model_id() == "/data/sd14"
    assert resolve_model_id("other/model") == "other/model"


def test_missing_local_folder_raises_naming_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-such-sd-folder"
    with no_hang(), pytest.raises(ModelUnavailableError) as err:
        load_components(missing)
    msg = str(err.value)
    assert str(missing) in msg and MODEL_ENV in msg and "does not exist" in msg
    half = tmp_path / "half"
    (half / "unet").mkdir(parents=True)
    with pytest.raises(ModelUnavailableError, match="lacks vae/, text_encoder/|lacks vae"):
        load_components(half)


def test_uncached_hub_id_raises_without_downloading(monkeypatch, mm_env):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mm_env(MM_ALLOW_DOWNLOAD="1")  # still no download: offline wins
    model = "mm-tests-nobody/stable-diffusion-never-cached"
    with no_hang(), pytest.raises(ModelUnavailableError) as err:
        load_components(model, device="cpu")
    msg = str(err.value)
    assert model in msg and MODEL_ENV in msg and "downloads are off" in msg


def test_engine_from_env_var(mm_env):
    from mm_core.engines.ldm import LDMEngine

    mm_env(**{MODEL_ENV: str(tiny_pipeline_dir())})
    eng = LDMEngine.from_pretrained(device="cpu", dtype=torch.float32, size=128)
    assert eng.c.model_id == str(tiny_pipeline_dir())


def test_weights_present_and_availability():
    ok, why = weights_present(tiny_pipeline_dir())
    assert ok, why
    ok, why = weights_present("/nonexistent/sd")
    assert not ok and "not on this machine" in why
    ok, why = availability()  # no SD v1.4 weights on a test machine, GPU or not
    assert ok is False
    assert ("no CUDA GPU" in why) if not torch.cuda.is_available() else ("not on this machine" in why)


def test_auto_engine_picks_weight_free_engine_here():
    ok, why = engines._ldm_available()
    assert not ok and why
    pytest.importorskip("mm_core.engines.classic")
    name, reason = engines.choose_engine("auto")
    assert name == "classic" and "weight-free" in reason and why in reason
    assert engines.create_engine(name).name == "classic"
