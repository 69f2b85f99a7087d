"""Tiled inference: ``size`` x ``size`` tiles with overlap, maps blended with linear ramps.

For images whose objects would shrink below a few pixels when resized to 512: the
image is scaled by ``engine.tile_scale`` (1 = native resolution), cut into
overlapping tiles of the engine's ``size``, each tile runs the normal single-pass
matching, and the tiles' cross, self-cross and feature maps are blended at latent
resolution (``1/8`` of the scaled image) with weights ramping over the overlap.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mm_core.engines.ldm.maps import estimate_scale, normalise01, rgb01
from mm_core.transforms.tiles import blend_window, tile_starts


def tiled_maps(engine, image: np.ndarray, boxes: np.ndarray | None, per_object: bool) -> dict:
    """``size`` tiles over the image at ``tile_scale``, maps blended with linear ramps.

    With boxes, one extra pass on the whole image resized to ``size`` gives the
    exemplar embeddings (trained projector) or the boxes' mean UNet features
    (untrained: each tile then uses feature similarity as its query map).
    """
    h0, w0 = image.shape[:2]
    f = engine.vae_factor
    hs = max(engine.size, f * int(np.ceil(h0 * engine.tile_scale / f)))
    ws = max(engine.size, f * int(np.ceil(w0 * engine.tile_scale / f)))
    img = torch.from_numpy(rgb01(image)).permute(2, 0, 1)[None]
    img = F.interpolate(img, size=(hs, ws), mode="bilinear", align_corners=False, antialias=True)
    emb = protos = None
    if boxes is not None:
        fy, fx = engine.size / h0, engine.size / w0
        gboxes = boxes * np.array([fx, fy, fx, fy], np.float32)
        whole = engine.prepare(image)
        if engine.projector_trained:
            emb = engine.exemplar_embeddings(whole, gboxes, per_object)
        else:
            glob = engine.match_square(whole, gboxes, per_object)
            masks = engine.box_masks(gboxes, glob["hw"]).to(glob["fvec"])
            protos = F.normalize((masks @ glob["fvec"].T) / masks.sum(1, keepdim=True), dim=1)
    acc, wsum, scales, n = None, None, [], 0
    for y0 in tile_starts(hs, engine.size, engine.tile_overlap, align=f):
        for x0 in tile_starts(ws, engine.size, engine.tile_overlap, align=f):
            res = engine.match_square(img[..., y0:y0 + engine.size, x0:x0 + engine.size], None, per_object,
                                 emb=emb, protos=protos)
            hl, wl = res["hw"]
            if acc is None:
                acc = {k: np.zeros((res[k].shape[0], hs // f, ws // f), np.float32)
                       for k in ("cross", "self_cross", "features")}
                wsum = np.zeros((hs // f, ws // f), np.float32)
                wt = blend_window((hl, wl), engine.tile_overlap // f)
            ly, lx = y0 // f, x0 // f
            for k in acc:
                acc[k][:, ly:ly + hl, lx:lx + wl] += res[k] * wt
            wsum[ly:ly + hl, lx:lx + wl] += wt
            scales.append(estimate_scale(res["self"], res["hw"],
                                         normalise01(res["self_cross"].max(0)), f / engine.tile_scale))
            n += 1
    out = {k: v / np.maximum(wsum, 1e-6) for k, v in acc.items()}
    out.update(kind=res["kind"], tiles=n, scale=float(np.median(scales)), hw=wsum.shape,
               input_per_latent=float(np.sqrt(h0 * w0 / wsum.size)))
    return out
