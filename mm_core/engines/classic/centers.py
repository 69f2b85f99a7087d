"""Centre evidence: where object centres are, at the working resolution."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import match_template
from skimage.morphology import remove_small_holes

from mm_core.engines.classic.bank import blob_response
from mm_core.engines.classic.scale import DIAMETER_PER_SIGMA
from mm_core.transforms import HOLE_AREA_FRAC, resize_map

#: Template scales tried for normalised cross-correlation.
NCC_SCALES = (0.8, 1.0, 1.25)
#: Context margin added around each exemplar box, as a fraction of its size per side.
NCC_CONTEXT = 0.25


def _unit(a: np.ndarray, norms: dict, key: str) -> np.ndarray:
    """``a`` divided by its maximum, clipped to [0, 1]; the maximum is read from (or recorded in) ``norms``."""
    if key not in norms:
        norms[key] = float(np.max(a)) if a.size else 0.0
    hi = norms[key]
    return np.clip(a / hi, 0, 1).astype(np.float32) if hi > 0 else np.zeros_like(a, np.float32)


def exemplar_templates(work: np.ndarray, boxes_w: np.ndarray) -> list[np.ndarray]:
    """The exemplar patches (working grid), each with a margin of context; featureless ones left out."""
    h, w = work.shape
    out = []
    for x0, y0, x1, y1 in boxes_w:
        # the template includes a margin of context: a tight box around a flat
        # object would be a featureless patch
        mx, my = NCC_CONTEXT * (x1 - x0), NCC_CONTEXT * (y1 - y0)
        x0, x1, y0, y1 = x0 - mx, x1 + mx, y0 - my, y1 + my
        r0, r1 = int(max(0, np.floor(y0))), int(min(h, np.ceil(y1)))
        c0, c1 = int(max(0, np.floor(x0))), int(min(w, np.ceil(x1)))
        tpl = work[r0:r1, c0:c1]
        if min(tpl.shape) >= 3 and np.ptp(tpl) > 1e-6:
            out.append(tpl.copy())
    return out


def exemplar_ncc(work: np.ndarray, templates: list[np.ndarray]) -> np.ndarray:
    """Best normalised cross-correlation of any exemplar patch (a few scales, 0/90 degrees).

    ``templates`` come from :func:`exemplar_templates` (of this image, or of the
    region a large image's matching was fitted on). Returns an ``(h, w)`` map in
    [0, 1] (negative correlation clipped), high where a patch like an exemplar is centred.
    """
    h, w = work.shape
    best = np.zeros((h, w), np.float32)
    for tpl in templates:
        for s in NCC_SCALES:
            shp = (max(3, round(tpl.shape[0] * s)), max(3, round(tpl.shape[1] * s)))
            if shp[0] >= h or shp[1] >= w:
                continue
            t = resize_map(tpl, shp)
            for k in (0, 1) if shp[0] != shp[1] else (0,):
                tk = np.rot90(t, k)
                if tk.shape[0] >= h or tk.shape[1] >= w:
                    continue
                best = np.maximum(best, match_template(work, tk, pad_input=True, mode="reflect"))
    return np.clip(best, 0, 1).astype(np.float32)


def center_evidence(prob: np.ndarray, d_w: float, ncc: np.ndarray | None = None,
                    work: np.ndarray | None = None, norms: dict | None = None) -> tuple[np.ndarray, dict]:
    """Centre evidence in [0, 1] from a foreground probability map.

    Mean of the normalised distance to background, the blob response of the
    probability map at the object scale, the blob response of the (polarity
    corrected) image and (exemplar mode) the NCC map, lightly smoothed and
    confined to the foreground. Each part is divided by its maximum; ``norms``
    (returned by an earlier call) gives those maxima instead, so that the tiles of a
    large image are normalised alike. Returns ``(evidence, norms)``.
    """
    norms = dict(norms or {})
    fg = remove_small_holes(prob > 0.5, max_size=max(1.0, HOLE_AREA_FRAC * np.pi * d_w * d_w / 4))
    if not fg.any():
        return np.zeros(prob.shape, np.float32), norms
    sig = max(0.7, d_w / DIAMETER_PER_SIGMA)
    dt = _unit(ndi.distance_transform_edt(fg), norms, "distance")
    blob = _unit(np.clip(blob_response(prob, sig), 0, None), norms, "blob")
    parts = [dt, blob]
    if work is not None:
        parts.append(_unit(np.clip(blob_response(work, sig), 0, None) * fg, norms, "image_blob"))
    if ncc is not None:
        parts.append(ncc)
    ev = ndi.gaussian_filter(sum(parts) / len(parts), max(0.5, d_w / 16))
    return (_unit(ev, norms, "evidence") * fg).astype(np.float32), norms
