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
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from mm_core.engines.base import MatchMaps
from mm_core.engines.classic import scale as sc
from mm_core.engines.classic.bank import CHANNELS, blob_response, filter_bank
from mm_core.engines.classic.centers import center_evidence, exemplar_ncc, exemplar_templates
from mm_core.engines.classic.classifier import PixelClassifier, fit_pixel_classifier
from mm_core.transforms import boxes_cut_by_edge, percentile_bounds, rescale, resize_map, scale_boxes

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


def gray_projection(image: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """How :func:`gray_of` turns a colour image into one channel: ``(vector, low, high)``.

    The first principal component of the lightly smoothed channels (so a pure-noise
    channel gets almost no weight), and the percentiles of the projection that
    normalise it. ``None`` for a single-channel image.
    """
    img = np.asarray(image, np.float32)
    if img.ndim != 3:
        return None
    sm = np.stack([ndi.gaussian_filter(img[..., c], 1.0) for c in range(img.shape[-1])], -1)
    flat = sm.reshape(-1, img.shape[-1])[:: max(1, sm.shape[0] * sm.shape[1] // 20000)]
    cov = np.cov(flat.T)
    _, vecs = np.linalg.eigh(np.atleast_2d(cov))
    v = vecs[:, -1]
    v = (v if v.sum() >= 0 else -v).astype(np.float32)
    lo, hi = percentile_bounds(img @ v)
    return v, lo, hi


def gray_of(image: np.ndarray, projection: tuple[np.ndarray, float, float] | None = None) -> np.ndarray:
    """One channel carrying most of the spatial structure of an (RGB) image.

    Colour images are projected on the first principal component of their
    lightly smoothed channels, then percentile-normalised again
    (:func:`gray_projection`; pass ``projection`` to apply one measured on another
    image, e.g. on the region a large image's matching was fitted on). Values are
    clipped to [-0.5, 1.5].
    """
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        v, lo, hi = projection if projection is not None else gray_projection(img)
        img = rescale(img @ v, lo, hi)
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
    size, in input pixels. Boxes on the image's edge hold cut objects and are not
    measured (``diameter`` already counts them whole).
    """
    fy, fx = f_yx
    ds = []
    whole = ~boxes_cut_by_edge(boxes_w, prob.shape).any(1)
    for x0, y0, x1, y1 in np.asarray(boxes_w)[whole]:
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


@dataclass
class ClassicFit:
    """Everything :meth:`ClassicEngine.match` measures on an image before it matches.

    Fitted once (:meth:`ClassicEngine.fit`) on an image, or on one region of a large
    image, and given back to ``match(tile, fit=...)`` for each tile, so that every tile
    is matched alike: grey projection, polarity, object scale, the pixel classifier,
    the exemplar templates and the normalisation of the centre evidence.
    """

    projection: tuple | None  #: colour -> grey (:func:`gray_projection`), None for grey images
    polarity: float
    diameter: float  #: object diameter (input pixels) that sets the working resolution
    object_diameter: float  #: diameter of the matched objects (exemplar mode: re-measured)
    classifier: PixelClassifier
    n_boxes: int = 0  #: exemplar boxes fitted on (0: automatic mode)
    templates: list = field(default_factory=list)  #: exemplar patches at the working resolution
    norms: dict = field(default_factory=dict)  #: maxima of the centre-evidence parts

    @property
    def exemplar(self) -> bool:
        """True when fitted on exemplar boxes."""
        return self.n_boxes > 0


class ClassicEngine:
    """Within-image matching with classical features; no weights, any CPU.

    ``match(image, boxes=None)`` returns :class:`~mm_core.engines.base.MatchMaps`
    at a working resolution where the object diameter is about ``WORK_DIAMETER``
    pixels; heads bring maps to the input size. ``fit(image, boxes)`` measures what
    matching needs once, for the tiles of a large image (``match(tile, fit=...)``).
    """

    name = "classic"
    #: ``match(image, None, diameter=d)`` runs automatic mode at a known object size.
    takes_diameter = True

    def match(self, image: np.ndarray, boxes: np.ndarray | None = None,
              diameter: float | None = None, fit: ClassicFit | None = None) -> MatchMaps:
        """Match exemplar ``boxes`` (``None``: automatic mode) in a normalised ``image``.

        Parameters
        ----------
        image : ndarray, (H, W) or (H, W, C)
            Normalised image.
        boxes : ndarray, (N, 4), optional
            Exemplar boxes ``x0, y0, x1, y1`` in pixels of ``image``.
        diameter : float, optional
            Automatic mode only: the object diameter in input pixels, instead of estimating it.
        fit : ClassicFit, optional
            Apply what :meth:`fit` measured on another image or region (a tile of a
            large image) instead of measuring it here; ``boxes`` and ``diameter`` must be None.

        Returns
        -------
        MatchMaps
        """
        if fit is not None and (boxes is not None or diameter is not None):
            raise ValueError("match(fit=...) takes neither boxes nor a diameter: they are in the fit")
        return self._run(image, boxes, diameter, fit)[0]

    def fit(self, image: np.ndarray, boxes: np.ndarray | None = None,
            diameter: float | None = None) -> ClassicFit:
        """Measure on ``image`` what :meth:`match` needs, to apply it elsewhere (``match(tile, fit=...)``).

        Same parameters as :meth:`match`; ``boxes`` lie in ``image``.
        """
        return self._run(image, boxes, diameter, None)[1]

    def _run(self, image, boxes, diameter, fit: ClassicFit | None) -> tuple[MatchMaps, ClassicFit]:
        t0 = time.perf_counter()
        projection = fit.projection if fit is not None else gray_projection(image)
        gray = gray_of(image, projection)
        H, W = gray.shape
        if fit is not None:
            exemplar, polarity, diameter = fit.exemplar, fit.polarity, fit.diameter
        elif boxes is not None and len(boxes) > 0:
            exemplar, boxes = True, np.asarray(boxes, np.float32)
            polarity, diameter = sc.box_polarity(gray, boxes), sc.box_scale(boxes, (H, W))
        else:
            exemplar, polarity = False, sc.estimate_polarity(gray)
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
        if fit is None:
            fit = self._fit_classifier(work, feats, boxes if exemplar else None, d_w, (fy, fx))
            fit.projection, fit.polarity, fit.diameter = projection, float(polarity), float(diameter)
        prob = fit.classifier.predict(feats)
        if exemplar:
            if fit.object_diameter <= 0:  # fitted just now: re-measure the scale on the matched foreground
                fit.object_diameter = refine_box_scale(prob, scale_boxes(boxes, (fy, fx)), diameter, (fy, fx))
            prob = gate_by_size(prob, np.pi * (fit.object_diameter * np.sqrt(fy * fx) / 2) ** 2)
        else:
            fit.object_diameter = fit.object_diameter or float(diameter)
        t3 = time.perf_counter()
        ncc = exemplar_ncc(work, fit.templates) if exemplar else None
        centers, norms = center_evidence(prob, d_w, ncc, work, fit.norms or None)
        fit.norms = fit.norms or norms
        t4 = time.perf_counter()
        display = {"blob": np.clip(blob_response(work, d_w / sc.DIAMETER_PER_SIGMA), 0, None)}
        if ncc is not None:
            display["ncc"] = ncc
        maps = MatchMaps(
            foreground=prob, centers=centers, scale=float(fit.object_diameter), image_shape=(H, W),
            engine=self.name, mode="exemplar" if exemplar else "automatic",
            conditioning=(f"{fit.n_boxes} exemplar box(es)" if exemplar else "automatic: repeated structures"),
            features=feats, display=display,
            info={"polarity": float(polarity), "work_shape": shape, "work_diameter": d_w,
                  "timings": {"scale": t1 - t0, "features": t2 - t1, "classifier": t3 - t2,
                              "centers": t4 - t3}},
        )
        return maps, fit

    @staticmethod
    def _fit_classifier(work, feats, boxes, d_w: float, f_yx) -> ClassicFit:
        """The pixel classifier (and exemplar templates) fitted on this image; scale fields filled by the caller."""
        if boxes is None:
            pos, neg = _auto_labels(work, d_w)
            return ClassicFit(None, 1.0, 0.0, 0.0, fit_pixel_classifier(feats, pos, neg))
        boxes_w = scale_boxes(boxes, f_yx)
        pos, neg = _exemplar_labels(work.shape, boxes_w)
        neg = _darker_than_exemplar(work, pos, neg, d_w)
        clf = fit_pixel_classifier(feats, pos, neg, ring_keep=RING_KEEP,
                                   proto_channels=PROTO_SCALES * len(CHANNELS))
        return ClassicFit(None, 1.0, 0.0, 0.0, clf, n_boxes=len(boxes),
                          templates=exemplar_templates(work, boxes_w))
