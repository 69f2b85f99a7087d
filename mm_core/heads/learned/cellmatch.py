"""CellMatch: one small U-Net that segments and counts any microscopy image, with or without a box.

What it reads (issue 21): the image normalised per channel (colour kept, grey images
replicated to three channels) and the exemplar boxes as a *prompt*, two more channels: a mask
of the boxes and the normalised cross-correlation of the boxes' contents with the image (the
match within the image). Without a box both prompt channels are zero, so the same weights serve
automatic and exemplar mode. With ``engine_maps`` set (the issue-21 ablation "engine maps with
and without"), two more channels: the classic engine's automatic-mode foreground and centre
maps of the whole image (:func:`engine_channels`), resized with the image.

What it predicts, four maps: Cellpose-style flows (dy, dx), the foreground probability and the
normalised distance to the object's edge; instances come from following the flows
(:func:`mm_core.heads.flows.flows_to_labels`) or from the distance
(:func:`mm_core.heads.flows.distance_to_labels`), set by ``decoder`` in the config.

Scale without a size search: the network was trained over object diameters of 8-100 pixels
(zoom 0.25-4x of the training images). With boxes the image is resized so that the boxes are
``target_diameter`` wide; without, one pass at native resolution, and one more at the
working size when the objects found are far from it, if ``second_pass`` says so (picked on the
``train/`` validation slice: none; see docs/training.md).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from mm_core.engines.base import MatchMaps
from mm_core.heads.flows import distance_to_labels, flows_to_labels
from mm_core.heads.learned.base import CounterView, LearnedHead
from mm_core.heads.learned.layers import UNet
from mm_core.heads.objects import object_diameter
from mm_core.transforms import box_diameters

#: Input channels: red, green, blue, box mask, box cross-correlation.
INPUTS = ("red", "green", "blue", "box_mask", "box_ncc")
#: Extra input channels of a model trained with ``engine_maps``: the classic engine's automatic maps.
ENGINE_INPUTS = ("engine_foreground", "engine_centers")
#: Output channels: flow dy, flow dx, foreground logit, distance logit.
OUTPUTS = ("flow_y", "flow_x", "foreground", "distance")


def image_channels(image: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` float32 in [0, 1]: colour kept, a grey image replicated."""
    img = np.asarray(image, np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return np.clip(np.moveaxis(img[..., :3], -1, 0), 0.0, 1.0)


def prompt_channels(image3: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
    """``(2, H, W)`` float32: the boxes' mask and the best cross-correlation of their contents.

    ``boxes`` are ``(N, 4)`` ``x0, y0, x1, y1`` in the image's pixels; ``None`` or empty: zeros.
    """
    from skimage.feature import match_template

    h, w = image3.shape[1:]
    out = np.zeros((2, h, w), np.float32)
    if boxes is None or len(boxes) == 0:
        return out
    gray = image3.mean(0)
    for x0, y0, x1, y1 in np.asarray(boxes, float):
        c0, r0 = int(np.clip(np.floor(x0), 0, w - 1)), int(np.clip(np.floor(y0), 0, h - 1))
        c1, r1 = int(np.clip(np.ceil(x1), c0 + 1, w)), int(np.clip(np.ceil(y1), r0 + 1, h))
        out[0, r0:r1, c0:c1] = 1.0
        tpl = gray[r0:r1, c0:c1]
        if min(tpl.shape) < 3 or tpl.shape[0] >= h or tpl.shape[1] >= w or tpl.std() < 1e-6:
            continue
        ncc = match_template(gray, tpl, pad_input=True, mode="reflect")
        out[1] = np.maximum(out[1], np.nan_to_num(ncc).astype(np.float32))
    return out


def engine_channels(image: np.ndarray, engine=None) -> np.ndarray:
    """``(2, H, W)`` float32: the engine's automatic-mode foreground and centre maps at input size.

    ``engine``: anything with ``match(image, boxes)`` (an engine, or a
    :class:`mm_core.train.cache.EngineCache`); default the classic engine, the one the
    ``engine_maps`` models are trained with.
    """
    if engine is None:
        from mm_core.engines.classic.engine import ClassicEngine

        engine = ClassicEngine()
    maps = engine.match(np.asarray(image, np.float32), None)
    return np.stack([maps.at_input("foreground"), maps.at_input("centers")]).astype(np.float32)


def n_inputs(config: dict) -> int:
    """Input channels of a model with ``config``: image, prompt (and the engine's maps)."""
    return len(INPUTS) + (len(ENGINE_INPUTS) if config.get("engine_maps") else 0)


class CellMatchHead(LearnedHead):
    """The CellMatch model as a head for both ``segment`` and ``count`` (see the module docstring)."""

    head_type = "cellmatch"
    n_outputs = len(OUTPUTS)
    defaults: ClassVar[dict] = {
        "base": 16, "levels": 4,
        "target_diameter": 30.0,  #: object diameter (working pixels) the boxes are resized to
        "size_range": [12.0, 75.0],  #: no second pass when the objects found are this wide
        #: automatic mode's second pass: "both" (objects found too small or too large), "zoom_out"
        #: (too large only) or "none"; picked on the train/ validation slice (docs/training.md)
        "second_pass": "none",
        "min_zoom": 0.25, "max_zoom": 4.0,
        "max_work_pixels": 16_000_000,  #: a pass never works on more pixels than this (zoom lowered)
        "decoder": "flows",  #: "flows" or "distance"
        "fg_threshold": 0.5, "flow_iterations": 200,
        "tile": 1024, "tile_overlap": 64, "size_multiple": 16,
        "engine_maps": False,  #: also read the classic engine's automatic maps (the ablation)
    }

    def __init__(self, engine: str = "any", n_features: int = 0, **config):
        super().__init__(engine, n_features, **config)
        self.config["engine_maps"] = bool(self.config["engine_maps"])
        self.net = UNet(n_inputs(self.config), len(OUTPUTS), int(self.config["base"]), int(self.config["levels"]), norm="batch",
                        upsample="transpose")

    def forward(self, x: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)

    def check_maps(self, maps: MatchMaps) -> None:
        """This model reads the image and the boxes (and makes its own classic maps): any engine is fine."""

    def describe(self) -> str:
        name = self.config["info"].get("name") or self.head_type
        reads = "the image, the boxes and the classic engine's maps" if self.config["engine_maps"] else \
            "the image and the boxes"
        synthetic = self.config["info"].get("recipe", {}).get("synthetic", 0)
        return (f"learned CellMatch model '{name}' (U-Net on {reads}, {self.config['decoder']} "
                f"decoder, trained on {', '.join(self.config['info'].get('train_data', [])) or 'train/'}"
                f"{' + synthetic images' if synthetic else ''})")

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def run_at(self, image3: np.ndarray, boxes: np.ndarray | None, zoom: float,
               extra: np.ndarray | None = None) -> np.ndarray:
        """Raw outputs ``(4, h, w)`` on the working grid: the image (and ``extra`` maps, ``(C, H, W)``,
        put after the prompt) resized by ``zoom`` (tiled)."""
        self.eval()
        h, w = image3.shape[1:]
        hw, ww = max(16, int(round(h * zoom))), max(16, int(round(w * zoom)))
        both = image3 if extra is None else np.concatenate([image3, np.asarray(extra, np.float32)])
        x = F.interpolate(torch.from_numpy(np.ascontiguousarray(both, np.float32))[None], size=(hw, ww),
                          mode="bilinear", align_corners=False, antialias=zoom < 1)[0].numpy()
        bx = None if boxes is None else np.asarray(boxes, float) * [ww / w, hw / h, ww / w, hw / h]
        inp = np.concatenate([x[:3], prompt_channels(x[:3], bx), x[3:]])
        return self._tiled(inp)

    def _tiled(self, inp: np.ndarray) -> np.ndarray:
        from mm_core.transforms.tiles import blend_window, tile_starts

        c, hw, ww = inp.shape
        mult, size, overlap = int(self.config["size_multiple"]), int(self.config["tile"]), int(self.config["tile_overlap"])
        th, tw = min(size, -(-hw // mult) * mult), min(size, -(-ww // mult) * mult)
        ph, pw = max(hw, th), max(ww, tw)
        padded = np.pad(inp, ((0, 0), (0, ph - hw), (0, pw - ww)), mode="reflect" if min(hw, ww) > 1 else "edge")
        acc = np.zeros((self.n_outputs, ph, pw), np.float32)
        wsum = np.zeros((ph, pw), np.float32)
        win = blend_window((th, tw), overlap)
        for y in tile_starts(ph, th, overlap):
            for x in tile_starts(pw, tw, overlap):
                out = self(torch.from_numpy(np.ascontiguousarray(padded[None, :, y:y + th, x:x + tw])))[0].numpy()
                acc[:, y:y + th, x:x + tw] += out * win
                wsum[y:y + th, x:x + tw] += win
        return (acc / np.maximum(wsum, 1e-6))[:, :hw, :ww]

    def decode(self, raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Instances ``shape`` int32 from raw outputs on the working grid (decoded there, then resized)."""
        from mm_core.transforms import resize_map

        prob = 1.0 / (1.0 + np.exp(-raw[2]))
        if self.config["decoder"] == "distance":
            dist = 1.0 / (1.0 + np.exp(-raw[3]))
            lab = distance_to_labels(dist, prob, self.config["fg_threshold"], min_size=6)
        else:
            flows = raw[:2] / 5.0
            lab = flows_to_labels(flows, prob, self.config["fg_threshold"],
                                  niter=int(self.config["flow_iterations"]), min_size=6)
        if lab.shape != tuple(shape):
            lab = resize_map(lab, shape, order=0).astype(np.int32)
        return lab

    def zoom_for(self, image_shape, boxes: np.ndarray | None, found: float | None = None) -> float:
        """Zoom of the pass: from the boxes' size, else 1 (or from the diameter ``found`` on a first pass)."""
        lo, hi = float(self.config["min_zoom"]), float(self.config["max_zoom"])
        hi = min(hi, max(lo, float(np.sqrt(self.config["max_work_pixels"] / max(image_shape[0] * image_shape[1], 1)))))
        d = self.config["target_diameter"]
        if boxes is not None and len(boxes):
            size = float(np.median(box_diameters(boxes, image_shape)))
            return float(np.clip(d / max(size, 1.0), lo, hi))
        if found is None:
            return 1.0
        return float(np.clip(d / max(found, 1.0), lo, hi))

    def predict_maps(self, maps: MatchMaps, image: np.ndarray, scale: float | None = None) -> dict:
        """:meth:`segment_image` with the boxes the pipeline put in ``maps.info["boxes"]``."""
        boxes = maps.info.get("boxes") if maps is not None else None
        return self.segment_image(image, boxes, scale)

    def segment_image(self, image: np.ndarray, boxes: np.ndarray | None = None, scale: float | None = None,
                      engine_maps: np.ndarray | None = None) -> dict:
        """Instances of ``image`` (numpy in, numpy out).

        Parameters
        ----------
        image : ndarray
            ``(H, W)`` or ``(H, W, 3)`` normalised to [0, 1].
        boxes : ndarray, optional
            ``(N, 4)`` exemplar boxes ``x0, y0, x1, y1`` (the prompt; they also set the zoom).
        scale : float, optional
            Object diameter in input pixels: one pass at the zoom it gives (tiles of a large image).
        engine_maps : ndarray, optional
            ``(2, H, W)`` :func:`engine_channels` of ``image``, for a model trained with
            ``engine_maps`` (made here when not given; ignored by the other models).

        Returns
        -------
        dict
            ``labels`` (H, W) int32, ``zoom`` of the last pass, ``scale`` (median object diameter
            found, input pixels; 0 without objects).
        """
        image3 = image_channels(image)
        boxes = None if boxes is None or len(boxes) == 0 else np.asarray(boxes, float)
        if scale is not None:
            zoom = self.zoom_for(image3.shape[1:], None, float(scale))
        else:
            zoom = self.zoom_for(image3.shape[1:], boxes)
        shape = image3.shape[1:]
        extra = None
        if self.config["engine_maps"]:
            extra = engine_channels(image) if engine_maps is None else np.asarray(engine_maps, np.float32)
        raw = self.run_at(image3, boxes, zoom, extra)
        labels = self.decode(raw, shape)
        if boxes is None and scale is None:
            found = median_diameter(labels)
            lo, hi = self.config["size_range"]
            rule = self.config["second_pass"]
            if found is not None and ((found > hi and rule != "none") or (found < lo and rule == "both")):
                zoom = self.zoom_for(shape, None, found)
                raw = self.run_at(image3, None, zoom, extra)
                labels = self.decode(raw, shape)
        from mm_core.transforms import resize_map

        fg = resize_map(1.0 / (1.0 + np.exp(-raw[2])), shape).astype(np.float32)
        dist = resize_map(1.0 / (1.0 + np.exp(-raw[3])), shape).astype(np.float32) * (fg > 0.5)
        return {"labels": labels, "zoom": zoom, "scale": median_diameter(labels) or 0.0, "foreground": fg,
                "distance": dist}

    def match(self, engine, image: np.ndarray, boxes: np.ndarray | None) -> MatchMaps:
        """The model's own maps of ``image`` (the pipelines call this instead of ``engine.match``).

        This model reads the image and the boxes, not ``engine``'s maps, so that engine does not
        run (a model trained with ``engine_maps`` runs the classic engine itself): the maps are the model's foreground and distance-to-edge outputs and the object
        size it found, and the instances are kept for :meth:`predict`.
        """
        out = self.segment_image(image, boxes)
        bx = None if boxes is None or len(boxes) == 0 else np.asarray(boxes, float)
        mode = "automatic" if bx is None else "exemplar"
        maps = MatchMaps(foreground=out["foreground"], centers=out["distance"],
                         scale=float(out["scale"] or self.config["target_diameter"]),
                         image_shape=tuple(out["labels"].shape), engine=getattr(engine, "name", "classic"),
                         mode=mode, conditioning=("automatic: repeated structures" if bx is None else
                                                  f"{len(bx)} exemplar box(es) as the model's prompt"),
                         info={"n_boxes": 0 if bx is None else len(bx), "zoom": out["zoom"],
                               "model": "CellMatch (reads the classic engine's automatic maps)"
                               if self.config["engine_maps"] else "CellMatch (the engine's maps are not used)"})
        self._memo = (image, _boxes_key(bx), maps.scale, out)
        return maps

    def fit_scale(self, maps: MatchMaps, image: np.ndarray) -> float:
        """The object diameter (input pixels) read on ``image``.

        The pipelines ask for it before :meth:`predict` (tiled runs pass it to every tile); the
        result of this pass is kept, so that ``predict`` on the same image and boxes at this
        scale does not run the model again.
        """
        memo = getattr(self, "_memo", None)
        if _same_call(memo, image, maps):
            return memo[2]
        out = self.predict_maps(maps, image)
        scale = float(out["scale"] or self.config["target_diameter"])
        self._memo = (image, _boxes_key(_boxes_of(maps)), scale, out)
        return scale

    def predict(self, maps: MatchMaps, image: np.ndarray, scale: float | None = None) -> np.ndarray:
        """Instance labels ``(H, W)`` int32 at input resolution."""
        memo = getattr(self, "_memo", None)
        if _same_call(memo, image, maps) and scale in (None, memo[2]):
            return memo[3]["labels"]
        return self.predict_maps(maps, image, scale)["labels"]

    def counter(self) -> CellMatchCounter:
        """This model's counting view: one count per segmented object."""
        return CellMatchCounter(self)


def _same_call(memo, image, maps) -> bool:
    """Whether ``memo`` (the last pass, holding its image) was made for this image object and these boxes."""
    return memo is not None and memo[0] is image and memo[1] == _boxes_key(_boxes_of(maps))


def _boxes_of(maps: MatchMaps | None):
    return None if maps is None else maps.info.get("boxes")


def _boxes_key(boxes) -> tuple:
    return () if boxes is None or len(boxes) == 0 else tuple(np.round(np.asarray(boxes, float).ravel(), 3))


def median_diameter(labels: np.ndarray) -> float | None:
    """:func:`~mm_core.heads.learned.inputs.object_diameter`, ``None`` without objects."""
    return object_diameter(labels) or None


class CellMatchCounter(CounterView):
    """Counting with :class:`CellMatchHead`: every object found counts one.

    The density spreads each object's unit mass uniformly over its pixels, so it sums to the
    number of objects, and the centres are the objects' centroids: the count shown, the
    centres table and the density agree.
    """

    def describe(self) -> str:
        return self.head.describe() + "; count = objects found (one per object)"

    def predict(self, maps: MatchMaps, image: np.ndarray,
                scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``density (H, W)`` (sums to the count) and object centres ``(N, 2)`` (row, col)."""
        labels = self.head.predict(maps, image, scale)
        return instance_density(labels)


def instance_density(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit mass per object spread over its pixels, and the objects' centroids ``(N, 2)``."""
    lab = np.asarray(labels)
    n = int(lab.max())
    if n == 0:
        return np.zeros(lab.shape, np.float32), np.zeros((0, 2), float)
    areas = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    per = np.where(areas > 0, 1.0 / np.maximum(areas, 1), 0.0)
    per[0] = 0.0
    ids = np.nonzero(areas[1:])[0] + 1
    cents = np.asarray(ndi.center_of_mass(np.ones(lab.shape), lab, ids), float).reshape(-1, 2)
    return per[lab].astype(np.float32), cents
