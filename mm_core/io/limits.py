"""Safety limits of image input, with their environment variables.

Every limit can be set for a whole installation with an environment variable;
``max_pixels`` and ``max_frames`` also per call (arguments of the readers, or
:meth:`Limits.resolve` for all of them). The argument wins over the variable,
the variable over the default.

=========================  ======================  ==============================
limit                      environment variable    default
=========================  ======================  ==============================
pixels per image plane     ``MM_MAX_PIXELS``       67,108,864 (8192 x 8192)
frames per sequence        ``MM_MAX_FRAMES``       2000
pixels per file/sequence   ``MM_MAX_TOTAL_PIXELS`` 536,870,912 (2 GiB as float32)
uncompressed zip images    ``MM_MAX_ZIP_BYTES``    2 GiB
zip compression ratio      ``MM_MAX_ZIP_RATIO``    200 (members above 1 MiB)
members in a zip           ``MM_MAX_ZIP_MEMBERS``  10,000
exemplar boxes per image   ``MM_MAX_BOXES``        64
=========================  ======================  ==============================

The variables are read once, with every other setting, by :func:`mm_core.settings.get_settings`.
Images smaller than :data:`MIN_SIDE` pixels on a side are refused. For PNG, JPEG
and BMP, Pillow's own decompression-bomb guard (about 179 megapixels) stays in force
even when ``MM_MAX_PIXELS`` is set higher; TIFF follows ``MM_MAX_PIXELS`` alone.
Invalid values (not a positive whole number) raise :class:`~mm_core.errors.InputError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from mm_core.errors import InputError
from mm_core.settings import Settings, get_settings

_DEFAULTS = Settings()

#: Smallest accepted image width and height, in pixels.
MIN_SIDE = 8
#: Default cap on pixels per image plane (64 Mpx: an 8192 x 8192 image fits).
MAX_PIXELS = _DEFAULTS.max_pixels
#: Default cap on frames per sequence.
MAX_FRAMES = _DEFAULTS.max_frames
#: Default cap on pixels in one file or sequence, all planes together (2 GiB as float32).
MAX_TOTAL_PIXELS = _DEFAULTS.max_total_pixels
#: Default cap on the uncompressed size of the image members of a zip.
MAX_ZIP_BYTES = _DEFAULTS.max_zip_bytes
#: Default cap on the compression ratio of a zip member (checked above :data:`RATIO_FLOOR`).
MAX_ZIP_RATIO = _DEFAULTS.max_zip_ratio
#: Default cap on the number of entries in a zip.
MAX_ZIP_MEMBERS = _DEFAULTS.max_zip_members
#: Default cap on exemplar boxes per image (each box costs a matching pass).
MAX_BOXES = _DEFAULTS.max_boxes
#: Members smaller than this (uncompressed) are not checked for their compression ratio.
RATIO_FLOOR = 1024 * 1024

#: File extensions read as images (members with other extensions are skipped in zips/folders).
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def _positive_int(value, what: str) -> int:
    try:
        out = int(float(value))
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a positive whole number, got {value!r}") from None
    if out <= 0:
        raise InputError(f"{what} must be a positive whole number, got {value!r}")
    return out


@dataclass(frozen=True)
class Limits:
    """The input limits in force for one read (see the module docstring)."""

    max_pixels: int = MAX_PIXELS
    max_frames: int = MAX_FRAMES
    max_total_pixels: int = MAX_TOTAL_PIXELS
    max_zip_bytes: int = MAX_ZIP_BYTES
    max_zip_ratio: int = MAX_ZIP_RATIO
    max_zip_members: int = MAX_ZIP_MEMBERS
    max_boxes: int = MAX_BOXES

    @classmethod
    def resolve(cls, **overrides) -> Limits:
        """Limits from ``overrides`` (``None`` = not given), else the settings (environment), else defaults.

        Raises
        ------
        InputError
            An override, or a variable, that is not a positive whole number.
        """
        settings = get_settings()
        values = {}
        for f in fields(cls):
            given = overrides.get(f.name)
            values[f.name] = getattr(settings, f.name) if given is None else _positive_int(given, f.name)
        return cls(**values)


def natural_key(name: str) -> list:
    """Sort key that orders ``t2`` before ``t10`` (case-insensitive)."""
    parts = re.split(r"(\d+)", name.lower())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def megapixels(n: int) -> str:
    """``n`` pixels written for people, e.g. ``'2,500 megapixels'`` or ``'67.1 megapixels'``."""
    return f"{n / 1e6:,.0f} megapixels" if n >= 1e9 else f"{n / 1e6:,.1f} megapixels"
