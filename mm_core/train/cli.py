"""``python -m mm_core.train {segment,count,track,exemplar}``: train a head on frozen match maps.

Examples
--------
Train a segmentation head on the weight-free engine's maps::

    python -m mm_core.train segment --data ../shared/data/train/seg --engine classic --out runs/seg

The generalist head (both modes, own scale estimate) on the training corpus::

    python -m mm_core.train generalist --data ../shared/data/train/seg --out runs/generalist --threads 1

The CellMatch model (image + boxes + the classic engine's maps, train/; `--set synthetic=300` adds
synthetic images; issue 21)::

    python -m mm_core.train cellmatch --data ../shared/data/train/seg --out runs/cellmatch --threads 1 \
        --set engine_maps=1

The object-size model (no engine maps, scale profiles only)::

    python -m mm_core.train size --data ../shared/data/train/seg --out runs/size --threads 2

The best head (by validation loss) is written to ``--out`` as ``model.safetensors`` +
``config.json``; use it with ``python -m mm_core segment IMAGES --head runs/seg``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from mm_core.errors import MMError
from mm_core.train.loop import FitConfig, check_out, fit

TASKS = ("segment", "count", "track", "exemplar", "generalist", "size", "cellmatch")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mm_core.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("task", choices=TASKS)
    p.add_argument("--data", nargs="+", required=True, help="training dataset folder(s)")
    p.add_argument("--val-data", nargs="+", default=None,
                   help="validation folder(s); default: a seeded --val-fraction of --data")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--engine", default="classic", choices=("classic", "ldm"))
    p.add_argument("--mode", default="automatic", choices=("automatic", "exemplar"),
                   help="engine mode used to make the training maps (exemplar: one GT object's box per image)")
    p.add_argument("--out", required=True, help="output folder (checkpoint, training state, log.csv)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps", type=int, default=50, help="training steps per epoch")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=128, help="crop size on the working grid (pixels)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=15, help="early stop after this many epochs without improvement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --out/training_state.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out folder that holds a run (its checkpoint and log are replaced)")
    p.add_argument("--cache-dir", default=".cache/mm_heads", help="engine-output cache ('none' disables)")
    p.add_argument("--cache-version", default=None,
                   help="engine version used in cache keys (default: a hash of the engine's source code)")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many training images")
    p.add_argument("--subset", default=None, metavar="START:STOP",
                   help="use only samples START..STOP-1 of each dataset (sorted by name), e.g. 0:100")
    p.add_argument("--exclude", nargs="*", default=[], help="dataset names to leave out (leave-one-out runs)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="head settings, e.g. dim=48 depth=2")
    p.add_argument("--name", default=None, help="name stored in the checkpoint (shown when the head runs)")
    p.add_argument("--variants", type=int, default=3, help="size: random zoomed views per training image")
    p.add_argument("--size-augment", default="zoom", choices=("zoom", "zoom+intensity"),
                   help="size: augmentation of the views (zoom+intensity: also gamma, inversion, blur, noise)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (size: also profile workers)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _settings(pairs: list[str]) -> dict:
    out = {}
    for kv in pairs:
        if "=" not in kv:
            raise MMError(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def split(samples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split of ``samples`` into (train, validation); at least one of each when possible."""
    if len(samples) < 2:
        return samples, samples
    idx = np.random.default_rng(seed).permutation(len(samples))
    n_val = min(len(samples) - 1, max(1, int(round(fraction * len(samples)))))
    return [samples[i] for i in idx[n_val:]], [samples[i] for i in idx[:n_val]]


def _slice(samples: list, subset: str | None) -> list:
    if not subset:
        return samples
    try:
        start, stop = (int(v) if v else None for v in subset.split(":"))
    except ValueError:
        raise MMError(f"--subset expects START:STOP, got {subset!r}") from None
    by_ds: dict[str, list] = {}
    for s in samples:
        by_ds.setdefault(s.dataset, []).append(s)
    return [s for ds in by_ds.values() for s in sorted(ds, key=lambda x: x.name)[start:stop]]


def _find(task: str, folders: list[str], exclude: list[str]) -> list:
    from mm_core.train.data import find_counting, find_segmentation, find_tracking

    finder = {"segment": find_segmentation, "count": find_counting, "track": find_tracking,
              "exemplar": find_segmentation, "generalist": find_segmentation, "size": find_segmentation,
              "cellmatch": find_segmentation}[task]
    out = []
    for f in folders:
        out += [s for s in finder(f) if s.dataset not in exclude]
    if not out:
        raise MMError(f"no training samples left in {', '.join(folders)} after excluding {', '.join(exclude)}")
    return out


def run(argv: list[str]) -> dict:
    """Train one head as described by command-line ``argv``; returns the fit summary."""
    args = build_parser().parse_args(argv)
    from mm_core.engines import choose_engine, create_engine
    from mm_core.train.cache import EngineCache

    check_out(args.out, args.resume, args.overwrite)  # before minutes of data preparation
    if args.threads:
        torch.set_num_threads(args.threads)
    samples = _slice(_find(args.task, args.data, args.exclude), args.subset)
    if args.task in ("generalist", "size", "cellmatch"):
        return _run_generalist(args, argv, samples)
    if args.val_data:
        train_s, val_s = samples, _find(args.task, args.val_data, [])
    else:
        train_s, val_s = split(samples, args.val_fraction, args.seed)
    if args.max_images:
        train_s = train_s[: args.max_images]
    name, why = choose_engine(args.engine)
    engine = create_engine(name)
    cache = EngineCache(engine, None if str(args.cache_dir).lower() == "none" else args.cache_dir,
                        args.cache_version)
    print(f"{args.task}: {len(train_s)} training / {len(val_s)} validation items; engine: {why}")
    meta = {"name": args.name or Path(args.out).name,
            "train_command": "python -m mm_core.train " + " ".join(shlex.quote(a) for a in argv),
            "train_data": sorted({s.dataset for s in train_s}), "engine_mode": args.mode,
            "engine_version": cache.version}
    cfg = _fit_config(args)
    if args.task in ("segment", "count"):
        head, step, validate = _dense_task(args, train_s, val_s, cache)
    elif args.task == "track":
        from mm_core.train.track import track_task

        head, step, validate = track_task(args, train_s, val_s, cache, _settings(args.set))
    else:
        from mm_core.train.exemplar import exemplar_task

        head, step, validate = exemplar_task(args, train_s, val_s, engine, _settings(args.set))
    result = fit(head, step, validate, args.out, cfg, log=print, extra_meta=meta)
    print(f"best validation {result['best']:.4f} at epoch {result['best_epoch']}; head written to {args.out} "
          f"(engine cache: {cache.hits} hits, {cache.misses} engine runs)")
    return result


def _run_generalist(args, argv, samples) -> dict:
    from mm_core.engines.classic import ClassicEngine
    from mm_core.train.cache import EngineCache
    from mm_core.train.generalist import generalist_task

    if args.task == "size":
        from mm_core.train.size import size_task

        head, step, validate, used = size_task(args, samples, _settings(args.set))
        cache, extra = None, {"engine_mode": "none (scale profiles of the images)"}
    elif args.task == "cellmatch":
        from mm_core.train.cellmatch import cellmatch_task

        head, step, validate, used = cellmatch_task(args, samples, _settings(args.set))
        reads = "the classic engine's automatic maps" if head.config["engine_maps"] else "none"
        cache, extra = None, {"engine_mode": f"{reads} (with the image and the boxes)"}
    else:
        cache = EngineCache(ClassicEngine(), None if str(args.cache_dir).lower() == "none" else args.cache_dir,
                            args.cache_version, features=False)  # the generalist head reads no engine features
        head, step, validate, used = generalist_task(args, samples, cache, _settings(args.set))
        extra = {"engine_mode": "automatic + exemplar (imprecise boxes)", "engine_version": cache.version}
    meta = {"name": args.name or Path(args.out).name,
            "train_command": "python -m mm_core.train " + " ".join(shlex.quote(a) for a in argv),
            "train_data": used, **extra, "machine": "CPU, " + f"{torch.get_num_threads()} thread(s)"}
    cfg = _fit_config(args)
    result = fit(head, step, validate, args.out, cfg, log=print, extra_meta=meta)
    used_cache = "" if cache is None else f" (engine cache: {cache.hits} hits, {cache.misses} engine runs)"
    print(f"best validation {result['best']:.4f} at epoch {result['best_epoch']}; head written to {args.out}{used_cache}")
    return result


def _fit_config(args) -> FitConfig:
    return FitConfig(epochs=args.epochs, steps_per_epoch=args.steps, lr=args.lr, weight_decay=args.weight_decay,
                     patience=args.patience, seed=args.seed, resume=args.resume, overwrite=args.overwrite,
                     progress=not args.no_progress)


def _dense_task(args, train_s, val_s, cache):
    from mm_core.heads.learned import CountingHead, SegmentationHead
    from mm_core.train import dense

    task = args.task
    train = dense.prepare(train_s, cache, task, args.mode, args.seed, not args.no_progress)
    val = dense.prepare(val_s, cache, task, args.mode, args.seed + 1, not args.no_progress)
    cls = SegmentationHead if task == "segment" else CountingHead
    torch.manual_seed(args.seed)
    head = cls(args.engine, train[0].inputs.n_features, **_settings(args.set))
    val_batches = dense.validation_set(val, head.config, args.crop, task)

    def step(rng):
        base, feats, target = dense.batch(train, head.config, args.crop, args.batch_size, rng, task)
        return head.loss(head(base, feats), target)

    return head, step, lambda h: dense.validation_loss(h, val_batches)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    build_parser().parse_args(argv)  # usage errors exit here, before any work
    try:
        run(argv)
    except MMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
