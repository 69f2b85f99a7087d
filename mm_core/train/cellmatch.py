"""``python -m mm_core.train cellmatch``: the CellMatch model on ``train/`` (synthetic images optional).

Example (the shipped model's command is in ``docs/training.md``)::

    python -m mm_core.train cellmatch --data ../shared/data/train/seg --out runs/cellmatch \\
        --epochs 60 --steps 100 --batch-size 8 --crop 128 --threads 1 --set engine_maps=1

The shipped recipe (picked on the validation slice) trains on the real ``train/`` images only
(``synthetic=0``, the default) and adds ``--set engine_maps=1``: the classic engine's automatic
maps as two more inputs. Without it, or with ``--set synthetic=300`` (300 domain-randomised
synthetic label maps, ``mm_core.train.synthetic``), it trains the ablations. The validation slice
is a seeded share of each ``train/`` source (never the dev sets); its loss picks the epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: Training-recipe settings (``--set KEY=VALUE``); the rest of ``--set`` goes to the model.
RECIPE = {"synthetic": 0, "p_synth": 0.4, "p_exemplar": 0.4}


def split_settings(settings: dict) -> tuple[dict, dict]:
    """``(recipe, model)`` settings from ``--set`` pairs."""
    recipe = {**RECIPE, **{k: v for k, v in settings.items() if k in RECIPE}}
    return recipe, {k: v for k, v in settings.items() if k not in RECIPE}


def loss(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Foreground BCE + 5 x flow MSE + distance BCE, averaged over the pixels inside the image."""
    import torch.nn.functional as F

    w = weight[:, 0]
    n = w.sum().clamp(min=1.0)
    fg = target[:, 2]
    bce = F.binary_cross_entropy_with_logits(out[:, 2], fg, reduction="none")
    flow = ((out[:, :2] - 5.0 * target[:, :2]) ** 2).mean(1) / 25.0
    dist = F.binary_cross_entropy_with_logits(out[:, 3], target[:, 3], reduction="none") * (0.2 + fg)
    return ((bce + 5.0 * flow + dist) * w).sum() / n


def cellmatch_task(args, samples, settings: dict):
    """``(head, step_loss, validate, datasets)`` for :func:`mm_core.train.loop.fit`."""
    from mm_core.heads.learned.cellmatch import CellMatchHead
    from mm_core.train import cellmatch_data as cd
    from mm_core.train.generalist import split_by_dataset

    recipe, model = split_settings(settings)
    train_s, val_s = split_by_dataset(samples, args.val_fraction, args.seed)
    if args.max_images:
        train_s = train_s[: args.max_images]
    print(f"cellmatch: {len(train_s)} training / {len(val_s)} validation images, "
          f"{recipe['synthetic']} synthetic label maps")
    progress = not args.no_progress
    no_cache = str(args.cache_dir).lower() == "none"
    cache = None if no_cache else Path(args.cache_dir) / "cellmatch_targets"
    torch.manual_seed(args.seed)
    head = CellMatchHead(**model)
    use_maps = head.config["engine_maps"]
    engine = None
    if use_maps:
        from mm_core.engines.classic.engine import ClassicEngine
        from mm_core.train.cache import EngineCache

        engine = EngineCache(ClassicEngine(), folder=None if no_cache else args.cache_dir, features=False)
    real = cd.real_items(train_s, progress, cache, engine)
    val = cd.real_items(val_s, progress, cache, engine)
    synth = cd.synthetic_items(int(recipe["synthetic"]), args.seed, progress=progress)
    head.config["info"]["recipe"] = recipe
    val_batches = validation_set(val, args.crop, args.seed + 1, engine_maps=use_maps)

    def step(rng: np.random.Generator) -> torch.Tensor:
        x, t, w = cd.batch(real, synth, args.crop, args.batch_size, rng, float(recipe["p_synth"]),
                           float(recipe["p_exemplar"]), use_maps)
        return loss(head(x), t, w)

    def validate(h) -> float:
        tot, n = 0.0, 0
        for x, t, w in val_batches:
            tot += float(loss(h(x), t, w)) * len(x)
            n += len(x)
        return tot / max(n, 1)

    return head, step, validate, sorted({s.dataset for s in train_s})


def validation_set(items: list, size: int, seed: int, per_item: int = 4, engine_maps: bool = False) -> list:
    """Fixed validation crops of the held-out ``train/`` images (half automatic, half with a box)."""
    from mm_core.train import cellmatch_data as cd

    rng = np.random.default_rng(seed)
    crops = [cd.crop(it, size, rng, exemplar=bool(j % 2), engine_maps=engine_maps) for it in items
             for j in range(per_item)]
    return [tuple(torch.stack(c) for c in zip(*crops[i:i + 16], strict=True)) for i in range(0, len(crops), 16)]
