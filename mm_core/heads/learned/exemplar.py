"""Training objective of the LDM engine's exemplar projector.

The projector turns an exemplar box into a token embedding; trained, its
cross-attention map should cover every object of the exemplar's type. The
objective (as in the paper) is the cross-entropy between the exemplar token's
cross-attention map, normalised to a distribution over pixels, and the binary mask
of all objects of that type, normalised the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_distribution(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary masks ``(B, H, W)`` -> area-resampled distributions ``(B, h, w)`` summing to 1."""
    m = F.adaptive_avg_pool2d((masks > 0).float()[:, None], size)[:, 0]
    return m / m.flatten(1).sum(1).clamp(min=1e-12)[:, None, None]


def exemplar_attention_loss(attention: torch.Tensor, masks: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cross-entropy of exemplar cross-attention maps against all-object masks.

    Parameters
    ----------
    attention : Tensor, (B, h, w)
        Non-negative cross-attention of the exemplar token (softmax over tokens, mean
        over heads and layers); differentiable with respect to the projector.
    masks : Tensor, (B, H, W)
        Instance or binary masks of every object of the exemplar's type (any size;
        resampled to ``(h, w)`` by area).

    Returns
    -------
    Tensor
        Scalar ``mean_b  -sum_p q_b(p) log p_b(p)`` with ``p`` the attention and ``q``
        the mask, each normalised to sum 1 over pixels.
    """
    if attention.ndim != 3 or masks.ndim != 3 or attention.shape[0] != masks.shape[0]:
        raise ValueError(f"expected attention (B, h, w) and masks (B, H, W), got {tuple(attention.shape)} "
                         f"and {tuple(masks.shape)}")
    q = mask_distribution(masks, tuple(attention.shape[-2:]))
    a = attention.clamp(min=0).flatten(1)
    logp = torch.log(a / a.sum(1, keepdim=True).clamp(min=eps) + eps)
    return -(q.flatten(1) * logp).sum(1).mean()
