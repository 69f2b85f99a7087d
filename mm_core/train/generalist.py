"""``python -m mm_core.train generalist``: the generalist head on ``train/``, both engine modes.

Every training image is matched by the frozen engine in automatic mode and with one
imprecise ground-truth box (:mod:`mm_core.train.generalist_data`); crops are drawn at
a wide range of object diameters around the working one. The validation slice is a
seeded share of each dataset's images (at least one per dataset), never the dev sets.
"""

from __future__ import annotations

import numpy as np
import torch

from mm_core.errors import MMError


def split_by_dataset(samples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split of each dataset's samples: ``fraction`` (at least one) to validation."""
    by_ds: dict[str, list] = {}
    for s in samples:
        by_ds.setdefault(s.dataset, []).append(s)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for ds in sorted(by_ds):
        group = sorted(by_ds[ds], key=lambda s: s.name)
        if len(group) < 2:
            train += group
            continue
        idx = rng.permutation(len(group))
        n_val = min(len(group) - 1, max(1, round(fraction * len(group))))
        val += [group[i] for i in idx[:n_val]]
        train += [group[i] for i in idx[n_val:]]
    return train, val


def generalist_task(args, samples, cache, settings: dict):
    """``(head, step_loss, validate)`` for :func:`mm_core.train.loop.fit`."""
    from mm_core.heads.learned.generalist import GeneralistHead
    from mm_core.train import generalist_data as gd

    if args.engine != "classic":
        raise MMError("the generalist head is trained on the classic engine's maps (--engine classic)")
    train_s, val_s = split_by_dataset(samples, args.val_fraction, args.seed)
    if args.max_images:
        train_s = train_s[: args.max_images]
    print(f"generalist: {len(train_s)} training / {len(val_s)} validation images "
          f"(validation: a seeded {args.val_fraction:.0%} of each dataset)")
    train = gd.prepare(train_s, cache, seed=args.seed, progress=not args.no_progress)
    val = gd.prepare(val_s, cache, seed=args.seed, progress=not args.no_progress)
    torch.manual_seed(args.seed)
    head = GeneralistHead(args.engine, **settings)
    d = float(head.config["target_diameter"])
    val_batches = gd.validation_set(val, args.crop, d)

    def step(rng):
        base, target, weight = gd.batch(train, args.crop, args.batch_size, d, rng)
        return head.loss(head(base), target, weight)

    def validate(h):
        total, n = 0.0, 0
        for base, target, weight in val_batches:
            total += float(h.loss(h(base), target, weight)) * len(base)
            n += len(base)
        return total / max(n, 1)

    return head, step, validate, sorted({s.dataset for s in train_s})
