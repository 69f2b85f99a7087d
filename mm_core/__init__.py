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


def batch(paths, task: str = "segment", out="results", **options):
    """Segment or count many images, or track many time-lapses, in this process or on Dask.

    See :func:`mm_core.batching.run.batch`.

    Parameters
    ----------
    paths : iterable of str or Path
        Image files and zarr folders; for ``track``, time-lapses (one task each).
    task : {"segment", "count", "track"}
    out : str or Path
        Output folder (results and ``manifest.csv``).
    **options
        ``workers``, ``scheduler``, ``resume``, ``engine``, ``head``, ``boxes``, ``channels``,
        ``tile``, ``overlap``, ``progress``, ``on_result``.

    Returns
    -------
    pandas.DataFrame
        The manifest.
    """
    from mm_core.batching.run import batch as run

    return run(paths, task, out, **options)

__all__ = [
    "CountResult", "InputError", "MMError", "MatchMaps", "Matcher", "ModelUnavailableError",
    "SegmentationResult", "TrackResult", "batch", "choose_engine", "count", "export", "normalize",
    "read_image",
    "read_sequence", "segment", "track", "__version__",
]
