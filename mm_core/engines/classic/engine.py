"""The weight-free matching engine: filter bank + on-the-fly pixel classifier.

Pipeline of :meth:`ClassicEngine.match` (maps at a working resolution where the
object diameter is about ``WORK_DIAMETER`` pixels, never upsampled):

1. grey image (first principal component of the smoothed colour channels);
2. polarity and object scale, from the exemplar boxes or from the data
   (:mod:`~mm_core.engines.classic.scale`); downsampling to the working
   resolution, objects made bright, smooth background subtracted;
3. multi-scale filter bank (:mod:`~mm_core.engines.classic.bank`);
4. sure positives / negatives: exemplar interiors and the darker part of the
   rings around them, or in automatic mode confident object cores and clear
   background of a smoothed Otsu split;
5. pixel classifier fitted on the fly -> foreground probability
   (:mod:`~mm_core.engines.classic.classifier`); in exemplar mode the scale is
   re-measured on the foreground inside the boxes and components far smaller
   than the exemplar are damped;
6. centre evidence (:mod:`~mm_core.engines.classic.centers`): distance
   transform and blob response of the foreground probability, blob response of
   the image, plus normalised cross-correlation with the exemplar patches.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage as ndi

from mm_core.engines.base import MatchMaps
from mm_core.engines.classic import scale as sc
from mm_core.engines.classic.bank import CHANNELS, blob_response, filter_bank
from mm_core.engines.classic.centers import center_evidence, exemplar_ncc
from mm_core.engines.classic.classifier import match_probability
from mm_core.transforms import normalize, resize_map, scale_boxes

#: Object diameter (pixels) at the working resolution; larger objects are downsampled.
WORK_DIAMETER = 24.0
#: Filter-bank sigmas relative to the working object diameter (floored at MIN_SIGMA).
SIGMA_FRACTIONS = (0.06, 0.12, 0.25, 0.5)
MIN_SIGMA = 0.7
#: Pixels are compared with the class prototypes on the descriptors of this many finest scales.
PROTO_SCALES = 2
#: Automatic mode: sure labels lie this fraction of the radius away from the Otsu boundary.
CORE_FRAC = 0.3
#: Background = grey opening over this many object diameters (see flatten_background).
BACKGROUND_SPAN = 2.0
#: Exemplar mode: fraction of the ring kept as negatives (the part least like the exemplar).
RING_KEEP = 0.5
#: Exemplar mode: components below lo x the exemplar area vanish, above hi stay (gate_by_size).
SIZE_GATE = (0.15, 0.35)


def gray_of(image: np.ndarray) -> np.ndarray:
    """One channel carrying most of the spatial structure of an (RGB) image.

    Colour images are projected on the first principal component of their
    lightly smoothed channels (so a pure-noise channel gets almost no weight),
    then percentile-normalised again. Values are clipped to [-0.5, 1.5].
    """
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        sm = np.stack([ndi.gaussian_filter(img[..., c], 1.0) for c in range(img.shape[-1])], -1)
        flat = sm.reshape(-1, img.shape[-1])[:: max(1, sm.shape[0] * sm.shape[1] // 20000)]
        cov = np.cov(flat.T)
        _, vecs = np.linalg.eigh(np.atleast_2d(cov))
        v = vecs[:, -1]
        v = v if v.sum() >= 0 else -v
        img = normalize(img @ v.astype(np.float32))
    return np.clip(img, -0.5, 1.5).astype(np.float32)


def flatten_background(work: np.ndarray, d_w: float) -> np.ndarray:
    """Subtract a smooth background: grey opening wider than ``BACKGROUND_SPAN`` objects.

    Removes uneven illumination so that absolute-intensity descriptors compare
    objects across the whole field; structures narrower than the span survive.
    """
    size = int(2 * round(BACKGROUND_SPAN * d_w / 2) + 1)
    if size >= min(work.shape):
        return work
    bg = ndi.grey_opening(work, size=(size, size), mode="reflect")
    return (work - ndi.uniform_filter(bg, size, mode="reflect")).astype(np.float32)


def _auto_labels(work: np.ndarray, d_w: float) -> tuple[np.ndarray, np.ndarray]:
    """Sure object cores and sure background of a smoothed Otsu split (automatic mode)."""
    sm = ndi.gaussian_filter(work, max(MIN_SIGMA, d_w / 8))
    if np.ptp(sm) <= 1e-6:
        z = np.zeros(work.shape, bool)
        return z, z
    fg = sc.bright_class(sm)
    margin = max(1.0, CORE_FRAC * d_w / 2)
    pos = ndi.distance_transform_edt(fg) >= margin
    neg = ndi.distance_transform_edt(~fg) >= margin
    if not pos.any():
        pos = fg
    if not neg.any():
        neg = ~fg
    return pos, neg


def _exemplar_labels(shape, boxes_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of exemplar interiors (positives) and of the rings around them (negatives)."""
    pos = np.zeros(shape, bool)
    neg = np.zeros(shape, bool)
    inside = np.zeros(shape, bool)
    for b in boxes_w:
        p, n = sc.box_masks(shape, b)
        pos |= p
        neg |= n
        x0, y0, x1, y1 = b
        inside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    return pos, neg & ~inside


def refine_box_scale(prob: np.ndarray, boxes_w: np.ndarray, diameter: float, f_yx) -> float:
    """Object diameter measured on the foreground inside the exemplar boxes.

    A box drawn around an object is usually a little larger than the object as
    the foreground sees it; the heads convert between areas and counts with the
    scale, so it should describe the matched foreground. The median equivalent
    diameter of the foreground inside each box, kept within 0.5-1.0x the box
    size, in input pixels.
    """
    fy, fx = f_yx
    ds = []
    for x0, y0, x1, y1 in boxes_w:
        sub = prob[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] > 0.5
        ds.append(2.0 * np.sqrt(sub.sum() / (fy * fx) / np.pi))
    return float(np.clip(np.median(ds), 0.5 * diameter, diameter)) if ds else diameter


def gate_by_size(prob: np.ndarray, object_area: float) -> np.ndarray:
    """Object-level matching: damp foreground components much smaller than the exemplar.

    Each connected component of ``prob > 0.5`` is scaled by
    ``clip((area / object_area - lo) / (hi - lo), 0, 1)`` with ``(lo, hi) =
    SIZE_GATE``: bright specks of another size stop matching, while larger
    components (touching objects) are left to the heads to split. (A gate on
    normalised cross-correlation was tried and dropped: it erased textured
    EM and phase-contrast cells, whose texture does not correlate.)
    """
    lab, n = ndi.label(prob > 0.5)
    if n == 0 or object_area <= 0:
        return prob
    lo, hi = SIZE_GATE
    ratio = np.bincount(lab.ravel(), minlength=n + 1)[1:] / object_area
    w = np.concatenate([[1.0], np.clip((ratio - lo) / (hi - lo), 0, 1)])
    return (prob * w[lab]).astype(np.float32)


def _darker_than_exemplar(work: np.ndarray, pos: np.ndarray, neg: np.ndarray, d_w: float) -> np.ndarray:
    """Keep the ring pixels darker (objects made bright) than the exemplar's median.

    A ring around an exemplar in a dense field also crosses brighter neighbours;
    taken as negatives they would teach the classifier that objects are dark and
    invert the match. Falls back to the whole ring when nothing is darker.
    """
    if not pos.any():
        return neg
    sm = ndi.gaussian_filter(work, max(MIN_SIGMA, d_w / 16))
    darker = neg & (sm < np.median(sm[pos]))
    return darker if darker.sum() >= 10 else neg


class ClassicEngine:
    """Within-image matching with classical features; no weights, any CPU.

    ``match(image, boxes=None)`` returns :class:`~mm_core.engines.base.MatchMaps`
    at a working resolution where the object diameter is about ``WORK_DIAMETER``
    pixels; heads bring maps to the input size.
    """

    name = "classic"

    def match(self, image: np.ndarray, boxes: np.ndarray | None = None,
              diameter: float | None = None) -> MatchMaps:
        """Match exemplar ``boxes`` (``None``: automatic mode) in a normalised ``image``.

        ``diameter`` (automatic mode only) fixes the object diameter in input pixels
        instead of estimating it, e.g. so that every tile of a large image is matched
        at the scale measured once for the whole image.
        """
        t0 = time.perf_counter()
        gray = gray_of(image)
        H, W = gray.shape
        exemplar = boxes is not None and len(boxes) > 0
        if exemplar:
            boxes = np.asarray(boxes, np.float32)
            polarity = sc.box_polarity(gray, boxes)
            diameter = sc.box_scale(boxes)
        else:
            polarity = sc.estimate_polarity(gray)
            diameter = float(diameter) if diameter else sc.estimate_scale(gray, polarity)
        f = min(1.0, WORK_DIAMETER / max(diameter, 1.0))
        shape = (max(8, round(H * f)), max(8, round(W * f)))
        fy, fx = shape[0] / H, shape[1] / W
        work = polarity * (resize_map(ndi.gaussian_filter(gray, 0.5 / f), shape) if f < 1 else gray)
        d_w = float(diameter * np.sqrt(fy * fx))
        work = flatten_background(work, d_w)
        t1 = time.perf_counter()
        feats = filter_bank(work, [max(MIN_SIGMA, d_w * s) for s in SIGMA_FRACTIONS])
        t2 = time.perf_counter()
        ncc = None
        if exemplar:
            boxes_w = scale_boxes(boxes, (fy, fx))
            pos, neg = _exemplar_labels(shape, boxes_w)
            neg = _darker_than_exemplar(work, pos, neg, d_w)
            prob = match_probability(feats, pos, neg, ring_keep=RING_KEEP,
                                     proto_channels=PROTO_SCALES * len(CHANNELS))
            diameter = refine_box_scale(prob, boxes_w, diameter, (fy, fx))
            prob = gate_by_size(prob, np.pi * (diameter * np.sqrt(fy * fx) / 2) ** 2)
        else:
            pos, neg = _auto_labels(work, d_w)
            prob = match_probability(feats, pos, neg)
        t3 = time.perf_counter()
        if exemplar:
            ncc = exemplar_ncc(work, boxes_w)
        centers = center_evidence(prob, d_w, ncc, work)
        t4 = time.perf_counter()
        display = {"blob": np.clip(blob_response(work, d_w / sc.DIAMETER_PER_SIGMA), 0, None)}
        if ncc is not None:
            display["ncc"] = ncc
        return MatchMaps(
            foreground=prob, centers=centers, scale=float(diameter), image_shape=(H, W),
            engine=self.name, mode="exemplar" if exemplar else "automatic",
            conditioning=(f"{len(boxes)} exemplar box(es)" if exemplar else "automatic: repeated structures"),
            features=feats, display=display,
            info={"polarity": float(polarity), "work_shape": shape, "work_diameter": d_w,
                  "timings": {"scale": t1 - t0, "features": t2 - t1, "classifier": t3 - t2,
                              "centers": t4 - t3}},
        )
