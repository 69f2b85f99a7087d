"""Association scores to tracks: candidate graph, greedy linking with divisions, CTC tables.

Our own implementation of the linking the authors' tracking path uses (the greedy mode of
Trackastra: B. Gallusser, M. Weigert, "Trackastra: Transformer-based cell tracking for
live-cell microscopy", ECCV 2024): association scores between objects of consecutive
frames, averaged over the sliding windows that saw them, are kept when at least
``edge_threshold`` (0.05) and within ``max_distance`` (256 px), at most ``max_neighbors``
(10) per object; then, strongest first, an edge is accepted when its score is at least
``threshold`` (0.5), its target has no parent yet and its source fewer than two children
(one without divisions). The result becomes Cell Tracking Challenge tracks.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

__all__ = ["candidate_edges", "greedy_links", "links_to_ctc"]


def candidate_edges(scores: dict, centroids: dict, max_distance: float = 256.0,
                    max_neighbors: int = 10) -> list[tuple[tuple[int, int], tuple[int, int], float]]:
    """Edges ``(source, target, score)`` kept for linking.

    Parameters
    ----------
    scores : dict
        ``((t, label), (t + 1, label2)) -> mean score``.
    centroids : dict
        ``(t, label) -> (y, x)`` in input pixels.
    max_distance, max_neighbors
        See the module docstring.
    """
    by_source = defaultdict(list)
    for (a, b), s in scores.items():
        if np.hypot(*(np.asarray(centroids[a]) - np.asarray(centroids[b]))) <= max_distance:
            by_source[a].append((b, float(s)))
    out = []
    for a, lst in by_source.items():
        for b, s in sorted(lst, key=lambda e: -e[1])[:max_neighbors]:
            out.append((a, b, s))
    return out


def greedy_links(edges, threshold: float = 0.5, allow_divisions: bool = True) -> list[tuple]:
    """Accepted ``(source, target)`` links, strongest first (see the module docstring)."""
    parent: dict = {}
    children: dict = defaultdict(int)
    max_children = 2 if allow_divisions else 1
    links = []
    for a, b, s in sorted(edges, key=lambda e: (-e[2], e[0], e[1])):
        if s < threshold:
            break
        if b in parent or children[a] >= max_children:
            continue
        parent[b] = a
        children[a] += 1
        links.append((a, b))
    return links


def links_to_ctc(labels: list[np.ndarray], links: list[tuple]) -> tuple[np.ndarray, pd.DataFrame]:
    """Masks relabelled by track id and the CTC table ``label, begin, end, parent``.

    A track continues through a node with exactly one child; a node with two children
    ends its track and each child starts one whose parent it is; an object without a
    parent starts a track of its own.
    """
    kids = defaultdict(list)
    has_parent = {}
    for a, b in links:
        kids[a].append(b)
        has_parent[b] = a
    track_of: dict = {}
    rows: list[list[int]] = []
    for t, lab in enumerate(labels):  # nodes in time order: parents are met before children
        for lb in np.unique(lab[lab > 0]):
            node = (t, int(lb))
            a = has_parent.get(node)
            if a is not None and len(kids[a]) == 1:
                tid = track_of[a]
                rows[tid - 1][2] = t
            else:
                tid = len(rows) + 1
                rows.append([tid, t, t, track_of[a] if a is not None else 0])
            track_of[node] = tid
    masks = np.zeros((len(labels),) + labels[0].shape, np.int32)
    for t, lab in enumerate(labels):
        n = int(lab.max())
        lut = np.zeros(n + 1, np.int32)
        for lb in range(1, n + 1):
            lut[lb] = track_of.get((t, lb), 0)
        masks[t] = lut[lab]
    tracks = pd.DataFrame(rows, columns=["label", "begin", "end", "parent"]).astype(int) if rows else \
        pd.DataFrame({c: pd.Series(dtype=int) for c in ("label", "begin", "end", "parent")})
    return masks, tracks
