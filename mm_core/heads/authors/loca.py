"""LOCA, the low-shot object counting network, with the MicroscopyMatching authors' additions.

Written by us from the paper (Dukic, Lukezic, Zavrtanik, Kristan, "A Low-Shot Object Counting
Network With Iterative Prototype Adaptation", ICCV 2023) and from the facts recorded in
``../shared/research/authors_heads.md`` (sections 0.1, 2 and 3): module names, shapes and the
configuration the authors build (image 512, reduction 8, 256-d embeddings, 8 heads, 3 pre-norm
encoder layers, 3 adaptation steps, 3x3 prototypes, MLP factor 8, GELU).

The path: ResNet-50 stages 2-4 (:class:`~.resnet.LocaBackbone`) -> 1x1 projection -> encoder
with fixed sine positions -> object prototype extraction (OPE: a shape embedding of each box's
width and height, RoIAlign appearance, iteratively adapted by attention) -> each prototype is a
depthwise 3x3 kernel; the maximum over boxes is a response map per step -> upsampling density
regressors. The authors split the forward pass in :meth:`LOCA.forward_before_reg` (response
maps) and :meth:`LOCA.forward_reg`, which fuses the UNet feature and the attention stack
(``attn_norm``, ``fuse``) into every response map before the regressors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.heads.authors.resnet import LocaBackbone
from mm_core.engines.roi_align import roi_align

__all__ = ["LOCA", "OPE", "DensityRegressor", "sine_positions"]


def sine_positions(batch: int, h: int, w: int, dim: int, device=None, temperature: float = 1e4) -> torch.Tensor:
    """Fixed 2-D sine/cosine positions ``[B, dim, h, w]``: ``dim / 2`` channels for y, then x.

    Row and column indices count from 1; channel pair ``(2i, 2i+1)`` holds
    ``sin(p / T^(2i/(dim/2)))`` and ``cos`` of the same argument.
    """
    half = dim // 2
    idx = torch.arange(half, device=device, dtype=torch.float32)
    freq = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / dim)

    def axis(n: int) -> torch.Tensor:
        arg = torch.arange(1, n + 1, device=device, dtype=torch.float32)[:, None] / freq
        return torch.stack([arg[:, 0::2].sin(), arg[:, 1::2].cos()], dim=-1).flatten(1)  # [n, half]

    ys = axis(h)[:, None, :].expand(h, w, half)
    xs = axis(w)[None, :, :].expand(h, w, half)
    return torch.cat([ys, xs], dim=-1).permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1)


class MLP(nn.Module):
    """``linear2(dropout(act(linear1(x))))``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout, self.act = nn.Dropout(dropout), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The two-layer perceptron."""
        return self.linear2(self.dropout(self.act(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention (positions added to queries and keys) + MLP; sequence-first."""

    def __init__(self, dim: int, heads: int, dropout: float, eps: float, mlp_factor: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps), nn.LayerNorm(dim, eps)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout)
        self.mlp = MLP(dim, mlp_factor * dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One layer on ``src [L, B, C]`` with positions ``pos [L, B, C]``."""
        z = self.norm1(src)
        src = src + self.drop(self.self_attn(z + pos, z + pos, z, need_weights=False)[0])
        return src + self.drop(self.mlp(self.norm2(src)))


class Encoder(nn.Module):
    """A stack of :class:`EncoderLayer` and a final LayerNorm."""

    def __init__(self, layers: int, dim: int, heads: int, dropout: float, eps: float, mlp_factor: int):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(dim, heads, dropout, eps, mlp_factor) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim, eps)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Encoded ``[L, B, C]``."""
        for layer in self.layers:
            src = layer(src, pos)
        return self.norm(src)


class AdaptationLayer(nn.Module):
    """Prototype update: attend to the box appearance, then to the image, then MLP (pre-norm)."""

    def __init__(self, dim: int, heads: int, eps: float, mlp_factor: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim, eps) for _ in range(3))
        self.self_attn = nn.MultiheadAttention(dim, heads, 0.0)
        self.enc_dec_attn = nn.MultiheadAttention(dim, heads, 0.0)
        self.mlp = MLP(dim, mlp_factor * dim, 0.0)

    def forward(self, tgt, appearance, memory, pos, query_pos):
        """Updated prototypes ``[K*9, B, C]``."""
        z = self.norm1(tgt)
        tgt = tgt + self.self_attn(z + query_pos, appearance + query_pos, appearance, need_weights=False)[0]
        z = self.norm2(tgt)
        tgt = tgt + self.enc_dec_attn(z + query_pos, memory + pos, memory, need_weights=False)[0]
        return tgt + self.mlp(self.norm3(tgt))


class IterativeAdaptation(nn.Module):
    """Adaptation layers; the normed output of every step is kept (one prototype set per step)."""

    def __init__(self, layers: int, dim: int, heads: int, eps: float, mlp_factor: int):
        super().__init__()
        self.layers = nn.ModuleList([AdaptationLayer(dim, heads, eps, mlp_factor) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim, eps)

    def forward(self, tgt, appearance, memory, pos, query_pos) -> torch.Tensor:
        """``[steps, K*9, B, C]``."""
        out = []
        for layer in self.layers:
            tgt = layer(tgt, appearance, memory, pos, query_pos)
            out.append(self.norm(tgt))
        return torch.stack(out)


class OPE(nn.Module):
    """Object prototype extraction from exemplar boxes (shape + appearance, adapted)."""

    def __init__(self, steps: int, dim: int, kernel: int, heads: int, reduction: int, eps: float,
                 mlp_factor: int):
        super().__init__()
        self.dim, self.kernel, self.reduction = dim, kernel, reduction
        self.iterative_adaptation = IterativeAdaptation(steps, dim, heads, eps, mlp_factor)
        self.shape_or_objectness = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, dim), nn.ReLU(),
                                                 nn.Linear(dim, kernel * kernel * dim))

    def forward(self, f_e: torch.Tensor, pos: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Prototypes ``[steps, K*k*k, B, C]`` of ``boxes [B, K, 4]`` (x0, y0, x1, y1, input pixels)."""
        b, k, kk = boxes.shape[0], boxes.shape[1], self.kernel * self.kernel
        size = torch.stack([boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]], dim=-1)
        shape = self.shape_or_objectness(size).reshape(b, k * kk, self.dim).transpose(0, 1)
        index = torch.arange(b, device=boxes.device, dtype=boxes.dtype).repeat_interleave(k)[:, None]
        rois = torch.cat([index, boxes.reshape(-1, 4)], dim=1)
        appearance = roi_align(f_e, rois, self.kernel, 1.0 / self.reduction, aligned=True)
        appearance = appearance.permute(0, 2, 3, 1).reshape(b, k * kk, self.dim).transpose(0, 1)
        query_pos = sine_positions(b, self.kernel, self.kernel, self.dim, f_e.device).flatten(2).permute(2, 0, 1)
        query_pos = query_pos.to(f_e.dtype)
        memory = f_e.flatten(2).permute(2, 0, 1)
        return self.iterative_adaptation(shape, appearance, memory, pos, query_pos.repeat(k, 1, 1))


class UpsamplingLayer(nn.Module):
    """3x3 convolution -> LeakyReLU -> bilinear x2 (corners aligned)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.layer = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(),
                                   nn.UpsamplingBilinear2d(scale_factor=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Twice the resolution."""
        return self.layer(x)


class DensityRegressor(nn.Module):
    """Response map ``[B, C, h, w]`` -> density ``[B, 1, 8h, 8w]``."""

    def __init__(self, cin: int):
        super().__init__()
        self.regressor = nn.Sequential(UpsamplingLayer(cin, 128), UpsamplingLayer(128, 64),
                                       UpsamplingLayer(64, 32), nn.Conv2d(32, 1, 1), nn.LeakyReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The density map."""
        return self.regressor(x)


class LOCA(nn.Module):
    """LOCA as the authors build it (few-shot, pre-norm), plus ``attn_norm`` and ``fuse``.

    Parameters
    ----------
    encoder_layers, steps : int
        Encoder layers and prototype adaptation steps (3 and 3).
    dim, heads, kernel, reduction : int
        Embedding width, attention heads, prototype side and output stride (256, 8, 3, 8).
    dropout : float
        Encoder dropout (inactive in eval mode).
    attn_size : int
        Side of the attention stack and UNet feature (64); ``fuse`` takes ``320 + 4`` channels.
    """

    def __init__(self, encoder_layers: int = 3, steps: int = 3, dim: int = 256, heads: int = 8,
                 kernel: int = 3, reduction: int = 8, dropout: float = 0.1, attn_size: int = 64):
        super().__init__()
        eps, mlp_factor = 1e-5, 8
        self.dim, self.kernel = dim, kernel
        self.backbone = LocaBackbone(reduction)
        self.input_proj = nn.Conv2d(LocaBackbone.num_channels, dim, kernel_size=1)
        self.encoder = Encoder(encoder_layers, dim, heads, dropout, eps, mlp_factor)
        self.ope = OPE(steps, dim, kernel, heads, reduction, eps, mlp_factor)
        self.regression_head = DensityRegressor(dim)
        self.aux_heads = nn.ModuleList([DensityRegressor(dim) for _ in range(steps - 1)])
        self.attn_norm = nn.LayerNorm((attn_size, attn_size))
        self.fuse = nn.Sequential(nn.Conv2d(320 + 4, dim, 1), nn.LeakyReLU(), nn.LayerNorm((attn_size, attn_size)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded image ``f_e [B, C, H / 8, W / 8]`` (backbone, projection, encoder); reusable across box sets."""
        src = self.input_proj(self.backbone(x))
        b, _, h, w = src.shape
        enc = self.encoder(src.flatten(2).permute(2, 0, 1), self._positions(src))
        return enc.permute(1, 2, 0).reshape(b, self.dim, h, w)

    def _positions(self, f: torch.Tensor) -> torch.Tensor:
        """Sine positions ``[h*w, B, C]`` of a ``[B, C, h, w]`` map."""
        b, _, h, w = f.shape
        return sine_positions(b, h, w, self.dim, f.device).flatten(2).permute(2, 0, 1).to(f.dtype)

    def correlate(self, f_e: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """Max over boxes of the depthwise correlation of ``f_e`` with each box's prototype kernels.

        ``prototypes [K*k*k, B, C]`` -> ``[B, C, h, w]``.
        """
        b, c, h, w = f_e.shape
        k = prototypes.shape[0] // (self.kernel * self.kernel)
        kernels = prototypes.permute(1, 0, 2).reshape(b, k, self.kernel, self.kernel, c).permute(0, 1, 4, 2, 3)
        maps = []
        for i in range(b):
            weight = kernels[i].reshape(k * c, 1, self.kernel, self.kernel)
            out = F.conv2d(f_e[i:i + 1].repeat(1, k, 1, 1), weight, padding=self.kernel // 2, groups=k * c)
            maps.append(out.view(k, c, h, w).amax(dim=0))
        return torch.stack(maps)

    def responses(self, f_e: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
        """Response maps of every adaptation step for ``boxes [B, K, 4]`` on an encoded image (:meth:`encode`)."""
        prototypes = self.ope(f_e, self._positions(f_e), boxes.to(f_e.dtype))
        return [self.correlate(f_e, p) for p in prototypes]

    def forward_before_reg(self, x: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
        """Response maps of every adaptation step (the last one is final): ``responses(encode(x), boxes)``.

        Parameters
        ----------
        x : Tensor
            ImageNet-normalised images ``[B, 3, H, W]`` (512 x 512 in the authors' use).
        boxes : Tensor
            ``[B, K, 4]`` exemplar boxes ``(x0, y0, x1, y1)`` in ``x``'s pixels; any ``K >= 1``.

        Returns
        -------
        list of Tensor
            ``steps`` maps ``[B, C, H / 8, W / 8]``.
        """
        return self.responses(self.encode(x), boxes)

    def fused(self, attn_stack: torch.Tensor, unet_feat: torch.Tensor) -> torch.Tensor:
        """``fuse(cat([unet_feat, n]) * mean_c(n))`` with ``n = attn_norm(attn_stack)``: ``[B, C, 64, 64]``."""
        normed = self.attn_norm(attn_stack)
        weight = normed.mean(dim=1, keepdim=True)
        return self.fuse(torch.cat([unet_feat, normed], dim=1) * weight)

    def forward_reg(self, responses: list[torch.Tensor], attn_stack: torch.Tensor, unet_feat: torch.Tensor,
                    with_aux: bool = False):
        """Density from the response maps, the attention stack and the UNet feature.

        Parameters
        ----------
        responses : list of Tensor
            Output of :meth:`forward_before_reg`.
        attn_stack : Tensor
            ``[B, 4, 64, 64]`` attention maps.
        unet_feat : Tensor
            ``[B, 320, 64, 64]`` last UNet up-block output.
        with_aux : bool
            Also return the auxiliary densities of the earlier steps.

        Returns
        -------
        Tensor or (Tensor, list of Tensor)
            Density ``[B, 1, 512, 512]`` (and the auxiliary ones).
        """
        extra = self.fused(attn_stack, unet_feat)
        heads = [*self.aux_heads, self.regression_head]
        outs = [head(r + extra) for head, r in zip(heads, responses)]
        return (outs[-1], outs[:-1]) if with_aux else outs[-1]

    def forward(self, x: torch.Tensor, boxes: torch.Tensor):
        """Plain LOCA (no fusion): final density and the auxiliary ones."""
        heads = [*self.aux_heads, self.regression_head]
        outs = [head(r) for head, r in zip(heads, self.forward_before_reg(x, boxes))]
        return outs[-1], outs[:-1]
