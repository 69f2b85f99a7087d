"""Results as a table and a picture, and the pixel size in use (no Gradio here).

The per-object table shown on screen is the CSV the downloads hold, read back, so the
two always have the same columns; the summary (count, mean and spread of each measure) is
:func:`mm_core.measure.summary_table` of it. The plots (size histogram, objects per frame
with divisions) are PNG downloads written by :func:`mm_core.viz.plots.write_result_plots`,
as the CLI writes them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from mm_core.io.calibration import FROM_FILE, check_pixel_size, resolve_pixel_size
from mm_core.measure import summary_table

#: Which download holds the per-object table, by tab (file name ending).
TABLE_FILE = {"seg": ".csv", "count": "_points.csv", "track": "_tracks.csv"}
#: Rows shown on screen at most (the CSV holds them all).
MAX_ROWS = 5000


def object_table(files, tab: str, stem: str) -> pd.DataFrame | None:
    """The per-object table of a run: its CSV among ``files``, read back (``None`` if absent)."""
    want = f"{stem}{TABLE_FILE[tab]}"
    path = next((Path(f) for f in files if Path(f).name == want), None)
    if path is None or not path.is_file():
        return None
    table = pd.read_csv(path)
    return table.round(3).head(MAX_ROWS)


def summary(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """Count, mean, spread, median, min and max of each measure (:func:`mm_core.measure.summary_table`)."""
    return None if table is None else summary_table(table).round(3)


def file_pixel_size(loaded) -> float | None:
    """The pixel size (µm) the loaded file carries, or ``None``."""
    size = (getattr(loaded, "info", None) or {}).get("pixel_size")
    return float(size) if size else None


def pixel_field_value(loaded) -> str:
    """What the pixel-size field shows after loading: the file's size, or empty."""
    size = file_pixel_size(loaded)
    return "" if size is None else f"{size:.6g}"


def pixel_choice(loaded, field) -> tuple[float | None, str]:
    """The pixel size to use and where it came from, from the field and the file.

    The field prefilled with the file's size and left alone counts as "from file".

    Raises
    ------
    InputError
        The field holds 0, a negative number or text (one message).
    """
    given = check_pixel_size(field, "the pixel size")
    from_file = file_pixel_size(loaded)
    if given is not None and from_file is not None and math.isclose(given, from_file, rel_tol=1e-5):
        return from_file, FROM_FILE
    return resolve_pixel_size(given, from_file)
