"""Training data for the dense heads (segmentation, counting): cached maps -> random crops.

Each image is matched once (through :class:`~mm_core.train.cache.EngineCache`);
training draws random crops of the working grid (objects at the head's
``target_diameter``, with a random zoom jitter), flipped and rotated at random, and
builds the targets on the crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from mm_core.train.data import Sample, load_image, load_labels, load_points
from mm_core.heads.learned.counting import dot_density
from mm_core.heads.learned.inputs import (
    HeadInputs,
    gather_inputs,
    sample_inputs,
    sample_region,
    working_factor,
)
from mm_core.heads.learned.segmentation import seg_targets


@dataclass
class Item:
    """One prepared training image."""

    name: str
    inputs: HeadInputs
    labels: np.ndarray | None = None  # (H, W) instance labels (segmentation)
    points: np.ndarray | None = None  # (N, 2) row, col (counting)


def square_region(shape: tuple[int, int], side: float, rng=None) -> tuple[float, float, float, float]:
    """A ``side``-wide square ``(y0, x0, y1, x1)`` in an image of ``shape``: centred, or at a random place.

    With ``rng`` the square's corner is uniform over the positions that keep it inside the
    image (or, for a square larger than the image, that keep the image inside it).
    """
    h, w = shape
    if rng is None:
        y0, x0 = (h - side) / 2, (w - side) / 2
    else:
        y0 = rng.uniform(min(0.0, h - side), max(0.0, h - side))
        x0 = rng.uniform(min(0.0, w - side), max(0.0, w - side))
    return (y0, x0, y0 + side, x0 + side)


def exemplar_box(labels: np.ndarray | None, points: np.ndarray | None, scale: float,
                 rng: np.random.Generator) -> np.ndarray | None:
    """One ground-truth object's box ``(1, 4)`` (x0, y0, x1, y1), picked with ``rng``."""
    if labels is not None and labels.max() > 0:
        from skimage.measure import regionprops

        props = regionprops(labels)
        r0, c0, r1, c1 = props[int(rng.integers(len(props)))].bbox
        return np.array([[c0, r0, c1, r1]], np.float32)
    if points is not None and len(points):
        r, c = points[int(rng.integers(len(points)))]
        h = max(2.0, scale / 2)
        return np.array([[c - h, r - h, c + h, r + h]], np.float32)
    return None


def prepare(samples: list[Sample], cache, task: str, mode: str = "automatic", seed: int = 0,
            progress: bool = True) -> list[Item]:
    """Read every sample and match it once (cached). ``mode``: ``automatic`` or ``exemplar``."""
    from mm_core.transforms import prepare_boxes

    rng = np.random.default_rng(seed)
    items = []
    for s in tqdm(samples, desc="engine maps", disable=not progress, leave=False):
        img = load_image(s.image)
        labels = load_labels(s.target) if task == "segment" else None
        points = load_points(s.target) if task == "count" else None
        boxes = None
        if mode == "exemplar":
            boxes = prepare_boxes(exemplar_box(labels, points, 0.03 * max(img.shape[:2]), rng), img.shape[:2])
        maps = cache.match(img, boxes)
        items.append(Item(f"{s.dataset}/{s.name}", gather_inputs(maps, img), labels, points))
    return items


def _augment(arrs: list[torch.Tensor], k: int, flip: bool) -> list[torch.Tensor]:
    out = []
    for a in arrs:
        a = torch.rot90(a, k, dims=(-2, -1))
        out.append(torch.flip(a, dims=(-1,)) if flip else a)
    return out


def crop(item: Item, head_cfg: dict, size: int, rng: np.random.Generator | None, task: str,
         jitter: float = 1.5):
    """One ``size x size`` working-grid crop: ``(base (3,S,S), feats (C,S,S) or None, target (K,S,S))``.

    ``rng=None`` gives the deterministic centre crop (validation).
    """
    inp = item.inputs
    f = working_factor(inp.scale, head_cfg["target_diameter"])
    if rng is not None:
        f *= float(np.exp(rng.uniform(-np.log(jitter), np.log(jitter))))
    side = size / f  # crop side in input pixels
    h, w = inp.shape
    region = square_region((h, w), side, rng)
    y0, x0 = region[:2]
    base, feats = sample_inputs(inp, region, (size, size))
    if task == "segment":
        lab = sample_region(item.labels[None].astype(np.float32), region, (size, size), inp.shape, mode="nearest")
        lab_np = lab[0].numpy().astype(np.int64)
        lab_np[_outside(region, (size, size), inp.shape)] = 0
        target = torch.as_tensor(seg_targets(lab_np))
    else:
        # pixel-centre convention: input pixel r covers [r, r + 1), working pixel i covers [i, i + 1)
        pts = (item.points + 0.5 - np.array([y0, x0])) * f - 0.5
        keep = ((pts >= -0.5) & (pts < size - 0.5)).all(axis=1)
        target = torch.as_tensor(dot_density(pts[keep], (size, size), head_cfg["sigma_frac"] * head_cfg[
            "target_diameter"], head_cfg["density_scale"]))[None]
    parts = [base, target] + ([feats] if feats is not None else [])
    if rng is not None:
        parts = _augment(parts, int(rng.integers(4)), bool(rng.integers(2)))
    base, target = parts[0], parts[1]
    feats = parts[2] if feats is not None else None
    return base, feats, target


def _outside(region, out_shape, input_shape) -> np.ndarray:
    y0, x0, y1, x1 = region
    ys = y0 + (np.arange(out_shape[0]) + 0.5) * (y1 - y0) / out_shape[0]
    xs = x0 + (np.arange(out_shape[1]) + 0.5) * (x1 - x0) / out_shape[1]
    return ((ys < 0) | (ys >= input_shape[0]))[:, None] | ((xs < 0) | (xs >= input_shape[1]))[None, :]


def batch(items: list[Item], head_cfg: dict, size: int, n: int, rng, task: str):
    """A random batch of ``n`` crops: a dataset drawn with probability ~ sqrt(its image count),
    then one of its images (a large dataset does not drown a small one, nor a one-image
    dataset weigh as much as a large one)."""
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.name.split("/")[0], []).append(it)
    keys = sorted(groups)
    p = np.sqrt([len(groups[k]) for k in keys])
    crops = []
    for _ in range(n):
        group = groups[keys[int(rng.choice(len(keys), p=p / p.sum()))]]
        crops.append(crop(group[int(rng.integers(len(group)))], head_cfg, size, rng, task))
    return _stack(crops)


def _stack(crops):
    base = torch.stack([c[0] for c in crops])
    feats = None if crops[0][1] is None else torch.stack([c[1] for c in crops])
    return base, feats, torch.stack([c[2] for c in crops])


def validation_set(items: list[Item], head_cfg: dict, size: int, task: str, per_image: int = 2, seed: int = 1):
    """Fixed crops for validation (same every epoch): a centre crop and seeded random ones."""
    rng = np.random.default_rng(seed)
    crops = []
    for it in items:
        crops.append(crop(it, head_cfg, size, None, task))
        crops += [crop(it, head_cfg, size, rng, task, jitter=1.0) for _ in range(per_image - 1)]
    return [_stack(crops[i:i + 8]) for i in range(0, len(crops), 8)]


def validation_loss(head, val_batches) -> float:
    """Mean loss of ``head`` over fixed validation batches."""
    total, n = 0.0, 0
    for base, feats, target in val_batches:
        total += float(head.loss(head(base, feats), target)) * len(base)
        n += len(base)
    return total / max(n, 1)
