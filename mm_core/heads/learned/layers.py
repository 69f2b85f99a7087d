"""Building blocks of the learned heads: a plain U-Net, the fusion stem and a small windowed ViT.

The ViT follows the layout of SAM's image encoder (used by Cellpose-SAM): patch
embedding, blocks with windowed self-attention and a few blocks with global
attention, no class token. Attention is :func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FusionStem(nn.Module):
    """Normalise and fuse image + maps (3 channels) with optional engine features.

    Features are normalised per image and channel (instance norm, no affine) and
    projected by a 1x1 conv, so engines with 20 or 1280 feature channels both fit.

    Parameters
    ----------
    n_features : int
        Feature channels the engine provides (0: none).
    width : int
        Output channels.
    feat_width : int
        Channels of the projected features.
    """

    def __init__(self, n_features: int, width: int = 16, feat_width: int = 16):
        super().__init__()
        self.n_features = int(n_features)
        self.base = nn.Sequential(nn.GroupNorm(1, 3), nn.Conv2d(3, width, 3, padding=1), nn.GELU())
        if self.n_features:
            self.feat_norm = nn.InstanceNorm2d(self.n_features, affine=False)
            self.feat_proj = nn.Conv2d(self.n_features, feat_width, 1)
            self.fuse = nn.Sequential(nn.Conv2d(width + feat_width, width, 3, padding=1), nn.GELU())

    def forward(self, base: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        x = self.base(base)
        if not self.n_features:
            return x
        if feats is None or feats.shape[1] != self.n_features:
            got = 0 if feats is None else feats.shape[1]
            raise ValueError(f"this head expects {self.n_features} engine feature channels, got {got}")
        f = self.feat_proj(self.feat_norm(feats))
        return self.fuse(torch.cat([x, f], dim=1))


class Attention(nn.Module):
    """Multi-head self-attention over a token sequence ``(B, N, D)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def _to_windows(x: torch.Tensor, win: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """``(B, H, W, D)`` -> ``(B * nW, win * win, D)`` with zero padding to multiples of ``win``."""
    b, h, w, d = x.shape
    ph, pw = (-h) % win, (-w) % win
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // win, win, wp // win, win, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, win * win, d), (h, w, hp, wp)


def _from_windows(x: torch.Tensor, win: int, b: int, dims: tuple[int, int, int, int]) -> torch.Tensor:
    h, w, hp, wp = dims
    d = x.shape[-1]
    x = x.view(b, hp // win, wp // win, win, win, d).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, d)
    return x[:, :h, :w]


class Block(nn.Module):
    """Pre-norm transformer block on a ``(B, H, W, D)`` token grid.

    ``window`` > 0: attention inside non-overlapping ``window x window`` windows;
    ``window`` = 0: global attention over all tokens.
    """

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        y = self.norm1(x)
        if self.window:
            yw, dims = _to_windows(y, self.window)
            y = _from_windows(self.attn(yw), self.window, b, dims)
        else:
            y = self.attn(y.reshape(b, h * w, d)).view(b, h, w, d)
        x = x + y
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding + windowed/global attention blocks; returns a ``(B, D, H/p, W/p)`` map.

    Parameters
    ----------
    in_ch : int
        Input channels.
    dim, depth, heads : int
        Token width, number of blocks, attention heads.
    patch : int
        Patch size in pixels.
    window : int
        Window size in tokens for the windowed blocks.
    global_every : int
        Every ``global_every``-th block (1-based) uses global attention, as SAM's
        encoder interleaves a few global blocks among windowed ones.
    """

    def __init__(self, in_ch: int, dim: int = 64, depth: int = 4, heads: int = 4, patch: int = 8,
                 window: int = 4, global_every: int = 2):
        super().__init__()
        self.patch = patch
        self.embed = nn.Conv2d(in_ch, dim, patch, stride=patch)
        # convolutional position encoding: works for any tile size
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.blocks = nn.ModuleList(
            Block(dim, heads, 0 if (i + 1) % global_every == 0 else window) for i in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        t = (t + self.pos(t)).permute(0, 2, 3, 1)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t).permute(0, 3, 1, 2)


def conv_block(cin: int, cout: int, norm: str = "group") -> nn.Sequential:
    """Two 3x3 convolutions, each with a norm and an activation.

    ``norm="group"``: GroupNorm(4) + GELU, convolutions with bias; ``"batch"``: BatchNorm + ReLU,
    no bias (the layer indices are the same, so checkpoint keys read ``N.0`` ... ``N.4``).
    """
    if norm == "group":
        layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.GELU(),
                  nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.GELU()]
    elif norm == "batch":
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                  nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    else:
        raise ValueError(f"norm must be 'group' or 'batch', not {norm!r}")
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Plain U-Net: ``levels`` resolutions, ``base`` channels doubling per level.

    ``upsample="bilinear"``: the coarser map is interpolated to the skip's size and one block reads
    ``[skip, up]`` (the generalist head); ``"transpose"``: a 2x transposed convolution, then a
    block reads ``[up, skip]`` (CellMatch; input sides a multiple of ``2**(levels-1)``).

    Weights and activations are kept channels-last: the same numbers, and on CPU the convolutions
    run about twice as fast (``benchmarks/cellmatch_eval.py speed``). The output is contiguous.
    """

    def __init__(self, cin: int, cout: int, base: int = 16, levels: int = 4, norm: str = "group",
                 upsample: str = "bilinear"):
        super().__init__()
        if upsample not in ("bilinear", "transpose"):
            raise ValueError(f"upsample must be 'bilinear' or 'transpose', not {upsample!r}")
        self.upsample = upsample
        ch = [base * 2 ** i for i in range(levels)]
        self.down = nn.ModuleList([conv_block(cin if i == 0 else ch[i - 1], c, norm) for i, c in enumerate(ch)])
        if upsample == "bilinear":
            self.up = nn.ModuleList([conv_block(ch[i] + ch[i + 1], ch[i], norm) for i in range(levels - 1)])
        else:
            self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in range(levels - 1)])
            self.dec = nn.ModuleList([conv_block(2 * ch[i], ch[i], norm) for i in range(levels - 1)])
        self.out = nn.Conv2d(ch[0], cout, 1)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            if self.upsample == "bilinear":
                x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
                x = self.up[i](torch.cat([skips[i], x], dim=1))
            else:
                x = self.dec[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.out(x).contiguous()

