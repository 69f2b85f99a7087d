"""Every file a result is written to (below the CLI, the app and batch).

- :mod:`.files`: label TIFFs, measurements, ImageJ ROIs, density maps, counts, points, and
  :func:`save`, every file of one result;
- :mod:`.tracks`: CTC results and track tables, and every file of a tracking result, each
  mask encoded once;
- :mod:`.geff`: tracks as a GEFF graph (zarr), written once and zipped;
- :mod:`.geojson`: objects as a GeoJSON FeatureCollection for QuPath;
- :mod:`.large`: whole-slide outputs written tile by tile (BigTIFF, OME-Zarr).

Every writer goes through :mod:`mm_core.io.atomic` (write, then rename).
"""

from mm_core.export.files import (
    object_contour,
    save,
    write_counts,
    write_density,
    write_imagej_rois,
    write_labels,
    write_measurements,
    write_points,
)
from mm_core.export.geojson import geojson_features, write_geojson
from mm_core.export.tracks import ctc_frame_name, save_tracks, write_ctc, write_ctc_zip, write_tracks_csv
from mm_core.io.labels import UINT16_MAX, label_dtype
from mm_core.measure import measurements_table, tracks_table

__all__ = [
    "UINT16_MAX", "ctc_frame_name", "geojson_features", "label_dtype", "measurements_table", "object_contour",
    "save", "save_tracks", "tracks_table", "write_counts", "write_ctc", "write_ctc_zip", "write_density",
    "write_geojson", "write_imagej_rois", "write_labels", "write_measurements", "write_points",
    "write_tracks_csv",
]
