"""Flow fields for instance segmentation: from labels to flows, and back by following them.

The idea is Cellpose's (Stringer et al., 2021): every pixel of an object carries a unit vector
pointing along the gradient of a heat field that diffuses from the object's centre pixel and
stays inside the object. Following those vectors, the pixels of one object gather in one sink,
so touching objects of any shape separate where their flows part. This is our own
implementation, numpy in and numpy out:

- :func:`labels_to_flows`: the training target ``(2, H, W)`` (dy, dx) of an instance mask;
- :func:`normalized_distance`: the other target tried beside flows (distance to the object's
  edge divided by its largest value, 0..1);
- :func:`follow_flows` and :func:`flows_to_labels`: instances from predicted flows and a
  foreground probability;
- :func:`distance_to_labels`: instances from a predicted normalised distance (the cores above
  one half seed a watershed);
- :func:`transform_flows`: flows of a rotated / mirrored crop (training augmentation).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

__all__ = ["distance_to_labels", "flows_to_labels", "follow_flows", "labels_to_flows",
           "normalized_distance", "transform_flows"]

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _centre_pixel(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of ``mask`` closest to its centroid (always inside the object)."""
    ys, xs = np.nonzero(mask)
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[k]), int(xs[k])


def _diffuse(masks: np.ndarray, centres: np.ndarray, niter: int) -> np.ndarray:
    """Heat ``(B, S, S)`` diffused ``niter`` times from ``centres`` within each binary mask."""
    b, hs, ws = masks.shape
    m = torch.from_numpy(masks)
    pad = F.pad(m, (1, 1, 1, 1))
    same = torch.stack([pad[:, 1 + dy:1 + dy + hs, 1 + dx:1 + dx + ws] & m for dy, dx in _OFFSETS]).double()
    weight = same / same.sum(0).clamp(min=1)
    heat = torch.zeros(b, hs + 2, ws + 2, dtype=torch.float64)
    bi = torch.arange(b)
    cy, cx = torch.from_numpy(centres[:, 0] + 1), torch.from_numpy(centres[:, 1] + 1)
    for _ in range(niter):
        heat[bi, cy, cx] += 1.0
        acc = weight[0] * heat[:, 0:hs, 0:ws]
        for k, (dy, dx) in enumerate(_OFFSETS[1:], start=1):
            acc += weight[k] * heat[:, 1 + dy:1 + dy + hs, 1 + dx:1 + dx + ws]
        heat[:, 1:-1, 1:-1] = acc
    return heat[:, 1:-1, 1:-1].numpy()


def labels_to_flows(labels: np.ndarray, niter: int | None = None, max_side: int = 64) -> np.ndarray:
    """Unit flow vectors ``(2, H, W)`` float32 (dy, dx) of an instance mask; 0 on background.

    For each object, heat is injected at its centre pixel and spread by averaging over the
    8-neighbourhood restricted to the object, ``niter`` times (default: twice the object's
    bounding-box side, at least 10); the flow is the normalised gradient of the log heat.
    Objects are processed in batches of similar size on their bounding boxes; an object wider
    than ``max_side`` pixels gets the flows of a copy shrunk to that size, upsampled.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError("labels must be 2-D")
    lab = labels.astype(np.int64)
    out = np.zeros((2,) + lab.shape, np.float32)
    groups: dict[int, list] = {}
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        m = lab[sl] == i
        if max(m.shape) > max_side:  # large objects: flows of a smaller copy, upsampled
            f = max_side / max(m.shape)
            shape = (max(1, round(m.shape[0] * f)), max(1, round(m.shape[1] * f)))
            small = F.interpolate(torch.from_numpy(m)[None, None].float(), size=shape, mode="nearest")[0, 0] > 0.5
            m = small.numpy() if small.any() else m
        groups.setdefault(-(-(max(m.shape) + 2) // 8) * 8, []).append((i, sl, m))
    for size, objs in groups.items():
        for start in range(0, len(objs), 256):
            chunk = objs[start:start + 256]
            masks = np.zeros((len(chunk), size, size), bool)
            cents = np.zeros((len(chunk), 2), np.int64)
            for j, (_, _, m) in enumerate(chunk):
                masks[j, 1:1 + m.shape[0], 1:1 + m.shape[1]] = m
                cents[j] = _centre_pixel(masks[j])
            n = niter if niter is not None else int(np.clip(2 * (size - 2), 10, 600))
            heat = np.log1p(_diffuse(masks, cents, n))
            for j, (i, sl, m) in enumerate(chunk):
                g = _masked_gradient(heat[j], masks[j].astype(np.int64))[:, 1:1 + m.shape[0], 1:1 + m.shape[1]]
                full = lab[sl] == i
                if g.shape[1:] != full.shape:
                    g = F.interpolate(torch.from_numpy(g)[None], size=full.shape, mode="bilinear",
                                      align_corners=False)[0].numpy()
                    g = g / np.maximum(np.sqrt((g ** 2).sum(0)), 1e-6)
                out[:, sl[0], sl[1]][:, full] = g[:, full]
    return out


def _masked_gradient(t: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Normalised central differences of ``t`` using only neighbours of the same object."""
    h, w = lab.shape
    pt, pl = np.pad(t, 1), np.pad(lab, 1)
    grads = []
    for axis in (0, 1):
        d = [(1, 0), (-1, 0)] if axis == 0 else [(0, 1), (0, -1)]
        vals, oks = [], []
        for dy, dx in d:
            vals.append(pt[1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
            oks.append(pl[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == lab)
        fwd = np.where(oks[0], vals[0] - t, 0.0)
        bwd = np.where(oks[1], t - vals[1], 0.0)
        n = oks[0].astype(float) + oks[1]
        grads.append((fwd + bwd) / np.maximum(n, 1))
    g = np.stack(grads)
    mag = np.sqrt((g ** 2).sum(0))
    g = np.where(mag > 1e-12, g / np.maximum(mag, 1e-12), 0.0)
    g[:, lab == 0] = 0.0
    return g.astype(np.float32)


def normalized_distance(labels: np.ndarray) -> np.ndarray:
    """Distance to the object's edge divided by the object's largest distance (0..1), float32."""
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(lab.astype(np.int64)), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        m = lab[sl] == i
        d = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        out[sl][m] = (d[m] / max(d.max(), 1e-6)).astype(np.float32)
    return out


def transform_flows(flows: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Flows of the crop ``flip(rot90(crop, k))`` (rot90 over the last two axes, flip along x).

    Works on numpy arrays or torch tensors of shape ``(2, H, W)`` (or ``(..., 2, H, W)``).
    """
    mod = torch if isinstance(flows, torch.Tensor) else np
    f = flows
    for _ in range(k % 4):
        f = mod.rot90(f, 1, (-2, -1)) if mod is np else torch.rot90(f, 1, dims=(-2, -1))
        dy, dx = f[..., 0, :, :], f[..., 1, :, :]
        f = mod.stack([-dx, dy], -3) if mod is np else torch.stack([-dx, dy], -3)
    if flip:
        f = mod.flip(f, -1) if mod is np else torch.flip(f, dims=(-1,))
        f = mod.stack([f[..., 0, :, :], -f[..., 1, :, :]], -3) if mod is np else \
            torch.stack([f[..., 0, :, :], -f[..., 1, :, :]], -3)
    return f


def follow_flows(flows: np.ndarray, mask: np.ndarray, niter: int = 200, step: float = 1.0) -> np.ndarray:
    """Final positions ``(N, 2)`` (row, col) of the pixels of ``mask`` moved along ``flows``.

    Each pixel moves by ``step`` times the bilinearly interpolated flow at its current position,
    ``niter`` times, staying inside the image.
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros((0, 2), np.float32)
    grid_field = torch.from_numpy(np.ascontiguousarray(flows[[1, 0]], np.float32))[None]  # (1, 2, H, W) dx, dy
    pos = torch.from_numpy(np.stack([xs, ys], 1).astype(np.float32))  # (N, 2) x, y
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    lim = torch.tensor([w - 1.0, h - 1.0])
    for _ in range(niter):
        g = (pos * scale - 1.0)[None, None]  # (1, 1, N, 2)
        v = F.grid_sample(grid_field, g, mode="bilinear", align_corners=True)[0, :, 0].T  # (N, 2)
        pos = torch.minimum(torch.clamp(pos + step * v, min=0.0), lim)
    return pos.numpy()[:, ::-1].copy()


def flows_to_labels(flows: np.ndarray, prob: np.ndarray, threshold: float = 0.5, niter: int = 200,
                    min_size: int = 8, min_sink: int = 3, min_fraction: float = 0.1) -> np.ndarray:
    """Instances ``(H, W)`` int32 from flows ``(2, H, W)`` and a foreground probability.

    The foreground pixels (``prob > threshold``) follow the flows; where at least ``min_sink``
    of them end within a 3x3 neighbourhood is a sink; the sinks' connected components
    (dilated by one pixel) are the objects, and each pixel takes the object of its sink.
    Objects smaller than ``min_size`` pixels, or than ``min_fraction`` of the median object,
    are dropped (pixels stuck in thin protrusions form such small clusters).
    """
    mask = np.asarray(prob) > threshold
    h, w = mask.shape
    out = np.zeros((h, w), np.int32)
    end = follow_flows(flows, mask, niter)
    if len(end) == 0:
        return out
    iy, ix = (np.clip(np.rint(end[:, k]).astype(int), 0, s - 1) for k, s in ((0, h), (1, w)))
    hist = np.zeros((h, w), np.float32)
    np.add.at(hist, (iy, ix), 1.0)
    dense = ndi.uniform_filter(hist, 3, mode="constant") * 9 >= min_sink
    sinks, n = ndi.label(ndi.binary_dilation(dense & (hist > 0), iterations=1))
    if n == 0:
        return out
    ys, xs = np.nonzero(mask)
    out[ys, xs] = sinks[iy, ix]
    areas = np.bincount(out.ravel())[1:]
    areas = areas[areas > 0]
    floor = max(min_size, int(min_fraction * np.median(areas))) if len(areas) else min_size
    return _drop_small(out, floor)


def distance_to_labels(dist: np.ndarray, prob: np.ndarray, threshold: float = 0.5, core: float = 0.5,
                       min_size: int = 8) -> np.ndarray:
    """Instances from a normalised distance ``(H, W)``: cores ``dist > core`` seed a watershed of the foreground."""
    from skimage.segmentation import watershed

    mask = np.asarray(prob) > threshold
    markers, n = ndi.label((np.asarray(dist) > core) & mask)
    if n == 0:
        return np.zeros(mask.shape, np.int32)
    lab = watershed(-np.asarray(dist, np.float32), markers, mask=mask).astype(np.int32)
    return _drop_small(lab, min_size)


def _drop_small(lab: np.ndarray, min_size: int) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    if lab.max() == 0:
        return lab
    sizes = np.bincount(lab.ravel())
    small = sizes < min_size
    small[0] = False
    lab = np.where(small[lab], 0, lab)
    return relabel_sequential(lab)[0].astype(np.int32)
