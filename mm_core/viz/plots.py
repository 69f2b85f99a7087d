"""Plots of results as RGB arrays and PNG files: size histograms and tracking curves.

Drawn with Pillow (no plotting library needed): numbers in, ``(H, W, 3)`` uint8 out;
:func:`png_bytes` and :func:`write_png` turn a plot into a PNG for downloads.

- :func:`size_histogram`: histogram of one measurement of the objects (default the
  equivalent diameter, in µm when the table has it, else in pixels);
- :func:`tracking_plot`: objects per frame over time with each frame's divisions as bars
  (the data: :func:`mm_core.measure.objects_per_frame`);
- :func:`write_result_plots`: the PNGs the CLI and the app write beside a result's files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from mm_core.errors import InputError

__all__ = ["png_bytes", "size_histogram", "tracking_plot", "write_png", "write_result_plots"]

#: Plot size in pixels (width, height) and margins (left, top, right, bottom).
SIZE, MARGIN = (640, 400), (70, 40, 20, 55)
_BLUE, _ORANGE, _GRID, _INK = (31, 119, 180), (255, 127, 14), (225, 225, 225), (40, 40, 40)
#: Preferred histogram columns, first present wins.
HIST_COLUMNS = ("equivalent_diameter_um", "equivalent_diameter_px", "area_um2", "area_px")
#: Axis labels (ASCII: Pillow's built-in font has no µ).
_LABELS = {"equivalent_diameter_um": "equivalent diameter (um)", "equivalent_diameter_px": "equivalent diameter (px)",
           "area_um2": "area (um^2)", "area_px": "area (px)", "mean_intensity": "mean intensity"}


def _font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """About ``n`` round tick values covering ``[lo, hi]``."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    step = 10 ** np.floor(np.log10(raw))
    step *= min((m for m in (1, 2, 5, 10) if m * step >= raw), default=10)
    return np.arange(np.ceil(lo / step) * step, hi + step * 0.5, step)


def _fmt(v: float) -> str:
    v = float(v) + 0.0  # no "-0"
    return f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.3g}"


class _Axes:
    """A plot area with data ranges, mapping data to pixels, with grid, ticks and labels."""

    def __init__(self, xr, yr, title: str, xlabel: str, ylabel: str):
        self.img = Image.new("RGB", SIZE, "white")
        self.d = ImageDraw.Draw(self.img)
        (self.x0, self.x1), (self.y0, self.y1) = (float(xr[0]), float(xr[1])), (float(yr[0]), float(yr[1]))
        left, top, right, bottom = MARGIN
        self.box = (left, top, SIZE[0] - right, SIZE[1] - bottom)
        f, small = _font(15), _font(12)
        for v in _ticks(self.y0, self.y1):
            if self.y0 <= v <= self.y1:
                y = self.py(v)
                self.d.line([(self.box[0], y), (self.box[2], y)], fill=_GRID)
                self.d.text((self.box[0] - 6, y), _fmt(v), fill=_INK, font=small, anchor="rm")
        for v in _ticks(self.x0, self.x1, 6):
            if self.x0 <= v <= self.x1:
                x = self.px(v)
                self.d.line([(x, self.box[3]), (x, self.box[3] + 4)], fill=_INK)
                self.d.text((x, self.box[3] + 6), _fmt(v), fill=_INK, font=small, anchor="mt")
        self.d.rectangle(self.box, outline=_INK)
        self.d.text((SIZE[0] / 2, 10), title, fill=_INK, font=f, anchor="mt")
        self.d.text(((self.box[0] + self.box[2]) / 2, SIZE[1] - 8), xlabel, fill=_INK, font=small, anchor="mb")
        label = Image.new("RGB", (300, 18), "white")
        ImageDraw.Draw(label).text((150, 9), ylabel, fill=_INK, font=small, anchor="mm")
        self.img.paste(label.rotate(90, expand=True), (4, int((self.box[1] + self.box[3]) / 2 - 150)))

    def px(self, x: float) -> float:
        return self.box[0] + (x - self.x0) / (self.x1 - self.x0) * (self.box[2] - self.box[0])

    def py(self, y: float) -> float:
        return self.box[3] - (y - self.y0) / (self.y1 - self.y0) * (self.box[3] - self.box[1])

    def array(self) -> np.ndarray:
        return np.asarray(self.img)


def size_histogram(table: pd.DataFrame, column: str | None = None, bins: int = 20,
                   title: str | None = None) -> np.ndarray:
    """Histogram of one per-object measurement, as an RGB image.

    Parameters
    ----------
    table : DataFrame
        Per-object measurements (:func:`mm_core.measure.measurements_table`).
    column : str, optional
        The measurement (default: the first of :data:`HIST_COLUMNS` the table has).
    bins : int
        Number of bars.
    title : str, optional
        Default: ``"<n> objects"``.

    Returns
    -------
    ndarray, (400, 640, 3) uint8
    """
    column = column or next((c for c in HIST_COLUMNS if c in table.columns), None)
    if column is None or column not in table.columns:
        raise InputError(f"the table has no column {column!r} to draw a histogram of")
    v = pd.to_numeric(table[column], errors="coerce").dropna().to_numpy(float)
    counts, edges = np.histogram(v, bins=max(1, int(bins))) if len(v) else (np.zeros(1, int), np.array([0.0, 1.0]))
    ax = _Axes((edges[0], edges[-1]), (0, max(1, counts.max()) * 1.05), title or f"{len(v):,} objects",
               _LABELS.get(column, column), "objects")
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        if c:
            ax.d.rectangle([ax.px(a) + 1, ax.py(c), ax.px(b) - 1, ax.py(0)], fill=_BLUE)
    if len(v):
        m = float(np.median(v))
        ax.d.line([(ax.px(m), ax.box[1]), (ax.px(m), ax.box[3])], fill=_ORANGE, width=2)
        ax.d.text((ax.px(m) + 4, ax.box[1] + 4), f"median {_fmt(m)}", fill=_ORANGE, font=_font(12))
    return ax.array()


def tracking_plot(per_frame: pd.DataFrame, title: str = "Objects per frame") -> np.ndarray:
    """Objects per frame (line) and divisions per frame (bars) of a tracking result, as an RGB image.

    Parameters
    ----------
    per_frame : DataFrame
        ``frame``, ``objects``, ``divisions`` (:func:`mm_core.measure.objects_per_frame`).
    title : str

    Returns
    -------
    ndarray, (400, 640, 3) uint8
    """
    missing = {"frame", "objects", "divisions"} - set(per_frame.columns)
    if missing:
        raise InputError(f"the per-frame table lacks the column(s) {', '.join(sorted(missing))}")
    t = per_frame["frame"].to_numpy(float)
    n, div = per_frame["objects"].to_numpy(float), per_frame["divisions"].to_numpy(float)
    top = max(1.0, float(n.max(initial=0)), float(div.max(initial=0))) * 1.1
    ax = _Axes((t.min(initial=0) - 0.5, t.max(initial=0) + 0.5), (0, top),
               f"{title}: {int(div.sum())} divisions", "frame", "objects  /  divisions (bars)")
    w = 0.3 * (ax.px(1) - ax.px(0))
    for ti, di in zip(t, div):
        if di:
            ax.d.rectangle([ax.px(ti) - w, ax.py(di), ax.px(ti) + w, ax.py(0)], fill=_ORANGE)
    pts = [(ax.px(a), ax.py(b)) for a, b in zip(t, n)]
    if len(pts) > 1:
        ax.d.line(pts, fill=_BLUE, width=2)
    for x, y in pts:
        ax.d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_BLUE)
    return ax.array()


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array as a PNG file (written under a temporary name, then renamed)."""
    from mm_core.io.atomic import atomic_write

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, png_bytes(rgb))
    return out


def write_result_plots(result, out_dir, stem: str = "") -> list[Path]:
    """Write the plots of a result beside its files (the CLI and the app write the same).

    Parameters
    ----------
    result : SegmentationResult, CountResult or TrackResult
    out_dir : str or Path
    stem : str
        File name prefix, as in :func:`mm_core.export.save`.

    Returns
    -------
    list of Path
        Segmentation with objects: ``<stem>_sizes.png`` (:func:`size_histogram` of
        ``result.table()``); tracking: ``<stem>_per_frame.png`` (``per_frame.png`` without a
        stem; :func:`tracking_plot`); counting: none.
    """
    from mm_core.measure import objects_per_frame

    out = Path(out_dir)
    if hasattr(result, "labels") and result.n_objects:
        return [write_png(out / f"{stem}_sizes.png", size_histogram(result.table()))]
    if hasattr(result, "masks") and hasattr(result, "tracks"):
        name = f"{stem}_per_frame.png" if stem else "per_frame.png"
        return [write_png(out / name, tracking_plot(objects_per_frame(result.masks, result.tracks)))]
    return []
