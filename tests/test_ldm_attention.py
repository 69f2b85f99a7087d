"""LDM engine: attention capture processors and the self-cross map (tiny random UNet)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mm_core.engines.ldm.attention import (
    AttentionStore,
    CaptureAttnProcessor,
    box_self_attention,
    install_capture,
    plain_sdpa,
    self_cross,
)
from mm_core.engines.ldm.loading import load_components
from mm_core.engines.ldm.testing import tiny_pipeline_dir


@pytest.fixture(scope="module")
def unet():
    # fp32 CPU copy loaded through from_pretrained (the same path as the real weights)
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_pipeline_dir(), subfolder="unet").eval()


def _inputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 9, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([20]), ctx


def _expected_layer_counts(unet):
    """Transformer blocks per resolution fraction, read off the block structure."""
    n_levels = len(unet.down_blocks)
    counts: dict[float, int] = {}
    for i, blk in enumerate(unet.down_blocks):
        counts[2.0 ** -i] = counts.get(2.0 ** -i, 0) + len(getattr(blk, "attentions", []) or [])
    for j, blk in enumerate(unet.up_blocks):
        f = 2.0 ** -(n_levels - 1 - j)
        counts[f] = counts.get(f, 0) + len(getattr(blk, "attentions", []) or [])
    return counts


def test_capture_leaves_unet_output_unchanged(unet):
    x, t, ctx = _inputs(unet)
    plain_sdpa(unet)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx).sample
    store = AttentionStore(self_fractions=(1.0,), cross_fractions=(0.5, 0.25), latent_hw=(16, 16))
    install_capture(unet, store)
    assert all(isinstance(p, CaptureAttnProcessor) for p in unet.attn_processors.values())
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=ctx).sample
    assert store.self_count > 0 and store.cross_count
    assert (out - ref).abs().max().item() < 1e-5
    # capture off: exactly the parent's SDPA path
    store.enabled = False
    with torch.no_grad():
        off = unet(x, t, encoder_hidden_states=ctx).sample
    assert torch.equal(off, ref)


def test_resolution_from_token_count_and_row_sums(unet):
    x, t, ctx = _inputs(unet, 1)
    store = AttentionStore(latent_hw=(16, 16))
    install_capture(unet, store)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=ctx)
    expected = _expected_layer_counts(unet)
    assert store.self_count == expected[1.0]
    assert store.cross_count == {0.5: expected[0.5], 0.25: expected[0.25]}
    s = store.self_attention()
    assert s.shape == (1, 256, 256)
    torch.testing.assert_close(s.sum(-1), torch.ones(1, 256), atol=1e-5, rtol=0)
    assert store.cross_sum[0.5].shape == (1, 64, 9) and store.cross_sum[0.25].shape == (1, 16, 9)
    for frac, total in store.cross_sum.items():  # per pixel, attention over tokens sums to 1
        torch.testing.assert_close((total / store.cross_count[frac]).sum(-1), torch.ones(total.shape[:2]),
                                   atol=1e-5, rtol=0)
    c = store.cross_attention()
    assert c.shape == (1, 9, 16, 16)
    torch.testing.assert_close(c.sum(1), torch.ones(1, 16, 16), atol=1e-5, rtol=0)


def test_selected_fractions_are_configurable(unet):
    x, t, ctx = _inputs(unet, 2)
    store = AttentionStore(self_fractions=(0.5,), cross_fractions=(1.0,), latent_hw=(16, 16))
    install_capture(unet, store)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=ctx)
    expected = _expected_layer_counts(unet)
    assert store.self_count == expected[0.5] and store.self_attention().shape == (1, 64, 64)
    assert store.cross_count == {1.0: expected[1.0]}


def test_self_cross_chunked_equals_naive_formula():
    rng = np.random.default_rng(0)
    n, k = 50, 3
    s = rng.random((n, n)).astype(np.float32)
    s /= s.sum(1, keepdims=True)
    cross = rng.random((k, n)).astype(np.float32)
    naive = np.zeros((k, n))
    for q in range(k):
        for j in range(n):
            naive[q, j] = sum(cross[q, p] * s[p, j] for p in range(n))
    for chunk in (1, 7, 16, 50, 1000):
        got = self_cross(torch.from_numpy(cross), torch.from_numpy(s), chunk=chunk).numpy()
        np.testing.assert_allclose(got, naive, rtol=1e-5, atol=1e-6)
    # fp16 storage is converted per block
    half = self_cross(torch.from_numpy(cross), torch.from_numpy(s).half(), chunk=8).numpy()
    np.testing.assert_allclose(half, naive, rtol=2e-3, atol=1e-4)


def test_box_self_attention_is_mean_of_box_rows():
    rng = np.random.default_rng(1)
    s = torch.from_numpy(rng.random((20, 20)).astype(np.float32))
    masks = torch.zeros(2, 20, dtype=torch.bool)
    masks[0, [1, 4, 5]] = True
    masks[1, [19]] = True
    got = box_self_attention(s, masks)
    torch.testing.assert_close(got[0], s[[1, 4, 5]].mean(0))
    torch.testing.assert_close(got[1], s[19])


def test_components_load_frozen_and_uncached():
    a = load_components(tiny_pipeline_dir(), device="cpu", dtype=torch.float32)
    b = load_components(str(tiny_pipeline_dir()), device="cpu", dtype=torch.float32)
    assert a is not b and a.model_id == b.model_id  # no process-wide cache: the Matcher holds the engine
    assert not any(p.requires_grad for p in a.unet.parameters())
