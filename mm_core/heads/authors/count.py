"""The paper's counting head: LOCA response maps fused with the SD attention stack.

Path (research note, section 2 "Counting"):

1. LOCA's response maps from the exemplar boxes (automatic mode: two fixed dummy boxes,
   as the authors do); with boxes, the adapter's embedding overwrites prompt token 2;
2. one UNet pass (:mod:`.sd`); the stack ``[e/2, cs_e/2, e, cs_e]`` where with boxes ``e``
   is the exemplar token's map (not normalised) and without, the min-max normalised mean
   of the template tokens 2, 3, 4 (its self-cross ``cs_e`` not normalised);
3. ``loca_model.forward_reg`` (layer norm of the stack, fused with the last decoder
   feature, added to each response map, regression head): a ``512 x 512`` density whose
   sum is the count;
4. the density is resized to the input (bicubic), clipped at 0 and rescaled to keep its sum.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mm_core.engines.base import MatchMaps
from mm_core.errors import InputError
from mm_core.heads.authors.common import AuthorsHead
from mm_core.heads.authors.sd import Pass, minmax

TEMPLATE_TOKENS = (2, 3, 4)

__all__ = ["AuthorsCountHead", "count_stack", "resize_density"]


def count_stack(p: Pass, exemplar: bool, tokens=TEMPLATE_TOKENS) -> torch.Tensor:
    """``(1, 4, 64, 64)`` stack for ``forward_reg`` (see the module docstring)."""
    exe = p.token(2) if exemplar else minmax(torch.stack([p.token(i) for i in tokens]).mean(0))
    cs = p.self_cross(exe)
    return torch.stack([exe / 2, cs / 2, exe, cs])[None]


def resize_density(density: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic resize to ``shape``, negatives clipped, rescaled so the sum is unchanged."""
    d = np.asarray(density, np.float32)
    total = float(d.sum())
    if d.shape != tuple(shape):
        d = F.interpolate(torch.from_numpy(d)[None, None], size=tuple(shape), mode="bicubic",
                          align_corners=False)[0, 0].numpy()
    d = np.clip(d, 0, None)
    s = float(d.sum())
    return (d * (total / s) if s > 0 and total > 0 else np.zeros_like(d)).astype(np.float32)


def density_peaks(density: np.ndarray, scale: float) -> np.ndarray:
    """``(N, 2)`` ``(row, col)`` local maxima of the smoothed density (at least a third of a diameter apart)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    sm = ndi.gaussian_filter(density, max(0.5, scale / 8))
    if sm.max() <= 0:
        return np.zeros((0, 2), int)
    return peak_local_max(sm, min_distance=max(1, round(scale / 3)), threshold_abs=0.1 * float(sm.max()),
                          exclude_border=False).reshape(-1, 2)


class AuthorsCountHead(AuthorsHead):
    """The paper's counting head (``microscopy_matching_cnt.pth``) on the LDM engine."""

    kind, task, label = "cnt", "count", "counting"

    def match(self, engine, image: np.ndarray, boxes: np.ndarray | None) -> MatchMaps:
        """LOCA, one UNet pass and the regression: the density travels in the maps to :meth:`predict`."""
        sd = self.sd(engine)
        shape = tuple(np.shape(image)[:2])
        x01 = sd.prepare(image)
        b512 = sd.boxes512(boxes, shape)
        responses, emb = self.exemplar(sd, x01, b512)
        p = sd.run(sd.latents(x01), self.overwrite(sd.text("count"), 2, emb))
        stack = count_stack(p, b512 is not None)
        with torch.no_grad():
            dens = self.module.loca_model.forward_reg(responses, stack.to(sd.device, sd.dtype),
                                                      p.unet.to(sd.dtype))
        dens = dens.float()[0, 0].cpu().numpy()
        exemplar = b512 is not None
        cond = ("exemplar embedding (LOCA + adapter) in the paper's prompt" if exemplar
                else "the paper's prompt; LOCA on two fixed dummy boxes")
        return self.maps(p, minmax(stack[0, 2]), shape, "exemplar" if exemplar else "automatic", cond,
                         {"density512": dens, "count512": float(dens.sum())})

    def predict(self, maps: MatchMaps, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(density (H, W), centres (N, 2))``; the density's sum is the head's count."""
        payload = maps.info.get("authors")
        if not payload or "density512" not in payload:
            raise InputError("the paper's counting head reads maps made by its own match "
                             "(Matcher.count does this); these maps come from another path")
        density = resize_density(payload["density512"], maps.image_shape)
        return density, density_peaks(density, maps.scale)
