"""The generalist head: one small U-Net on match maps, trained on a broad corpus, for any image.

What it sees (at a working grid where objects are ``target_diameter`` pixels wide): the
engine's grey channel with the matched objects made bright, the engine's foreground
and its centre evidence; nothing that names the kind of microscopy. What it predicts,
five maps: foreground, normalised distance to the object edge, object boundary,
the log of the object size relative to ``target_diameter`` and a density of object
centres.

The object scale is the crux on unseen kinds of image (the engine's estimate is 3-4x
too small on phase contrast and EM, where it sees the texture inside the cells). In
automatic mode the head runs at the diameter read by a learned object-size model
(:class:`~mm_core.heads.learned.size.SizeModel`, trained on ``train/`` as Cellpose's
size model is on its corpus); with boxes, at the boxes' size. Probing the head itself
and reading the size it sees (:meth:`GeneralistHead.estimate_scale`, ``"refine"`` or
``"trials"``) are config options; the default was picked on the validation slice of
``train/`` by ``benchmarks/generalist_scale.py``. Instances come from the distance / boundary maps by
marker-controlled watershed (:func:`mm_core.heads.learned.segmentation.instances_from_distance`);
the count is the sum of the density; the instances' centroids are the centres
(:class:`GeneralistCounter`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from mm_core.engines.base import MatchMaps
from mm_core.heads.learned.base import CounterView, LearnedHead, check_engine, to_input_size
from mm_core.heads.learned.inputs import HeadInputs, align_polarity, working_factor
from mm_core.heads.learned.layers import UNet
from mm_core.heads.learned.segmentation import instances_from_distance, seg_targets

#: Output channels of the network.
OUTPUTS = ("foreground", "distance", "boundary", "log_size", "density")
#: Density targets are multiplied by this while training (unit-mass Gaussians are tiny).
DENSITY_SCALE = 100.0
#: Width of the Gaussian of one object's density, in working-grid pixels.
DENSITY_SIGMA = 4.0


def head_inputs(maps: MatchMaps, image: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` float32: the engine's grey channel (objects bright), foreground, centres."""
    from mm_core.engines.classic.engine import gray_of
    from mm_core.errors import InputError

    gray = gray_of(image)
    if gray.shape != tuple(maps.image_shape):
        raise InputError(f"the image is {gray.shape[1]}x{gray.shape[0]} but the match maps were made "
                         f"for a {maps.image_shape[1]}x{maps.image_shape[0]} image")
    fg = maps.at_input("foreground")
    return np.stack([align_polarity(gray, fg), fg, maps.at_input("centers")]).astype(np.float32)


def pick_crossing(trials: list[float], read: list[float | None], s0: float) -> float:
    """The scale at which objects come out at the working diameter, from trial probes.

    ``read[k]`` is the object size read at trial scale ``trials[k]`` (``None``: no
    objects). Where the ratio read / trial crosses 1 from above (objects bigger than the
    working size, then smaller), the crossing closest to ``s0`` is interpolated in log
    scale; else the size read at the trial whose ratio is closest to 1; ``s0`` when no
    trial found objects.
    """
    logr = np.array([np.nan if g is None else float(np.log(g / t)) for t, g in zip(trials, read, strict=True)])
    ok = np.isfinite(logr)
    if not ok.any():
        return float(s0)
    lt = np.log(np.asarray(trials, float))
    n = len(trials)
    cross = [k for k in range(n - 1) if ok[k] and ok[k + 1] and logr[k] >= 0 > logr[k + 1]]
    if cross:
        k = min(cross, key=lambda k: abs(lt[k] - np.log(s0)))
        a = logr[k] / (logr[k] - logr[k + 1])
        return float(np.exp(lt[k] + a * (lt[k + 1] - lt[k])))
    k = int(np.nanargmin(np.where(ok, np.abs(logr), np.nan)))
    return float(trials[k] * np.exp(logr[k]))


def targets(labels: np.ndarray, target_diameter: float) -> np.ndarray:
    """``(5, H, W)`` training targets of working-grid ``labels`` (see ``OUTPUTS``).

    ``log_size`` is ``log(d / target_diameter)`` with ``d`` each object's equivalent
    diameter (0 off objects); ``density`` has one unit-mass Gaussian per object centroid,
    times ``DENSITY_SCALE``.
    """
    lab = np.asarray(labels).astype(np.int64)
    fg_dist_bnd = seg_targets(lab)
    size = np.zeros(lab.shape, np.float32)
    dots = np.zeros(lab.shape, np.float64)
    if lab.max() > 0:
        ids = np.unique(lab[lab > 0])
        areas = np.bincount(lab.ravel())
        d = 2.0 * np.sqrt(areas / np.pi)
        logd = np.zeros(len(areas), np.float32)
        logd[ids] = np.log(np.maximum(d[ids], 1.0) / target_diameter)
        size = np.where(lab > 0, logd[lab], 0.0).astype(np.float32)
        cy, cx = (np.asarray(c) for c in zip(*ndi.center_of_mass(np.ones_like(lab), lab, ids), strict=True))
        r = np.clip(np.round(cy).astype(int), 0, lab.shape[0] - 1)
        c = np.clip(np.round(cx).astype(int), 0, lab.shape[1] - 1)
        np.add.at(dots, (r, c), 1.0)
        dots = ndi.gaussian_filter(dots, DENSITY_SIGMA, mode="constant")
    return np.concatenate([fg_dist_bnd, size[None], (dots * DENSITY_SCALE)[None].astype(np.float32)])


class GeneralistHead(LearnedHead):
    """Segmentation (and counting, see :meth:`counter`) head with its own object-scale estimate.

    ``config``: ``base``/``levels`` (U-Net width and depth), ``target_diameter``,
    ``tile``/``tile_overlap``, ``fg_threshold``/``seed_threshold`` (watershed),
    ``scale_search`` (how the object size is found, see :meth:`estimate_scale`:
    ``"none"``, ``"refine"`` or ``"trials"``), ``scale_passes`` (probes of the search),
    ``scale_range`` (the search stays within this factor either side of the engine's
    scale), ``probe_side`` (the size search looks at a central window of at most this
    many working-grid pixels a side), ``max_zoom`` (largest upsampling of the input),
    ``size_model`` (a :class:`~mm_core.heads.learned.size.SizeModel` checkpoint: in
    automatic mode the size search starts at its estimate instead of the engine's
    scale; ``""``: the engine's scale).
    """

    head_type = "generalist"
    n_outputs = len(OUTPUTS)
    defaults: ClassVar[dict] = {"base": 16, "levels": 4, "target_diameter": 16.0, "tile": 1024, "tile_overlap": 32,
                                "size_multiple": 16, "fg_threshold": 0.5, "seed_threshold": 0.1,
                                "scale_search": "none", "scale_passes": 1, "scale_range": 3.0,
                                "probe_side": 256, "size_model": "size-classic", "max_zoom": 3.0}

    def __init__(self, engine: str = "classic", n_features: int = 0, **config):
        super().__init__(engine, 0, **config)
        c = self.config
        self.net = UNet(3, self.n_outputs, int(c["base"]), int(c["levels"]))

    def forward(self, base: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` inputs -> ``(B, 5, H, W)`` raw outputs (logits, log size, scaled density)."""
        h, w = base.shape[-2:]
        m = 2 ** (int(self.config["levels"]) - 1)
        ph, pw = (-h) % m, (-w) % m
        x = F.pad(base, (0, pw, 0, ph), mode="replicate") if (ph or pw) else base
        return self.net(x)[..., :h, :w]

    def check_maps(self, maps: MatchMaps) -> None:
        """Refuse maps of another engine (engine features are not used)."""
        check_engine(self.config, maps.engine, self.head_type)

    # ------------------------------------------------------------------ training
    @staticmethod
    def loss(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """BCE (foreground, boundary) + MSE (distance, density) + L1 on the log size over objects."""
        w = torch.ones_like(target[:, :1]) if weight is None else weight
        w = w[:, 0]
        n = w.sum().clamp(min=1.0)
        fg, dist, bnd, size, dens = (target[:, i] for i in range(5))
        l_fg = (F.binary_cross_entropy_with_logits(out[:, 0], fg, reduction="none") * w).sum() / n
        l_dist = ((torch.sigmoid(out[:, 1]) - dist) ** 2 * w).sum() / n * 5.0
        pos = (bnd * w).sum() / n
        pw = ((1 - pos) / pos.clamp(min=1e-3)).clamp(max=10.0)
        l_bnd = (F.binary_cross_entropy_with_logits(out[:, 2], bnd, pos_weight=pw, reduction="none") * w).sum() / n
        obj = fg * w
        l_size = ((out[:, 3] - size).abs() * obj).sum() / obj.sum().clamp(min=1.0)
        l_dens = ((out[:, 4] - dens) ** 2 * w).sum() / n
        return l_fg + l_dist + 0.5 * l_bnd + 0.5 * l_size + 0.5 * l_dens

    # ------------------------------------------------------------------ inference
    def inputs(self, maps: MatchMaps, image: np.ndarray) -> HeadInputs:
        """Head inputs at the engine's scale (:meth:`find_scale` sets where the size search starts)."""
        self.check_maps(maps)
        return HeadInputs(base=head_inputs(maps, image), features=None, scale=float(maps.scale),
                          engine=str(maps.engine))

    def find_scale(self, maps: MatchMaps, image: np.ndarray, inp: HeadInputs) -> tuple[float, list[float]]:
        """:meth:`estimate_scale` from :meth:`start_scale` (the size model runs once per call here)."""
        inp.scale = self.start_scale(maps, image)
        return self.estimate_scale(inp)

    def size_model(self):
        """The configured :class:`~mm_core.heads.learned.size.SizeModel`, loaded once (``None``: none).

        A missing or unreadable checkpoint warns once and the engine's scale is used.
        """
        cache = self.__dict__.setdefault("_size_cache", {})  # a plain dict: not a registered submodule
        if "model" not in cache:
            from mm_core.heads.learned.size import load_size_model

            cache["model"] = load_size_model(str(self.config.get("size_model") or ""))
        return cache["model"]

    def start_scale(self, maps: MatchMaps, image: np.ndarray) -> float:
        """Object diameter (input pixels) the size search starts from.

        Exemplar mode: the engine's (read from the boxes). Automatic mode: the size
        model's estimate on the engine's grey channel, when one is configured.
        """
        model = self.size_model() if maps.mode == "automatic" else None
        if model is None:
            return float(maps.scale)
        from mm_core.engines.classic.engine import gray_of

        return float(model.estimate(gray_of(image)))

    def working_shape(self, inp: HeadInputs) -> tuple[float, tuple[int, int]]:
        f = working_factor(inp.scale, self.config["target_diameter"], hi=float(self.config["max_zoom"]))
        h, w = inp.shape
        return f, (max(16, round(h * f)), max(16, round(w * f)))

    def _probe(self, inp: HeadInputs, scale: float) -> float | None:
        """Object diameter (input pixels) the head reads in a central window at ``scale``.

        The per-pixel log sizes over the predicted foreground are weighted by the inverse
        object area they imply, so the median is one of objects, not of pixels.
        """
        probe = HeadInputs(base=inp.base, features=None, scale=scale, engine=inp.engine)
        f, _ = self.working_shape(probe)
        side = int(np.ceil(self.config["probe_side"] / f))
        h, w = inp.shape
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        probe.base = inp.base[:, y0:y0 + side, x0:x0 + side]
        raw, f = self.predict_dense(probe)
        sel = raw[0] > 0.0  # foreground probability > 0.5
        if sel.sum() < 16:
            return None
        logs = raw[3][sel]
        wts = np.exp(-2.0 * logs)
        order = np.argsort(logs)
        cum = np.cumsum(wts[order])
        med = logs[order][int(np.searchsorted(cum, 0.5 * cum[-1]))]
        return float(self.config["target_diameter"] * np.exp(med) / f)

    def estimate_scale(self, inp: HeadInputs) -> tuple[float, list[float]]:
        """Object diameter in input pixels, and the trial scales probed: ``(scale, scales tried)``.

        The search starts at ``inp.scale`` (:meth:`start_scale`: the size model's estimate
        in automatic mode, the boxes' size in exemplar mode). ``scale_search`` (config)
        picks the strategy; every probe runs the head on a central window
        (:meth:`_probe`) and reads the object size there:

        - ``"none"`` (``"engine"`` in older configs): no probe, the starting scale;
        - ``"refine"`` (Cellpose's size model, iterated): probe at the starting scale,
          then again at the size read, up to ``scale_passes`` probes, stopping once the
          size read agrees with the trial within 10 %;
        - ``"trials"``: ``scale_passes`` trials spread geometrically over
          ``1/scale_range`` to ``scale_range`` times the starting scale; the scale kept
          is the one at which objects come out at the working diameter (see
          :func:`pick_crossing`).

        ``"refine"`` stays within ``scale_range`` of the starting scale; when no probe
        finds objects, the last trial (at first the starting scale) is kept.
        """
        s0 = inp.scale if np.isfinite(inp.scale) and inp.scale > 0 else self.config["target_diameter"]
        how = str(self.config.get("scale_search", "trials"))
        n = max(1, int(self.config["scale_passes"]))
        r = float(self.config["scale_range"])
        if how in ("none", "engine"):
            return float(s0), []
        if how == "refine":
            trials, t = [], float(s0)
            for _ in range(n):
                trials.append(t)
                got = self._probe(inp, t)
                if got is None:
                    break
                t_new = float(np.clip(got, s0 / r, s0 * r))
                done = abs(np.log(t_new / t)) < np.log(1.1)
                t = t_new
                if done:
                    break
            return t, trials
        if how != "trials":
            raise ValueError(f"unknown scale_search {how!r} (none, refine or trials)")
        trials = list(s0 * np.geomspace(1 / r, r, n)) if n > 1 else [s0]
        got = [self._probe(inp, t) for t in trials]
        return pick_crossing(trials, got, s0), trials

    def predict_maps(self, maps: MatchMaps, image: np.ndarray, scale: float | None = None) -> dict:
        """Output maps at input resolution (probabilities, density summing to the count) and the scale.

        ``scale`` (object diameter, input pixels) skips the size search.
        """
        inp = self.inputs(maps, image)
        s, tried = self.find_scale(maps, image, inp) if scale is None else (float(scale), [])
        inp.scale = s
        raw, f = self.predict_dense(inp)
        prob = 1.0 / (1.0 + np.exp(-raw[:3]))
        full = to_input_size(prob, inp.shape)
        dens = to_input_size(np.maximum(raw[4:5], 0.0) / DENSITY_SCALE, inp.shape, keep_sum=True)[0]
        seeds = None
        if f < 1.0:  # objects were shrunk: find the seeds on the (smaller) working grid
            seeds = self._seeds(prob, inp.shape)
        return {"foreground": full[0], "distance": full[1], "boundary": full[2], "density": dens,
                "scale": s, "zoom": f, "scales_tried": tried, "seeds": seeds}

    def _seeds(self, prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Watershed seeds (h-maxima of the damped distance) on the working grid, at input size."""
        from skimage.morphology import h_maxima

        from mm_core.transforms import resize_map

        mask = prob[0] > self.config["fg_threshold"]
        relief = np.where(mask, prob[1] * (1.0 - prob[2]), 0.0)
        sigma = max(0.5, self.config["target_diameter"] / 16)
        seeds = (h_maxima(ndi.gaussian_filter(relief, sigma), self.config["seed_threshold"]) > 0) & mask
        return resize_map(seeds.astype(np.float32), shape, order=0) > 0.5

    def labels_from(self, out: dict) -> np.ndarray:
        """Instances from :meth:`predict_maps`'s output."""
        diameter = self.config["target_diameter"] / out["zoom"]
        return instances_from_distance(out["foreground"], out["distance"], out["boundary"], diameter,
                                       self.config["fg_threshold"], self.config["seed_threshold"],
                                       seeds=out.get("seeds"))

    def fit_scale(self, maps: MatchMaps, image: np.ndarray) -> float:
        """The object diameter (input pixels) this head's size search finds on ``image``.

        Measured once on one region of a large image and passed to :meth:`predict` for
        every tile (``scale=``), so that all tiles are read at one object size.
        """
        return float(self.find_scale(maps, image, self.inputs(maps, image))[0])

    def predict(self, maps: MatchMaps, image: np.ndarray, scale: float | None = None) -> np.ndarray:
        """Instance labels ``(H, W)`` int32 at input resolution (``scale``: skip the size search)."""
        return self.labels_from(self.predict_maps(maps, image, scale))

    def counter(self) -> GeneralistCounter:
        """This head's counting view (``predict`` -> density, centres)."""
        return GeneralistCounter(self)

    def describe(self) -> str:
        name = self.config["info"].get("name") or self.head_type
        size = str(self.config.get("size_model") or "")
        scale = f"object size from the size model '{Path(size).name}' without boxes" if size else "own object-size search"
        return (f"learned generalist head '{name}' (U-Net on {self.engine} engine maps, trained on "
                f"{', '.join(self.config['info'].get('train_data', [])) or 'train/'}; {scale})")


class GeneralistCounter(CounterView):
    """Counting with a :class:`GeneralistHead`: the count is the sum of its density map.

    The centres are the segmented objects' centroids; the pipeline gives each centre
    the density mass closest to it (:func:`mm_core.pipelines.count_from_density`), so the
    centres' ``n`` add up to the count (a clump the head could not split counts 2 or more).
    """

    def describe(self) -> str:
        return self.head.describe() + "; count = sum of its density map, shared among the object centres"

    def predict(self, maps: MatchMaps, image: np.ndarray,
                scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``density (H, W)`` (sums to the count) and object centres ``(N, 2)`` (row, col)."""
        out = self.head.predict_maps(maps, image, scale)
        labels = self.head.labels_from(out)
        n = int(labels.max())
        if n == 0:
            return out["density"], np.zeros((0, 2), float)
        cents = np.asarray(ndi.center_of_mass(np.ones(labels.shape), labels, np.arange(1, n + 1)), float)
        return out["density"], cents.reshape(-1, 2)
