"""Attention capture with our own diffusers attention processors.

:func:`install_capture` gives every attention layer of a UNet a
:class:`CaptureAttnProcessor` (a subclass of diffusers' ``AttnProcessor2_0``) through
``unet.set_attn_processor``; nothing of the library is monkeypatched. At call time
a processor works out the layer's resolution from its token count relative to the
latent size (a layer with ``h*w/4**k`` tokens sits at fraction ``1/2**k`` of the
latent side), and:

- a *self*-attention layer at one of ``store.self_fractions`` (default ``(1,)``: the
  64x64 layers of SD v1.4) adds its attention matrix, mean over heads, to
  ``store.self_sum``;
- a *cross*-attention layer at one of ``store.cross_fractions`` (default
  ``(1/2, 1/4)``: the 32x32 and 16x16 layers) adds its per-token attention, mean over
  heads, to ``store.cross_sum[fraction]``;
- every other layer runs plain ``AttnProcessor2_0`` (torch scaled-dot-product).

A capturing layer computes ``softmax(q k^T * scale)`` explicitly (softmax in
float32), for as many heads at once as fit in ``store.max_elements``; its output is
torch's SDPA on CUDA (fused kernels, identical to the plain processor) and
``probabilities @ values`` on the CPU (saves recomputing the scores), equal to the
SDPA output up to float rounding (checked to 1e-5 in fp32 by the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0


@dataclass
class AttentionStore:
    """What the capture processors fill during one UNet pass.

    Set :attr:`latent_hw` before the pass and call :meth:`reset`; read the means
    with :meth:`self_attention` and :meth:`cross_attention` afterwards.
    """

    self_fractions: tuple[float, ...] = (1.0,)
    cross_fractions: tuple[float, ...] = (0.5, 0.25)
    latent_hw: tuple[int, int] = (64, 64)
    enabled: bool = True
    keep_grad: bool = False
    #: output of capturing layers: SDPA (True; scores computed twice, fused kernels) or
    #: probabilities @ values (False; no recomputation). None: SDPA on CUDA, else False.
    sdpa_output: bool | None = None
    #: largest score block (elements) computed at once; heads are chunked to fit.
    max_elements: int = 2 ** 26
    #: average only the second half of each layer's heads (what the authors' heads were trained on)
    last_half_heads: bool = False
    self_sum: torch.Tensor | None = None
    self_count: int = 0
    cross_sum: dict = field(default_factory=dict)
    cross_count: dict = field(default_factory=dict)

    def reset(self) -> None:
        self.self_sum, self.self_count = None, 0
        self.cross_sum, self.cross_count = {}, {}

    def fraction_of(self, n_tokens: int) -> float:
        """Side of a layer's token grid as a fraction of the latent side (1, 1/2, 1/4 ...)."""
        h, w = self.latent_hw
        return math.sqrt(n_tokens / float(h * w))

    def _match(self, frac: float, wanted: tuple[float, ...]) -> float | None:
        for f in wanted:
            if abs(frac - f) < 1e-6 * max(1.0, f) or abs(math.log2(frac / f)) < 1e-3:
                return f
        return None

    def wants(self, n_tokens: int, is_cross: bool) -> float | None:
        if not self.enabled:
            return None
        wanted = self.cross_fractions if is_cross else self.self_fractions
        return self._match(self.fraction_of(n_tokens), wanted)

    def add(self, probs: torch.Tensor, frac: float, is_cross: bool) -> None:
        """Add a ``(B, N, L)`` head-mean attention matrix of one layer."""
        probs = probs if self.keep_grad else probs.detach()
        if is_cross:
            prev = self.cross_sum.get(frac)
            self.cross_sum[frac] = probs if prev is None else prev + probs
            self.cross_count[frac] = self.cross_count.get(frac, 0) + 1
        else:
            self.self_sum = probs if self.self_sum is None else self.self_sum + probs
            self.self_count += 1

    def self_attention(self) -> torch.Tensor:
        """``(B, N, N)`` self-attention at the selected resolution, mean over heads and layers."""
        if not self.self_count:
            raise RuntimeError("no self-attention layer was captured: check latent_hw and self_fractions")
        return self.self_sum / self.self_count

    def cross_attention(self, out_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """``(B, L, h, w)`` per-token cross-attention, mean over heads, layers and resolutions.

        Each resolution's mean is bilinearly upsampled to ``out_hw`` (default: the
        latent size) before the resolutions are averaged.
        """
        if not self.cross_count:
            raise RuntimeError("no cross-attention layer was captured: check latent_hw and cross_fractions")
        h, w = out_hw or self.latent_hw
        acc = None
        for frac, total in self.cross_sum.items():
            mean = total / self.cross_count[frac]
            b, n, length = mean.shape
            gh = max(1, round(self.latent_hw[0] * frac))
            gw = n // gh
            grid = mean.transpose(1, 2).reshape(b, length, gh, gw)
            up = F.interpolate(grid.float(), size=(h, w), mode="bilinear", align_corners=False)
            acc = up if acc is None else acc + up
        return acc / len(self.cross_sum)


class CaptureAttnProcessor(AttnProcessor2_0):
    """``AttnProcessor2_0`` that also records attention at the store's resolutions."""

    def __init__(self, store: AttentionStore, name: str = ""):
        super().__init__()
        self.store = store
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        is_cross = encoder_hidden_states is not None
        n_tokens = (hidden_states.shape[2] * hidden_states.shape[3] if hidden_states.ndim == 4
                    else hidden_states.shape[1])
        frac = self.store.wants(n_tokens, is_cross)
        if frac is None or attention_mask is not None or attn.spatial_norm is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                    *args, **kwargs)
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = self._attend(query, key, value, frac, is_cross)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _attend(self, query, key, value, frac: float, is_cross: bool) -> torch.Tensor:
        """Attention output ``(B, H, N, d)``; adds the head-mean probabilities to the store."""
        b, heads, n, d = query.shape
        length = key.shape[2]
        scale = 1.0 / math.sqrt(d)  # what AttnProcessor2_0's SDPA call uses
        per_head = b * n * length
        chunk = max(1, min(heads, self.store.max_elements // max(per_head, 1)))
        use_sdpa = self.store.sdpa_output if self.store.sdpa_output is not None else query.is_cuda
        outs, prob_sum = [], None
        first = heads // 2 if self.store.last_half_heads else 0  # heads averaged: first..heads-1
        for h0 in range(0, heads, chunk):  # at most `chunk` (B, N, L) score blocks alive
            q, k = query[:, h0:h0 + chunk] * scale, key[:, h0:h0 + chunk]
            probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1, dtype=torch.float32)
            if h0 + probs.shape[1] > first:
                part = probs[:, max(0, first - h0):].sum(1)
                prob_sum = part if prob_sum is None else prob_sum + part
            if not use_sdpa:
                outs.append(torch.matmul(probs.to(value.dtype), value[:, h0:h0 + chunk]))
            del probs
        self.store.add(prob_sum / (heads - first), frac, is_cross)
        if use_sdpa:
            return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        return torch.cat(outs, dim=1)


def install_capture(unet, store: AttentionStore) -> dict:
    """Give every attention layer of ``unet`` a :class:`CaptureAttnProcessor` sharing ``store``.

    Returns the processors that were installed before (``unet.set_attn_processor`` puts
    them back).
    """
    previous = dict(unet.attn_processors)
    unet.set_attn_processor({name: CaptureAttnProcessor(store, name) for name in previous})
    return previous


def plain_sdpa(unet) -> None:
    """Install plain ``AttnProcessor2_0`` everywhere (the reference the capture is tested against)."""
    unet.set_attn_processor({name: AttnProcessor2_0() for name in unet.attn_processors})


def self_cross(cross: torch.Tensor, self_attn: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Self-cross maps: ``out[k, j] = sum_p cross[k, p] * self_attn[p, j]``.

    Computed over column blocks of ``self_attn`` (converted to float32 one
    ``N x chunk`` block at a time), so no more than one such block is alive.

    Parameters
    ----------
    cross : Tensor, (K, N)
        One or more maps over the N latent pixels.
    self_attn : Tensor, (N, N)
        Row-stochastic self-attention (row p: where pixel p attends).
    chunk : int
        Columns per block.

    Returns
    -------
    Tensor, (K, N) float32
    """
    cross = cross.float()
    n = self_attn.shape[1]
    out = torch.empty(cross.shape[0], n, dtype=torch.float32, device=cross.device)
    for j0 in range(0, n, chunk):
        block = self_attn[:, j0:j0 + chunk].float()
        out[:, j0:j0 + chunk] = cross @ block
        del block
    return out


def box_self_attention(self_attn: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean self-attention row of the latent pixels inside each box.

    Parameters
    ----------
    self_attn : Tensor, (N, N)
    masks : Tensor, (K, N) bool or float
        Latent pixels of each box (at least one per box).

    Returns
    -------
    Tensor, (K, N) float32: where the box's pixels attend, on average.
    """
    w = masks.float()
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return (w.to(self_attn.dtype) @ self_attn).float()
