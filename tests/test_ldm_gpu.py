"""LDM engine on a CUDA GPU (fp16), tiny pipeline: run with ``pytest -m gpu``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mm_core.engines.ldm import LDMEngine, plain_sdpa
from mm_core.engines.ldm.testing import TINY_SIZE, tiny_pipeline_dir

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]
    img = 0.2 * rng.random((128, 128))
    for cy, cx in [(30, 30), (90, 80), (40, 100)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 150] += 0.8
    return img.astype(np.float32)


def test_fp16_cuda_maps_match_cpu_fp32():
    cpu = LDMEngine.from_pretrained(tiny_pipeline_dir(), device="cpu", dtype=torch.float32, size=TINY_SIZE)
    gpu = LDMEngine.from_pretrained(tiny_pipeline_dir(), device="cuda", dtype=torch.float16, size=TINY_SIZE)
    assert gpu.c.unet.dtype == torch.float16 and gpu.c.device.type == "cuda"
    img = _image()
    for boxes in (None, [[20, 20, 42, 42]]):
        a, b = cpu.match(img, boxes), gpu.match(img, boxes)
        assert np.isfinite(b.foreground).all() and np.isfinite(b.features).all()
        r = np.corrcoef(a.foreground.ravel(), b.foreground.ravel())[0, 1]
        assert r > 0.98, r
        np.testing.assert_array_equal(b.foreground, gpu.match(img, boxes).foreground)  # seeded


def test_capture_unchanged_on_cuda_fp32():
    from diffusers import UNet2DConditionModel

    from mm_core.engines.ldm.attention import AttentionStore, install_capture

    unet = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir(), subfolder="unet").cuda().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g).cuda()
    ctx = torch.randn(1, 9, unet.config.cross_attention_dim, generator=g).cuda()
    t = torch.tensor([20]).cuda()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    plain_sdpa(unet)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx).sample
        install_capture(unet, AttentionStore(latent_hw=(16, 16)))
        out = unet(x, t, encoder_hidden_states=ctx).sample
    diff = (out - ref).abs().max().item()
    assert diff < 1e-5, diff


def test_cuda_graph_replay_matches_eager():
    from mm_core.engines.ldm.testing import build_tiny_components

    parts = build_tiny_components(seed=1)
    graphed = LDMEngine.from_components(**parts, device="cuda", dtype=torch.float16, size=TINY_SIZE)
    assert graphed.cuda_graphs
    img = _image()
    first = [graphed.match(img, b) for b in (None, [[20, 20, 42, 42]])]
    again = [graphed.match(img, b) for b in (None, [[20, 20, 42, 42]])]  # replays
    assert graphed.cuda_graphs and graphed.graph_error is None and len(graphed._graphed._graphs) == 1
    graphed.cuda_graphs = False
    eager = [graphed.match(img, b) for b in (None, [[20, 20, 42, 42]])]
    for a, b, c in zip(first, again, eager):
        np.testing.assert_array_equal(a.foreground, b.foreground)
        np.testing.assert_allclose(a.foreground, c.foreground, atol=2e-3)
        np.testing.assert_allclose(a.features, c.features, atol=2e-2, rtol=1e-2)
