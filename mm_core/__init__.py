"""MicroscopyMatching: segmentation, tracking and counting as matching within the image.

Public API::

    import mm_core
    matcher = mm_core.Matcher()                       # engine + heads, made once
    img = mm_core.read_image("cells.tif")             # io
    res = matcher.segment(img.data, boxes=[[10, 10, 40, 40]])
    res.labels, res.table()
    matcher.count(img.data).count
    matcher.track(mm_core.read_sequence("movie.tif").frames)
    mm_core.export.save(res, "out", "cells")         # every file of a result

``mm_core.segment``, ``count`` and ``track`` run the same on a default Matcher.
"""

from mm_core import export
from mm_core.engines import MatchMaps, choose_engine
from mm_core.errors import InputError, MMError, ModelUnavailableError
from mm_core.io import read_image, read_sequence
from mm_core.models import Matcher, count, segment, track
from mm_core.pipelines import CountResult, SegmentationResult, TrackResult
from mm_core.transforms import normalize

__version__ = "0.1.0"

__all__ = [
    "CountResult", "InputError", "MMError", "MatchMaps", "Matcher", "ModelUnavailableError",
    "SegmentationResult", "TrackResult", "choose_engine", "count", "export", "normalize", "read_image",
    "read_sequence", "segment", "track", "__version__",
]
