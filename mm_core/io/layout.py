"""The layout of image data: a header shape and its axes -> ``(T, Z, C, Y, X)``.

One plan per file, made from the header before any pixel is decoded, so the size
limits are checked first. Axes letters are tifffile's: ``T`` time, ``Z`` depth,
``C`` channel, ``S`` colour samples (counted as channels), ``I``/``Q`` pages whose
meaning the file does not say, ``Y``/``X`` the image plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mm_core.errors import InputError
from mm_core.io.limits import Limits, megapixels

_RANK = {"T": 0, "Z": 1, "C": 2, "I": 3, "Y": 4, "X": 5}
_AXIS = {"T": "T", "Z": "Z", "C": "C", "S": "C", "I": "I", "Q": "I", "Y": "Y", "X": "X"}


@dataclass
class RawImage:
    """Pixels of one file, as stored, in ``(T, Z, C, Y, X)`` order."""

    array: np.ndarray
    fmt: str  #: 'TIFF', 'PNG', 'JPEG' or 'BMP'
    dtype: str  #: dtype in the file, e.g. 'uint16'
    rgb: bool  #: channels are red, green, blue
    info: dict = field(default_factory=dict)


def too_large(name: str, h: int, w: int, limits: Limits) -> InputError:
    """The refusal of an image plane over ``limits.max_pixels``."""
    return InputError(
        f"{name} is {w:,}x{h:,} pixels ({megapixels(h * w)}), more than the limit of "
        f"{megapixels(limits.max_pixels)} per image (MM_MAX_PIXELS); crop or bin it first"
    )


def plan_axes(shape, axes: str, name: str, limits: Limits, mode: str, pages_as_channels: bool = False):
    """Check a header shape against the limits and plan its ``(T, Z, C, Y, X)`` layout.

    ``mode`` is 'image' (one time point wanted), 'frame' (one file of a folder/zip
    sequence) or 'sequence' (time points become frames). Returns
    ``(squeezed_shape, permutation, out_shape, notes)`` for
    ``arr.reshape(squeezed).transpose(perm).reshape(out_shape)``.
    """
    axes = axes.upper()
    if len(axes) != len(shape) or "Y" not in axes or "X" not in axes:
        raise InputError(
            f"{name} has an image layout that cannot be read (axes {axes!r}, shape {tuple(shape)})"
        )
    h, w = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    if h * w > limits.max_pixels:
        raise too_large(name, h, w, limits)
    total = int(np.prod(shape, dtype=np.int64))
    if total > limits.max_total_pixels:
        raise InputError(
            f"{name} holds {megapixels(total)} in all (shape {tuple(shape)}, axes {axes}), more than "
            f"the limit of {megapixels(limits.max_total_pixels)} (MM_MAX_TOTAL_PIXELS)"
        )
    keep = [i for i, s in enumerate(shape) if s > 1 or axes[i] in "YX"]
    for i in keep:
        if axes[i] not in _AXIS:
            raise InputError(
                f"{name} has an axis {axes[i]!r} of length {shape[i]} (axes {axes}) that cannot be "
                "used; only time (T), depth (Z) and channel (C) axes are understood"
            )
    dims = [(_AXIS[axes[i]], int(shape[i])) for i in keep]
    letters = [d for d, _ in dims]
    for d, what in (("T", "time"), ("Z", "depth"), ("C", "channel")):
        if letters.count(d) > 1:
            raise InputError(
                f"{name} has more than one {what} axis (axes {axes}); this layout is not supported"
            )
    notes = {}
    size = {d: int(np.prod([s for dd, s in dims if dd == d], dtype=np.int64)) for d in "TZCI"}
    as_what = "I"
    if size["I"] > 1:
        if mode == "sequence" and "T" not in letters:
            as_what, notes["time_axis"] = "T", "pages (no axes metadata)"
        elif mode == "image" and pages_as_channels and "C" not in letters:
            as_what, notes["channels_from"] = "C", "pages"
        elif mode == "sequence":
            raise InputError(
                f"{name} holds {size['I']} pages besides its time axis (axes {axes}); "
                "this layout is not supported"
            )
        else:
            raise InputError(
                f"{name} holds {size['I']} pages and does not say whether they are time points, "
                "slices or channels; open it as a time-lapse (read_sequence / the tracking task), "
                "or pick channels to read the pages as channels"
            )
    if mode == "sequence" and "T" not in letters and as_what != "T" and size["Z"] > 1:
        notes["time_axis"] = "Z (the file has no time axis; its slices are taken as frames)"
        letters = ["T" if d == "Z" else d for d in letters]
        size["T"], size["Z"] = size["Z"], 1
    if as_what != "I":
        letters = [as_what if d == "I" else d for d in letters]
        size[as_what] = size["I"]
    if mode == "sequence" and "T" in letters:
        notes.setdefault("time_axis", "T")
    rank = dict(_RANK, I=_RANK[as_what] if as_what != "I" else 3)
    perm = sorted(range(len(letters)), key=lambda i: rank[letters[i]])
    t = size["T"]
    if mode != "sequence" and t > 1:
        where = (
            "a folder or zip must hold one frame per file"
            if mode == "frame"
            else "open it as a time-lapse (read_sequence / the tracking task)"
        )
        raise InputError(f"{name} holds {t} time points; {where}")
    if mode == "sequence" and t > limits.max_frames:
        raise InputError(
            f"{name} holds {t:,} frames, more than the limit of {limits.max_frames:,} (MM_MAX_FRAMES)"
        )
    out_shape = (t, size["Z"], size["C"], h, w)
    return tuple(s for _, s in dims), tuple(perm), out_shape, notes
