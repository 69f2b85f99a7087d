"""Training data for the generalist head: engine maps of ``train/`` images, cached once.

Each annotated image is matched twice by the frozen engine (through
:class:`~mm_core.train.cache.EngineCache`): once in automatic mode and once with
one ground-truth object's box made imprecise the way users draw boxes (the
paper's imprecision types: shift, size and aspect-ratio errors, see
:func:`imprecise_box`). The head learns from both, so the same weights serve
both modes and a sloppy box.

Each :class:`GItem` keeps the head's inputs at input resolution (grey image with
the objects made bright, foreground, centres; float16 to keep ~760 images in
memory) and the instance labels; :func:`crop` samples a working-grid crop at a
chosen object diameter, with the augmentations of the issue (scale jitter,
flips and 90 degree rotations, gamma / contrast / noise / blur, polarity
inversion).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mm_core.train.data import Sample, load_image, load_labels
from mm_core.heads.learned.generalist import head_inputs, targets
from mm_core.heads.objects import object_diameter
from mm_core.heads.learned.inputs import sample_region
from mm_core.train.dense import square_region


@dataclass
class GItem:
    """One prepared training image (one engine mode)."""

    name: str  #: ``dataset/image``
    mode: str  #: ``automatic`` or ``exemplar``
    base: np.ndarray  #: (3, H, W) float16: grey (objects bright), foreground, centres
    labels: np.ndarray  #: (H, W) int32 instance labels
    diameter: float  #: median equivalent diameter of the ground-truth objects (input pixels)
    engine_scale: float  #: the engine's object scale (input pixels)

    @property
    def dataset(self) -> str:
        return self.name.split("/")[0]


def gt_box(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Bounding box ``(x0, y0, x1, y1)`` of one ground-truth object of middling area."""
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    if len(ids) == 0:
        return None
    lo, hi = np.percentile(areas, [25, 75])
    cand = ids[(areas >= lo) & (areas <= hi)]
    oid = rng.choice(cand if len(cand) else ids)
    rr, cc = np.nonzero(labels == oid)
    return np.array([cc.min(), rr.min(), cc.max() + 1, rr.max() + 1], np.float32)


def imprecise_box(box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``box`` with one of the paper's imprecision types, drawn at random.

    Precise (+-10 % jitter), shifted by up to 60 % of its size, resized 0.6-2x per side,
    or stretched in aspect ratio (one side up to 2x, the other down to 0.5x).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    kind = rng.choice(["precise", "shift", "size", "aspect"], p=[0.3, 0.25, 0.25, 0.2])
    if kind == "precise":
        cx, cy = cx + rng.uniform(-0.1, 0.1) * w, cy + rng.uniform(-0.1, 0.1) * h
        w, h = w * rng.uniform(0.9, 1.1), h * rng.uniform(0.9, 1.1)
    elif kind == "shift":
        ang, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.6)
        cx, cy = cx + r * w * np.cos(ang), cy + r * h * np.sin(ang)
    elif kind == "size":
        s = float(np.exp(rng.uniform(np.log(0.6), np.log(2.0))))
        w, h = w * s, h * s
    else:
        a = float(np.exp(rng.uniform(np.log(1.3), np.log(2.0))))
        w, h = (w * a, h / a) if rng.integers(2) else (w / a, h * a)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


def prepare(samples: list[Sample], cache, modes=("automatic", "exemplar"), seed: int = 0,
            progress: bool = True) -> list[GItem]:
    """Read every sample and match it once per mode (cached)."""
    from mm_core.transforms import prepare_boxes

    items = []
    for s in tqdm(samples, desc="engine maps", disable=not progress, leave=False):
        # one generator per image (not per run): the same image gets the same box in every
        # run, whatever else is in it, so leave-one-out runs reuse the cached maps
        rng = np.random.default_rng([seed, zlib.crc32(f"{s.dataset}/{s.name}".encode())])
        img = load_image(s.image)
        labels = load_labels(s.target).astype(np.int32)
        if labels.max() == 0:
            continue
        diameter = object_diameter(labels)
        for mode in modes:
            boxes = None
            if mode == "exemplar":
                box = gt_box(labels, rng)
                boxes = prepare_boxes(imprecise_box(box, rng)[None], img.shape[:2])
            maps = cache.match(img, boxes)
            base = head_inputs(maps, img).astype(np.float16)
            items.append(GItem(f"{s.dataset}/{s.name}", mode, base, labels, diameter, float(maps.scale)))
    return items


# ---------------------------------------------------------------- crops and augmentation
def photometric(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Gamma, contrast, polarity inversion, blur and noise on the grey channel ``(h, w)``."""
    x = img.clamp(-0.5, 1.5)
    if rng.random() < 0.5:  # polarity inversion: the head must not rely on bright = object
        x = 1.0 - x
    lo = float(torch.quantile(x.flatten()[::7], 0.01))
    x = (x - lo).clamp(min=0)
    x = x ** float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    x = x * float(rng.uniform(0.6, 1.4)) + float(rng.uniform(-0.15, 0.15))
    if rng.random() < 0.3:
        s = float(rng.uniform(0.5, 1.5))
        k = int(2 * np.ceil(2 * s) + 1)
        g = torch.exp(-0.5 * (torch.arange(k, dtype=torch.float32) - k // 2) ** 2 / s ** 2)
        g = g / g.sum()
        x = F.conv2d(F.pad(x[None, None], (k // 2,) * 4, mode="replicate"), g[None, None, None, :])
        x = F.conv2d(x, g[None, None, :, None])[0, 0]
    if rng.random() < 0.5:
        x = x + float(rng.uniform(0, 0.08)) * torch.randn(x.shape, generator=_tg(rng))
    return x


def _tg(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2 ** 31)))


def crop(item: GItem, size: int, target_diameter: float, rng: np.random.Generator | None,
         wide: float = 3.0, narrow: float = 1.25):
    """One ``size x size`` working-grid crop ``(inputs (3,S,S), targets (5,S,S), weight (1,S,S))``.

    With ``rng``, objects come out at ``target_diameter`` times a log-uniform jitter:
    half the crops within ``1/narrow..narrow`` (where the head segments), half within
    ``1/wide..wide`` (where it must still tell the object size). ``rng=None``: the
    deterministic centre crop at ``target_diameter`` (validation).
    """
    f = target_diameter / max(item.diameter, 1.0)
    if rng is not None:
        j = wide if rng.random() < 0.5 else narrow
        f *= float(np.exp(rng.uniform(-np.log(j), np.log(j))))
    side = size / f
    h, w = item.labels.shape
    region = square_region((h, w), side, rng)
    base = sample_region(item.base.astype(np.float32), region, (size, size), (h, w))
    lab = sample_region(item.labels[None].astype(np.float32), region, (size, size), (h, w), mode="nearest")
    lab_np = lab[0].numpy().astype(np.int64)
    inside = _inside(region, (size, size), (h, w))
    lab_np[~inside] = 0
    tgt = torch.as_tensor(targets(lab_np, target_diameter))
    weight = torch.as_tensor(inside, dtype=torch.float32)[None]
    if rng is not None:
        base[0] = photometric(base[0], rng)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        base, tgt, weight = (torch.rot90(a, k, dims=(-2, -1)) for a in (base, tgt, weight))
        if flip:
            base, tgt, weight = (torch.flip(a, dims=(-1,)) for a in (base, tgt, weight))
    return base.contiguous(), tgt.contiguous(), weight.contiguous()


def _inside(region, out_shape, input_shape) -> np.ndarray:
    y0, x0, y1, x1 = region
    ys = y0 + (np.arange(out_shape[0]) + 0.5) * (y1 - y0) / out_shape[0]
    xs = x0 + (np.arange(out_shape[1]) + 0.5) * (x1 - x0) / out_shape[1]
    return ((ys >= 0) & (ys < input_shape[0]))[:, None] & ((xs >= 0) & (xs < input_shape[1]))[None, :]


def batch(items: list[GItem], size: int, n: int, target_diameter: float, rng: np.random.Generator):
    """``n`` random crops: a dataset drawn with probability ~ sqrt(its image count), then an item."""
    groups: dict[str, list[GItem]] = {}
    for it in items:
        groups.setdefault(it.dataset, []).append(it)
    keys = sorted(groups)
    p = np.sqrt([len(groups[k]) for k in keys])
    crops = []
    for _ in range(n):
        g = groups[keys[int(rng.choice(len(keys), p=p / p.sum()))]]
        crops.append(crop(g[int(rng.integers(len(g)))], size, target_diameter, rng))
    return tuple(torch.stack(c) for c in zip(*crops, strict=True))


def validation_set(items: list[GItem], size: int, target_diameter: float, seed: int = 1, per_item: int = 2):
    """Fixed validation crops: the centre crop plus seeded augmented ones (the same every epoch)."""
    rng = np.random.default_rng(seed)
    crops = []
    for it in items:
        crops.append(crop(it, size, target_diameter, None))
        for _ in range(per_item - 1):
            b, t, w = crop(it, size, target_diameter, rng)
            crops.append((b, t, w))
    return [tuple(torch.stack(c) for c in zip(*crops[i:i + 16], strict=True)) for i in range(0, len(crops), 16)]
