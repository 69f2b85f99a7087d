"""The model object: :class:`Matcher` holds one engine and its task heads.

Make it once and reuse it (the LDM engine loads gigabytes of weights)::

    import mm_core
    matcher = mm_core.Matcher()                  # engine="auto", shipped default heads
    res = matcher.segment(image, boxes=[[10, 10, 40, 40]])
    matcher.count(image).count
    matcher.track(frames).tracks

``mm_core.segment``, ``count`` and ``track`` are one-line conveniences over one
default :class:`Matcher` (the only object kept at module level).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from mm_core.engines import ENGINE_NAMES, Engine, choose_engine, create_engine
from mm_core.errors import InputError
from mm_core.heads.registry import TASKS, analytic_head, head_kind, resolve_head, setup
from mm_core.pipelines import (CountResult, ProgressFn, SegmentationResult, TrackResult, run_count,
                               run_segment, run_track)

__all__ = ["Matcher", "count", "default_matcher", "mode_of", "segment", "track"]


def mode_of(boxes) -> str:
    """``"automatic"`` for no boxes (``None`` or an empty list), else ``"exemplar"``.

    Only picks the mode's default head; the boxes themselves are checked by the pipeline.
    """
    if boxes is None:
        return "automatic"
    try:
        return "automatic" if len(boxes) == 0 else "exemplar"
    except TypeError:  # not a sequence: the pipeline says what is wrong with it
        return "exemplar"


class Matcher:
    """One engine and the heads that turn its match maps into task outputs.

    Parameters
    ----------
    engine : {"auto", "classic", "ldm"} or Engine
        ``auto``: the LDM engine when a CUDA GPU and its weights are available,
        else the weight-free ``classic`` engine. An object with ``name`` and
        ``match(image, boxes)`` is used as it is.
    head : None, str, path or mapping
        ``None``/``"auto"``: each task's shipped learned head for this engine and
        mode (automatic without boxes, exemplar with them) when one ships, else the
        analytic head. ``"analytic"``: the analytic heads.
        A shipped name, checkpoint folder or ``hub:owner/name``: that learned
        head (for the task it was trained for). A mapping ``{"segment": ...,
        "count": ..., "track": ...}`` chooses per task (a head object too); see
        :mod:`mm_core.heads.registry`.
    device : str, optional
        Torch device of the LDM engine (default: CUDA when present).

    Attributes
    ----------
    engine : Engine
    engine_note : str
        Which engine runs and why.
    """

    def __init__(self, engine: str | Engine = "auto", head=None, device: str | None = None):
        if isinstance(engine, str):
            name, self.engine_note = choose_engine(engine)
            self.engine = create_engine(name, device)
        elif callable(getattr(engine, "match", None)):
            self.engine = engine
            self.engine_note = f"{getattr(engine, 'name', type(engine).__name__)} engine, as given"
        else:
            raise InputError(f"engine must be one of {', '.join(ENGINE_NAMES)} or an engine object, "
                             f"got {type(engine).__name__}")
        self._specs = self._head_specs(head)
        self._per_task = isinstance(head, Mapping)
        self._heads: dict[tuple[str, str], tuple[object, str]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, name: str = "auto", device: str | None = None, **kwargs) -> Matcher:
        """A :class:`Matcher` from a named set-up in :data:`mm_core.heads.registry.SETUPS`.

        Parameters
        ----------
        name : str
            ``"auto"``, ``"classic"``, ``"ldm-sd14"``, ... (the keys of ``SETUPS``).
        device : str, optional
            Torch device of the LDM engine.
        **kwargs
            Override the set-up's ``engine`` or ``head``.

        Returns
        -------
        Matcher
        """
        chosen = setup(name)
        return cls(**{"engine": chosen.engine, "head": chosen.heads, **kwargs}, device=device)

    # ------------------------------------------------------------------ heads
    @staticmethod
    def _head_specs(head) -> dict:
        if isinstance(head, Mapping):
            unknown = set(head) - set(TASKS)
            if unknown:
                raise InputError(f"unknown task(s) {', '.join(map(str, sorted(unknown)))} in head=; "
                                 f"the tasks are {', '.join(TASKS)}")
            for spec in head.values():
                head_kind(spec)  # a bad value is refused here, not at first use
            return {t: head.get(t) for t in TASKS}
        if head_kind(head) == "object":
            raise InputError("a head object serves one task: give it per task, e.g. head={'segment': ...}")
        return {t: head for t in TASKS}

    def head(self, task: str, mode: str = "automatic"):
        """The head that runs for ``task`` in ``mode`` (loaded on first use, then kept).

        Parameters
        ----------
        task : {"segment", "count", "track"}
        mode : {"automatic", "exemplar"}
            Without or with exemplar boxes: the shipped defaults are per mode.

        Returns
        -------
        object
            A head with the task's interface (see :mod:`mm_core.heads.registry`).
        """
        with self._lock:
            if (task, mode) not in self._heads:
                self._heads[(task, mode)] = self._load_head(task, mode)
            return self._heads[(task, mode)][0]

    def _load_head(self, task: str, mode: str = "automatic") -> tuple[object, str]:
        engine = getattr(self.engine, "name", "classic")
        return resolve_head(self._specs.get(task), task, engine, mode, own_task=not self._per_task)

    def head_notes(self) -> dict[str, str]:
        """Which head runs for each task, in words (loads the heads).

        When the two modes run different heads, the note names both
        (``"<automatic>; with exemplar boxes: <exemplar>"``).
        """
        out = {}
        for t in TASKS:
            auto, ex = self._note(t, "automatic"), self._note(t, "exemplar")
            out[t] = auto if auto == ex else f"{auto}; with exemplar boxes: {ex}"
        return out

    def _note(self, task: str, mode: str = "automatic") -> str:
        self.head(task, mode)
        return self._heads[(task, mode)][1]

    @property
    def head_note(self) -> str:
        """Which heads run, one line (``segment: ...; count: ...; track: ...``)."""
        return "; ".join(f"{t}: {n}" for t, n in self.head_notes().items())

    # ------------------------------------------------------------------ tasks
    def segment(self, image, boxes=None, progress: ProgressFn | None = None,
                pixel_size=None) -> SegmentationResult:
        """Instance segmentation of one image by within-image matching.

        Parameters
        ----------
        image : ndarray or path
            ``(H, W)`` or ``(H, W, 3)`` raw intensities (normalised here), or a file.
        boxes : array-like (N, 4) or None
            Exemplar boxes ``x0, y0, x1, y1`` in pixels (x = column, x1/y1
            exclusive); ``None`` = automatic mode.
        progress : callable, optional
            ``progress(fraction, description)``.
        pixel_size : float, optional
            µm per pixel; overrides the calibration of a file (an array has none).
            The result's ``pixel_size`` / ``pixel_size_source`` say which was used.

        Returns
        -------
        SegmentationResult
        """
        mode = mode_of(boxes)
        head = self.head("segment", mode)
        return run_segment(self.engine, head, image, boxes, progress,
                           (self.engine_note, self._note("segment", mode)), pixel_size)

    def count(self, image, boxes=None, progress: ProgressFn | None = None, pixel_size=None) -> CountResult:
        """Count objects in one image; parameters as :meth:`segment`.

        Returns
        -------
        CountResult
            ``count`` is the integral of ``density``.
        """
        mode = mode_of(boxes)
        head = self.head("count", mode)
        return run_count(self.engine, head, image, boxes, progress, (self.engine_note, self._note("count", mode)),
                         pixel_size)

    def track(self, frames, boxes=None, progress: ProgressFn | None = None,
              keep_maps: bool = False, pixel_size=None) -> TrackResult:
        """Track objects through a time-lapse (see :func:`mm_core.pipelines.run_track`).

        Parameters
        ----------
        frames : sequence of ndarray or (T, H, W[, 3]) array
            Raw frames, all the same size.
        boxes : array-like (N, 4) or None
            Exemplar boxes on the first frame; ``None`` = automatic mode.
        progress : callable, optional
            ``progress(fraction, description)``.
        keep_maps : bool
            Keep every frame's match maps in the result (for display).
        pixel_size : float, optional
            µm per pixel; overrides the calibration a :class:`~mm_core.io.SequenceData` brings.

        Returns
        -------
        TrackResult
        """
        seg, link, note = self.track_heads(mode_of(boxes))
        return run_track(self.engine, seg, link, frames, boxes, progress, keep_maps, (self.engine_note, note),
                         pixel_size)

    def track_heads(self, mode: str = "automatic") -> tuple[object, object, str]:
        """Per-frame segmentation head, linker and their note for :meth:`track` in ``mode``.

        The shipped segmentation defaults were measured on single images; tracking keeps
        the analytic per-frame head unless a head is asked for, because the automatic-mode
        default tracked worse on Fluo-N2DH-SIM+ (docs/quality.md).
        """
        link = self.head("track", mode)
        if head_kind(self._specs["segment"]) == "default":
            seg = analytic_head("segment")
            seg_note = self._note("segment", mode)
            if not seg_note.startswith(seg.describe()):
                seg_note = (f"{seg.describe()} (the shipped learned segmentation default is not used for "
                            "tracking: it tracked worse on Fluo-N2DH-SIM+)")
        else:
            seg, seg_note = self.head("segment", mode), self._note("segment", mode)
        return seg, link, f"{seg_note}; {self._note('track', mode)}"

    def __repr__(self) -> str:
        return f"Matcher(engine={getattr(self.engine, 'name', self.engine)!r})"


_DEFAULT: dict = {"key": None, "matcher": None}
_DEFAULT_LOCK = threading.Lock()


def default_matcher(engine: str | Engine = "auto", head=None) -> Matcher:
    """The one :class:`Matcher` kept at module level, made again when asked for another set-up.

    Parameters
    ----------
    engine, head
        As for :class:`Matcher`. An engine object always gives a new Matcher.

    Returns
    -------
    Matcher
    """
    if not isinstance(engine, str):
        return Matcher(engine, head)
    key = (engine.lower(), None if head is None else str(head))
    with _DEFAULT_LOCK:
        if _DEFAULT["key"] != key:
            _DEFAULT["matcher"], _DEFAULT["key"] = Matcher(engine, head), key
        return _DEFAULT["matcher"]


def segment(image, boxes=None, engine: str | Engine = "auto", progress: ProgressFn | None = None,
            head=None, pixel_size=None) -> SegmentationResult:
    """:meth:`Matcher.segment` on the default :class:`Matcher` for ``engine`` and ``head``."""
    return default_matcher(engine, head).segment(image, boxes, progress, pixel_size)


def count(image, boxes=None, engine: str | Engine = "auto", progress: ProgressFn | None = None,
          head=None, pixel_size=None) -> CountResult:
    """:meth:`Matcher.count` on the default :class:`Matcher` for ``engine`` and ``head``."""
    return default_matcher(engine, head).count(image, boxes, progress, pixel_size)


def track(frames, boxes=None, engine: str | Engine = "auto", progress: ProgressFn | None = None,
          keep_maps: bool = False, head=None, pixel_size=None) -> TrackResult:
    """:meth:`Matcher.track` on the default :class:`Matcher` for ``engine`` and ``head``."""
    return default_matcher(engine, head).track(frames, boxes, progress, keep_maps, pixel_size)
