"""On-the-fly pixel classifier shared by exemplar and automatic mode.

Given sure-positive and sure-negative pixels (exemplar interiors and the rings
around them, or confident blob cores and clear background in automatic mode),
every other pixel of a subsample gets the label of whichever class prototype it
is closer to in standardised descriptor space (the lesson of issue 4: random
pixels "unlike the exemplar" as negatives mark other, brighter objects as
background). A small random forest is fitted on these labels, applied to every
pixel, then refitted once on its own confident predictions (self-training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from mm_core.transforms import resize_map

#: Pixels sampled for fitting (per class for the sure labels, in total for the rest).
N_SURE = 1000
N_OTHER = 2500
#: Random-forest size: small on purpose (fit and predict in a fraction of a second).
N_TREES = 8
MAX_DEPTH = 8
#: Probabilities beyond these count as confident in the self-training round.
CONFIDENT = (0.2, 0.8)
SEED = 0
#: Maps with more pixels are classified on a stride-2 grid and interpolated.
DENSE_PREDICT_PIXELS = 100_000


def _sample(idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return idx if len(idx) <= n else rng.choice(idx, n, replace=False)


def moments(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``(C, h, w)`` descriptors."""
    X = feats.reshape(feats.shape[0], -1).T
    return X.mean(0), X.std(0)


def standardise(feats: np.ndarray, mu: np.ndarray | None = None, sd: np.ndarray | None = None) -> np.ndarray:
    """``(C, h, w)`` descriptors -> ``(h*w, C)`` z-scored float32 rows.

    With ``mu`` and ``sd`` (from :func:`moments` of other descriptors) the rows are
    z-scored with those, so tiles of one image share one standardisation.
    """
    X = feats.reshape(feats.shape[0], -1).T
    if mu is None or sd is None:
        mu, sd = moments(feats)
    return ((X - mu) / np.where(sd > 1e-8, sd, 1.0)).astype(np.float32)


def nearest_prototype_labels(X: np.ndarray, pos: np.ndarray, neg: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """1 where ``X[rows]`` is closer to the mean of ``X[pos]`` than to the mean of ``X[neg]``."""
    mp, mn = X[pos].mean(0), X[neg].mean(0)
    Xr = X[rows]
    return (((Xr - mp) ** 2).sum(1) < ((Xr - mn) ** 2).sum(1)).astype(np.uint8)


def _fit(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> RandomForestClassifier:
    clf = RandomForestClassifier(n_estimators=N_TREES, max_depth=MAX_DEPTH, min_samples_leaf=3,
                                 max_features="sqrt", max_samples=0.5, n_jobs=1,
                                 random_state=SEED)
    clf.fit(X, y, sample_weight=w)
    return clf


def _predict(clf: RandomForestClassifier, X: np.ndarray) -> np.ndarray:
    if len(clf.classes_) < 2:
        return np.full(len(X), float(clf.classes_[0]), np.float32)
    return clf.predict_proba(X)[:, list(clf.classes_).index(1)].astype(np.float32)


@dataclass
class PixelClassifier:
    """A fitted pixel classifier: descriptor standardisation and the forest (or a constant).

    Fitted once (:func:`fit_pixel_classifier`) and applied to any descriptors computed
    the same way (:meth:`predict`): the pixels it was fitted on, or every tile of a
    large image, which then all see one classifier.
    """

    mu: np.ndarray | None = None
    sd: np.ndarray | None = None
    forest: RandomForestClassifier | None = None
    constant: float = 0.5  #: the probability everywhere when there is no forest
    levels: int = 0  #: fitted on a stride-``2**levels`` grid of the descriptors

    def predict(self, feats: np.ndarray, level: int = 0) -> np.ndarray:
        """``(h, w)`` float32 probability for ``(C, h, w)`` descriptors.

        Classified on the stride-``2**levels`` grid the classifier was fitted on
        (halving recursively) and interpolated, so that any region of an image
        (a tile) is classified at the same resolution as the region it was fitted on.
        """
        h, w = feats.shape[1:]
        if self.forest is None:
            return np.full((h, w), self.constant, np.float32)
        if level < self.levels:
            return resize_map(self.predict(feats[:, ::2, ::2], level + 1), (h, w))
        return _predict(self.forest, standardise(feats, self.mu, self.sd)).reshape(h, w)


def fit_pixel_classifier(feats: np.ndarray, pos_mask: np.ndarray, neg_mask: np.ndarray,
                         self_train: bool = True, label_others: bool = True,
                         ring_keep: float = 1.0, proto_channels: int | None = None,
                         _level: int = 0) -> PixelClassifier:
    """Fit the classifier of pixels matching the positives rather than the negatives.

    Parameters
    ----------
    feats : ndarray, (C, h, w)
        Per-pixel descriptors.
    pos_mask, neg_mask : ndarray, (h, w) bool
        Sure object and sure background pixels (must not be empty).
    self_train : bool
        Refit once on confident predictions.
    label_others : bool
        Also train on a sample of the remaining pixels, labelled by the nearer
        class prototype (for sparse sure labels, i.e. exemplar boxes).
    ring_keep : float
        Keep only this fraction of the negatives, those least like the positive
        prototype: a ring around an exemplar also crosses neighbouring objects
        (dense nuclei, EM cells); what differs from the exemplar is the
        background or the membrane between them.
    proto_channels : int, optional
        Compare pixels with the prototypes on the first ``proto_channels``
        descriptors only (the fine scales: local appearance, not the
        surroundings, which at an exemplar are unique to it).

    Returns
    -------
    PixelClassifier
        Apply it with ``.predict(feats)``: ``(h, w)`` float32 in [0, 1]. Maps with
        more than :data:`DENSE_PREDICT_PIXELS` pixels are fitted (and classified) on a
        stride-2 grid, recursively, and interpolated.
    """
    h, w = pos_mask.shape
    if h * w > DENSE_PREDICT_PIXELS:
        return fit_pixel_classifier(feats[:, ::2, ::2], pos_mask[::2, ::2], neg_mask[::2, ::2],
                                    self_train, label_others, ring_keep, proto_channels, _level + 1)
    mu, sd = moments(feats)
    X = standardise(feats, mu, sd)
    rng = np.random.default_rng(SEED)
    pos = np.flatnonzero(pos_mask.ravel())
    neg = np.flatnonzero((neg_mask & ~pos_mask).ravel())
    if len(pos) == 0 or len(neg) == 0:
        return PixelClassifier(constant=0.5 if len(pos) == len(neg) else float(len(pos) > 0), levels=_level)
    Xp = X[:, :proto_channels] if proto_channels else X
    if ring_keep < 1.0 and len(neg) > 10:
        dist = ((Xp[neg] - Xp[pos].mean(0)) ** 2).sum(1)
        neg = neg[dist >= np.quantile(dist, 1.0 - ring_keep)]
    other = np.flatnonzero(~(pos_mask | neg_mask).ravel()) if label_others else np.zeros(0, int)
    ps, ns, os_ = _sample(pos, N_SURE, rng), _sample(neg, N_SURE, rng), _sample(other, N_OTHER, rng)
    y_other = nearest_prototype_labels(Xp, ps, ns, os_) if len(os_) else np.zeros(0, np.uint8)
    idx = np.concatenate([ps, ns, os_])
    y = np.concatenate([np.ones(len(ps), np.uint8), np.zeros(len(ns), np.uint8), y_other])
    # sure labels weigh as much as all the guessed ones together
    wt = np.concatenate([np.full(len(ps) + len(ns), max(1.0, len(os_) / max(len(ps) + len(ns), 1))),
                         np.ones(len(os_))])
    forest = _fit(X[idx], y, wt)
    if self_train:
        prob = _predict(forest, X)
        lo, hi = CONFIDENT
        conf = np.flatnonzero((prob <= lo) | (prob >= hi))
        conf = np.setdiff1d(_sample(conf, N_OTHER, rng), np.concatenate([ps, ns]))
        if len(conf):
            idx2 = np.concatenate([ps, ns, conf])
            y2 = np.concatenate([np.ones(len(ps), np.uint8), np.zeros(len(ns), np.uint8),
                                 (prob[conf] >= hi).astype(np.uint8)])
            w2 = np.concatenate([wt[:len(ps) + len(ns)], np.ones(len(conf))])
            forest = _fit(X[idx2], y2, w2)
    return PixelClassifier(mu=mu, sd=sd, forest=forest, levels=_level)


def match_probability(feats: np.ndarray, pos_mask: np.ndarray, neg_mask: np.ndarray,
                      **options) -> np.ndarray:
    """Probability that each pixel matches the positives: :func:`fit_pixel_classifier` applied to ``feats``.

    Returns
    -------
    ndarray, (h, w) float32 in [0, 1]
    """
    return fit_pixel_classifier(feats, pos_mask, neg_mask, **options).predict(feats)
