"""Our modules for the authors' heads: RoIAlign against an independent reference, the pieces'
own identities (frozen BN, sine positions, relative positions, pixel-shuffle readout, causal
normalisation), symmetry checks and forward shapes on small inputs.

Equivalence with the upstream modules (cellpose, trackastra, LOCA) is measured by
``benchmarks/authors_equivalence.py``, which needs packages that cannot be in our requirements.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from mm_core.heads.authors.loca import LOCA, sine_positions
from mm_core.heads.authors.modules import CountRegressor, ExemplarAdapter, TrackRegressor
from mm_core.heads.authors.resnet import FrozenBatchNorm2d, LocaBackbone, ResNet50
from mm_core.engines.roi_align import roi_align
from mm_core.heads.authors.tracker import TrackingTransformer, blockwise_causal_norm
from mm_core.heads.authors.vit import CellposeViT, rel_pos_bias


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    torch.manual_seed(0)


# --- RoIAlign


def _sample(f: np.ndarray, y: float, x: float) -> np.ndarray:
    """One bilinear sample of ``f [C, H, W]`` (zero beyond one pixel outside, edge-clamped inside that)."""
    _, h, w = f.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1]
            + ly * (1 - lx) * f[:, y1, x0] + ly * lx * f[:, y1, x1])


def reference_roi_align(f, box, out, scale, sampling_ratio=-1, aligned=True) -> np.ndarray:
    """RoIAlign from its definition, one sample at a time."""
    off = 0.5 if aligned else 0.0
    x0, y0, x1, y1 = (v * scale - off for v in box)
    rw, rh = x1 - x0, y1 - y0
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / out, rw / out
    gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / out)
    gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / out)
    res = np.zeros((f.shape[0], out, out))
    for py in range(out):
        for px in range(out):
            acc = np.zeros(f.shape[0])
            for iy in range(gh):
                for ix in range(gw):
                    acc += _sample(f, y0 + py * bh + (iy + 0.5) * bh / gh, x0 + px * bw + (ix + 0.5) * bw / gw)
            res[:, py, px] = acc / max(gh * gw, 1)
    return res


BOXES = [
    (8.0, 8.0, 40.0, 40.0),          # inside, integer, 3 samples per bin side
    (3.3, 10.7, 17.9, 30.2),         # fractional
    (-12.0, -6.0, 20.0, 14.0),       # over the top-left edge
    (60.0, 50.0, 100.0, 96.0),       # over the bottom-right edge and beyond
    (30.0, 30.0, 31.0, 33.0),        # far smaller than a bin (one sample)
    (0.0, 0.0, 88.0, 72.0),          # the whole map, 4 samples per bin side
    (20.0, 20.0, 20.0, 20.0),        # empty box: no samples, zeros
]


@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("scale,sampling_ratio,aligned", [(1 / 8, -1, True), (1 / 8, 2, True),
                                                          (1 / 4, -1, False), (1.0, -1, True)])
def test_roi_align_matches_the_definition(box, scale, sampling_ratio, aligned):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(2, 9, 11))
    got = roi_align(torch.from_numpy(f)[None], torch.tensor([[0.0, *box]], dtype=torch.float64), 3,
                    spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
    want = reference_roi_align(f, box, 3, scale, sampling_ratio, aligned)
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-12)


@pytest.mark.parametrize("sr", [1, 2, 3])
def test_roi_align_as_the_projector_calls_it(sr):
    """Batched boxes at stride 8 (the exemplar projector's call): the whole map, the border, sub-pixel boxes."""
    rng = np.random.default_rng(sr)
    feats = rng.normal(size=(2, 4, 9, 11))
    boxes = [(0, 0, 0, 88, 72), (1, 3.5, 10.2, 40.7, 30), (0, 70, 50, 88, 72), (1, 12, 12, 14.5, 13)]
    got = roi_align(torch.from_numpy(feats), torch.tensor(boxes, dtype=torch.float64), 3, spatial_scale=1 / 8,
                    sampling_ratio=sr, aligned=True).numpy()
    want = np.stack([reference_roi_align(feats[int(b[0])], b[1:], 3, 1 / 8, sr, True) for b in boxes])
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_roi_align_is_exact_on_a_linear_map():
    """Bilinear sampling reproduces a plane: each bin is the plane at the bin centre."""
    h, w = 16, 20
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    plane = (2.0 * yy - 0.5 * xx + 3.0)[None, None]
    box = (13.0, 21.0, 77.0, 101.0)  # 1/8 scale: well inside
    got = roi_align(plane, [torch.tensor([box], dtype=torch.float64)], 4, spatial_scale=1 / 8)[0, 0]
    x0, y0, x1, y1 = (v / 8 - 0.5 for v in box)
    cy = y0 + (torch.arange(4, dtype=torch.float64) + 0.5) * (y1 - y0) / 4
    cx = x0 + (torch.arange(4, dtype=torch.float64) + 0.5) * (x1 - x0) / 4
    torch.testing.assert_close(got, 2.0 * cy[:, None] - 0.5 * cx[None, :] + 3.0)


def test_roi_align_batch_index_and_list_form_agree():
    feats = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    b0, b1 = torch.tensor([[8.0, 8, 50, 60]], dtype=torch.float64), torch.tensor([[1.0, 2, 30, 30]], dtype=torch.float64)
    rows = torch.tensor([[1.0, 8, 8, 50, 60], [0.0, 1, 2, 30, 30]], dtype=torch.float64)
    a = roi_align(feats, rows, 3, 1 / 8)
    b = roi_align(feats, [b1, b0], 3, 1 / 8)
    torch.testing.assert_close(a, b[[1, 0]])
    assert roi_align(feats, rows[:0], 3).shape == (0, 4, 3, 3)


# --- ResNet-50 / backbone


def test_frozen_batch_norm_is_batch_norm_in_eval():
    bn = FrozenBatchNorm2d(5)
    for t in bn.buffers():
        t.copy_(torch.rand(5) + 0.5)
    x = torch.randn(2, 5, 4, 4)
    want = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=1e-5)
    torch.testing.assert_close(bn(x), want)


def test_resnet_stages_and_loca_backbone_shapes():
    net = ResNet50().eval()
    with torch.no_grad():
        shapes = [tuple(s.shape) for s in net.stages(torch.randn(1, 3, 64, 64))]
        assert shapes == [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
        backbone = LocaBackbone(8).eval()
        assert backbone(torch.randn(1, 3, 64, 96)).shape == (1, 3584, 8, 12)


# --- LOCA


def test_sine_positions_formula():
    pos = sine_positions(1, 4, 5, 16)[0]  # [16, 4, 5]
    for c, y, x in [(0, 2, 3), (3, 1, 4), (9, 3, 0), (14, 0, 2)]:
        axis, i = (y, c) if c < 8 else (x, c - 8)
        arg = (axis + 1) / 10000 ** (2 * (i // 2) / 16)
        assert float(pos[c, y, x]) == pytest.approx(math.sin(arg) if i % 2 == 0 else math.cos(arg), abs=1e-6)


@pytest.fixture(scope="module")
def loca():
    torch.manual_seed(0)
    return LOCA().eval()


def test_loca_responses_shape_and_box_order(loca):
    x = torch.randn(1, 3, 128, 128)
    boxes = torch.tensor([[[10.0, 12, 40, 44], [70, 60, 100, 90], [30, 80, 50, 120]]])
    with torch.no_grad():
        maps = loca.forward_before_reg(x, boxes)
        swapped = loca.forward_before_reg(x, boxes[:, [2, 0, 1]])
        one = loca.forward_before_reg(x, boxes[:, :1])
        again = loca.responses(loca.encode(x), boxes[:, :1])  # the encoded image reused for another box set
    assert [tuple(m.shape) for m in maps] == [(1, 256, 16, 16)] * 3
    assert len(one) == 3
    for a, b in zip(maps, swapped):  # the max over boxes does not depend on their order
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(maps[-1], one[-1])
    torch.testing.assert_close(again[-1], one[-1])


def test_loca_forward_reg_shapes(loca):
    responses = [torch.randn(1, 256, 64, 64) for _ in range(3)]
    with torch.no_grad():
        density, aux = loca.forward_reg(responses, torch.rand(1, 4, 64, 64), torch.randn(1, 320, 64, 64),
                                        with_aux=True)
    assert density.shape == (1, 1, 512, 512) and [tuple(a.shape) for a in aux] == [(1, 1, 512, 512)] * 2


# --- adapter and regressors


def test_adapter_mean_of_pooled_boxes():
    torch.manual_seed(1)
    adapter = ExemplarAdapter().eval()
    response = torch.randn(1, 256, 64, 64)
    boxes = torch.tensor([[10.0, 20, 60, 90], [200, 100, 260, 140], [0, 0, 511, 511]])
    with torch.no_grad():
        each = adapter.forward_boxes(response, boxes)
        mean = adapter(response, boxes)
        pooled = adapter.pooled(response, boxes)
    assert each.shape == (3, 768) and mean.shape == (1, 768) and pooled.shape == (3, 256, 3, 3)
    # conv1 and fc are affine: the embedding of the mean pooled box is the mean of the embeddings
    torch.testing.assert_close(mean[0], each.mean(0), atol=1e-4, rtol=1e-4)


def test_regressor_shapes():
    torch.manual_seed(2)
    reg = TrackRegressor(vit_depth=1).eval()
    with torch.no_grad():
        assert reg.features(torch.rand(1, 4, 64, 64), torch.randn(1, 320, 64, 64)).shape == (1, 3, 512, 512)
        assert reg.instance_embedding(torch.rand(5, 64, 64), torch.rand(5, 64, 64)).shape == (1, 5, 320)
        assert CountRegressor().eval()(torch.randn(1, 324, 64, 64)).shape == (1, 1, 512, 512)


# --- ViT


def test_rel_pos_bias_matches_a_loop():
    torch.manual_seed(3)
    h, w, c = 3, 4, 5
    q = torch.randn(2, h * w, c, dtype=torch.float64)
    th, tw = torch.randn(2 * h - 1, c, dtype=torch.float64), torch.randn(9, c, dtype=torch.float64)  # tw resized 9 -> 7
    tw7 = F.interpolate(tw.t()[None], size=2 * w - 1, mode="linear")[0].t()
    bias = rel_pos_bias(q, th, tw, h, w)
    for i in range(h * w):
        for j in range(h * w):
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            want = q[:, i] @ th[yi - yj + h - 1] + q[:, i] @ tw7[xi - xj + w - 1]
            torch.testing.assert_close(bias[:, i, j], want)


def test_vit_readout_is_a_pixel_shuffle_and_feat_injection():
    torch.manual_seed(4)
    vit = CellposeViT(depth=1).eval()  # the real 32 x 32 grid, one block
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        y = vit(x)
        tokens = vit.encoder.blocks[0](vit.embed(x))
        shuffled = F.pixel_shuffle(vit.out(vit.encoder.neck(tokens.permute(0, 3, 1, 2))), 8)
        with_zero_feat = vit(x, torch.zeros_like(x))
        feat = torch.randn_like(x)
        mixed = vit.embed(x, feat)
        plain = vit.encoder.patch_embed(x)
        want = plain + plain * vit.encoder.patch_embed(feat) * 0.5 + vit.encoder.pos_embed
    assert y.shape == (1, 3, 256, 256)
    torch.testing.assert_close(y, shuffled, atol=1e-5, rtol=1e-5)
    # zero feat still passes the patch-embed bias: x * bias * 0.5 is added
    bias = vit.encoder.patch_embed.proj.bias
    torch.testing.assert_close(vit.embed(x, torch.zeros_like(x)),
                               plain * (1 + 0.5 * bias) + vit.encoder.pos_embed)
    torch.testing.assert_close(mixed, want)
    assert with_zero_feat.shape == y.shape


# --- tracker


def _detections(n: int = 12, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 4, (1, n), generator=g).sort().values
    coords = torch.cat([t[..., None].float(), torch.rand(1, n, 2, generator=g) * 300], dim=-1)
    return t, coords, torch.randn(1, n, 7, generator=g)


def test_tracker_is_permutation_equivariant_and_attn_feat_adds():
    torch.manual_seed(6)
    model = TrackingTransformer(num_encoder_layers=1, num_decoder_layers=1).eval()
    t, coords, feats = _detections()
    perm = torch.randperm(coords.shape[1])
    extra = torch.randn(1, coords.shape[1], 320)
    with torch.no_grad():
        a = model(coords, feats)
        b = model(coords[:, perm], feats[:, perm])
        zero = model(coords, feats, attn_feat=torch.zeros_like(extra))
        c = model(coords, feats, attn_feat=extra)
    assert a.shape == (1, 12, 12)
    torch.testing.assert_close(b, a[:, perm][:, :, perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(zero, a)
    assert not torch.allclose(c, a)
    probs = model.normalize_output(a, t, coords)
    assert probs.shape == a.shape and float(probs.min()) >= 0 and float(probs.max()) <= 1


def _causal_norm_loop(a, t, invalid, eps=1e-6):
    n = len(t)
    out = torch.zeros_like(a)
    a = a.masked_fill(invalid, -math.inf)
    for i in range(n):
        for j in range(n):
            if t[j] > t[i]:  # normalise over the i' of frame t_i (column j)
                block = [k for k in range(n) if t[k] == t[i]]
                vals = a[block, j]
            else:  # over the j' of frame t_j (row i)
                block = [k for k in range(n) if t[k] == t[j]]
                vals = a[i, block]
            m = max(float(vals.max()), 0.0)
            out[i, j] = math.exp(a[i, j] - m) / (float(torch.exp(vals - m).sum()) + eps + math.exp(-m))
    return out.clamp(0, 1)


def test_quiet_softmax_matches_a_loop():
    g = torch.Generator().manual_seed(7)
    t = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    a = torch.randn(8, 8, generator=g, dtype=torch.float64) * 3
    invalid = torch.rand(8, 8, generator=g) > 0.8
    torch.testing.assert_close(blockwise_causal_norm(a, t, invalid), _causal_norm_loop(a, t, invalid))
    quiet = blockwise_causal_norm(torch.full((4, 4), -30.0, dtype=torch.float64), torch.tensor([0, 0, 1, 1]))
    assert float(quiet.max()) < 1e-6  # all-negative logits: nothing is linked
