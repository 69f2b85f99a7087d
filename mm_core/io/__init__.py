"""Image input: every file a user gives goes through here.

``read_image(path)`` reads one 2-D image, ``read_sequence(path)`` a time-lapse;
both return raw intensities as float32 and raise :class:`mm_core.errors.InputError`
with a message naming the file on every refusal. ``check_content`` refuses arrays
with nothing to analyse (too small, all-NaN, blank) and is what pipelines call on
arrays that did not come through the readers.

Formats: PNG, JPEG, BMP, TIFF (8/16/32-bit integer, 16/32/64-bit float; gray,
RGB, RGBA, multi-channel; multi-page, ImageJ hyperstacks, OME-TIFF), a folder or
zip of those. Images and sequences carry their pixel size (``pixel_size`` in µm and
``pixel_size_source``: "from file", "given" or "unknown: pixels"; :mod:`mm_core.io.calibration`).
``read_labels``, ``read_points`` and ``read_ctc`` read ground truth
and results. See :mod:`mm_core.io.reader` for the channel, Z and T rules and
:mod:`mm_core.io.limits` for the safety limits and their environment variables.
"""

from mm_core.io.archive import expand_inputs, list_folder
from mm_core.io.labels import read_ctc, read_labels, read_points
from mm_core.io.limits import (
    IMAGE_EXTENSIONS,
    MAX_BOXES,
    MAX_FRAMES,
    MAX_PIXELS,
    MAX_TOTAL_PIXELS,
    MAX_ZIP_BYTES,
    MAX_ZIP_MEMBERS,
    MAX_ZIP_RATIO,
    MIN_SIDE,
    Limits,
    natural_key,
)
from mm_core.io.reader import ImageData, SequenceData, check_content, read_image, read_sequence

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_BOXES",
    "MAX_FRAMES",
    "MAX_PIXELS",
    "MAX_TOTAL_PIXELS",
    "MAX_ZIP_BYTES",
    "MAX_ZIP_MEMBERS",
    "MAX_ZIP_RATIO",
    "MIN_SIDE",
    "ImageData",
    "Limits",
    "SequenceData",
    "check_content",
    "expand_inputs",
    "list_folder",
    "natural_key",
    "read_ctc",
    "read_image",
    "read_labels",
    "read_points",
    "read_sequence",
]
