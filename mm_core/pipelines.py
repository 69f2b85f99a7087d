"""The three tasks as functions: numpy in, numpy arrays and tables out.

``segment``, ``count`` and ``track`` are the public API used by the CLI and the app.
Each one runs io -> engine (match maps) -> head (task output); exports and
pictures are made from the returned results by :mod:`mm_core.export` and
:mod:`mm_core.viz`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mm_core.engines import Engine, MatchMaps, get_engine
from mm_core.errors import InputError
from mm_core.transforms import normalize, prepare_boxes

#: Called as ``progress(fraction, description)`` while a task runs.
ProgressFn = Callable[[float, str], None]


@dataclass
class SegmentationResult:
    """Instance segmentation of one image."""

    labels: np.ndarray  #: (H, W) integer labels, 0 = background
    image: np.ndarray  #: the normalised input image
    maps: MatchMaps
    engine_note: str  #: which engine ran and why
    head_note: str = ""  #: which head turned the maps into labels

    @property
    def n_objects(self) -> int:
        return len(np.unique(self.labels[self.labels > 0]))

    def table(self, intensity: np.ndarray | None = None) -> pd.DataFrame:
        """Per-object measurements (see :func:`mm_core.export.measurements_table`)."""
        from mm_core.export import measurements_table

        return measurements_table(self.labels, self.image if intensity is None else intensity)


@dataclass
class CountResult:
    """Object count of one image."""

    count: float  #: sum of the density map
    density: np.ndarray  #: (H, W) float32, integrates to ``count``
    points: pd.DataFrame  #: detected centres, columns ``x``, ``y`` (x = column), ``count`` (share of the count)
    image: np.ndarray
    maps: MatchMaps
    engine_note: str
    head_note: str = ""
    count_note: str = ""  #: how the count was made and how the centres relate to it


@dataclass
class TrackResult:
    """Tracks through a time-lapse, in Cell Tracking Challenge terms."""

    masks: np.ndarray  #: (T, H, W) labels; a label is a track id in every frame
    tracks: pd.DataFrame  #: columns ``label, begin, end, parent`` (CTC res_track.txt)
    engine_note: str
    maps: list[MatchMaps] | None = None
    head_note: str = ""

    @property
    def n_tracks(self) -> int:
        return len(self.tracks)

    @property
    def n_divisions(self) -> int:
        parents = self.tracks.loc[self.tracks["parent"] > 0, "parent"]
        return int((parents.value_counts() >= 2).sum())


def _as_image(image, name: str = "the image", allow_constant: bool = False) -> np.ndarray:
    """Accept a path or an array; return the normalised float32 image."""
    from mm_core.io import check_content, read_image

    if isinstance(image, (str, Path)):
        image = read_image(image).data
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise InputError(f"{name}: expected a 2-D grayscale (H, W) or RGB (H, W, 3) image, got shape {arr.shape}")
    check_content(arr, name, allow_constant=allow_constant)
    return normalize(arr)


def _engine(engine: str | Engine) -> tuple[Engine, str]:
    if isinstance(engine, str):
        return get_engine(engine)
    return engine, f"{getattr(engine, 'name', type(engine).__name__)} engine, as given"


def _head(spec, task: str, engine: Engine, mode: str | None = None):
    """``(learned head or None, note)``: the learned head for ``task`` on ``engine``'s maps."""
    from mm_core.heads.learned import select_head

    return select_head(spec, task, getattr(engine, "name", "classic"), mode)


def _tick(progress: ProgressFn | None, frac: float, desc: str) -> None:
    if progress is not None:
        progress(frac, desc)


def _match(image, boxes, engine, head, task: str, progress: ProgressFn | None):
    """The steps ``segment`` and ``count`` share: read/normalise, check boxes, match."""
    img = _as_image(image)
    bx = prepare_boxes(boxes, img.shape[:2])
    _tick(progress, 0.0, "loading engine")
    eng, note = _engine(engine)
    learned, head_note = _head(head, task, eng, "automatic" if bx is None else "exemplar")
    _tick(progress, 0.2, "matching")
    maps = eng.match(img, bx)
    _tick(progress, 0.7, "post-processing")
    return img, maps, learned, note, head_note


def segment(image, boxes=None, engine: str | Engine = "auto",
            progress: ProgressFn | None = None, head=None) -> SegmentationResult:
    """Instance segmentation of one image by within-image matching.

    Parameters
    ----------
    image : ndarray or path
        ``(H, W)`` or ``(H, W, 3)`` raw intensities (normalised here), or a file.
    boxes : array-like (N, 4) or None
        Exemplar boxes ``x0, y0, x1, y1`` (x1/y1 exclusive); ``None`` = automatic mode.
    engine : str or Engine
        ``"auto"``, ``"classic"``, ``"ldm"`` or an engine instance.
    progress : callable, optional
        ``progress(fraction, description)``.
    head : None, "auto", "analytic", registry name or checkpoint folder
        Learned head to use (see :func:`mm_core.heads.learned.select_head`); ``None``
        uses a shipped learned head for this engine when there is one, else the
        analytic watershed head. ``head_note`` in the result says which ran.

    Returns
    -------
    SegmentationResult
    """
    from mm_core.heads.segmentation import instances_from_maps

    img, maps, learned, note, head_note = _match(image, boxes, engine, head, "segment", progress)
    labels = learned.predict(maps, img) if learned is not None else instances_from_maps(maps, img)
    _tick(progress, 1.0, "done")
    return SegmentationResult(labels=labels, image=img, maps=maps, engine_note=note, head_note=head_note)


def count(image, boxes=None, engine: str | Engine = "auto",
          progress: ProgressFn | None = None, head=None) -> CountResult:
    """Count objects in one image; same parameters as :func:`segment`.

    Returns
    -------
    CountResult
        ``count`` is the integral of ``density``.
    """
    from mm_core.heads.counting import density_from_maps

    img, maps, learned, note, head_note = _match(image, boxes, engine, head, "count", progress)
    density, points = learned.predict(maps, img) if learned is not None else density_from_maps(maps, img)
    from mm_core.heads.counting import point_shares

    points = np.asarray(points, float).reshape(-1, 2)
    pts = pd.DataFrame({"x": points[:, 1], "y": points[:, 0], "count": point_shares(points, density)})
    how = ("sum of the learned head's density map" if learned is not None else
           "sum of the analytic density (per foreground component: max(centres, area / typical object area))")
    _tick(progress, 1.0, "done")
    return CountResult(count=float(density.sum()), density=density.astype(np.float32), points=pts,
                       image=img, maps=maps, engine_note=note, head_note=head_note,
                       count_note=f"{how}; {len(pts)} centres, each carrying the density closest to it "
                                  f"(column 'count'), the shares add up to the count")


def track(frames: Sequence[np.ndarray] | np.ndarray, boxes=None, engine: str | Engine = "auto",
          progress: ProgressFn | None = None, keep_maps: bool = False, head=None) -> TrackResult:
    """Track objects through a time-lapse.

    Frame 0 is matched against ``boxes`` (or in automatic mode); every later frame
    is matched using the previous frame's objects as exemplars. Objects are linked
    between frames by matching in both directions, with divisions and gap closing.

    Parameters
    ----------
    frames : sequence of ndarray or (T, H, W[, 3]) array
        Raw frames, all the same size.
    boxes : array-like (N, 4) or None
        Exemplar boxes on the first frame.
    engine, progress
        As in :func:`segment`.
    keep_maps : bool
        Keep every frame's match maps in the result (for display).
    head : None, "auto", "analytic", registry name or checkpoint folder
        Per-frame segmentation head (a generalist head; see :func:`segment`); ``None``
        uses the shipped default for tracking when there is one. Linking is analytic.

    Returns
    -------
    TrackResult
    """
    from mm_core.heads.tracking import track_frames

    frames = [_as_image(f, f"frame {t}", allow_constant=True) for t, f in enumerate(frames)]
    if len(frames) < 2:
        raise InputError(f"tracking needs a sequence of at least 2 frames, got {len(frames)}")
    shape0 = frames[0].shape
    for t, f in enumerate(frames):
        if f.shape != shape0:
            raise InputError(f"frame {t} is {f.shape[1]}x{f.shape[0]} but frame 0 is {shape0[1]}x{shape0[0]}")
    bx = prepare_boxes(boxes, shape0[:2])
    _tick(progress, 0.0, "loading engine")
    eng, note = _engine(engine)
    learned, head_note = _head(head, "track", eng, "automatic" if bx is None else "exemplar")
    masks, tracks, maps = track_frames(frames, eng, bx, progress=progress, keep_maps=keep_maps,
                                       segmenter=None if learned is None else learned.predict)
    _tick(progress, 1.0, "done")
    return TrackResult(masks=masks, tracks=tracks, engine_note=note, maps=maps, head_note=head_note)
