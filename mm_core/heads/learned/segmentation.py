"""Learned segmentation head: fusion stem -> small windowed ViT -> foreground, distance, boundary.

The head predicts three maps at full working resolution: foreground logit,
normalised distance to the object boundary (1 at each object's centre, 0 at its
edge) and a boundary logit. Instances come from a marker-controlled watershed on
the predicted distance, shared with the analytic head
(:func:`mm_core.heads.segmentation.watershed_instances`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries
from torch import nn

from mm_core.engines.base import MatchMaps
from mm_core.heads.learned.base import LearnedHead, to_input_size
from mm_core.heads.learned.layers import FusionStem, TinyViT


class SegmentationHead(LearnedHead):
    """Foreground + distance + boundary predictor on match maps (Cellpose-SAM-like layout).

    Architecture (``config``): ``stem`` channels, ViT ``dim``/``depth``/``heads``/``patch``/
    ``window``/``global_every``; ``target_diameter`` (object size on the working grid),
    ``tile``/``tile_overlap`` (inference tiles), ``fg_threshold``/``seed_threshold``
    (post-processing).
    """

    head_type = "segmentation"
    n_outputs = 3
    defaults: ClassVar[dict] = {"stem": 16, "dim": 64, "depth": 4, "heads": 4, "patch": 8, "window": 4, "global_every": 2,
                "target_diameter": 24.0, "tile": 256, "tile_overlap": 32, "size_multiple": 8,
                "fg_threshold": 0.5, "seed_threshold": 0.1}

    def __init__(self, engine: str, n_features: int = 0, **config):
        super().__init__(engine, n_features, **config)
        c = self.config
        self.config["size_multiple"] = int(c["patch"])
        self.stem = FusionStem(n_features, c["stem"])
        self.vit = TinyViT(c["stem"], c["dim"], c["depth"], c["heads"], c["patch"], c["window"], c["global_every"])
        self.neck = nn.Conv2d(c["dim"], c["stem"], 1)
        # the two conv layers that predict the representation at full resolution
        self.out = nn.Sequential(nn.Conv2d(2 * c["stem"], c["stem"], 3, padding=1), nn.GELU(),
                                 nn.Conv2d(c["stem"], self.n_outputs, 1))

    def forward(self, base: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` (+ ``(B, C, H, W)`` features) -> ``(B, 3, H, W)`` raw outputs."""
        h, w = base.shape[-2:]
        p = self.config["patch"]
        ph, pw = (-h) % p, (-w) % p
        x = self.stem(base, feats)
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
        t = self.neck(self.vit(xp))
        t = F.interpolate(t, size=xp.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w]
        return self.out(torch.cat([x, t], dim=1))

    # ------------------------------------------------------------------ training
    @staticmethod
    def targets(labels: np.ndarray) -> np.ndarray:
        """``(3, H, W)`` targets from instance labels: foreground, normalised distance, boundary."""
        return seg_targets(labels)

    @staticmethod
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE on foreground and boundary, MSE on the distance map."""
        fg, dist, bnd = target[:, 0], target[:, 1], target[:, 2]
        l_fg = F.binary_cross_entropy_with_logits(out[:, 0], fg)
        l_dist = F.mse_loss(torch.sigmoid(out[:, 1]), dist) * 5.0
        pos = bnd.mean().clamp(min=1e-3)
        l_bnd = F.binary_cross_entropy_with_logits(out[:, 2], bnd, pos_weight=((1 - pos) / pos).clamp(max=10.0))
        return l_fg + l_dist + 0.5 * l_bnd

    # ------------------------------------------------------------------ inference
    def predict_maps(self, maps: MatchMaps, image: np.ndarray) -> dict[str, np.ndarray]:
        """Foreground probability, distance and boundary probability at input resolution."""
        inp = self.inputs(maps, image)
        raw, f = self.predict_dense(inp)
        prob = 1.0 / (1.0 + np.exp(-raw))
        full = to_input_size(prob, inp.shape)
        return {"foreground": full[0], "distance": full[1], "boundary": full[2], "zoom": f}

    def predict(self, maps: MatchMaps, image: np.ndarray) -> np.ndarray:
        """Instance labels ``(H, W)`` int32 at input resolution."""
        out = self.predict_maps(maps, image)
        diameter = self.config["target_diameter"] / out["zoom"]
        return instances_from_distance(out["foreground"], out["distance"], out["boundary"], diameter,
                                       self.config["fg_threshold"], self.config["seed_threshold"])


def seg_targets(labels: np.ndarray) -> np.ndarray:
    """Foreground, per-object normalised distance-to-edge, and inner boundary of ``labels``."""
    lab = np.asarray(labels).astype(np.int64)
    fg = lab > 0
    bnd = find_boundaries(lab, mode="inner") & fg
    # distance to background or to a touching neighbour's boundary
    dist = ndi.distance_transform_edt(fg & ~bnd) + fg
    if fg.any():
        ids = np.unique(lab[fg])
        peak = np.zeros(int(ids.max()) + 1, np.float64)
        peak[ids] = ndi.maximum(dist, lab, ids)
        dist = np.where(fg, dist / np.maximum(peak[lab], 1.0), 0.0)
    return np.stack([fg, dist, bnd]).astype(np.float32)


def instances_from_distance(fg: np.ndarray, dist: np.ndarray, boundary: np.ndarray, diameter: float,
                            fg_threshold: float = 0.5, seed_threshold: float = 0.5,
                            seeds: np.ndarray | None = None) -> np.ndarray:
    """Labels from predicted foreground, distance and boundary maps.

    Seeds are the h-maxima (height ``seed_threshold``) of the distance damped by the
    boundary probability (or the boolean ``seeds`` given, e.g. found on a coarser grid);
    regions grow over its negative inside the foreground. Hole filling, the
    small-fragment rule and relabelling are the analytic head's
    (:mod:`mm_core.heads.segmentation`), so both heads clean up masks the same way.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    from mm_core.heads import segmentation as analytic

    mask = fg > fg_threshold
    if not mask.any():
        return np.zeros(fg.shape, np.int32)
    # seeds: regional maxima of the distance (h-maxima, robust to an under-confident distance map)
    # away from predicted boundaries; ``seed_threshold`` is the height h in units of the distance
    relief = np.where(mask, dist * (1.0 - boundary), 0.0)
    if seeds is None:
        seeds = h_maxima(ndi.gaussian_filter(relief, max(0.5, diameter / 16)), seed_threshold) > 0
    markers, n = ndi.label(seeds & mask)
    # foreground components without a seed still become one object each
    comp, _ = ndi.label(mask)
    has = np.zeros(int(comp.max()) + 1, bool)
    has[comp[markers > 0]] = True
    orphan = mask & ~has[comp]
    if orphan.any():
        ocomp, _ = ndi.label(orphan)
        markers[orphan] = ocomp[orphan] + n
    labels = watershed(-relief, markers, mask=mask).astype(np.int32)
    labels = analytic._fill_holes(labels)
    areas = np.bincount(labels.ravel())
    small = areas < analytic.MIN_AREA_FRAC * analytic.typical_area(diameter)
    small[0] = False
    labels[small[labels]] = 0
    return analytic._relabel_sequential(labels)
