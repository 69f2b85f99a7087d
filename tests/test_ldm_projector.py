"""LDM engine: RoIAlign, the exemplar projector, task token and trainable cross-attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mm_core.engines.ldm import LDMEngine
from mm_core.engines.ldm.conditioning import TASK_TOKEN, insert_slots
from mm_core.engines.ldm.projector import ExemplarProjector, roi_align
from mm_core.engines.ldm.testing import TINY_SIZE, build_tiny_components


def _bilinear(feat, y, x):
    """torchvision's roi_align bilinear_interpolate, written out."""
    c, h, w = feat.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(c)
    y, x = max(y, 0.0), max(x, 0.0)
    y_lo, x_lo = int(y), int(x)
    if y_lo >= h - 1:
        y_lo = y_hi = h - 1
        y = float(y_lo)
    else:
        y_hi = y_lo + 1
    if x_lo >= w - 1:
        x_lo = x_hi = w - 1
        x = float(x_lo)
    else:
        x_hi = x_lo + 1
    ly, lx = y - y_lo, x - x_lo
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * feat[:, y_lo, x_lo] + hy * lx * feat[:, y_lo, x_hi]
            + ly * hx * feat[:, y_hi, x_lo] + ly * lx * feat[:, y_hi, x_hi])


def _roi_align_reference(feats, boxes, out, scale, sr):
    res = np.zeros((len(boxes), feats.shape[1], out, out))
    for k, (b, x0, y0, x1, y1) in enumerate(boxes):
        f = feats[int(b)]
        sx, sy = x0 * scale - 0.5, y0 * scale - 0.5
        bw, bh = (x1 - x0) * scale / out, (y1 - y0) * scale / out
        for ph in range(out):
            for pw in range(out):
                acc = np.zeros(f.shape[0])
                for iy in range(sr):
                    y = sy + ph * bh + (iy + 0.5) * bh / sr
                    for ix in range(sr):
                        x = sx + pw * bw + (ix + 0.5) * bw / sr
                        acc += _bilinear(f, y, x)
                res[k, :, ph, pw] = acc / (sr * sr)
    return res


@pytest.mark.parametrize("sr", [1, 2, 3])
def test_roi_align_matches_reference(sr):
    rng = np.random.default_rng(sr)
    feats = rng.normal(size=(2, 4, 9, 11)).astype(np.float32)
    boxes = np.array([[0, 0, 0, 88, 72],        # whole image (stride 8)
                      [1, 3.5, 10.2, 40.7, 30],  # inside
                      [0, 70, 50, 88, 72],       # touching the bottom-right border
                      [1, 12, 12, 14.5, 13]],    # smaller than a feature pixel
                     dtype=np.float32)
    got = roi_align(torch.from_numpy(feats), torch.from_numpy(boxes), 3, spatial_scale=1 / 8,
                    sampling_ratio=sr).numpy()
    ref = _roi_align_reference(feats, boxes, 3, 1 / 8, sr)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trained_engine(tmp_path_factory):
    parts = build_tiny_components(seed=3)
    eng = LDMEngine.from_components(**parts, device="cpu", dtype=torch.float32, size=TINY_SIZE)
    assert eng.projector is not None and not eng.projector_trained
    torch.manual_seed(5)
    fresh = ExemplarProjector(parts["feature_extractor"], 32)
    weights = {f"projector.{k}": v.contiguous() for k, v in fresh.head_state_dict().items()}
    weights["task_token"] = torch.randn(32)
    path = tmp_path_factory.mktemp("heads") / "heads.safetensors"
    save_file(weights, str(path))
    eng.load_heads(path)
    return eng, fresh


def test_projector_embeddings_and_loaded_weights(trained_engine):
    eng, fresh = trained_engine
    assert eng.projector_trained
    torch.testing.assert_close(eng.projector.linear.weight, fresh.linear.weight)
    x = torch.rand(1, 3, TINY_SIZE, TINY_SIZE)
    emb = eng.exemplar_embeddings(x, np.array([[8, 8, 40, 40], [60, 60, 100, 90]]), per_object=True)
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()
    mean = eng.exemplar_embeddings(x, np.array([[8, 8, 40, 40], [60, 60, 100, 90]]), per_object=False)
    torch.testing.assert_close(mean[0], emb.mean(0))


def test_task_token_precedes_template_and_slots(trained_engine):
    eng, _ = trained_engine
    text = eng.text()
    assert text.prompt.startswith(TASK_TOKEN) and text.slot == 2
    ids = eng.c.tokenizer(text.prompt).input_ids
    assert ids[1] == eng.c.tokenizer.convert_tokens_to_ids(TASK_TOKEN)
    hid = torch.zeros(1, 5, 3)
    emb = torch.ones(2, 3)
    out = insert_slots(hid, 2, emb)
    assert out.shape == (1, 7, 3) and out[0, 2:4].eq(1).all() and out[0, [0, 1, 4, 5, 6]].eq(0).all()


def test_trained_projector_modes_one_pass_per_frame(trained_engine):
    eng, _ = trained_engine
    calls = []
    handle = eng.c.unet.register_forward_hook(lambda *a: calls.append(1))
    img = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    boxes = [[5, 5, 30, 30], [40, 40, 70, 60], [60, 10, 90, 35]]
    try:
        one = eng.match(img, boxes)
        assert len(calls) == 1 and one.info["conditioning_kind"] == "projector"
        assert "trained projector" in one.conditioning and "task token" in one.conditioning
        per = eng.match_objects(img, boxes)
        assert len(calls) == 2  # three objects, one UNet pass
    finally:
        handle.remove()
    maps = per.info["object_maps"]
    assert maps.shape == (3, 16, 16) and maps.min() >= 0 and maps.max() <= 1
    assert not np.allclose(maps[0], maps[1])


def test_exemplar_cross_attention_is_differentiable(trained_engine):
    eng, _ = trained_engine
    x = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
    maps = eng.exemplar_cross_attention(x, [np.array([[8, 8, 40, 40]]), np.array([[50, 50, 90, 80],
                                                                                  [10, 60, 40, 100]])])
    assert maps.shape == (2, 16, 16) and maps.requires_grad
    assert float(maps.detach().min()) >= 0 and float(maps.detach().max()) <= 1
    target = torch.zeros(2, 16, 16)
    target[:, 2:6, 2:6] = 1
    loss = torch.nn.functional.binary_cross_entropy(maps.clamp(1e-6, 1 - 1e-6), target)
    loss.backward()
    g = eng.projector.linear.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert eng.projector.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in eng.c.unet.parameters())
    assert not eng.store.keep_grad
