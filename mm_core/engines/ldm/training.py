"""Training hooks for the heads trainer: the exemplar token's cross-attention, with gradients.

The projector (conv + linear, and optionally the task token) is trained so that the
exemplar token's cross-attention covers the objects like the exemplar:
:func:`exemplar_cross_attention` runs one UNet pass with the projector's embedding in
the token sequence and returns the token's attention map with the autograd graph
kept (the UNet, VAE and text encoder stay frozen; only the projector gets gradients).
"""

from __future__ import annotations

import numpy as np
import torch

from mm_core.engines.ldm import conditioning as cond


def exemplar_cross_attention(engine, image01: torch.Tensor, boxes: list,
                             latents: torch.Tensor | None = None) -> torch.Tensor:
    """Differentiable cross-attention map of the (averaged) exemplar token, for training.

    Gradients flow into ``engine.projector`` (the UNet, VAE and text encoder stay
    frozen). The values are attention probabilities (mean over heads, layers and
    the cross resolutions, upsampled to the latent grid): at every pixel, the
    share of attention the exemplar token gets, in [0, 1] -- fit them with a
    (binary) cross-entropy against object masks.

    Parameters
    ----------
    engine : LDMEngine
        With an :class:`~mm_core.engines.ldm.projector.ExemplarProjector` (trainable).
    image01 : Tensor, (B, 3, size, size) in [0, 1]
    boxes : list of B arrays (K_b, 4)
        ``x0, y0, x1, y1`` in ``size``-pixel coordinates.
    latents : Tensor, optional
        Noisy latents from ``engine.encode`` (computed when omitted).

    Returns
    -------
    Tensor, (B, h, w) float32
    """
    if engine.projector is None:
        raise RuntimeError("no exemplar projector: build the engine with a feature_extractor or load_heads")
    latents = engine.encode(image01) if latents is None else latents
    text = engine.text()
    x = image01.to(engine.c.device, engine.projector.conv.weight.dtype)
    embs = []
    for b, bx in enumerate(boxes):
        bx = torch.as_tensor(np.asarray(bx, np.float32)).reshape(-1, 4)
        rois = torch.cat([torch.zeros(len(bx), 1), bx], 1).to(engine.c.device)
        embs.append(engine.projector(x[b:b + 1], rois).mean(0))
    hidden = cond.insert_slots(text.hidden.expand(len(embs), -1, -1), text.slot,
                               torch.stack(embs)[:, None])
    engine.store.keep_grad = True
    try:
        with torch.enable_grad():
            engine.unet_pass(latents, hidden, capture_self=False)
            return engine.store.cross_attention(tuple(latents.shape[-2:]))[:, text.slot]
    finally:
        engine.store.keep_grad = False
