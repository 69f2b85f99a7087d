"""Tracks to files: a Cell Tracking Challenge (CTC) result, a per-object-per-frame CSV, and
:func:`save_tracks`, every file of a tracking result with each piece of work done once.

A CTC result is ``maskTTT.tif`` (uint16 labels, a label is a track id in every frame) +
``res_track.txt`` (one ``L B E P`` line per track), as a folder (:func:`write_ctc`, read back
with :func:`mm_core.io.read_ctc`) or a zip (:func:`write_ctc_zip`). :func:`save_tracks`
checks the masks and the track table once, encodes each mask once for both the folder and
the zip, measures the objects once for both the CSV and the GEFF graph, and writes the GEFF
folder once and zips it. Every file goes through :mod:`mm_core.io.atomic` (write, then rename).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from mm_core.errors import InputError
from mm_core.io.atomic import atomic_path, atomic_write, out_path
from mm_core.io.labels import CTC_MASK_RE, UINT16_MAX
from mm_core.measure import checked_tracks, object_rows

#: One CTC result in memory: ``(file name, bytes)`` of every ``maskTTT.tif``, then ``res_track.txt``.
Members = list[tuple[str, bytes]]


def ctc_frame_name(t: int, n_frames: int, prefix: str = "mask") -> str:
    """CTC file name of frame ``t``: 3 digits (``mask007.tif``), 4 past 1000 frames."""
    digits = 3 if n_frames <= 1000 else 4
    return f"{prefix}{int(t):0{digits}d}.tif"


def encode_mask(frame: np.ndarray) -> bytes:
    """One CTC mask as the bytes of a zlib-compressed uint16 TIFF."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, frame.astype(np.uint16), compression="zlib")
    return buf.getvalue()


def ctc_members(masks: np.ndarray, table: pd.DataFrame) -> Members:
    """Encode a CTC result (inputs checked by :func:`mm_core.measure.checked_tracks`), each mask once."""
    if masks.shape[0] == 0:
        raise InputError("the mask stack has no frames")
    if masks.size and masks.max() > UINT16_MAX:
        raise InputError("the Cell Tracking Challenge format stores 16-bit labels; "
                         f"label {masks.max()} is too large")
    members = [(ctc_frame_name(t, masks.shape[0]), encode_mask(frame)) for t, frame in enumerate(masks)]
    text = "".join(f"{r.label} {r.begin} {r.end} {r.parent}\n" for r in table.itertuples())
    return [*members, ("res_track.txt", text.encode("ascii"))]


def _write_members(out_dir, members: Members) -> list[Path]:
    """Write a CTC result into ``out_dir`` (stale ``maskTTT.tif`` of a longer run removed); the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {name for name, _ in members}
    for old in out.iterdir():
        if (old.name not in names and old.name.startswith("mask") and CTC_MASK_RE.match(old.name)
                and (old.is_file() or old.is_symlink())):
            old.unlink()
    return [atomic_write(out / name, data) for name, data in members]


def _zip_members(zip_path, members: Members, folder: str) -> Path:
    out = out_path(zip_path)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(f"{folder}/{name}" if folder else name, data)
    return out


def write_ctc(out_dir, masks, tracks=None) -> Path:
    """Write a Cell Tracking Challenge result folder.

    Parameters
    ----------
    out_dir : str or Path
        Result folder (e.g. ``01_RES``), created if missing. Stale ``maskTTT.tif``
        files from an earlier run are removed from it; nothing else there is touched.
    masks : ndarray
        ``(T, H, W)`` integer labels; a label is a track id in every frame
        (at most 65,535, the format is 16-bit).
    tracks : pandas.DataFrame, optional
        Columns ``label, begin, end, parent`` (frames 0-based, parent 0 = none);
        one row per track. ``None`` derives tracks without lineage from ``masks``.

    Returns
    -------
    Path
        ``out_dir``, holding ``mask000.tif`` ... (4 digits past 1000 frames,
        uint16) and ``res_track.txt`` (one ``L B E P`` line per track).
    """
    _write_members(out_dir, ctc_members(*checked_tracks(masks, tracks)))  # all encoded before writing
    return Path(out_dir)


def write_ctc_zip(zip_path, masks, tracks=None, folder: str = "01_RES") -> Path:
    """Write the same CTC result as :func:`write_ctc` into a zip, under ``folder/``."""
    return _zip_members(zip_path, ctc_members(*checked_tracks(masks, tracks)), folder)


def _write_table(path, objects: pd.DataFrame) -> Path:
    out = out_path(path)
    atomic_write(out, objects.to_csv(index=False, float_format="%.2f"))
    return out


def write_tracks_csv(path, masks, tracks=None, pixel_size: float | None = None) -> Path:
    """Write :func:`mm_core.measure.tracks_table` as CSV (positions with 2 decimals)."""
    return _write_table(path, object_rows(*checked_tracks(masks, tracks), pixel_size))


def save_tracks(out_dir, masks, tracks=None, stem: str = "", pixel_size: float | None = None) -> list[Path]:
    """Write every file of a tracking result into ``out_dir`` (what :func:`mm_core.export.save` does).

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created).
    masks : ndarray, (T, H, W)
    tracks : DataFrame, optional
        CTC table ``label, begin, end, parent``.
    stem : str
        Name prefix of the files other than the CTC result (``<stem>_ctc.zip``, ...).
    pixel_size : float, optional
        µm per pixel: ``area_um2`` in the CSV, GEFF spatial axes in ``micrometer``.

    Returns
    -------
    list of Path
        ``maskTTT.tif`` ... + ``res_track.txt``, ``[<stem>_]ctc.zip`` (the same under ``01_RES/``),
        ``[<stem>_]tracks.csv``, ``[<stem>_]tracks.zarr`` (GEFF) and ``[<stem>_]tracks_geff.zip``.
    """
    from mm_core.export.geff import write_geff_checked, zip_geff

    out, prefix = Path(out_dir), f"{stem}_" if stem else ""
    arr, table = checked_tracks(masks, tracks)  # the one check
    members = ctc_members(arr, table)  # the one encoding
    objects = object_rows(arr, table, pixel_size)  # the one measurement
    ctc = _write_members(out, members)
    files = [*ctc, _zip_members(out / f"{prefix}ctc.zip", members, "01_RES"),
             _write_table(out / f"{prefix}tracks.csv", objects)]
    geff = write_geff_checked(out / f"{prefix}tracks.zarr", arr, table, objects, pixel_size)
    return [*files, geff, zip_geff(geff, out / f"{prefix}tracks_geff.zip")]
