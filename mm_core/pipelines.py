"""The three tasks as steps over an engine and a head: numpy in, results out.

Each step runs io -> engine (match maps) -> head (task output). Pipelines drive
the engine (the tracking loop matches frame ``t`` with frame ``t-1``'s objects as
exemplars); heads only read the maps they are given. :class:`mm_core.Matcher` holds
an engine and its heads and calls these; exports and pictures are made from the
returned results by :mod:`mm_core.export` and :mod:`mm_core.viz`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.segmentation import relabel_sequential

from mm_core import checks
from mm_core.engines.base import Engine, MatchMaps
from mm_core.errors import InputError
from mm_core.heads.objects import boxes_from_labels, object_diameter
from mm_core.heads.shares import count_from_density
from mm_core.io.calibration import UNKNOWN, check_pixel_size, describe_pixel_size, resolve_pixel_size
from mm_core.io.limits import Limits
from mm_core.progress import ProgressFn, tick
from mm_core.transforms import normalize, prepare_boxes

#: Exemplars passed on from one frame to the next: every object of the previous frame,
#: up to this many (those closest to the median size: fragments and merges make poor
#: exemplars). Bounds the engine's cost on crowded frames; on Fluo-N2DH-SIM+ passing
#: only 8 or 16 objects lowered TRA from 0.98 to 0.91-0.92 (classic engine).
MAX_EXEMPLARS = 64
#: Chaining exemplars can drift: on the bundled time-lapse the estimated object scale
#: shrank from 18.5 to 11.4 px in 5 frames, then frames over-segmented. When a frame's
#: scale leaves [d0 / SCALE_DRIFT, d0 * SCALE_DRIFT], d0 the median diameter of the objects
#: found on frame 0, the frame is matched again in automatic mode at d0 (:func:`_rematch`).
#: Widening the chained boxes instead (10% a side) lowered SEG on Fluo-N2DH-SIM+ from 0.81 to
#: 0.58. Measuring the drift against the box's size and matching again with the frame-0 boxes
#: (as before 2026-12-07) failed with a box that is not typical: on a cell the image's edge
#: cuts, the chain kept going back to a box that by then held background (TRA 0.32).
SCALE_DRIFT = 1.3


class _Calibrated:
    """What every result says about its pixel size (``pixel_size``, ``pixel_size_source``)."""

    pixel_size: float | None
    pixel_size_source: str

    def pixel_size_note(self) -> str:
        """One sentence: the pixel size in use and where it came from (or that there is none)."""
        return describe_pixel_size(self.pixel_size, self.pixel_size_source)


@dataclass
class SegmentationResult(_Calibrated):
    """Instance segmentation of one image."""

    labels: np.ndarray  #: (H, W) integer labels, 0 = background
    image: np.ndarray  #: the normalised input image
    maps: MatchMaps
    engine_note: str  #: which engine ran and why
    head_note: str = ""  #: which head turned the maps into labels
    warnings: list[str] = field(default_factory=list)  #: signs that the result may be wrong
    pixel_size: float | None = None  #: µm per pixel (None: unknown, measurements in pixels)
    pixel_size_source: str = UNKNOWN  #: "from file", "given" or "unknown: pixels"

    @property
    def n_objects(self) -> int:
        """Number of objects (distinct non-zero labels)."""
        return len(np.unique(self.labels[self.labels > 0]))

    def table(self, intensity: np.ndarray | None = None) -> pd.DataFrame:
        """Per-object measurements, in µm too when the pixel size is known.

        See :func:`mm_core.measure.measurements_table`.
        """
        from mm_core.measure import measurements_table

        return measurements_table(self.labels, self.image if intensity is None else intensity, self.pixel_size)


@dataclass
class CountResult(_Calibrated):
    """Object count of one image."""

    count: int  #: number of objects: the sum of ``points["n"]`` and of ``density``
    density: np.ndarray  #: (H, W) float32, integrates to ``count``
    points: pd.DataFrame  #: centres, columns ``x``, ``y`` (x = column), ``n`` (objects it counts)
    image: np.ndarray
    maps: MatchMaps
    engine_note: str
    head_note: str = ""
    warnings: list[str] = field(default_factory=list)
    pixel_size: float | None = None
    pixel_size_source: str = UNKNOWN


@dataclass
class TrackResult(_Calibrated):
    """Tracks through a time-lapse, in Cell Tracking Challenge terms."""

    masks: np.ndarray  #: (T, H, W) labels; a label is a track id in every frame
    tracks: pd.DataFrame  #: columns ``label, begin, end, parent`` (CTC res_track.txt)
    engine_note: str
    maps: list[MatchMaps] | None = None
    head_note: str = ""
    warnings: list[str] = field(default_factory=list)
    pixel_size: float | None = None
    pixel_size_source: str = UNKNOWN

    @property
    def n_tracks(self) -> int:
        """Number of tracks."""
        return len(self.tracks)

    @property
    def n_divisions(self) -> int:
        """Number of divisions (parents with two or more daughter tracks)."""
        parents = self.tracks.loc[self.tracks["parent"] > 0, "parent"]
        return int((parents.value_counts() >= 2).sum())

    def table(self) -> pd.DataFrame:
        """One row per object per frame (see :func:`mm_core.measure.tracks_table`)."""
        from mm_core.measure import tracks_table

        return tracks_table(self.masks, self.tracks, self.pixel_size)


def as_image(image, name: str = "the image", allow_constant: bool = False) -> np.ndarray:
    """Accept a path or an array; return the normalised float32 image.

    Parameters
    ----------
    image : ndarray or path
        ``(H, W)`` or ``(H, W, 3)`` raw intensities, or a file for :func:`mm_core.io.read_image`.
    name : str
        Name used in error messages.
    allow_constant : bool
        Accept a blank image (a time-lapse frame may be empty).

    Returns
    -------
    ndarray, float32
    """
    from mm_core.io import check_content, read_image

    if isinstance(image, (str, Path)):
        image = read_image(image).data
    try:
        arr = np.asarray(image)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected an image array, got {type(image).__name__}") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3) or arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: expected a 2-D grayscale (H, W) or RGB (H, W, 3) numeric image, "
                         f"got shape {arr.shape} ({arr.dtype})")
    check_content(arr, name, allow_constant=allow_constant)
    return normalize(arr)


def calibrated(image, pixel_size=None) -> tuple[object, float | None, str]:
    """The image (an array; a file is read here) with the pixel size in use and its source.

    Parameters
    ----------
    image : ndarray, path or ImageData
        A file is read with :func:`mm_core.io.read_image` (its calibration is kept); an
        :class:`~mm_core.io.ImageData` brings its own.
    pixel_size : float, optional
        µm per pixel; overrides the file's.

    Returns
    -------
    (ndarray, float or None, str)
    """
    from mm_core.io import read_image

    if isinstance(image, (str, Path)):
        img = read_image(image, pixel_size=pixel_size)
        return img.data, img.pixel_size, img.pixel_size_source
    if hasattr(image, "data") and hasattr(image, "pixel_size_source") and check_pixel_size(pixel_size) is None:
        return image.data, image.pixel_size, image.pixel_size_source
    return (getattr(image, "data", image), *resolve_pixel_size(pixel_size))


def _match(engine: Engine, image, boxes, progress: ProgressFn | None, head=None):
    """The steps segment and count share: normalise, check boxes, match; the image, maps and boxes.

    A head with its own ``match(engine, image, boxes)`` (the paper's heads, which condition
    the UNet pass themselves) makes the maps instead of ``engine.match``.
    """
    img = as_image(image)
    bx = prepare_boxes(boxes, img.shape[:2], max_boxes=Limits.resolve().max_boxes)
    tick(progress, 0.2, "matching")
    own = getattr(head, "match", None)
    maps = own(engine, img, bx) if callable(own) else engine.match(img, bx)
    if bx is not None:  # heads that take the boxes as a prompt read them here
        maps = replace(maps, info={**maps.info, "boxes": np.asarray(bx, float)})
    tick(progress, 0.7, "post-processing")
    return img, maps, bx


def with_head_scale(head, maps: MatchMaps, image: np.ndarray) -> tuple[MatchMaps, dict]:
    """The maps with the object size the head will read them at, and ``predict``'s keywords.

    A head with its own size search (``fit_scale``, the generalist head) may read the
    objects at another size than the engine's estimate; the result then reports that
    size (the engine's stays in ``maps.info["engine_scale"]``), so that the self-checks
    and the count's centre patches agree with what the head found. Other heads: the
    maps unchanged and no keywords.
    """
    fit = getattr(head, "fit_scale", None)
    if not callable(fit):
        return maps, {}
    s = float(fit(maps, image))
    return replace(maps, scale=s, info={**maps.info, "engine_scale": float(maps.scale)}), {"scale": s}


def run_segment(engine: Engine, head, image, boxes=None, progress: ProgressFn | None = None,
                notes: tuple[str, str] = ("", ""), pixel_size=None) -> SegmentationResult:
    """Match ``image`` with ``engine`` and turn the maps into instances with ``head``.

    Parameters
    ----------
    engine : Engine
    head : object
        A segmentation head (``predict(maps, image) -> labels``).
    image : ndarray or path
    boxes : array-like (N, 4) or None
        Exemplar boxes ``x0, y0, x1, y1`` (x1/y1 exclusive); ``None`` = automatic mode.
    progress : callable, optional
    notes : tuple of str
        ``(engine_note, head_note)`` recorded in the result.
    pixel_size : float, optional
        µm per pixel; overrides a file's calibration (see :func:`calibrated`).

    Returns
    -------
    SegmentationResult
    """
    image, size, source = calibrated(image, pixel_size)
    img, maps, bx = _match(engine, image, boxes, progress, head)
    shown, kw = with_head_scale(head, maps, img)
    labels = np.asarray(head.predict(maps, img, **kw))
    maps = shown
    tick(progress, 1.0, "done")
    return SegmentationResult(labels=labels, image=img, maps=maps, engine_note=notes[0], head_note=notes[1],
                              warnings=checks.check_segmentation(labels, maps, boxes=bx, image=img),
                              pixel_size=size, pixel_size_source=source)


def run_count(engine: Engine, head, image, boxes=None, progress: ProgressFn | None = None,
              notes: tuple[str, str] = ("", ""), pixel_size=None) -> CountResult:
    """Match ``image`` with ``engine`` and count with ``head``; parameters as :func:`run_segment`.

    Returns
    -------
    CountResult
        ``count`` is a whole number, the sum of ``points["n"]`` (see
        :func:`count_from_density`); ``density`` is the head's density map scaled
        to integrate to it (a change of at most half an object).
    """
    image, size, source = calibrated(image, pixel_size)
    img, maps, bx = _match(engine, image, boxes, progress, head)
    shown, kw = with_head_scale(head, maps, img)
    density, centres = head.predict(maps, img, **kw)
    maps = shown
    density = np.clip(np.nan_to_num(np.asarray(density, np.float64)), 0, None)
    count, pts = count_from_density(density, centres, maps.scale)
    total = float(density.sum())
    density = (density * (count / total) if total > 0 else density).astype(np.float32)
    tick(progress, 1.0, "done")
    warnings = checks.check_count(count, len(pts), maps, boxes=bx, image=img)  # the centres the table holds
    return CountResult(count=count, density=density, points=pts, image=img, maps=maps,
                       engine_note=notes[0], head_note=notes[1], warnings=warnings,
                       pixel_size=size, pixel_size_source=source)


def as_frames(frames) -> list[np.ndarray]:
    """Normalised frames of a time-lapse, checked: at least 2, all one size.

    Parameters
    ----------
    frames : sequence of ndarray or (T, H, W[, 3]) array

    Returns
    -------
    list of ndarray
    """
    try:
        frames = [as_image(f, f"frame {t}", allow_constant=True) for t, f in enumerate(frames)]
    except TypeError:
        raise InputError("tracking needs a sequence of frames (a list of images or a (T, H, W) array)") from None
    if len(frames) < 2:
        raise InputError(f"tracking needs a sequence of at least 2 frames, got {len(frames)}")
    shape0 = frames[0].shape
    for t, f in enumerate(frames):
        if f.shape != shape0:
            raise InputError(f"frame {t} is {f.shape[1]}x{f.shape[0]} but frame 0 is {shape0[1]}x{shape0[0]}")
    return frames


def _rematch(engine: Engine, frame: np.ndarray, seed, diameter: float) -> MatchMaps:
    """A frame matched again after the chain drifted.

    Automatic mode at the object ``diameter`` of frame 0 when the engine says it takes one
    (``engine.takes_diameter``, the classic engine), else with the ``seed`` (the first frame's
    boxes, or automatic mode).
    """
    if getattr(engine, "takes_diameter", False):
        return engine.match(frame, None, diameter=diameter)
    return engine.match(frame, seed)


def run_track(engine: Engine, seg_head, linker, frames, boxes=None, progress: ProgressFn | None = None,
              keep_maps: bool = False, notes: tuple[str, str] = ("", ""), pixel_size=None) -> TrackResult:
    """Track objects through a time-lapse.

    Frame 0 is matched against ``boxes`` (or in automatic mode); every later frame
    is matched using the previous frame's objects as exemplars (at most
    ``MAX_EXEMPLARS``), and again at frame 0's object size when the chain drifts in
    scale (``SCALE_DRIFT``, :func:`_rematch`). ``seg_head`` turns each frame's maps into objects and
    ``linker`` links them (both directions, divisions, gap closing).

    Parameters
    ----------
    engine : Engine
    seg_head : object
        A segmentation head (``predict(maps, image)``).
    linker : object
        A tracking head (``frame_summary``, ``link_sequence``, ``needs_maps``).
    frames : sequence of ndarray or (T, H, W[, 3]) array
        Raw frames, all the same size.
    boxes : array-like (N, 4) or None
        Exemplar boxes on the first frame.
    progress : callable, optional
    keep_maps : bool
        Keep every frame's match maps in the result (for display).
    notes : tuple of str
        ``(engine_note, head_note)`` recorded in the result.
    pixel_size : float, optional
        µm per pixel (a :class:`~mm_core.io.SequenceData` brings its file's; this overrides it).

    Returns
    -------
    TrackResult
    """
    size, source = resolve_pixel_size(pixel_size, getattr(frames, "pixel_size", None))
    if pixel_size is None and size is not None:
        source = getattr(frames, "pixel_size_source", source)
    frames = as_frames(getattr(frames, "frames", frames))
    seed = prepare_boxes(boxes, frames[0].shape[:2], max_boxes=Limits.resolve().max_boxes)
    whole = getattr(linker, "track_sequence", None)
    if callable(whole):  # a tracker that runs its own sequence (the paper's head)
        masks, tracks, maps = whole(engine, frames, seed, progress)
        tick(progress, 1.0, "done")
        warnings = checks.check_tracks(masks, tracks, maps[0].mode if maps else "automatic",
                                       0 if seed is None else len(seed))
        return TrackResult(masks=masks, tracks=tracks, engine_note=notes[0], head_note=notes[1],
                           maps=maps if keep_maps else None, warnings=warnings, pixel_size=size,
                           pixel_size_source=source)
    labels, summaries, kept = [], [], []
    keep = keep_maps or bool(getattr(linker, "needs_maps", False))
    exemplars, T = seed, len(frames)
    d0 = 0.0  # the median diameter of the objects found on frame 0 (set there)
    n_seed = 0 if seed is None else len(seed)
    change = [float("inf")] + [checks.frame_change(frames[t - 1], frames[t]) for t in range(1, T)]
    for t, frame in enumerate(frames):
        tick(progress, 0.05 + 0.85 * t / T, f"frame {t + 1}/{T}")
        if t and change[t] < checks.SAME_CHANGE:  # the same picture again: the same objects
            labels.append(labels[-1])
            summaries.append(summaries[-1])
            if keep:
                kept.append(kept[-1])
            continue
        maps = engine.match(frame, exemplars)
        if t and not d0 / SCALE_DRIFT <= maps.scale <= d0 * SCALE_DRIFT:
            maps = _rematch(engine, frame, seed, d0)  # the chain drifted: back to frame 0's object size
        lab = relabel_sequential(np.asarray(seg_head.predict(maps, frame)))[0]
        if t == 0:
            seed_mode, d0 = maps.mode, object_diameter(lab) or maps.scale
            first = [f"First frame: {w}" for w in checks.check_segmentation(lab, maps, n_seed, boxes=seed, image=frame)]
        labels.append(lab)
        summaries.append(linker.frame_summary(lab, maps, frame))
        if keep:
            kept.append(maps)
        prev = boxes_from_labels(lab, MAX_EXEMPLARS)
        exemplars = prev if prev is not None else seed  # lost everything: back to the seed
    tick(progress, 0.92, "linking")
    masks, tracks = linker.link_sequence(labels, summaries, kept if keep else None, frames)
    tick(progress, 1.0, "done")
    still = [c < checks.STILL_CHANGE for c in change]
    warnings = first + checks.check_tracks(masks, tracks, seed_mode, n_seed, still=still)
    return TrackResult(masks=masks, tracks=tracks, engine_note=notes[0], head_note=notes[1],
                       maps=kept if keep_maps else None, warnings=warnings, pixel_size=size,
                       pixel_size_source=source)
