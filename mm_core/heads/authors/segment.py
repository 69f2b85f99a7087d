"""The paper's segmentation head: a SAM-style ViT regressor fed with SD attention, flows to masks.

Path (research note, section 2 "Segmentation"):

1. one UNet pass (:mod:`.sd`); with exemplar boxes their LOCA/adapter embedding overwrites
   token 2 of the prompt;
2. the attention stack ``[a/2, cs_a/2, b, cs_b]`` (``cs_`` = self-cross): with boxes ``a``
   is the task token and ``b`` the exemplar token; without, both are the mean of the
   individually normalised maps of the template tokens 2, 3, 4;
3. channels 1 and 3, layer-normalised over the 64 x 64 grid, plus the channel mean of the
   last decoder feature -> 3 channels, resized to 512, through ``inc_0``: the *feature*;
4. the ViT regressor reads the image (cellpose-normalised, grey in channel 0) in 3 x 3
   overlapping 256 tiles of the 512 square, the feature added after patch embedding
   (inside the module); out: flows and cell probability;
5. :func:`.flows.compute_masks`, then nearest-neighbour resize to the input size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mm_core.engines.base import MatchMaps
from mm_core.errors import InputError
from mm_core.heads.authors.common import AuthorsHead
from mm_core.heads.authors.flows import compute_masks
from mm_core.heads.authors.sd import SIZE, AuthorsSD, Pass, minmax

TILE = 256  #: ViT input side
PAD = 8  #: each side: 512 -> 528, three tiles a side
TEMPLATE_TOKENS = (2, 3, 4)

__all__ = ["AuthorsSegmentHead", "attention_stack", "cellpose_normalise", "regressor_feature", "run_tiles",
           "segment_labels"]


def attention_stack(p: Pass, exemplar: bool, tokens=TEMPLATE_TOKENS) -> torch.Tensor:
    """``(1, 4, 64, 64)`` stack ``[a/2, cs_a/2, b, cs_b]`` (see the module docstring)."""
    if exemplar:
        task, exe = minmax(p.token(1)), minmax(p.token(2))
        cs_task, cs_exe = minmax(p.self_cross(p.token(1))), minmax(p.self_cross(p.token(2)))
        return torch.stack([task / 2, cs_task / 2, exe, cs_exe])[None]
    exe = torch.stack([minmax(p.token(i)) for i in tokens]).mean(0)
    cs = torch.stack([minmax(p.self_cross(p.token(i))) for i in tokens]).mean(0)
    return torch.stack([exe / 2, cs / 2, exe, cs])[None]


def regressor_feature(regressor, stack: torch.Tensor, unet: torch.Tensor) -> torch.Tensor:
    """``(1, 3, 512, 512)``: ``inc_0`` of [norm(stack[1]), norm(stack[3]), mean(unet)] at 512."""
    dt = regressor.inc_0.weight.dtype
    x = regressor.norm(stack[:, [1, 3]].to(dt))
    x = torch.cat([x, unet.mean(1, keepdim=True).to(dt)], dim=1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return regressor.inc_0(x)


def cellpose_normalise(image: np.ndarray, replicate_grey: bool = False) -> np.ndarray:
    """``(3, 512, 512)`` float32: grey in channel 0 (or in all three), each channel 1st-99th percentile to 0-1."""
    img = np.asarray(image, np.float32)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 1):
        g = img.reshape(img.shape[:2])
        img = np.stack([g, g, g] if replicate_grey else [g, np.zeros_like(g), np.zeros_like(g)], -1)
    img = img[..., :3]
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    if t.shape[-2:] != (SIZE, SIZE):
        t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = t[0].numpy()
    out = np.zeros_like(x)
    for c in range(x.shape[0]):
        lo, hi = np.percentile(x[c], [1, 99])
        if hi - lo > 1e-3 * max(1.0, abs(hi)):
            out[c] = (x[c] - lo) / (hi - lo)
    return out


def _taper(n: int, device) -> torch.Tensor:
    """2-D blending weights of one tile (near 1 inside, falling off over the outer pixels)."""
    d = torch.minimum(torch.arange(n, device=device), torch.arange(n - 1, -1, -1, device=device)).float()
    w = torch.sigmoid((d - 12.0) / 4.0)
    return w[:, None] * w[None, :]


def run_tiles(vit, image3: torch.Tensor, feat: torch.Tensor, tile: int = TILE, pad: int = PAD) -> torch.Tensor:
    """ViT over overlapping tiles of ``image3`` / ``feat`` ``(1, 3, S, S)``; blended ``(3, S, S)`` float32."""
    s = image3.shape[-1]
    x = F.pad(image3, (pad,) * 4)
    f = F.pad(feat, (pad,) * 4)
    side = x.shape[-1]
    n = max(1, int(np.ceil(1.1 * s / tile))) if side > tile else 1
    starts = np.unique(np.linspace(0, side - tile, n).round().astype(int)) if side > tile else np.array([0])
    corners = [(y, xx) for y in starts for xx in starts]
    xs = torch.cat([x[..., y:y + tile, c:c + tile] for y, c in corners])
    fs = torch.cat([f[..., y:y + tile, c:c + tile] for y, c in corners])
    dt = next(vit.parameters()).dtype
    with torch.no_grad():
        ys = vit(xs.to(dt), fs.to(dt)).float()
    acc = torch.zeros(3, side, side, device=ys.device)
    wsum = torch.zeros(1, side, side, device=ys.device)
    w = _taper(tile, ys.device)
    for (y, c), out in zip(corners, ys):
        acc[:, y:y + tile, c:c + tile] += out * w
        wsum[:, y:y + tile, c:c + tile] += w
    return (acc / wsum.clamp_min(1e-6))[:, pad:pad + s, pad:pad + s]


class AuthorsSegmentHead(AuthorsHead):
    """The paper's segmentation head (``microscopy_matching_seg.pth``) on the LDM engine.

    ``match(engine, image, boxes)`` makes the maps (one UNet pass); ``predict(maps,
    image)`` runs the ViT regressor and turns flows into labels.
    """

    kind, task, label = "seg", "segment", "segmentation"
    #: use grey replicated to three channels (the tracking path) instead of channel 0 only
    replicate_grey = False

    def match(self, engine, image: np.ndarray, boxes: np.ndarray | None) -> MatchMaps:
        """One UNet pass and the regressor's feature; the returned maps carry it to :meth:`predict`."""
        sd = self.sd(engine)
        shape = tuple(np.shape(image)[:2])
        x01 = sd.prepare(image)
        b512 = sd.boxes512(boxes, shape)
        _, emb = self.exemplar(sd, x01, b512) if b512 is not None else (None, None)
        p = sd.run(sd.latents(x01), self.overwrite(sd.text("segment"), 2, emb))
        return self.maps_of(sd, p, b512 is not None, shape)

    def maps_of(self, sd: AuthorsSD, p: Pass, exemplar: bool, shape) -> MatchMaps:
        """Maps (and the regressor feature) from one pass."""
        stack = attention_stack(p, exemplar)
        with torch.no_grad():
            feat = regressor_feature(self.module.counting_adapter.regressor, stack.to(sd.device), p.unet)
        mode = "exemplar" if exemplar else "automatic"
        cond = ("exemplar embedding (LOCA + adapter) in the paper's prompt" if exemplar
                else "the paper's prompt \"<task-prompt> repetitive objects\"")
        return self.maps(p, stack[0, 3], shape, mode, cond, {"feature": feat})

    def predict(self, maps: MatchMaps, image: np.ndarray) -> np.ndarray:
        """Instance labels ``(H, W)`` int32 (flows of the ViT regressor -> masks).

        The regressor feature travels in ``maps.info["authors"]`` and is dropped once read.
        """
        payload = maps.info.get("authors")
        if not payload or "feature" not in payload:
            raise InputError("the paper's segmentation head reads maps made by its own match "
                             "(Matcher.segment does this); these maps come from another path")
        feature = payload.pop("feature")  # read once: results that keep their maps hold no GPU tensor
        return segment_labels(self.module.counting_adapter.regressor.vit, image, feature,
                              maps.image_shape, self.replicate_grey)[0]


def segment_labels(vit, image: np.ndarray, feature: torch.Tensor, shape: tuple[int, int],
                   replicate_grey: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """ViT tiles -> flows -> masks: ``(labels at shape, labels at 512)`` int32, ``1..N`` without gaps.

    Parameters
    ----------
    vit : torch.nn.Module
        The regressor's ViT (``forward(x, feat)``).
    image : ndarray
        The normalised input image.
    feature : Tensor, (1, 3, 512, 512)
        :func:`regressor_feature`'s output.
    shape : tuple of int
        Output size.
    replicate_grey : bool
        Grey image in all three channels (tracking) instead of channel 0 only.
    """
    from skimage.segmentation import relabel_sequential

    x = torch.from_numpy(cellpose_normalise(image, replicate_grey))[None].to(feature.device)
    y = run_tiles(vit, x, feature).cpu().numpy()
    lab512 = relabel_sequential(compute_masks(y[:2], y[2]))[0].astype(np.int32)
    h, w = shape
    lab = lab512
    if lab.shape != (h, w):
        yy = np.minimum((np.arange(h) + 0.5) * lab.shape[0] / h, lab.shape[0] - 1).astype(int)
        xx = np.minimum((np.arange(w) + 0.5) * lab.shape[1] / w, lab.shape[1] - 1).astype(int)
        lab = relabel_sequential(lab[yy[:, None], xx[None, :]])[0].astype(np.int32)
    return lab, lab512
