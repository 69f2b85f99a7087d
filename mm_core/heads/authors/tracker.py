"""The tracking transformer: association logits between detections of a window of frames.

Written by us from the paper (Gallusser & Weigert, "Trackastra: Transformer-based cell tracking
for live-cell microscopy", ECCV 2024) and the facts in ``../shared/research/authors_heads.md``
(section 1.3): the configuration the authors use (2-D coordinates, 7 region features, width 320,
4 heads, 6 + 6 layers, 32 Fourier features per coordinate, 8 per feature, window 4, spatial
cutoff 256, rotary positions, "v0" distance bias, quiet-softmax causal normalisation) and the
names and shapes of the checkpoint's ``track_model.*`` entries. The authors add one input:
``attn_feat``, per-detection embeddings added after the input projection.

Shape of the computation: Fourier features of ``(t, y, x)`` and of the region features ->
linear -> LayerNorm -> encoder (self-attention) and decoder (cross-attention to the encoder)
-> two feed-forward heads -> ``A = X Y^T``. In every attention, pairs further apart than the
spatial cutoff get a fixed penalty, ``exp(-0.1 * |dx|)`` over (t, y, x) is added, and queries
and keys are rotated by their coordinates (rotary embedding, Su et al. 2021).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AUTHORS_CONFIG", "TrackingTransformer", "blockwise_causal_norm"]

#: The authors' configuration (their ``_utils/config.yaml``, as recorded in the research note).
AUTHORS_CONFIG = {"coord_dim": 2, "feat_dim": 7, "d_model": 320, "nhead": 4, "num_encoder_layers": 6,
                  "num_decoder_layers": 6, "pos_embed_per_dim": 32, "feat_embed_per_dim": 8, "window": 4,
                  "spatial_pos_cutoff": 256, "causal_norm": "quiet_softmax"}
#: Penalty added to the logits of ignored pairs (finite, so mixed precision stays finite).
IGNORE = -1e3


def _log_frequencies(cutoff: float, n: int, start: float = 1.0) -> nn.Parameter:
    """``[1, 1, n]`` frequencies spaced geometrically from ``1 / start`` down to ``1 / cutoff``."""
    return nn.Parameter(torch.exp(torch.linspace(-math.log(start), -math.log(cutoff), n))[None, None])


class FourierFeatures(nn.Module):
    """Per input dimension ``d``: ``[sin(pi/2 x_d f_d), cos(pi/2 x_d f_d)]``, concatenated over ``d``."""

    def __init__(self, cutoffs: tuple[float, ...], n_pos: tuple[int, ...]):
        super().__init__()
        self.freqs = nn.ParameterList([_log_frequencies(c, n // 2) for c, n in zip(cutoffs, n_pos)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]`` -> ``[B, N, sum(n_pos)]``."""
        parts = []
        for d, freq in enumerate(self.freqs):
            arg = 0.5 * math.pi * x[..., d:d + 1] * freq[0]
            parts.append(torch.cat([arg.sin(), arg.cos()], dim=-1))
        return torch.cat(parts, dim=-1)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Each consecutive pair ``(a, b)`` -> ``(-b, a)``."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


class RotaryEncoding(nn.Module):
    """Rotary position embedding over ``(t, y, x)``: channel pairs rotated by ``pi/2 * coord * f``."""

    def __init__(self, cutoffs: tuple[float, ...], n_pos: tuple[int, ...]):
        super().__init__()
        self.freqs = nn.ParameterList([_log_frequencies(c, n // 2) for c, n in zip(cutoffs, n_pos)])

    def forward(self, q: torch.Tensor, k: torch.Tensor, coords: torch.Tensor):
        """Rotated ``q, k [B, H, N, C]`` for ``coords [B, N, D]``."""
        angle = torch.cat([0.5 * math.pi * coords[..., d:d + 1] * f[0] for d, f in enumerate(self.freqs)], dim=-1)
        cos = angle.cos().repeat_interleave(2, dim=-1)[:, None]
        sin = angle.sin().repeat_interleave(2, dim=-1)[:, None]
        return q * cos + _rotate_pairs(q) * sin, k * cos + _rotate_pairs(k) * sin


class RelativeAttention(nn.Module):
    """Multi-head attention with the spatial cutoff, distance bias and rotary positions."""

    def __init__(self, coord_dim: int, dim: int, heads: int, cutoff_spatial: float, cutoff_temporal: float):
        super().__init__()
        self.heads, self.cutoff = heads, cutoff_spatial
        self.q_pro, self.k_pro, self.v_pro, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        split = 2 * (dim // (2 * (coord_dim + 1) * heads))
        n_pos = (dim // heads - coord_dim * split,) + (split,) * coord_dim
        self.rot_pos_enc = RotaryEncoding((cutoff_temporal,) + (cutoff_spatial,) * coord_dim, n_pos)

    def bias(self, coords: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Additive mask ``[B, 1, N, N]``."""
        far = torch.cdist(coords[..., 1:], coords[..., 1:]) > self.cutoff
        mask = torch.zeros(far.shape, dtype=coords.dtype, device=coords.device).masked_fill(far, IGNORE)
        mask = mask + torch.exp(-0.1 * torch.cdist(coords, coords))
        if padding_mask is not None:
            mask = mask.masked_fill(padding_mask[:, None, :] | padding_mask[:, :, None], IGNORE)
        return mask[:, None]

    def forward(self, query, key, value, coords, padding_mask=None) -> torch.Tensor:
        """``[B, N, D]`` attention output."""
        b, n, d = query.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_pro(query)), split(self.k_pro(key)), split(self.v_pro(value))
        q, k = self.rot_pos_enc(q, k, coords)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(coords, padding_mask).to(q.dtype))
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    """``fc2(gelu(fc1(x)))`` with a 2x wider hidden layer."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The perceptron."""
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """``x = norm1(x); x = x + attn(x, x, x); x = x + mlp(norm2(x))``."""

    def __init__(self, coord_dim, dim, heads, cutoff_spatial, window):
        super().__init__()
        self.attn = RelativeAttention(coord_dim, dim, heads, cutoff_spatial, window)
        self.mlp = FeedForward(dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, coords, padding_mask=None):
        """One layer."""
        x = self.norm1(x)
        x = x + self.attn(x, x, x, coords, padding_mask)
        return x + self.mlp(self.norm2(x))


class DecoderLayer(nn.Module):
    """``x = norm1(x); m = norm2(m); x = x + attn(x, m, m); x = x + mlp(norm3(x))``."""

    def __init__(self, coord_dim, dim, heads, cutoff_spatial, window):
        super().__init__()
        self.attn = RelativeAttention(coord_dim, dim, heads, cutoff_spatial, window)
        self.mlp = FeedForward(dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, memory, coords, padding_mask=None):
        """One layer."""
        x, memory = self.norm1(x), self.norm2(memory)
        x = x + self.attn(x, memory, memory, coords, padding_mask)
        return x + self.mlp(self.norm3(x))


def _block_reduce(a: torch.Tensor, t: torch.Tensor, dim: int, reduce: str) -> torch.Tensor:
    """Reduce ``a`` along ``dim`` within groups of equal ``t``, broadcast back (max starts at 0)."""
    a = a.transpose(dim, 0)
    groups = torch.unique(t, return_inverse=True)[1]
    out = torch.zeros((int(groups.max()) + 1, a.shape[1]), dtype=a.dtype, device=a.device)
    out = out.scatter_reduce(0, groups[:, None].expand_as(a), a, reduce=reduce, include_self=True)
    return out[groups].transpose(0, dim)


def blockwise_causal_norm(a: torch.Tensor, t: torch.Tensor, invalid: torch.Tensor | None = None,
                          eps: float = 1e-6) -> torch.Tensor:
    """Quiet softmax of logits ``a [N, N]`` within frame blocks (Trackastra's causal normalisation).

    Entry ``(i, j)`` with ``t_j > t_i`` (a successor of ``i``) is normalised over the ``i``
    of frame ``t_i`` (column-wise), other entries over the ``j`` of frame ``t_j`` (row-wise);
    the denominators get ``+1`` (as ``exp(-max)`` after max subtraction), so all-negative
    logits give near-zero probabilities. ``invalid`` entries take no part.
    """
    a = a.masked_fill(invalid, -torch.inf) if invalid is not None else a
    m0, m1 = _block_reduce(a, t, 0, "amax"), _block_reduce(a, t, 1, "amax")
    u0, u1 = torch.exp(a - m0), torch.exp(a - m1)
    s0 = _block_reduce(u0, t, 0, "sum") + eps + torch.exp(-m0)
    s1 = _block_reduce(u1, t, 1, "sum") + eps + torch.exp(-m1)
    later = t[None, :] > t[:, None]
    return torch.clamp(torch.where(later, u0 / s0, u1 / s1), 0, 1)


class TrackingTransformer(nn.Module):
    """Trackastra's transformer (rotary positions) with the authors' ``attn_feat`` input.

    Parameters
    ----------
    coord_dim, feat_dim, d_model, nhead, num_encoder_layers, num_decoder_layers, pos_embed_per_dim,
    feat_embed_per_dim, window, spatial_pos_cutoff, causal_norm
        As in :data:`AUTHORS_CONFIG` (the defaults).
    """

    def __init__(self, coord_dim: int = 2, feat_dim: int = 7, d_model: int = 320, nhead: int = 4,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6, pos_embed_per_dim: int = 32,
                 feat_embed_per_dim: int = 8, window: int = 4, spatial_pos_cutoff: float = 256,
                 causal_norm: str = "quiet_softmax"):
        super().__init__()
        if causal_norm != "quiet_softmax":
            raise ValueError("only the authors' 'quiet_softmax' normalisation is implemented")
        self.coord_dim, self.cutoff = coord_dim, spatial_pos_cutoff
        self.proj = nn.Linear((1 + coord_dim) * pos_embed_per_dim + feat_dim * feat_embed_per_dim, d_model)
        self.norm = nn.LayerNorm(d_model)
        args = (coord_dim, d_model, nhead, spatial_pos_cutoff, window)
        self.encoder = nn.ModuleList([EncoderLayer(*args) for _ in range(num_encoder_layers)])
        self.decoder = nn.ModuleList([DecoderLayer(*args) for _ in range(num_decoder_layers)])
        self.head_x, self.head_y = FeedForward(d_model), FeedForward(d_model)
        self.feat_embed = FourierFeatures((1000,) * feat_dim, (feat_embed_per_dim,) * feat_dim)
        self.pos_embed = FourierFeatures((window,) + (spatial_pos_cutoff,) * coord_dim,
                                         (pos_embed_per_dim,) * (1 + coord_dim))

    def forward(self, coords: torch.Tensor, features: torch.Tensor, padding_mask: torch.Tensor | None = None,
                attn_feat: torch.Tensor | None = None) -> torch.Tensor:
        """Association logits.

        Parameters
        ----------
        coords : Tensor
            ``[B, N, 1 + coord_dim]``: frame index, then y, x in pixels.
        features : Tensor
            ``[B, N, feat_dim]`` region features.
        padding_mask : Tensor, optional
            ``[B, N]`` bool, ``True`` for padding entries.
        attn_feat : Tensor, optional
            ``[B, N, d_model]`` added after the input projection (the authors' attention embeddings).

        Returns
        -------
        Tensor
            ``[B, N, N]`` logits ``A[i, j]`` for "``i`` and ``j`` are the same or parent/child".
        """
        if padding_mask is not None:
            coords = coords.masked_fill(padding_mask[..., None], float(coords.max()))
        coords = coords - coords[:, :, :1].min(dim=1, keepdim=True).values
        x = self.proj(torch.cat([self.pos_embed(coords), self.feat_embed(features)], dim=-1))
        if attn_feat is not None:
            x = x + attn_feat
        x = self.norm(x)
        enc = x
        for layer in self.encoder:
            enc = layer(enc, coords, padding_mask)
        dec = x
        for layer in self.decoder:
            dec = layer(dec, enc, coords, padding_mask)
        return torch.einsum("bnd,bmd->bnm", self.head_x(enc), self.head_y(dec))

    def normalize_output(self, logits: torch.Tensor, timepoints: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Association probabilities: :func:`blockwise_causal_norm` per batch item, pairs beyond the cutoff ignored.

        As in the authors' copy, padded entries (``timepoints == -1``) are not masked here.

        Parameters
        ----------
        logits : Tensor
            ``[B, N, N]`` from :meth:`forward`.
        timepoints : Tensor
            ``[B, N]`` frame of each entry.
        coords : Tensor
            ``[B, N, 1 + coord_dim]``.

        Returns
        -------
        Tensor
            ``[B, N, N]`` in [0, 1].
        """
        far = torch.cdist(coords[..., 1:], coords[..., 1:]) > self.cutoff
        return torch.stack([blockwise_causal_norm(a, t, m) for a, t, m in zip(logits, timepoints, far)])
