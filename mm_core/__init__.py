"""MicroscopyMatching: segmentation, tracking and counting as matching within the image.

Public API::

    import mm_core
    img = mm_core.read_image("cells.tif")            # io
    res = mm_core.segment(img.data, boxes=[[10, 10, 40, 40]])
    res.labels, res.table()
    mm_core.count(img.data).count
    mm_core.track(mm_core.read_sequence("movie.tif").frames)
"""

from mm_core.engines import MatchMaps, get_engine
from mm_core.errors import InputError, MMError, ModelUnavailableError
from mm_core.io import read_image, read_sequence
from mm_core.pipelines import (CountResult, SegmentationResult, TrackResult, count, segment,
                               track)
from mm_core.transforms import normalize

__version__ = "0.1.0"

__all__ = [
    "CountResult", "InputError", "MMError", "MatchMaps", "ModelUnavailableError",
    "SegmentationResult", "TrackResult", "count", "get_engine", "normalize", "read_image",
    "read_sequence", "segment", "track", "__version__",
]
