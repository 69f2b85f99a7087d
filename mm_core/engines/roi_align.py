"""RoIAlign (He et al., "Mask R-CNN", ICCV 2017), without torchvision.

Each output bin of a box is the mean of ``gh x gw`` bilinear samples placed regularly inside the
bin; with ``sampling_ratio <= 0`` the grid adapts to the box (``ceil(box side / output side)``).
``aligned=True`` shifts the box by half a pixel so that pixel centres sit at integer + 0.5,
as LOCA (Dukic et al., ICCV 2023) uses it. Samples further than one pixel outside the map
count as zero; samples in the border strip are clamped to the edge (the usual convention).

Bilinear sampling is separable and so is the sample grid, so one box's output is
``My @ F[c] @ Mx.T`` with ``My [out_h, H]`` and ``Mx [out_w, W]`` holding the averaged
interpolation weights. Only the rows and columns a box touches are read.
"""

from __future__ import annotations

import math

import torch

__all__ = ["roi_align"]


def _axis_weights(start: float, end: float, bins: int, size: int, sampling_ratio: int,
                  aligned: bool, dtype: torch.dtype, device) -> torch.Tensor:
    """``[bins, size]`` mean interpolation weights along one axis for one box side."""
    offset = 0.5 if aligned else 0.0
    lo, length = start - offset, end - start
    if not aligned:
        length = max(length, 1.0)
    step = length / bins
    grid = sampling_ratio if sampling_ratio > 0 else math.ceil(step)
    weights = torch.zeros(bins, size, dtype=dtype, device=device)
    if grid <= 0:
        return weights
    k = torch.arange(bins * grid, dtype=torch.float64, device=device)
    pos = lo + (k // grid) * step + ((k % grid) + 0.5) * step / grid
    inside = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long().clamp(max=size - 1)
    at_edge = low >= size - 1
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low)
    rows = (k // grid).long()
    w_low = ((1.0 - frac) * inside).to(dtype) / grid
    w_high = (frac * inside).to(dtype) / grid
    weights.index_put_((rows, low), w_low, accumulate=True)
    weights.index_put_((rows, high), w_high, accumulate=True)
    return weights


def _one_box(feat: torch.Tensor, box: list[float], out_hw: tuple[int, int], sampling_ratio: int,
             aligned: bool) -> torch.Tensor:
    """``[C, out_h, out_w]`` of one box (already scaled to ``feat``'s pixels)."""
    _, h, w = feat.shape
    x0, y0, x1, y1 = box
    wy = _axis_weights(y0, y1, out_hw[0], h, sampling_ratio, aligned, feat.dtype, feat.device)
    wx = _axis_weights(x0, x1, out_hw[1], w, sampling_ratio, aligned, feat.dtype, feat.device)
    ry, rx = wy.abs().sum(0).nonzero(), wx.abs().sum(0).nonzero()
    if len(ry) == 0 or len(rx) == 0:
        return feat.new_zeros((feat.shape[0], *out_hw))
    ya, yb, xa, xb = int(ry.min()), int(ry.max()) + 1, int(rx.min()), int(rx.max()) + 1
    crop = feat[:, ya:yb, xa:xb]
    return torch.einsum("ph,chw,qw->cpq", wy[:, ya:yb], crop, wx[:, xa:xb])


def _rois(boxes, n_images: int) -> torch.Tensor:
    """Boxes as ``[K, 5]`` rows ``(image index, x0, y0, x1, y1)``."""
    if isinstance(boxes, (list, tuple)):
        if len(boxes) != n_images:
            raise ValueError(f"roi_align: {len(boxes)} box lists for {n_images} images")
        rows = [torch.cat([torch.full((len(b), 1), float(i), dtype=b.dtype, device=b.device), b], dim=1)
                for i, b in enumerate(boxes)]
        return torch.cat(rows) if rows else torch.zeros(0, 5)
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"roi_align: boxes must be [K, 5] (index, x0, y0, x1, y1), got {tuple(boxes.shape)}")
    return boxes


def roi_align(features: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = True) -> torch.Tensor:
    """Average bilinear samples of ``features`` inside each box, on an ``output_size`` grid.

    Parameters
    ----------
    features : Tensor
        ``[N, C, H, W]``.
    boxes : Tensor or list of Tensor
        ``[K, 5]`` rows ``(image index, x0, y0, x1, y1)``, or one ``[Ki, 4]`` tensor per image;
        coordinates in input pixels (multiplied by ``spatial_scale``).
    output_size : int or (int, int)
        Bins per box (height, width).
    spatial_scale : float
        Input pixels -> feature pixels (``1 / stride``).
    sampling_ratio : int
        Samples per bin side; ``<= 0`` adapts to the box.
    aligned : bool
        Shift boxes by half a feature pixel (pixel-centre convention).

    Returns
    -------
    Tensor
        ``[K, C, out_h, out_w]``.
    """
    out_hw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    rois = _rois(boxes, features.shape[0])
    values = rois.detach().to("cpu", torch.float64).tolist()
    out = [_one_box(features[int(r[0])], [v * spatial_scale for v in r[1:]], out_hw, sampling_ratio, aligned)
           for r in values]
    if not out:
        return features.new_zeros((0, features.shape[1], *out_hw))
    return torch.stack(out)
