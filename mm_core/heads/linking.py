"""Linking objects between frames into tracks (Cell Tracking Challenge semantics).

A pure function on label images (:func:`link_labels`), reusable by any head that
produces per-frame labels:

1. frame-to-frame links by optimal assignment (:func:`scipy.optimize.linear_sum_assignment`)
   on a cost from overlap (IoU), centroid distance relative to object size, area
   change and descriptor distance, solved forward (``t-1 -> t``, distances relative
   to the parent) and backward (``t -> t-1``, relative to the child); links found in
   both directions are kept, the rest get one stricter second pass; candidates are
   gated (overlap or a displacement under ``max_dist`` diameters) and each connected
   group of candidates is solved on its own, so cost stays linear in objects;
2. over-split repair: an unlinked piece touching a continuation, closer to it than
   daughters would be, is rejoined when the union overlaps the past object better;
3. divisions: a parent whose continuation and an unlinked new object near it, at
   least ``div_sep`` parent diameters apart, together roughly make up the parent's
   area (one parent, two children);
4. gap closing: a track that ends and a track that starts 2-3 frames later nearby
   (1-2 missing frames) are joined.

Output follows the Cell Tracking Challenge (CTC): labels are track ids, the table has
``label, begin, end, parent`` (``parent`` 0 = none). A closed gap is written the way
CTC and py-ctcmetrics accept it: the continuation is a new track whose parent is the
interrupted one (a track's label must be present in every frame from begin to end).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from skimage.segmentation import relabel_sequential

from mm_core.heads.objects import boxes_from_labels, frame_objects, object_features, touching_pairs
from mm_core.measure import TRACK_COLUMNS

__all__ = ["TRACK_COLUMNS", "LinkParams", "boxes_from_labels", "link_labels", "link_pair", "object_features",
           "touching_pairs"]



@dataclass(frozen=True)
class LinkParams:
    """Linking costs and gates (one parameter set for every data set).

    Distances are in units of the object's equivalent diameter.
    """

    w_iou: float = 1.0  #: weight of the overlap cost ``1 - overlap score``
    containment: float = 0.5  #: overlap score = (1 - c) IoU + c (overlap / smaller area)
    w_dist: float = 1.0  #: weight of the centroid distance / diameter
    w_area: float = 0.5  #: weight of ``|log(area ratio)|``
    w_feat: float = 0.5  #: weight of the descriptor distance (when features are given)
    max_dist: float = 1.5  #: gate: largest displacement, in diameters
    max_cost: float = 2.0  #: a link costing more is not made
    strict_cost: float = 1.2  #: second pass for links found in one direction only
    div_dist: float = 1.2  #: a daughter lies within this many parent diameters
    div_area: tuple[float, float] = (0.55, 1.6)  #: (children area sum) / parent area
    div_child_max: float = 0.9  #: each daughter is smaller than this fraction of the parent
    div_sep: float = 0.6  #: daughters' centroids are at least this many parent diameters apart
    max_gap: int = 2  #: missing frames bridged by gap closing
    gap_dist: float = 1.0  #: gap gate, in diameters per elapsed frame
    merge_fragments: bool = True  #: rejoin an object split in two touching pieces


def _overlap(a: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], float]:
    """Pixel counts of ``a == i+1 & b == j+1`` for every overlapping index pair ``(i, j)``."""
    both = (a > 0) & (b > 0)
    nb = int(b.max()) + 1
    codes, counts = np.unique(a[both].astype(np.int64) * nb + b[both], return_counts=True)
    return {(int(c // nb) - 1, int(c % nb) - 1): float(k) for c, k in zip(codes, counts)}


# ----------------------------------------------------------------------------- costs
@dataclass
class _Edges:
    """Candidate links between two frames (sparse: only gated pairs)."""

    i: np.ndarray  #: parent indices
    j: np.ndarray  #: child indices
    ov: np.ndarray  #: overlap in pixels
    dist: np.ndarray  #: centroid distance in pixels
    fwd: np.ndarray  #: cost relative to the parent
    bwd: np.ndarray  #: cost relative to the child


def _candidates(pa: dict, pb: dict, overlap: dict, prm: LinkParams) -> _Edges:
    """Gated pairs: overlapping, or closer than ``max_dist`` diameters of either object."""
    ta, tb = cKDTree(pa["yx"]), cKDTree(pb["yx"])
    pairs = set(overlap)
    for j, near in enumerate(ta.query_ball_point(pb["yx"], prm.max_dist * pb["diam"])):
        pairs.update((i, j) for i in near)
    for i, near in enumerate(tb.query_ball_point(pa["yx"], prm.max_dist * pa["diam"])):
        pairs.update((i, j) for j in near)
    ij = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    i, j = ij[:, 0], ij[:, 1]
    ov = np.array([overlap.get((int(x), int(y)), 0.0) for x, y in ij])
    dist = np.hypot(*(pa["yx"][i] - pb["yx"][j]).T) if len(ij) else np.zeros(0)
    iou = ov / (pa["area"][i] + pb["area"][j] - ov)
    contained = ov / np.minimum(pa["area"][i], pb["area"][j])  # 1 when one lies inside the other
    base = prm.w_iou * (1.0 - (1 - prm.containment) * iou - prm.containment * contained) + prm.w_area * np.abs(np.log(pb["area"][j] / pa["area"][i]))
    if pa["feat"] is not None and pb["feat"] is not None and pa["feat"].shape[1] and len(ij):
        allf = np.concatenate([pa["feat"], pb["feat"]])
        sd = allf.std(0) + 1e-6  # standardised over both frames' objects (means cancel)
        fd = np.linalg.norm((pa["feat"][i] - pb["feat"][j]) / sd, axis=1) / np.sqrt(allf.shape[1])
        base = base + prm.w_feat * np.minimum(fd, 2.0)
    return _Edges(i, j, ov, dist, base + prm.w_dist * dist / pa["diam"][i],
                  base + prm.w_dist * dist / pb["diam"][j])


def _assign_dense(cost: np.ndarray, max_cost: float) -> dict[int, int]:
    """Optimal assignment with a 'no link' option: row -> column for links under ``max_cost``."""
    n, m = cost.shape
    big = 1e6
    c = np.where(np.isfinite(cost) & (cost < max_cost), cost, big)
    # augmented matrix: every row and column may stay unlinked at cost max_cost
    aug = np.full((n + m, m + n), big)
    aug[:n, :m] = c
    aug[:n, m:] = np.where(np.eye(n, dtype=bool), max_cost, big)
    aug[n:, :m] = np.where(np.eye(m, dtype=bool), max_cost, big)
    aug[n:, m:] = c.T
    rows, cols = linear_sum_assignment(aug)
    return {int(r): int(k) for r, k in zip(rows, cols) if r < n and k < m and c[r, k] < big}


def _assign(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, max_cost: float) -> dict[int, int]:
    """:func:`_assign_dense` on a sparse cost, solved per connected group of candidates."""
    keep = cost < max_cost
    rows, cols, cost = rows[keep], cols[keep], cost[keep]
    if not len(rows):
        return {}
    ur, ri = np.unique(rows, return_inverse=True)
    uc, ci = np.unique(cols, return_inverse=True)
    n = len(ur)
    graph = coo_matrix((np.ones(len(ri)), (ri, n + ci)), shape=(n + len(uc),) * 2)
    _, comp = connected_components(graph, directed=False)
    order = np.argsort(comp[ri], kind="stable")
    bounds = np.flatnonzero(np.diff(comp[ri][order])) + 1
    out = {}
    for sel in np.split(order, bounds):
        r_ids, r_loc = np.unique(ri[sel], return_inverse=True)
        c_ids, c_loc = np.unique(ci[sel], return_inverse=True)
        dense = np.full((len(r_ids), len(c_ids)), np.inf)
        dense[r_loc, c_loc] = cost[sel]
        for r, c in _assign_dense(dense, max_cost).items():
            out[int(ur[r_ids[r]])] = int(uc[c_ids[c]])
    return out


def link_pair(pa: dict, pb: dict, overlap: dict, prm: LinkParams = LinkParams()):
    """Link the objects of two consecutive frames.

    Parameters
    ----------
    pa, pb : dict
        Objects of frames ``t-1`` and ``t`` (see :func:`~mm_core.heads.objects.frame_objects`).
    overlap : dict
        ``(i, j) -> pixels`` shared by object ``i`` of ``t-1`` and ``j`` of ``t``.
    prm : LinkParams

    Returns
    -------
    links : dict of int to int
        Parent index (frame ``t-1``) -> child index (frame ``t``), continuations.
    divisions : dict of int to tuple of int
        Parent index -> two child indices (the parent's track ends at ``t-1``).
    edges : _Edges
        The candidate pairs and their costs.
    """
    if pa["n"] == 0 or pb["n"] == 0:
        return {}, {}, None
    e = _candidates(pa, pb, overlap, prm)
    f = _assign(e.i, e.j, e.fwd, prm.max_cost)
    b = _assign(e.j, e.i, e.bwd, prm.max_cost)  # child -> parent
    links = {i: j for i, j in f.items() if b.get(j) == i}
    # second pass, stricter, on what is left (found in one direction or neither)
    linked_b = set(links.values())
    free = np.array([i not in links and j not in linked_b for i, j in zip(e.i, e.j)], bool)
    links.update(_assign(e.i[free], e.j[free], np.maximum(e.fwd, e.bwd)[free], prm.strict_cost))
    return links, _divisions(pa, pb, links, e, prm), e


def _divisions(pa, pb, links, e: _Edges, prm: LinkParams) -> dict[int, tuple[int, int]]:
    """One parent, two children: the continuation plus an unlinked object beside it."""
    linked_b = set(links.values())
    dist = {(int(i), int(j)): d for i, j, d in zip(e.i, e.j, e.dist)}
    near: dict[int, list[int]] = {}
    for (i, j), d in dist.items():
        if j not in linked_b and d <= prm.div_dist * pa["diam"][i]:
            near.setdefault(i, []).append(j)
    cands = []  # (score, parent, child_a, child_b)
    for i, new in near.items():
        kids = ([links[i]] if i in links else []) + new
        for x in range(len(kids)):
            for y in range(x + 1, len(kids)):
                ja, jb = kids[x], kids[y]
                if (i, ja) not in dist or (i, jb) not in dist:
                    continue
                if np.hypot(*(pb["yx"][ja] - pb["yx"][jb])) < prm.div_sep * pa["diam"][i]:
                    continue  # two halves of one object, not two daughters
                ratio = (pb["area"][ja] + pb["area"][jb]) / pa["area"][i]
                small = max(pb["area"][ja], pb["area"][jb]) <= prm.div_child_max * pa["area"][i]
                if prm.div_area[0] <= ratio <= prm.div_area[1] and small:
                    score = (dist[i, ja] + dist[i, jb]) / pa["diam"][i] + abs(np.log(ratio))
                    cands.append((score, i, ja, jb))
    out, used = {}, set()
    for score, i, ja, jb in sorted(cands):
        if i in out or ja in used or jb in used:
            continue
        out[i] = (ja, jb)
        used.update((ja, jb))
    return out


def _fragments(pa, pb, overlap: dict, links, prm: LinkParams) -> dict[int, int]:
    """Over-split pieces: ``k -> j`` where unlinked ``k`` touches ``j``, the continuation of
    ``i``, the pieces are closer than daughters would be (``div_sep``) and ``j + k``
    overlaps ``i`` better than ``j`` alone."""
    linked_b = set(links.values())
    nbrs: dict[int, list[int]] = {}
    for a, b in pb["touch"]:
        nbrs.setdefault(a, []).append(b)
        nbrs.setdefault(b, []).append(a)
    out: dict[int, int] = {}
    for i, j in links.items():
        for k in sorted(nbrs.get(j, [])):
            if k in linked_b or k in out:
                continue
            if np.hypot(*(pb["yx"][j] - pb["yx"][k])) >= prm.div_sep * pa["diam"][i]:
                continue
            union = pb["area"][j] + pb["area"][k]
            ov_j = overlap.get((i, j), 0.0)
            ov_u = ov_j + overlap.get((i, k), 0.0)
            iou_j = ov_j / (pa["area"][i] + pb["area"][j] - ov_j)
            if union <= prm.div_area[1] * pa["area"][i] and ov_u / (pa["area"][i] + union - ov_u) > iou_j:
                out[k] = j
    return out


def _merge_labels(labels: np.ndarray, feat: np.ndarray | None, merges: dict[int, int]):
    """Give object ``k`` the label of object ``j`` for every ``k -> j``; relabel 1..N."""
    n = int(labels.max())
    lut = np.arange(n + 1)
    for k, j in merges.items():
        lut[k + 1] = j + 1
    merged, fw, _ = relabel_sequential(lut[labels])
    if feat is None:
        return merged, None
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(float)
    new = fw.out_values[np.searchsorted(fw.in_values, lut[1:])] - 1  # old index -> new index
    acc = np.zeros((int(merged.max()), feat.shape[1]))
    np.add.at(acc, new, feat * area[:, None])
    wsum = np.bincount(new, weights=area, minlength=len(acc))
    return merged, (acc / np.maximum(wsum, 1e-9)[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------- tracks
def _close_gaps(tracks: dict, last: dict, first: dict, prm: LinkParams) -> None:
    """Join a track ending at ``e`` to one starting at ``e + 2 .. e + 1 + max_gap`` (in place)."""
    has_kids = {v["parent"] for v in tracks.values() if v["parent"]}
    ends_at: dict[int, list[int]] = {}
    for k, v in tracks.items():
        if k not in has_kids:
            ends_at.setdefault(v["end"], []).append(k)
    rows, cols, cost = [], [], []
    for kb, v in tracks.items():
        if v["parent"] or v["begin"] == 0:
            continue
        yb, db, ab = first[kb]
        for gap in range(1, prm.max_gap + 1):
            for ka in ends_at.get(v["begin"] - gap - 1, []):
                ya, da, aa = last[ka]
                d = np.hypot(*(ya - yb)) / max(da, db)
                if d <= prm.gap_dist * (gap + 1):
                    rows.append(ka)
                    cols.append(kb)
                    cost.append(d / (gap + 1) + prm.w_area * abs(np.log(ab / aa)))
    for ka, kb in _assign(np.array(rows, np.int64), np.array(cols, np.int64), np.array(cost), prm.max_cost).items():
        tracks[kb]["parent"] = ka


def link_labels(masks_list, features_list=None, params: LinkParams = LinkParams()):
    """Link per-frame instance labels into tracks (pure function, no images needed).

    Parameters
    ----------
    masks_list : sequence of ndarray (H, W) int
        Instance labels of every frame; label values need not agree between frames.
    features_list : sequence of (N_t, C) arrays or None, optional
        Per-object descriptors of each frame, row ``k`` for the ``k``-th label in
        increasing order (see :func:`object_features`); ``None`` to link on geometry.
    params : LinkParams
        Costs and gates.

    Returns
    -------
    masks : ndarray (T, H, W) int32
        Labels are track ids (CTC).
    tracks : pandas.DataFrame
        Columns ``label, begin, end, parent`` (CTC ``res_track.txt``; parent 0 = none).
    """
    T = len(masks_list)
    seq = [relabel_sequential(np.asarray(m).astype(np.int64))[0] for m in masks_list]
    feats = [None if f is None else np.asarray(f, np.float32) for f in features_list] \
        if features_list is not None else [None] * T
    objs = [frame_objects(seq[t], feats[t]) for t in range(T)]
    tracks: dict[int, dict] = {}
    last, first = {}, {}  # track id -> (centroid, diameter, area) at its end / begin
    ids: list[np.ndarray] = []

    def new_track(t, parent=0):
        k = len(tracks) + 1
        tracks[k] = {"begin": t, "end": t, "parent": parent}
        return k

    for t in range(T):
        o = objs[t]
        tid = np.zeros(o["n"], np.int64)
        if t > 0 and o["n"] and objs[t - 1]["n"]:
            ov = _overlap(seq[t - 1], seq[t])
            links, divs, _ = link_pair(objs[t - 1], o, ov, params)
            merges = _fragments(objs[t - 1], o, ov, links, params) if params.merge_fragments else {}
            if merges:  # an object split in two pieces that together match its past: rejoin
                seq[t], feats[t] = _merge_labels(seq[t], feats[t], merges)
                o = objs[t] = frame_objects(seq[t], feats[t])
                tid = np.zeros(o["n"], np.int64)
                ov = _overlap(seq[t - 1], seq[t])
                links, divs, _ = link_pair(objs[t - 1], o, ov, params)
            for i, kids in divs.items():
                links.pop(i, None)
                for j in kids:
                    tid[j] = new_track(t, parent=int(ids[t - 1][i]))
            for i, j in links.items():
                if tid[j] == 0:
                    tid[j] = ids[t - 1][i]
                    tracks[tid[j]]["end"] = t
        for j in np.flatnonzero(tid == 0):
            tid[j] = new_track(t)
        for j, k in enumerate(tid):
            last[k] = (o["yx"][j], o["diam"][j], o["area"][j])
            first.setdefault(k, last[k])
        ids.append(tid)
    _close_gaps(tracks, last, first, params)

    shape = seq[0].shape if T else (0, 0)
    out = np.zeros((T, *shape), np.int32)
    for t in range(T):
        lut = np.concatenate([[0], ids[t]]).astype(np.int32)
        out[t] = lut[seq[t]]
    table = pd.DataFrame([(k, v["begin"], v["end"], v["parent"]) for k, v in tracks.items()],
                         columns=TRACK_COLUMNS).astype(np.int64)
    return out, table
