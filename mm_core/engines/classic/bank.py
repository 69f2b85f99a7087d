"""Dense multi-scale filter bank: the classic engine's per-pixel descriptors.

One implementation shared by scale estimation, the pixel classifier, centre
evidence and tracking similarity. Everything is built from Gaussian derivative
filters (:func:`scipy.ndimage.gaussian_filter` with ``order``), so the cost is a
fixed number of separable filters per scale, linear in the number of pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Names of the per-scale channels of :func:`filter_bank`, in order.
#: Sigmas above this are computed on a coarser pyramid level.
PYRAMID_SIGMA = 0.75
CHANNELS = ("gauss_or_dog", "log", "gradmag", "hess_hi", "hess_lo", "st_hi", "st_lo")


def _derivatives(img: np.ndarray, sigma: float) -> tuple[np.ndarray, ...]:
    """Gaussian-smoothed image and its first and second derivatives at ``sigma``."""
    g = ndi.gaussian_filter(img, sigma, mode="reflect")
    gy = ndi.gaussian_filter(img, sigma, order=(1, 0), mode="reflect")
    gx = ndi.gaussian_filter(img, sigma, order=(0, 1), mode="reflect")
    gyy = ndi.gaussian_filter(img, sigma, order=(2, 0), mode="reflect")
    gxx = ndi.gaussian_filter(img, sigma, order=(0, 2), mode="reflect")
    gxy = ndi.gaussian_filter(img, sigma, order=(1, 1), mode="reflect")
    return g, gy, gx, gyy, gxx, gxy


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (high, low) of the symmetric 2x2 field ``[[a, b], [b, c]]``."""
    half_tr = 0.5 * (a + c)
    root = np.sqrt(0.25 * (a - c) ** 2 + b * b)
    return half_tr + root, half_tr - root


def blob_response(img: np.ndarray, sigma: float) -> np.ndarray:
    """Scale-normalised negative Laplacian of Gaussian (bright blobs positive)."""
    return (-(sigma ** 2) * ndi.gaussian_laplace(img, sigma, mode="reflect")).astype(np.float32)


def _per_scale(img: np.ndarray, s: float, g_prev: np.ndarray | None) -> tuple[list, np.ndarray]:
    g, gy, gx, gyy, gxx, gxy = _derivatives(img, s)
    s2 = s * s
    h_hi, h_lo = _eig2(s2 * gyy, s2 * gxy, s2 * gxx)
    gys, gxs = s * gy, s * gx
    syy = ndi.gaussian_filter(gys * gys, 2 * s)
    sxx = ndi.gaussian_filter(gxs * gxs, 2 * s)
    sxy = ndi.gaussian_filter(gys * gxs, 2 * s)
    st_hi, st_lo = _eig2(syy, sxy, sxx)
    chans = [g - g_prev if g_prev is not None and g_prev.shape == g.shape else g, -s2 * (gxx + gyy),
             np.hypot(gys, gxs), h_hi, h_lo, np.sqrt(np.maximum(st_hi, 0)), np.sqrt(np.maximum(st_lo, 0))]
    return chans, g


def _interp_axis(a: np.ndarray, k: int, n: int, axis: int) -> np.ndarray:
    """``n`` samples along ``axis`` of a level ``k`` array: full-size pixel ``i`` reads level position ``i / 2**k``.

    Linear interpolation between the two level samples around it; past the last one, that one.
    """
    f = 2 ** k
    i = np.arange(n)
    j = np.minimum(i >> k, a.shape[axis] - 1)
    j1 = np.minimum(j + 1, a.shape[axis] - 1)
    t = np.where(j1 == j, 0.0, (i & (f - 1)) / f).astype(np.float32)
    shape = [1, 1]
    shape[axis] = n
    lo, hi = np.take(a, j, axis=axis), np.take(a, j1, axis=axis)
    lo += (hi - lo) * t.reshape(shape)
    return lo


def _upsample(a: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Upsample a pyramid level ``k`` by 2**k to ``shape``, in register with the full-size image.

    A level is made by smoothing and keeping every other pixel (``[::2, ::2]``), so its
    pixel ``j`` sits on full-size pixel ``2**k * j``; linear interpolation puts it back
    there. (Repeating each pixel instead, as before issue 23, moved every coarse channel by
    ``(2**k - 1) / 2`` working pixels down and right: matched objects came out shifted by up
    to 4 input pixels and grown where the working grid is coarse, i.e. for large objects.)
    """
    if k == 0:
        return a
    return _interp_axis(_interp_axis(a, k, shape[0], 0), k, shape[1], 1)


def filter_bank(img: np.ndarray, sigmas) -> np.ndarray:
    """Per-pixel descriptors of a 2-D image at several scales.

    Parameters
    ----------
    img : ndarray, (h, w) float32
        Normalised single-channel image (objects bright: apply polarity first).
    sigmas : sequence of float
        Gaussian scales in pixels of ``img``.

    Returns
    -------
    ndarray, (len(CHANNELS) * len(sigmas), h, w) float32
        For each sigma: Gaussian (finest sigma) or difference of Gaussians with
        the previous sigma (so coarse channels carry local contrast, not absolute
        brightness), scale-normalised LoG, gradient magnitude, Hessian
        eigenvalues and structure-tensor eigenvalues (scale-normalised, so
        responses at different sigmas are comparable). Sigmas above
        ``PYRAMID_SIGMA`` are computed on a 2x-per-octave pyramid and interpolated back in
        register (:func:`_upsample`), which keeps the cost per pixel nearly independent of sigma.
    """
    img = np.asarray(img, np.float32)
    shape = img.shape
    pyramid = [img]
    out = []
    g_prev = None
    for s in sigmas:
        k = max(0, int(np.floor(np.log2(s / PYRAMID_SIGMA)))) if s > PYRAMID_SIGMA else 0
        while len(pyramid) <= k and min(pyramid[-1].shape) >= 16:
            pyramid.append(ndi.gaussian_filter(pyramid[-1], 0.8)[::2, ::2])
        k = min(k, len(pyramid) - 1)
        chans, g = _per_scale(pyramid[k], s / 2 ** k, None)
        g_up = _upsample(g, k, shape)
        chans = [_upsample(c, k, shape) for c in chans]
        chans[0] = g_up - g_prev if g_prev is not None else g_up
        g_prev = g_up
        out += chans
    return np.stack(out).astype(np.float32)
