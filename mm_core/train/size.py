"""``python -m mm_core.train size``: the object-size model on ``train/`` (no engine needed).

Each annotated image gives its whole-image profile (as at inference) and
``--variants`` random views: a crop of random side, zoomed by 2^U(-1.5, 1.5) so the
objects are seen over a wide range of diameters, flipped at random, and shrunk to
:data:`~mm_core.heads.learned.size.PROFILE_SIDE` as at inference. The target is the
median equivalent diameter of the ground-truth objects in the view. Datasets are
weighted by ``1 / sqrt(n images)`` so the 664 DSB2018 images do not drown the 10 EM
ones. The validation slice is the generalist head's (a seeded share of each dataset).
"""

from __future__ import annotations

import zlib
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from mm_core.errors import MMError
from mm_core.heads.learned.size import SizeModel, diameter_to_bin, profile_image, scale_profile
from mm_core.transforms import resize_map

#: Views are zoomed by 2**U(-ZOOM_OCTAVES, ZOOM_OCTAVES).
ZOOM_OCTAVES = 1.5
#: Augmentations of the views (``--size-augment``).
AUGMENT = ("zoom", "zoom+intensity")


def _view(gray: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random crop of ``gray``/``labels`` zoomed by a random factor, flipped at random."""
    h, w = gray.shape
    zoom = float(2.0 ** rng.uniform(-ZOOM_OCTAVES, ZOOM_OCTAVES))
    side = int(rng.uniform(192, 512))
    c = int(min(h, w, max(32, side / zoom)))
    y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
    g, lab = gray[y:y + c, x:x + c], labels[y:y + c, x:x + c]
    out = (max(16, round(c * zoom)),) * 2
    g = resize_map(g.astype(np.float32), out, order=1)
    lab = resize_map(lab.astype(np.float32), out, order=0).astype(np.int64)
    if rng.random() < 0.5:
        g, lab = g[:, ::-1], lab[:, ::-1]
    return g, lab


def _intensity(g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma, polarity inversion (half the views), noise and blur of a ``[0, 1]`` view."""
    from scipy import ndimage as ndi

    g = np.clip(g, 0.0, 1.0) ** float(2.0 ** rng.uniform(-1.0, 1.0))
    if rng.random() < 0.5:
        g = 1.0 - g
    if rng.random() < 0.3:
        g = ndi.gaussian_filter(g, float(rng.uniform(0.5, 1.5)))
    return (g + rng.normal(0.0, rng.uniform(0.0, 0.1) * float(g.std()) + 1e-6, g.shape)).astype(np.float32)


def _profiles(args: tuple) -> list[tuple[np.ndarray, float]]:
    """Profiles and target bins of one image's views (run in a worker process)."""
    from mm_core.train.data import load_image, load_labels
    from mm_core.engines.classic.engine import gray_of
    from mm_core.heads.objects import object_diameter
    from mm_core.transforms import normalize

    image_path, mask_path, key, n_views, seed, augment = args
    gray = gray_of(normalize(load_image(image_path)))
    labels = load_labels(mask_path)
    d = object_diameter(labels)
    if d <= 0:
        return []
    img, f = profile_image(gray)
    out = [(scale_profile(img), diameter_to_bin(d * f))]
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    for _ in range(n_views):
        g, lab = _view(gray, labels, rng)
        if augment == "zoom+intensity":
            g = _intensity(g, rng)
        dv = object_diameter(lab)
        if dv > 0:
            img, f = profile_image(g)
            out.append((scale_profile(img), diameter_to_bin(dv * f)))
    return out


def prepare(samples: list, n_views: int, seed: int, workers: int = 1, progress: bool = True,
            augment: str = "zoom"):
    """``(profiles (N, C, K), target bins (N,), dataset of each (N,))`` of ``samples``.

    ``augment``: ``"zoom"`` (random crops and zooms) or ``"zoom+intensity"`` (also random
    gamma, polarity inversion, blur and noise of each view).
    """
    if augment not in AUGMENT:
        raise MMError(f"unknown size augmentation {augment!r}; choose one of {', '.join(AUGMENT)}")
    jobs = [(s.image, s.target, f"{s.dataset}/{s.name}", n_views, seed, augment) for s in samples]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        results = list(tqdm(pool.map(_profiles, jobs, chunksize=4), total=len(jobs), desc="scale profiles",
                            disable=not progress))
    prof, tgt, ds = [], [], []
    if not any(results):
        raise MMError(f"none of the {len(samples)} images has annotated objects (non-zero mask labels): "
                      "the size model has nothing to learn from")
    for s, rows in zip(samples, results, strict=True):
        for p, b in rows:
            prof.append(p)
            tgt.append(b)
            ds.append(s.dataset)
    return np.stack(prof), np.asarray(tgt, np.float32), np.asarray(ds)


def dataset_weights(ds: np.ndarray) -> np.ndarray:
    """Per-item weight ``1 / sqrt(n items of its dataset)``, normalised to mean 1."""
    _names, inv, counts = np.unique(ds, return_inverse=True, return_counts=True)
    w = 1.0 / np.sqrt(counts[inv].astype(np.float64))
    return (w / w.mean()).astype(np.float32)


def size_task(args, samples: list, settings: dict):
    """``(model, step_loss, validate, datasets used)`` for :func:`mm_core.train.loop.fit`."""
    from mm_core.train.generalist import split_by_dataset

    train_s, val_s = split_by_dataset(samples, args.val_fraction, args.seed)
    if not val_s:
        raise MMError(f"the size model needs a validation image: give a dataset with at least 2 annotated "
                      f"images (found {len(samples)})")
    if args.max_images:
        train_s = train_s[: args.max_images]
    workers = int(args.threads or 1)
    print(f"size: {len(train_s)} training / {len(val_s)} validation images (validation: a seeded "
          f"{args.val_fraction:.0%} of each dataset), {args.variants} views each")
    tp, tb, tds = prepare(train_s, args.variants, args.seed, workers, not args.no_progress, args.size_augment)
    vp, vb, vds = prepare(val_s, 0, args.seed, workers, not args.no_progress)
    tw = dataset_weights(tds)
    vw = torch.as_tensor(dataset_weights(vds))
    tp, tb = torch.as_tensor(tp), torch.as_tensor(tb)
    vp, vb = torch.as_tensor(vp), torch.as_tensor(vb)
    torch.manual_seed(args.seed)
    model = SizeModel(**settings)
    prob = tw / tw.sum()

    def step(rng):
        idx = torch.as_tensor(rng.choice(len(tb), size=args.batch_size, p=prob))
        return model.loss(model(tp[idx]), tb[idx])

    def validate(m):
        return float(m.loss(m(vp), vb, vw))

    return model, step, validate, sorted({s.dataset for s in train_s})
