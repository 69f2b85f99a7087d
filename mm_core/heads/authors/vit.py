"""The Cellpose-SAM flow regressor: a SAM ViT-L image encoder read out as 3-channel flows.

Written by us from the papers (Kirillov et al., "Segment Anything", ICCV 2023: the ViT image
encoder with decomposed relative positions and the convolutional neck; Pachitariu, Rariden,
Stringer, "Cellpose-SAM", 2025: 8-pixel patches, a 32 x 32 token grid for 256-pixel tiles,
global attention in every block and a linear "pixel shuffle" readout) and the key layout in
``../shared/research/authors_heads.md`` (section 0.3). The MicroscopyMatching authors add one
input: ``forward(x, feat)`` embeds ``feat`` with the same patch embedding and mixes it in as
``x + x * feat * 0.5`` before the position embedding.

State-dict names and order follow the checkpoint: ``W2``, ``diam_labels``, ``diam_mean``,
``encoder.{pos_embed, patch_embed.proj, blocks.N.{norm1, attn.{rel_pos_h, rel_pos_w, qkv,
proj}, norm2, mlp.{lin1, lin2}}, neck.{0..3}}``, ``out``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CellposeViT", "rel_pos_bias"]

#: SAM ViT-L: width, depth, heads, MLP width; the blocks SAM ran globally (others windowed, 14 x 14).
VIT_L = {"dim": 1024, "depth": 24, "heads": 16, "mlp": 4096, "global_blocks": (5, 11, 17, 23), "window": 14}


def _resized_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Relative-position table ``[L, C]`` linearly resampled to ``length`` rows (as SAM does)."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t()[None], size=length, mode="linear")[0].t()


def _relative(table: torch.Tensor, n: int) -> torch.Tensor:
    """``[n, n, C]``: row ``(i, j)`` is the table entry of offset ``i - j`` (queries and keys on one grid)."""
    table = _resized_table(table, 2 * n - 1)
    idx = torch.arange(n, device=table.device)
    return table[idx[:, None] - idx[None, :] + n - 1]


def rel_pos_bias(q: torch.Tensor, table_h: torch.Tensor, table_w: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Decomposed relative-position attention bias ``[B, h*w, h*w]`` of queries ``q [B, h*w, C]``.

    ``bias[(y, x), (y', x')] = q(y, x) . Rh[y - y'] + q(y, x) . Rw[x - x']`` (unscaled queries).
    """
    b, _, c = q.shape
    r_q = q.reshape(b, h, w, c)
    rel_h = torch.einsum("byxc,ykc->byxk", r_q, _relative(table_h, h))
    rel_w = torch.einsum("byxc,xkc->byxk", r_q, _relative(table_w, w))
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, h * w, h * w)


class Attention(nn.Module):
    """Global multi-head self-attention with decomposed relative positions, on ``[B, H, W, C]``."""

    def __init__(self, dim: int, heads: int, table_len: int):
        super().__init__()
        self.heads = heads
        head_dim = dim // heads
        self.rel_pos_h = nn.Parameter(torch.zeros(table_len, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(table_len, head_dim))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention output, same shape as ``x``."""
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.heads, h * w, c // self.heads).unbind(0)
        bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, h, w).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.view(b, self.heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        return self.proj(out)


class MLPBlock(nn.Module):
    """``lin2(gelu(lin1(x)))``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1, self.lin2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The perceptron."""
        return self.lin2(self.act(self.lin1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6), global attention."""

    def __init__(self, dim: int, heads: int, mlp: int, table_len: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, table_len)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + attn(norm1(x))``, then ``+ mlp(norm2(.))``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of ``[B, C, H, W]`` (eps 1e-6)."""

    def __init__(self, n: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``x``."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - mean) / torch.sqrt(var + self.eps) + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    """Strided convolution to tokens, channels last ``[B, H/ps, W/ps, C]``."""

    def __init__(self, ps: int, dim: int, cin: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, kernel_size=ps, stride=ps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens."""
        return self.proj(x).permute(0, 2, 3, 1)


class Encoder(nn.Module):
    """SAM image encoder (ViT-L widths) on a ``grid x grid`` token grid; every block global."""

    def __init__(self, ps: int, grid: int, depth: int, dim: int, heads: int, mlp: int, out_chans: int = 256):
        super().__init__()
        spec = VIT_L
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, dim))
        self.patch_embed = PatchEmbed(ps, dim)
        # SAM trained windowed blocks with (2 * window - 1)-row tables and global ones with (2 * 64 - 1)
        lengths = [127 if i in spec["global_blocks"] else 2 * spec["window"] - 1 for i in range(depth)]
        self.blocks = nn.ModuleList([Block(dim, heads, mlp, n) for n in lengths])
        self.neck = nn.Sequential(nn.Conv2d(dim, out_chans, 1, bias=False), LayerNorm2d(out_chans),
                                  nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False), LayerNorm2d(out_chans))


class CellposeViT(nn.Module):
    """Cellpose-SAM's transformer with the authors' feature injection.

    Parameters
    ----------
    depth : int
        Blocks (24 for ViT-L; fewer only for tests: blocks 5, 11, ... keep their 127-row tables).
    ps : int
        Patch size (8).
    nout : int
        Output channels (3: flow y, flow x, cell probability).
    bsize : int
        Tile side (256): the token grid is ``bsize / ps``.
    """

    def __init__(self, depth: int = VIT_L["depth"], ps: int = 8, nout: int = 3, bsize: int = 256):
        super().__init__()
        self.ps, self.nout = ps, nout
        self.encoder = Encoder(ps, bsize // ps, depth, VIT_L["dim"], VIT_L["heads"], VIT_L["mlp"])
        self.out = nn.Conv2d(256, nout * ps * ps, kernel_size=1)
        eye = torch.eye(nout * ps * ps).reshape(nout * ps * ps, nout, ps, ps)
        self.W2 = nn.Parameter(eye, requires_grad=False)
        self.diam_labels = nn.Parameter(torch.tensor([30.0]), requires_grad=False)
        self.diam_mean = nn.Parameter(torch.tensor([30.0]), requires_grad=False)

    def embed(self, x: torch.Tensor, feat: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``[B, h, w, C]`` of ``x`` (with ``feat`` mixed in) plus the position embedding."""
        enc = self.encoder
        tokens = enc.patch_embed(x)
        if feat is not None:
            tokens = tokens + tokens * enc.patch_embed(feat) * 0.5
        return tokens + enc.pos_embed

    def forward(self, x: torch.Tensor, feat: torch.Tensor | None = None) -> torch.Tensor:
        """Flows and cell probability of tiles.

        Parameters
        ----------
        x : Tensor
            Normalised tiles ``[B, 3, bsize, bsize]``.
        feat : Tensor, optional
            ``[B, 3, bsize, bsize]`` SD-derived features tiled like ``x``.

        Returns
        -------
        Tensor
            ``[B, nout, bsize, bsize]`` (channels: flow y, flow x, cell probability logit).
        """
        tokens = self.embed(x, feat)
        for block in self.encoder.blocks:
            tokens = block(tokens)
        y = self.out(self.encoder.neck(tokens.permute(0, 3, 1, 2)))
        return F.conv_transpose2d(y, self.W2, stride=self.ps)
