"""Training data for the CellMatch model: ``train/`` images and domain-randomised synthetic ones.

Every label map (a real ``train/`` mask or a procedural one from
:mod:`mm_core.train.synthetic`) gets its targets once: Cellpose-style flows and the
normalised distance (:mod:`mm_core.heads.flows`). A crop is then drawn at a random zoom
(objects 8-100 pixels wide, zoom 0.25-4x) or, as a user would, around an imprecise
ground-truth box (shift, size and aspect errors) at the zoom that makes the box the working
size; real crops get colour augmentation (channel shuffle, greyscale, stain-like jitter,
gamma, polarity, blur, noise), synthetic ones a new random rendering each time.

For a model with ``engine_maps`` (the ablation), real items also carry the classic engine's
automatic maps of the whole image, cropped and zoomed with it; synthetic crops get zero maps
(the engine would have to run on every new rendering).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mm_core.heads.flows import labels_to_flows, normalized_distance, transform_flows
from mm_core.heads.learned.cellmatch import (
    ENGINE_INPUTS,
    engine_channels,
    image_channels,
    median_diameter,
    prompt_channels,
)
from mm_core.train.cache import atomic_savez
from mm_core.train.generalist_data import imprecise_box

DIAMETERS = (8.0, 100.0)  #: object diameters (working pixels) of automatic-mode crops
ZOOMS = (0.25, 4.0)


@dataclass
class Item:
    """One label map with its targets (and its image, for real data)."""

    name: str  #: ``dataset/image``
    labels: np.ndarray  #: (H, W) int32
    flows: np.ndarray  #: (2, H, W) float16
    dist: np.ndarray  #: (H, W) float16
    diameter: float
    image: np.ndarray | None = None  #: (3, H, W) float16, None for synthetic label maps
    maps: np.ndarray | None = None  #: (2, H, W) float16: the engine's maps (models with ``engine_maps``)

    @property
    def dataset(self) -> str:
        return self.name.split("/")[0]


def make_item(name: str, labels: np.ndarray, image: np.ndarray | None = None) -> Item | None:
    """Targets of one label map (``None`` when it has no object)."""
    labels = np.asarray(labels).astype(np.int32)
    d = median_diameter(labels)
    if d is None:
        return None
    img = None if image is None else image_channels(image).astype(np.float16)
    return Item(name, labels, labels_to_flows(labels).astype(np.float16),
                normalized_distance(labels).astype(np.float16), d, img)


#: Bump when the targets change (the cache keys include it).
TARGETS_VERSION = "1"


def real_items(samples, progress: bool = True, cache_dir=None, engine=None) -> list[Item]:
    """Items of annotated ``train/`` samples (:class:`mm_core.train.data.Sample`).

    ``cache_dir``: targets are kept there (one ``.npz`` per image) and reused by later runs.
    ``engine``: also keep its automatic maps of each image (:func:`engine_channels`; pass an
    :class:`mm_core.train.cache.EngineCache` to run it once per image across runs).
    """
    from mm_core.train.data import load_image, load_labels

    out = []
    for s in tqdm(samples, desc="targets", disable=not progress, leave=False):
        name = f"{s.dataset}/{s.name}"
        img = load_image(s.image)
        path = None if cache_dir is None else Path(cache_dir) / f"{s.dataset}__{s.name}__v{TARGETS_VERSION}.npz"
        if path is not None and path.is_file():
            z = np.load(path)
            it = Item(name, z["labels"], z["flows"], z["dist"], float(z["diameter"]),
                      image_channels(img).astype(np.float16)) if z["labels"].max() > 0 else None
        else:
            it = make_item(name, load_labels(s.target), img)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                lab = it.labels if it is not None else np.zeros((1, 1), np.int32)
                atomic_savez(path, labels=lab,
                             flows=it.flows if it is not None else np.zeros((2, 1, 1), np.float16),
                             dist=it.dist if it is not None else np.zeros((1, 1), np.float16),
                             diameter=np.float64(it.diameter if it is not None else 0.0))
        if it is not None:
            if engine is not None:
                it.maps = engine_channels(img, engine).astype(np.float16)
            out.append(it)
    return out


def synthetic_items(n: int, seed: int, size: int = 256, progress: bool = True) -> list[Item]:
    """``n`` procedural label maps (all kinds in turn) with their targets."""
    from mm_core.train.synthetic import KINDS, label_map

    out = []
    for i in tqdm(range(n), desc="synthetic", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, i])
        kind = KINDS[i % len(KINDS)]
        it = make_item(f"synthetic-{kind}/{i}", label_map(kind, size, rng))
        if it is not None:
            out.append(it)
    return out


# ---------------------------------------------------------------- crops
def _sample(arr: torch.Tensor, y0: float, x0: float, side: float, size: int, mode: str) -> torch.Tensor:
    """``(C, size, size)`` resampled from the square ``side`` at ``(y0, x0)`` of ``arr`` (zeros outside)."""
    c, h, w = arr.shape
    t = (torch.arange(size, dtype=torch.float32) + 0.5) * side / size
    ys, xs = y0 + t, x0 + t
    gy = (2 * ys / h) - 1  # pixel i covers [i, i + 1): align_corners=False
    gx = (2 * xs / w) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]
    return F.grid_sample(arr[None], grid, mode=mode, align_corners=False, padding_mode="zeros")[0]


def _colour(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Colour and intensity augmentation of a real crop ``(3, S, S)`` in [0, 1]."""
    if rng.random() < 0.3:
        x = x.mean(0, keepdim=True).expand(3, -1, -1)
    elif rng.random() < 0.5:
        x = x[torch.from_numpy(rng.permutation(3))]
    gain = torch.from_numpy(rng.uniform(0.7, 1.3, 3).astype(np.float32))[:, None, None]
    off = torch.from_numpy(rng.uniform(-0.1, 0.1, 3).astype(np.float32))[:, None, None]
    x = (x * gain + off).clamp(0, 1) ** float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    if rng.random() < 0.15:
        x = 1.0 - x
    if rng.random() < 0.4:
        x = x + float(rng.uniform(0, 0.06)) * torch.randn(x.shape, generator=torch.Generator().manual_seed(
            int(rng.integers(2 ** 31))))
    return x.clamp(0, 1)


def crop(item: Item, size: int, rng: np.random.Generator, exemplar: bool, target_diameter: float = 30.0,
         engine_maps: bool = False):
    """One training crop: ``inputs (5, S, S)``, ``targets (4, S, S)`` (flows, fg, dist), ``weight (1, S, S)``.

    ``engine_maps``: the inputs end with the item's engine maps (zeros when it has none): 7 channels.
    """
    h, w = item.labels.shape
    image = item.image.astype(np.float32) if item.image is not None else \
        image_channels(_render(item, rng))
    box = None
    if exemplar:
        box = _object_box(item.labels, rng)
        box = imprecise_box(box, rng)
        bs = float(np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1.0)))
        zoom = float(np.clip(target_diameter / bs, *ZOOMS))
        side = size / zoom
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0 = cx - side * rng.uniform(0.2, 0.8)
        y0 = cy - side * rng.uniform(0.2, 0.8)
    else:
        d = float(np.exp(rng.uniform(*np.log(DIAMETERS))))
        zoom = float(np.clip(d / item.diameter, *ZOOMS))
        side = size / zoom
        y0 = rng.uniform(min(0.0, h - side), max(0.0, h - side))
        x0 = rng.uniform(min(0.0, w - side), max(0.0, w - side))
    r0, c0 = int(np.clip(np.floor(y0) - 1, 0, h - 1)), int(np.clip(np.floor(x0) - 1, 0, w - 1))
    r1, c1 = int(np.clip(np.ceil(y0 + side) + 1, r0 + 1, h)), int(np.clip(np.ceil(x0 + side) + 1, c0 + 1, w))
    win = (slice(r0, r1), slice(c0, c1))
    parts = [image[:, win[0], win[1]], item.flows[:, win[0], win[1]].astype(np.float32),
             item.dist[win].astype(np.float32)[None], np.ones((1, r1 - r0, c1 - c0), np.float32)]
    if engine_maps:
        parts.append(np.zeros((len(ENGINE_INPUTS), r1 - r0, c1 - c0), np.float32) if item.maps is None else
                     item.maps[:, win[0], win[1]].astype(np.float32))
    dense = torch.from_numpy(np.concatenate(parts))
    got = _sample(dense, y0 - r0, x0 - c0, side, size, "bilinear")
    lab = _sample(torch.from_numpy(item.labels[win][None].astype(np.float32)), y0 - r0, x0 - c0, side, size,
                  "nearest")[0]
    img, flows, dist, inside = got[:3], got[3:5], got[5], (got[6] > 0.99).float()
    if item.image is not None:
        img = _colour(img, rng)
    fg = (lab > 0).float()
    mag = flows.pow(2).sum(0).sqrt().clamp(min=1e-6)
    flows = torch.where(fg > 0, flows / mag, torch.zeros_like(flows))
    bx = None
    if box is not None:
        bx = (np.asarray(box, float) - [x0, y0, x0, y0]) * zoom
        bx = bx[None]
    prompt = torch.from_numpy(prompt_channels(img.numpy(), bx))
    inputs = torch.cat([img, prompt, got[7:]])
    targets = torch.cat([flows, fg[None], (dist * fg)[None]])
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    inputs, weight = (_rot(a, k, flip) for a in (inputs, inside[None]))
    targets = torch.cat([transform_flows(targets[:2], k, flip), _rot(targets[2:], k, flip)])
    return inputs.contiguous(), targets.contiguous(), weight.contiguous()


def _rot(a: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    a = torch.rot90(a, k, dims=(-2, -1))
    return torch.flip(a, dims=(-1,)) if flip else a


def _object_box(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bounding box ``(x0, y0, x1, y1)`` of one random object."""
    from scipy import ndimage as ndi

    sl = [s for s in ndi.find_objects(labels) if s is not None]
    s = sl[int(rng.integers(len(sl)))]
    return np.array([s[1].start, s[0].start, s[1].stop, s[0].stop], np.float32)


def _render(item: Item, rng: np.random.Generator) -> np.ndarray:
    from mm_core.train.synthetic import render

    return render(item.labels, rng)


def batch(real: list[Item], synth: list[Item], size: int, n: int, rng: np.random.Generator,
          p_synth: float = 0.4, p_exemplar: float = 0.4, engine_maps: bool = False):
    """``n`` crops: synthetic with probability ``p_synth``, else a real dataset drawn ~ sqrt(its size)."""
    groups: dict[str, list[Item]] = {}
    for it in real:
        groups.setdefault(it.dataset, []).append(it)
    keys = sorted(groups)
    p = np.sqrt([len(groups[k]) for k in keys]) if keys else np.zeros(0)
    crops = []
    for _ in range(n):
        if synth and (not keys or rng.random() < p_synth):
            it = synth[int(rng.integers(len(synth)))]
            small = [r for r in real if r.labels.size <= 600 * 600]
            if small and rng.random() < 0.3:  # a real label map, rendered synthetically
                src = small[int(rng.integers(len(small)))]
                it = Item(src.name, src.labels, src.flows, src.dist, src.diameter, None)
        else:
            g = groups[keys[int(rng.choice(len(keys), p=p / p.sum()))]]
            it = g[int(rng.integers(len(g)))]
        crops.append(crop(it, size, rng, exemplar=bool(rng.random() < p_exemplar), engine_maps=engine_maps))
    return tuple(torch.stack(c) for c in zip(*crops, strict=True))


def item_rng(seed: int, name: str) -> np.random.Generator:
    """A generator fixed by the seed and the item's name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])
