"""The paper's tracking head: per-frame segmentation, attention embeddings, tracking transformer.

Path (research note, section 2 "Tracking"):

1. **per frame**, one UNet pass on the tracking prompt; the maps of tokens 2, 3, 4 (and 5,
   where the previous frame's exemplar embedding is written) are normalised one by one and
   averaged; the tracking checkpoint's regressor and ViT segment the frame (grey in all
   three channels). Boxes of the predicted objects go through LOCA and the adapter on this
   frame, and their mean embedding conditions the next frame (frame 0: the user's boxes,
   if any);
2. **features** per object: centroid ``(t, y, x)`` and 7 region properties (equivalent
   diameter, mean intensity, inertia tensor, nearness to the image border);
3. **attention embeddings**: in every window of 4 frames, each object of frame ``i`` gets
   its own embedding (LOCA + adapter on its box) written into the placeholder-only prompt
   (at most 74 per pass), and one UNet pass on the latents of frame ``i - 1`` and of
   ``i + 1`` (clamped to the window) gives each object a map there; the two maps,
   min-max normalised jointly per pass, go through ``norm``, ``inc_1`` and ``mlp`` to a
   320-d vector that the tracking transformer adds after its input projection;
4. the transformer's associations, normalised (quiet softmax, spatial cut-off), are
   averaged over windows and linked greedily with divisions (:mod:`.links`).

Passes are cached by (objects' frame, latents' frame), so each pair is run once.
Undetermined (note, section 5): the time origin of the transformer's coordinates (here:
relative to the window's first frame) and the feature scaling (here: raw values).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from mm_core.engines.base import MatchMaps
from mm_core.heads.authors.common import AuthorsHead
from mm_core.heads.authors.links import candidate_edges, greedy_links, links_to_ctc
from mm_core.heads.authors.sd import AuthorsSD, minmax
from mm_core.heads.authors.segment import attention_stack, regressor_feature, segment_labels

WINDOW = 4
MAX_SLOTS = 74  #: object embeddings per UNet pass (prompt positions 2..75)
EDGE_THRESHOLD = 0.05
LINK_THRESHOLD = 0.5

__all__ = ["AuthorsTrackHead", "boxes_of", "region_features"]


def boxes_of(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label ids (sorted) and their boxes ``x0, y0, x1, y1`` (x1/y1 exclusive) in ``labels``' pixels."""
    ids = np.unique(labels[labels > 0])
    sl = ndi.find_objects(labels)
    boxes = [[sl[i - 1][1].start, sl[i - 1][0].start, sl[i - 1][1].stop, sl[i - 1][0].stop] for i in ids]
    return ids, np.asarray(boxes, np.float32).reshape(-1, 4)


def region_features(labels: np.ndarray, grey: np.ndarray, cutoff: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Centroids ``(N, 2)`` ``(y, x)`` and the 7 features ``(N, 7)`` of each object (sorted labels)."""
    from skimage.measure import regionprops

    inner = np.zeros(labels.shape, bool)
    inner[1:-1, 1:-1] = True
    near_border = 1 - np.minimum(ndi.distance_transform_edt(inner) / cutoff, 1)
    cents, feats = [], []
    for r in regionprops(labels, intensity_image=grey):
        t = r.inertia_tensor
        cents.append(r.centroid)
        feats.append([r.equivalent_diameter_area, r.intensity_mean, t[0, 0], t[0, 1], t[1, 0], t[1, 1],
                      float(near_border[r.coords[:, 0], r.coords[:, 1]].max())])
    return np.asarray(cents, np.float32).reshape(-1, 2), np.asarray(feats, np.float32).reshape(-1, 7)


class AuthorsTrackHead(AuthorsHead):
    """The paper's tracking head (``microscopy_matching_tra.pth``) on the LDM engine.

    The pipeline calls :meth:`track_sequence` (the whole path above) instead of its own
    frame loop; ``frame_summary`` / ``link_sequence`` are not used.
    """

    kind, task, label = "tra", "track", "tracking"
    needs_maps = False

    # ------------------------------------------------------------------ step 1
    def _segment_frame(self, sd: AuthorsSD, frame, lat, emb, shape):
        hidden = self.overwrite(sd.text("track"), 5, emb)
        p = sd.run(lat, hidden)
        tokens = (2, 3, 4, 5) if emb is not None else (2, 3, 4)
        stack = attention_stack(p, False, tokens)
        reg = self.module.counting_adapter.regressor
        with torch.no_grad():
            feat = regressor_feature(reg, stack.to(sd.device), p.unet)
        lab, lab512 = segment_labels(reg.vit, frame, feat, shape, replicate_grey=True)
        return p, stack, lab, lab512

    def _next_embedding(self, sd: AuthorsSD, f_e, lab512: np.ndarray):
        ids, b = boxes_of(lab512)
        if not len(ids):
            return None
        return self.exemplar(sd, None, torch.from_numpy(b).to(sd.device), encoded=f_e)[1]

    # ------------------------------------------------------------------ step 3
    def _object_embeddings(self, sd: AuthorsSD, f_e, lab: np.ndarray) -> torch.Tensor | None:
        """``(n, D)``: one embedding per object of ``lab`` (input size; boxes scaled to the 512 frame)."""
        ids, b = boxes_of(lab)
        if not len(ids):
            return None
        return self.exemplar(sd, None, sd.boxes512(b, lab.shape), per_box=True, encoded=f_e)[1]

    def _maps_on(self, sd: AuthorsSD, emb: torch.Tensor, lat) -> torch.Tensor:
        """``(n, 64, 64)`` maps of ``n`` object embeddings on one frame's latents (chunks of 74)."""
        base = sd.text("track", template=False)
        out = []
        for k0 in range(0, emb.shape[0], MAX_SLOTS):
            chunk = emb[k0:k0 + MAX_SLOTS]
            hidden = base.clone()
            hidden[0, 2:2 + chunk.shape[0]] = chunk.to(hidden)
            p = sd.run(lat, hidden, need_self=False)
            out.append(minmax(p.cross[2:2 + chunk.shape[0]]))
        return torch.cat(out)

    def _attn_feat(self, prev_maps: torch.Tensor, next_maps: torch.Tensor) -> torch.Tensor:
        reg = self.module.counting_adapter.regressor
        dt = reg.inc_1.weight.dtype
        x = torch.stack([reg.norm(prev_maps.to(dt)), reg.norm(next_maps.to(dt))], dim=1)  # (n, 2, 64, 64)
        with torch.no_grad():
            return reg.mlp(reg.inc_1(x).flatten(1))  # (n, 320)

    # ------------------------------------------------------------------ the whole path
    def track_sequence(self, engine, frames: list[np.ndarray], boxes: np.ndarray | None = None,
                       progress=None) -> tuple[np.ndarray, pd.DataFrame, list[MatchMaps]]:
        """Segment, embed, associate and link ``frames`` (normalised, one size).

        Returns
        -------
        masks : ndarray, (T, H, W) int32
            Labels are track ids.
        tracks : DataFrame
            ``label, begin, end, parent`` (CTC).
        maps : list of MatchMaps
            Each frame's maps (foreground: its averaged token map).
        """
        sd = self.sd(engine)
        T, shape = len(frames), tuple(frames[0].shape[:2])
        tick = progress or (lambda f, d: None)
        encs, lats, labs, maps = [], [], [], []
        b512 = sd.boxes512(boxes, shape)
        emb = None
        for t, frame in enumerate(frames):
            tick(0.05 + 0.5 * t / T, f"segmenting frame {t + 1}/{T}")
            x01 = sd.prepare(frame)
            lat = sd.latents(x01)
            f_e = self.encode(sd, x01)  # LOCA's backbone once per frame, for every box set
            if t == 0 and b512 is not None:
                emb = self.exemplar(sd, None, b512, encoded=f_e)[1]
            p, stack, lab, lab512 = self._segment_frame(sd, frame, lat, emb, shape)
            emb = self._next_embedding(sd, f_e, lab512)
            encs.append(f_e)
            lats.append(lat)
            labs.append(lab)
            maps.append(self.maps(p, stack[0, 3], shape, "exemplar" if b512 is not None else "automatic",
                                  "the paper's tracking prompt", {}))
        from mm_core.transforms import to_gray

        cents, feats = zip(*[region_features(lab, to_gray(f)) for lab, f in zip(labs, frames)])
        obj_emb = [self._object_embeddings(sd, f_e, lab) for f_e, lab in zip(encs, labs)]
        cache: dict = {}

        def object_maps(i: int, j: int):
            if (i, j) not in cache:
                cache[(i, j)] = None if obj_emb[i] is None else self._maps_on(sd, obj_emb[i], lats[j])
            return cache[(i, j)]

        scores, counts = {}, {}
        starts = range(max(1, T - WINDOW + 1))
        for s in starts:
            tick(0.55 + 0.35 * s / len(starts), f"associating window {s + 1}/{len(starts)}")
            win = [t for t in range(s, min(s + WINDOW, T)) if len(cents[t])]
            if len(win) < 2:
                continue
            lo, hi = s, min(s + WINDOW, T) - 1
            attn = [self._attn_feat(object_maps(t, max(lo, t - 1)), object_maps(t, min(hi, t + 1))) for t in win]
            A = self._associate(win, s, cents, feats, attn)
            ids = [(t, int(lb)) for t in win for lb in np.unique(labs[t][labs[t] > 0])]
            tp = np.array([t for t, _ in ids])
            ii, jj = np.nonzero((tp[None, :] - tp[:, None] == 1) & (A >= EDGE_THRESHOLD))
            for a, b in zip(ii, jj):
                key = (ids[a], ids[b])
                scores[key] = scores.get(key, 0.0) + float(A[a, b])
                counts[key] = counts.get(key, 0) + 1
        tick(0.92, "linking")
        centroid = {(t, int(lb)): c for t in range(T)
                    for lb, c in zip(np.unique(labs[t][labs[t] > 0]), cents[t])}
        mean = {k: v / counts[k] for k, v in scores.items()}
        links = greedy_links(candidate_edges(mean, centroid), LINK_THRESHOLD, allow_divisions=True)
        masks, tracks = links_to_ctc(labs, links)
        return masks, tracks, maps

    def _associate(self, win, s, cents, feats, attn) -> np.ndarray:
        """Normalised association matrix of the objects of the window's frames (in frame, label order)."""
        dev, dt = self.sd_device_dtype()
        coords = np.concatenate([np.c_[np.full(len(cents[t]), t - s, np.float32), cents[t]] for t in win])
        fts = np.concatenate([feats[t] for t in win])
        c = torch.from_numpy(coords)[None].to(dev, dt)
        f = torch.from_numpy(fts)[None].to(dev, dt)
        a = torch.cat(attn)[None].to(dev, dt)
        tm = self.module.track_model
        with torch.no_grad():
            A = tm(c, f, None, a)
            A = tm.normalize_output(A, c[..., 0].long(), c)
        return A[0].float().cpu().numpy()

    def sd_device_dtype(self):
        """Device and dtype of this head's module."""
        p = next(self.module.parameters())
        return p.device, p.dtype

    # accepted for the linker interface; the pipeline uses track_sequence
    def frame_summary(self, labels, maps, frame):  # pragma: no cover - interface only
        """Nothing: the pipeline runs :meth:`track_sequence` for this head."""
        return None

    def link_sequence(self, labels, summaries, maps=None, frames=None):  # pragma: no cover - interface only
        """Not used: the pipeline runs :meth:`track_sequence` for this head."""
        raise NotImplementedError("the paper's tracking head runs through track_sequence")

