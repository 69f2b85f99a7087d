"""What a run keeps between requests, and checks of the values widgets (or API clients) send.

A run keeps only what re-rendering needs: the labels (smallest integer type), the
density and points, small match maps without engine features, a uint8 picture of
the input, the boxes; tracking keeps its rendered frames on disk (``.npy`` in the
request folder, memory-mapped when shown). Everything is kept in a
:class:`~mm_core.app.sessions.SessionStore`; the app's states hold only the key.
Gradio-free: the app wires these to widgets, the tests call them directly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mm_core import viz
from mm_core.app.sessions import SessionStore
from mm_core.errors import InputError
from mm_core.io.labels import label_dtype


def display8(raw: np.ndarray) -> np.ndarray:
    """The picture results are drawn on, as uint8 (a quarter of float32's bytes)."""
    return (viz.display_image(raw) * 255.0 + 0.5).astype(np.uint8)


def slim(result):
    """``result`` with only what re-rendering needs: no input image, no engine features,
    only the map that is shown (as float16), labels in the smallest integer type."""
    maps = result.maps
    if maps is None:  # a tiled result keeps no maps
        return dataclasses.replace(result, image=None, **_small_labels(result))
    shown = next(iter(maps.display), None) if getattr(maps, "display", None) else None
    small = np.float16  # a picture's precision is enough for the map that is shown
    display = {shown: np.asarray(maps.display[shown], small)} if shown else {}
    fg = np.zeros((1, 1), small) if shown else np.asarray(maps.foreground, small)
    maps = dataclasses.replace(maps, features=None, display=display, foreground=fg,
                               centers=np.zeros((1, 1), small))
    return dataclasses.replace(result, maps=maps, image=None, **_small_labels(result))


def _small_labels(result) -> dict:
    labels = getattr(result, "labels", None)
    if labels is not None:
        return {"labels": labels.astype(label_dtype(labels), copy=False)}
    return {}


def keep_image_result(store: SessionStore, session: str | None, tab: str, result, frame, boxes,
                      folder: Path, ident: str | None = None) -> str:
    """Keep a segmentation or count result for re-rendering (subsampled when larger than the
    screen needs, :func:`mm_core.app.zoom.shrink`); returns its key. ``ident``: the file it is of."""
    from mm_core.app.zoom import shrink, step

    k = step(frame.shape)
    small, display, shown = shrink(slim(result), display8(np.asarray(frame[::k, ::k])), boxes, k)
    kept = {"result": small, "boxes": shown, "display": display, "ident": ident}
    return store.put(store.key(session, tab), kept, folder=folder)


def keep_track_result(store: SessionStore, session: str | None, rendered: np.ndarray,
                      maps: np.ndarray | None, folder: Path, gif: Path | None = None,
                      pixel_note: str = "") -> str:
    """Keep tracking pictures (``(T, H, W, 3)`` uint8) on disk in ``folder``; returns the key.

    ``gif`` is the animation already written there (shown again by the Play button);
    ``pixel_note`` the line saying which pixel size the run used.
    """
    np.save(folder / "rendered.npy", rendered)
    if maps is not None:
        np.save(folder / "maps.npy", maps)
    kept = {"rendered": folder / "rendered.npy", "maps": folder / "maps.npy" if maps is not None else None,
            "n": len(rendered), "gif": None if gif is None else str(gif), "pixel_note": pixel_note}
    return store.put(store.key(session, "track"), kept, folder=folder)


def kept(store: SessionStore, key):
    """What a run kept, or ``None`` before the first run.

    Raises
    ------
    InputError
        The result was freed (idle, session over, or memory cap): run again.
    """
    if key is None:
        return None
    value = store.get(key) if isinstance(key, str) else None
    if value is None:
        raise InputError(f"this result was cleared from the server (unused for {store.idle_s / 60:.0f} "
                         "minutes, the session ended, or memory was needed for others); press Run again")
    return value


def track_picture(value: dict, which: str, t) -> np.ndarray | None:
    """Frame ``t`` of the kept tracking pictures ``which`` ('rendered' or 'maps')."""
    t = as_index(t, value["n"], "the frame number")
    path = value.get(which)
    if path is None:
        return None
    try:
        return np.asarray(np.load(path, mmap_mode="r")[t])
    except (OSError, ValueError):
        raise InputError("the tracking result was deleted from the server; press Run again") from None


def as_fraction(value, what: str = "opacity") -> float:
    """A number in [0, 1] from a widget or API value, or an InputError naming ``what``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= out <= 1.0:
        raise InputError(f"{what} must be between 0 and 1, got {value!r}")
    return out


def as_index(value, n: int, what: str) -> int:
    """A whole number in ``[0, n)`` from a widget or API value, or an InputError naming ``what``."""
    try:
        out = int(value)
        ok = out == float(value) and 0 <= out < n
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InputError(f"{what} must be a whole number from 0 to {max(n - 1, 0)}, got {value!r}")
    return out
