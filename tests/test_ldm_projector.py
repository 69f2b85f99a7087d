"""LDM engine: RoIAlign, the exemplar projector, task token and trainable cross-attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mm_core.engines.ldm import LDMEngine
from mm_core.engines.ldm.conditioning import TASK_TOKEN, insert_slots
from mm_core.engines.ldm.projector import ExemplarProjector
from mm_core.engines.ldm.testing import TINY_SIZE, build_tiny_components


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
