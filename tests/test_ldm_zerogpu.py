"""ZeroGPU: the LDM engine's matches run inside spaces.GPU there, and nothing changes elsewhere."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mm_core.engines.ldm import zerogpu
from mm_core.engines.ldm.engine import LDMEngine
from mm_core.engines.ldm.testing import TINY_SIZE, tiny_pipeline_dir


@pytest.fixture
def fake_spaces(monkeypatch):
    """A stand-in for Hugging Face's ``spaces`` package that records decorated calls."""
    calls = []
    mod = types.ModuleType("spaces")

    def GPU(duration=None):
        def deco(fn):
            def wrapped(*args, **kwargs):
                calls.append(duration)
                return fn(*args, **kwargs)
            return wrapped
        return deco

    mod.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", mod)
    monkeypatch.setattr(zerogpu, "spaces_installed", lambda: True)
    monkeypatch.setattr(zerogpu, "_GPU_MATCH", None)
    return calls


def _engine():
    return LDMEngine.from_pretrained(tiny_pipeline_dir(), device="cpu", dtype=torch.float32, size=TINY_SIZE)


def test_on_zerogpu_matches_run_inside_spaces_gpu(fake_spaces, monkeypatch, mm_env, torch_one_thread):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    mm_env(MM_ZEROGPU_DURATION="90")
    eng = _engine()
    assert zerogpu.on_zerogpu() and eng.cuda_graphs is False
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    maps = eng.match(img)
    assert fake_spaces == [zerogpu.gpu_duration()] == [90] and maps.foreground.shape[0] > 0
    eng.match(img, np.array([[10, 10, 30, 30]], np.float32))
    assert len(fake_spaces) == 2


def test_elsewhere_nothing_changes(fake_spaces, monkeypatch, torch_one_thread):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    eng = _engine()
    assert not zerogpu.on_zerogpu()
    assert eng._run == eng._match_locked
    eng.match(np.random.default_rng(0).random((64, 64)).astype(np.float32))
    assert fake_spaces == []
