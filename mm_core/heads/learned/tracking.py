"""Learned tracking linkage: association probabilities between the objects of consecutive frames.

For frames ``t`` and ``t+1`` every object gets an *object-specific match map* in the
other frame (the similarity of its mean engine descriptor to every pixel of the
other frame, the matching in both directions), cropped around the object and
reduced by norm + conv + MLP, joined with simple object features (position, size,
intensity). A small encoder-decoder transformer (frame ``t`` objects + a "no parent"
token as encoder input, frame ``t+1`` objects as decoder queries) scores every
(child, parent) pair; a softmax over parents gives the association probability
matrix. Linking is greedy by default, optimal assignment (scipy) as an option; a
parent may take two children (division). Tracks are written in CTC terms.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from skimage.measure import regionprops_table
from skimage.segmentation import relabel_sequential
from torch import nn

from mm_core.engines.base import MatchMaps
from mm_core.heads.learned.base import LearnedHead
from mm_core.heads.learned.inputs import sample_region

#: Per-object features: y, x (fractions of the frame), log(diameter / median diameter), mean
#: intensity, and two frame-level ones: object count / 100, log foreground fraction / 10.
N_OBJ_FEATURES = 6


def objects_of(labels: np.ndarray, image: np.ndarray) -> dict:
    """Area, centroid, diameter and mean intensity of sequential ``labels`` (1..N)."""
    from mm_core.transforms import to_gray

    n = int(labels.max())
    if n == 0:
        z = np.zeros(0)
        return {"n": 0, "yx": np.zeros((0, 2)), "area": z, "diam": z, "intensity": z}
    p = regionprops_table(labels, intensity_image=to_gray(image), properties=("area", "centroid", "intensity_mean"))
    area = np.asarray(p["area"], float)
    return {"n": n, "yx": np.stack([p["centroid-0"], p["centroid-1"]], 1), "area": area,
            "diam": 2 * np.sqrt(area / np.pi), "intensity": np.asarray(p["intensity_mean"], float)}


def similarity_maps(obj_feats: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Cosine similarity ``(N, h, w)`` of each object's descriptor to every pixel of ``features`` ``(C, h, w)``."""
    f = features.reshape(features.shape[0], -1)
    mu, sd = f.mean(1, keepdims=True), f.std(1, keepdims=True) + 1e-6
    fz = (f - mu) / sd
    oz = (obj_feats - mu[:, 0]) / sd[:, 0]
    fz /= np.linalg.norm(fz, axis=0, keepdims=True) + 1e-6
    oz /= np.linalg.norm(oz, axis=1, keepdims=True) + 1e-6
    return (oz @ fz).reshape(len(obj_feats), *features.shape[1:]).astype(np.float32)


class LinkingHead(LearnedHead):
    """Association probabilities between consecutive frames' objects (``config``: ``dim``, ``heads``,
    ``layers``, ``crop`` (map crop size), ``window`` (crop width in object diameters), ``p_link``
    (smallest probability linked))."""

    head_type = "linking"
    n_outputs = 0
    needs_maps = True  #: the pipeline keeps every frame's maps for this head
    defaults: ClassVar[dict] = {"dim": 32, "heads": 4, "layers": 1, "crop": 16, "window": 3.0, "p_link": 0.5,
                "target_diameter": 16.0, "tile": 256, "tile_overlap": 0}

    def __init__(self, engine: str, n_features: int = 0, **config):
        super().__init__(engine, n_features, **config)
        d, c = self.config["dim"], self.config["crop"]
        self.map_net = nn.Sequential(nn.GroupNorm(1, 2), nn.Conv2d(2, 8, 3, stride=2, padding=1), nn.GELU(),
                                     nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GELU(), nn.Flatten(),
                                     nn.Linear(16 * (c // 4) ** 2, d), nn.GELU(), nn.Linear(d, d))
        self.obj_net = nn.Sequential(nn.Linear(N_OBJ_FEATURES, d), nn.GELU(), nn.Linear(d, d))
        self.null = nn.Parameter(torch.zeros(1, 1, d))
        self.transformer = nn.Transformer(d, self.config["heads"], self.config["layers"], self.config["layers"],
                                          2 * d, dropout=0.0, batch_first=True)
        self.pair_net = nn.Sequential(nn.Linear(5, d), nn.GELU(), nn.Linear(d, 1))

    # ------------------------------------------------------------------ tokens
    def tokens(self, labels_a, labels_b, maps_a: MatchMaps, maps_b: MatchMaps, image_a, image_b):
        """Tensors for one frame pair: tokens of frame a ``(N, ...)``, of frame b ``(M, ...)``, pair features."""
        from mm_core.heads.linking import object_features

        oa, ob = objects_of(labels_a, image_a), objects_of(labels_b, image_b)
        shape = tuple(labels_a.shape)
        fa = object_features(labels_a, maps_a.features) if maps_a.features is not None else None
        fb = object_features(labels_b, maps_b.features) if maps_b.features is not None else None
        crops_a = self._crops(oa, fa, maps_a, maps_b, shape)  # a's objects: own frame + matched into b
        crops_b = self._crops(ob, fb, maps_b, maps_a, shape)
        diam = float(np.median(np.concatenate([oa["diam"], ob["diam"]]))) if oa["n"] + ob["n"] else 1.0
        pair = pair_features(oa, ob, labels_a, labels_b, diam)
        return (torch.as_tensor(crops_a), torch.as_tensor(self._obj(oa, shape, diam)),
                torch.as_tensor(crops_b), torch.as_tensor(self._obj(ob, shape, diam)), torch.as_tensor(pair))

    def _crops(self, o: dict, feats, maps_own: MatchMaps, maps_other: MatchMaps, shape) -> np.ndarray:
        """Two ``crop x crop`` maps per object: its similarity in its own frame and in the other frame."""
        c = self.config["crop"]
        out = np.zeros((o["n"], 2, c, c), np.float32)
        if o["n"] == 0:
            return out
        if feats is None:  # no descriptors: the foreground maps stand in
            own = np.repeat(maps_own.foreground[None], o["n"], 0)
            other = np.repeat(maps_other.foreground[None], o["n"], 0)
        else:
            own, other = similarity_maps(feats, maps_own.features), similarity_maps(feats, maps_other.features)
        for k in range(o["n"]):
            half = 0.5 * self.config["window"] * max(o["diam"][k], 4.0)
            y, x = o["yx"][k]
            region = (y - half, x - half, y + half, x + half)
            out[k, 0] = sample_region(own[k:k + 1], region, (c, c), shape)[0].numpy()
            out[k, 1] = sample_region(other[k:k + 1], region, (c, c), shape)[0].numpy()
        return out

    @staticmethod
    def _obj(o: dict, shape, diam: float) -> np.ndarray:
        if o["n"] == 0:
            return np.zeros((0, N_OBJ_FEATURES), np.float32)
        y = o["yx"][:, 0] / shape[0]
        x = o["yx"][:, 1] / shape[1]
        size = np.log(o["diam"] / diam)
        inten = o["intensity"]
        frac = np.log(o["area"].sum() / (shape[0] * shape[1]) + 1e-6) / 10
        return np.stack([y, x, size, inten, np.full_like(y, o["n"] / 100.0), np.full_like(y, frac)],
                        1).astype(np.float32)

    def forward(self, crops_a, obj_a, crops_b, obj_b, pair) -> torch.Tensor:
        """Association logits ``(M, N + 1)``: child ``j`` of frame b vs parent ``i`` of frame a (last: none)."""
        d = self.config["dim"]
        ta = (self.map_net(crops_a) + self.obj_net(obj_a))[None] if len(obj_a) else torch.zeros(1, 0, d)
        tb = (self.map_net(crops_b) + self.obj_net(obj_b))[None]
        mem_in = torch.cat([ta, self.null], dim=1)
        mem = self.transformer.encoder(mem_in)
        q = self.transformer.decoder(tb, mem)[0]
        logits = q @ mem[0].T / np.sqrt(d)
        if len(obj_a):
            logits[:, :-1] = logits[:, :-1] + self.pair_net(pair).squeeze(-1)
        return logits

    @staticmethod
    def loss(logits: torch.Tensor, parent_index: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each child's parent (index ``N`` = no parent)."""
        return F.cross_entropy(logits, parent_index)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def probabilities(self, labels_a, labels_b, maps_a, maps_b, image_a, image_b) -> np.ndarray:
        """Association probability matrix ``(N + 1, M)``: rows = parents in frame a (last row: none)."""
        self.eval()
        for m in (maps_a, maps_b):
            self.check_maps(m)
        if labels_b.max() == 0:
            return np.zeros((int(labels_a.max()) + 1, 0), np.float32)
        logits = self(*self.tokens(labels_a, labels_b, maps_a, maps_b, image_a, image_b))
        return torch.softmax(logits, dim=1).T.numpy()

    def frame_summary(self, labels, maps, frame) -> None:
        """Nothing: this head reads whole maps (``needs_maps``), see :meth:`link_sequence`."""
        return None

    def link_sequence(self, labels, summaries, maps, frames):
        """The linker interface of :mod:`mm_core.heads.tracking`: :meth:`link` with greedy linking."""
        return self.link(labels, maps, frames)

    def link(self, masks, maps_list, frames, method: str = "greedy"):
        """Link per-frame labels into tracks.

        Parameters
        ----------
        masks : sequence of (H, W) int arrays
            Instance labels of every frame.
        maps_list : sequence of MatchMaps
            The engine's maps of every frame.
        frames : sequence of ndarray
            Normalised frames.
        method : {"greedy", "optimal"}
            Linking of the probability matrix (:func:`links_from_probabilities`).

        Returns
        -------
        masks : ndarray (T, H, W) int32
            Labels are track ids.
        tracks : pandas.DataFrame
            ``label, begin, end, parent`` (CTC).
        """
        seq = [relabel_sequential(np.asarray(m).astype(np.int64))[0] for m in masks]
        pairs = []
        for t in range(1, len(seq)):
            p = self.probabilities(seq[t - 1], seq[t], maps_list[t - 1], maps_list[t], frames[t - 1], frames[t])
            pairs.append(links_from_probabilities(p, self.config["p_link"], method))
        return tracks_from_links(seq, pairs)


def pair_features(oa: dict, ob: dict, la: np.ndarray, lb: np.ndarray, diam: float) -> np.ndarray:
    """``(M, N, 5)`` geometric pair features: dy, dx, distance (in diameters), log area ratio, IoU."""
    m, n = ob["n"], oa["n"]
    if m == 0 or n == 0:
        return np.zeros((m, n, 5), np.float32)
    d = (ob["yx"][:, None, :] - oa["yx"][None, :, :]) / diam
    dist = np.linalg.norm(d, axis=-1)
    ratio = np.log(ob["area"][:, None] / oa["area"][None, :])
    both = (la > 0) & (lb > 0)
    inter = np.bincount((lb[both] - 1) * n + (la[both] - 1), minlength=m * n).reshape(m, n)
    iou = inter / (ob["area"][:, None] + oa["area"][None, :] - inter)
    return np.stack([d[..., 0], d[..., 1], np.minimum(dist, 10), ratio, iou], -1).astype(np.float32)


def links_from_probabilities(prob: np.ndarray, p_link: float = 0.5, method: str = "greedy"):
    """Continuations and divisions from an association matrix ``(N + 1, M)`` (last row: no parent).

    A parent takes at most two children; two children make a division.

    Returns
    -------
    links : dict of int to int
        Parent -> child continuations.
    divisions : dict of int to tuple of int
        Parent -> two children.
    """
    n, m = prob.shape[0] - 1, prob.shape[1]
    kids: dict[int, list[int]] = {}
    if method == "optimal":
        if n and m:
            # each parent has two slots (the second one costs a little more); plus one "none" slot per child
            cost = -np.log(np.clip(prob[:n], 1e-9, 1)).T
            none = -np.log(np.clip(prob[n], 1e-9, 1))
            big = np.full((m, m), 1e9)
            np.fill_diagonal(big, np.maximum(none, -np.log(p_link)))
            full = np.concatenate([cost, cost + 0.5, big], axis=1)
            rows, cols = linear_sum_assignment(full)
            for j, c in zip(rows, cols):
                if c < 2 * n:
                    kids.setdefault(int(c % n), []).append(int(j))
    elif method == "greedy":
        order = np.dstack(np.unravel_index(np.argsort(-prob[:n].ravel()), (n, m)))[0] if n and m else []
        taken = set()
        for i, j in order:
            if prob[i, j] < p_link:
                break
            if j in taken or len(kids.get(int(i), [])) >= 2:
                continue
            kids.setdefault(int(i), []).append(int(j))
            taken.add(int(j))
    else:
        raise ValueError(f"unknown linking method {method!r}; use 'greedy' or 'optimal'")
    links = {i: k[0] for i, k in kids.items() if len(k) == 1}
    divisions = {i: (k[0], k[1]) for i, k in kids.items() if len(k) == 2}
    return links, divisions


def tracks_from_links(seq: list[np.ndarray], pairs: list[tuple[dict, dict]]):
    """Track ids per frame and the CTC table from per-pair ``(links, divisions)`` (indices 0-based)."""
    tracks: dict[int, list[int]] = {}  # id -> [begin, end, parent]
    ids: list[np.ndarray] = []
    for t, lab in enumerate(seq):
        tid = np.zeros(int(lab.max()), np.int64)
        if t > 0:
            links, divs = pairs[t - 1]
            for i, (ja, jb) in divs.items():
                for j in (ja, jb):
                    tracks[len(tracks) + 1] = [t, t, int(ids[t - 1][i])]
                    tid[j] = len(tracks)
            for i, j in links.items():
                if tid[j] == 0:
                    tid[j] = ids[t - 1][i]
                    tracks[int(tid[j])][1] = t
        for j in np.flatnonzero(tid == 0):
            tracks[len(tracks) + 1] = [t, t, 0]
            tid[j] = len(tracks)
        ids.append(tid)
    out = np.zeros((len(seq), *seq[0].shape), np.int32) if seq else np.zeros((0, 0, 0), np.int32)
    for t, lab in enumerate(seq):
        out[t] = np.concatenate([[0], ids[t]]).astype(np.int32)[lab]
    table = pd.DataFrame([(k, *v) for k, v in tracks.items()], columns=["label", "begin", "end", "parent"])
    return out, table.astype(np.int64)
