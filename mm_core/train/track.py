"""Training data for the linking head: consecutive frame pairs of CTC sequences with TRA ground truth."""

from __future__ import annotations

import numpy as np
import torch
from skimage.segmentation import relabel_sequential
from tqdm.auto import tqdm

from mm_core.train.data import load_ctc


def parent_targets(lab_a: np.ndarray, lab_b: np.ndarray, inv_a: np.ndarray, inv_b: np.ndarray,
                   parents: dict[int, int]) -> np.ndarray:
    """Parent index in frame a of every object of frame b (``N_a`` = none) from CTC track ids.

    ``inv_*`` map sequential labels back to track ids; ``parents`` maps a track id to
    its parent track id (divisions).
    """
    n_a, n_b = int(lab_a.max()), int(lab_b.max())
    index_a = {int(inv_a[k]): k - 1 for k in range(1, n_a + 1)}
    out = np.full(n_b, n_a, np.int64)
    for k in range(1, n_b + 1):
        tid = int(inv_b[k])
        if tid in index_a:
            out[k - 1] = index_a[tid]
        elif parents.get(tid, 0) in index_a:
            out[k - 1] = index_a[parents[tid]]
    return out


def prepare_pairs(samples, cache, head, progress: bool = True) -> list[tuple]:
    """``(tokens, target)`` for every consecutive frame pair of every sequence (engine maps cached)."""
    pairs = []
    for s in samples:
        frames, masks, tracks = load_ctc(s.image, s.target)
        parents = dict(zip(tracks["label"].astype(int), tracks["parent"].astype(int)))
        maps = [cache.match(f, None) for f in tqdm(frames, desc=f"engine maps {s.name}", disable=not progress,
                                                      leave=False)]
        seq = [relabel_sequential(np.asarray(m).astype(np.int64)) for m in masks]
        for t in tqdm(range(1, len(frames)), desc="pairs", disable=not progress, leave=False):
            (la, _, inv_a), (lb, _, inv_b) = seq[t - 1], seq[t]
            if lb.max() == 0:
                continue
            tok = head.tokens(la, lb, maps[t - 1], maps[t], frames[t - 1], frames[t])
            tgt = torch.as_tensor(parent_targets(la, lb, np.asarray(inv_a), np.asarray(inv_b), parents))
            pairs.append((tok, tgt))
    return pairs


def first_maps(samples, cache):
    """Engine maps of the first frame of the first sequence (to size the head)."""
    frames, _, _ = load_ctc(samples[0].image, samples[0].target)
    return cache.match(frames[0], None)


def track_task(args, train_s, val_s, cache, settings: dict):
    """``(head, step_loss, validate)`` for ``python -m mm_core.train track``.

    When training and validation sequences are the same (one sequence given), the
    last ``--val-fraction`` of its frame pairs validate.
    """
    from mm_core.heads.learned import LinkingHead

    m0 = first_maps(train_s, cache)
    torch.manual_seed(args.seed)
    head = LinkingHead(args.engine, 0 if m0.features is None else int(m0.features.shape[0]), **settings)
    train = prepare_pairs(train_s, cache, head, not args.no_progress)
    if [s.image for s in val_s] == [s.image for s in train_s]:
        n_val = max(1, int(round(args.val_fraction * len(train))))
        train, val = train[:-n_val], train[-n_val:]
    else:
        val = prepare_pairs(val_s, cache, head, not args.no_progress)

    def step(rng):
        losses = [head.loss(head(*tok), tgt) for tok, tgt in
                  (train[int(i)] for i in rng.integers(len(train), size=args.batch_size))]
        return torch.stack(losses).mean()

    def validate(h):
        return float(np.mean([float(h.loss(h(*tok), tgt)) for tok, tgt in val]))

    return head, step, validate
