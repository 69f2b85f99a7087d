"""Which head serves each task: one table of shipped defaults and named set-ups, and one resolver.

:func:`resolve_head` is the one function that turns a ``head=`` argument into a head.
A ``head=`` argument (of :class:`mm_core.Matcher`, ``mm_core.segment`` / ``count`` / ``track``,
:func:`mm_core.batch` and the CLI's ``--head``; the app and tiled runs use a Matcher's heads) is

- ``None`` or ``"auto"``: the shipped default of :data:`DEFAULTS` for the task, the engine and
  the mode (automatic without boxes, exemplar with them), else the analytic head; a default
  that cannot be loaded falls back to the analytic head, and the note says why;
- ``"analytic"`` (or ``"none"``): the analytic head of the task;
- a shipped name (a folder in ``mm_core/heads/learned/weights``), a checkpoint folder or
  ``hub:owner/name``: that learned head, in both modes;
- a head object (with ``describe()`` and the task's methods, see below): used as it is.

Every head has the interface of its task and ``describe()``, one line naming it:

- ``segment``: ``predict(maps, image) -> labels``;
- ``count``: ``predict(maps, image) -> (density, points)``;
- ``track``: ``frame_summary(...)`` and ``link_sequence(...)`` (see :mod:`mm_core.heads.tracking`).

Adding a shipped default: one :data:`DEFAULTS` entry ``(task, engine, mode): name``, once the
head beats the analytic head on held-out data in that mode (docs/quality.md).

Adding a set-up for ``Matcher.from_pretrained(name)``: one :data:`SETUPS` entry, for example::

    "my-setup": Setup("ldm", {"segment": "hub:owner/seg-head", "count": "hub:owner/count-head"},
                      "the LDM engine with these heads"),

``heads`` is one ``head=`` value for every task or a mapping per task; a task left out (or
``None``) keeps its shipped default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mm_core.errors import InputError, ModelUnavailableError
from mm_core.heads import MODES, MULTI_TASK_HEADS, TASK_HEAD_TYPES
from mm_core.heads.counting import DensityHead
from mm_core.heads.segmentation import WatershedHead
from mm_core.heads.tracking import AnalyticLinker

__all__ = ["DEFAULTS", "SETUPS", "TASKS", "Setup", "analytic_head", "head_kind", "resolve_head", "setup"]

TASKS = tuple(TASK_HEAD_TYPES)

#: Shipped heads used by default: (task, engine, mode) -> shipped name. Filled only for heads that
#: beat the analytic head on held-out dev data in that mode (issue 11's rule, docs/quality.md; "Learned
#: heads"); a (task, engine, mode) without an entry keeps the analytic head.
DEFAULTS: dict[tuple[str, str, str], str] = {
    # issue 21's rule (benchmarks/cellmatch_eval.py pick_defaults, docs/quality.md): CellMatch passes
    # in automatic mode (replacing "generalist-classic"); in exemplar mode it fails on one set, but
    # the analytic exemplar head would make a box worse than no box by up to 0.196 AP50, so exemplar
    # mode follows. Counting fails in both modes and stays analytic.
    ("segment", "classic", "automatic"): "cellmatch",
    ("segment", "classic", "exemplar"): "cellmatch",
}


@dataclass(frozen=True)
class Setup:
    """A named set-up of :meth:`mm_core.Matcher.from_pretrained`: an engine and its heads.

    Attributes
    ----------
    engine : str
        ``"auto"``, ``"classic"`` or ``"ldm"``.
    heads : str, mapping or None
        A ``head=`` value for every task, or ``{task: head}``; ``None``: the shipped defaults.
    doc : str
        One line saying what it is.
    """

    engine: str
    heads: str | Mapping[str, str | None] | None = None
    doc: str = ""


#: Named set-ups: name -> engine and heads (see the module docstring to add one).
SETUPS: dict[str, Setup] = {
    "auto": Setup("auto", None, "the LDM engine with a CUDA GPU and its weights, else classic; shipped heads"),
    "classic": Setup("classic", None, "the weight-free classic engine with its shipped heads"),
    "ldm-sd14": Setup("ldm", None, "the LDM engine (Stable Diffusion v1.4) with its shipped heads"),
    # issue 22: the authors' released heads (mm_core.heads.authors)
    "microscopymatching": Setup("ldm", "microscopymatching",
                                "the paper's system: the authors' released heads on the LDM engine"),
}

_ANALYTIC = {"segment": WatershedHead, "count": DensityHead, "track": AnalyticLinker}
_HEAD_VALUES = ("head must be None, 'auto', 'analytic', a shipped head name, a checkpoint folder, "
                "hub:owner/name or a head object (or a mapping of task to one of these)")


def setup(name: str) -> Setup:
    """The set-up called ``name`` in :data:`SETUPS`.

    Raises
    ------
    InputError
        An unknown name (the message lists the known ones).
    """
    if not isinstance(name, str) or name not in SETUPS:
        raise InputError(f"unknown pretrained set-up {name!r}; choose one of {', '.join(SETUPS)}")
    return SETUPS[name]


def analytic_head(task: str):
    """The analytic (untrained) head of ``task``.

    Parameters
    ----------
    task : {"segment", "count", "track"}

    Returns
    -------
    WatershedHead, DensityHead or AnalyticLinker
    """
    _check(task)
    return _ANALYTIC[task]()


def head_kind(spec) -> str:
    """What a ``head=`` value asks for: ``"default"``, ``"analytic"``, ``"checkpoint"`` or ``"object"``.

    Raises
    ------
    InputError
        Any other value (one message listing what a head may be).
    """
    if spec is None:
        return "default"
    if isinstance(spec, str):
        word = spec.strip().lower()
        if not word:
            raise InputError(f"{_HEAD_VALUES}, got an empty name")
        return {"auto": "default", "analytic": "analytic", "none": "analytic"}.get(word, "checkpoint")
    if isinstance(spec, os.PathLike):
        return "checkpoint"
    if callable(getattr(spec, "describe", None)):
        return "object"
    raise InputError(f"{_HEAD_VALUES}, got {type(spec).__name__}")


def resolve_head(spec, task: str, engine: str, mode: str = "automatic", *, own_task: bool = False):
    """The head that turns ``engine``'s maps into ``task`` output in ``mode``, and a line saying which.

    Parameters
    ----------
    spec : None, str, path or head object
        A ``head=`` value (see the module docstring).
    task : {"segment", "count", "track"}
    engine : str
        Name of the engine whose maps the head reads (``"classic"`` or ``"ldm"``).
    mode : {"automatic", "exemplar"}
        Without or with exemplar boxes (the shipped defaults are per mode).
    own_task : bool
        ``spec`` was given for every task at once: a checkpoint for another task leaves
        this task its default (``head=<linking checkpoint>`` changes only tracking).

    Returns
    -------
    head : object
        A head with the task's interface.
    note : str
        E.g. ``"analytic watershed head (no learned segment head ships for the ldm engine)"``;
        a checkpoint that is there but cannot be used (unreadable, incomplete, for another
        engine or task, a hub id that cannot be fetched) gives the analytic head and a note
        that says why.

    Raises
    ------
    InputError
        A bad value, an unknown task or mode, a name or folder that points at nothing, or a
        checkpoint for another task.
    ModelUnavailableError
        The paper's heads asked for by name but not available.
    """
    _check(task, mode)
    kind = head_kind(spec)
    authors = _authors_head(spec, kind, task, engine)  # issue 22
    if authors is not None:
        return authors
    if kind == "object":
        return spec, spec.describe()
    if kind == "analytic":
        head = analytic_head(task)
        return head, f"{head.describe()}, as requested"
    if kind == "checkpoint" and own_task and not _serves(spec, task):
        kind = "default"
    if kind == "default":
        return _default(task, engine, mode)
    return _learned_or_analytic(spec, task, engine)


# ---------------------------------------------------------------------- issue 22: the paper's heads
def _authors_head(spec, kind: str, task: str, engine: str):
    """The paper's head and its note, or ``None`` (see :mod:`mm_core.heads.authors`).

    It runs when ``spec`` names it (``"microscopymatching"``), or as the default on the LDM
    engine when its weights are on this machine; a default that cannot be loaded falls back to
    the analytic head with the reason.
    """
    from mm_core.heads.authors import AUTHORS_SPEC, is_authors_spec

    named = is_authors_spec(spec)
    if not named:
        if kind != "default" or engine != "ldm":
            return None
        from mm_core.heads.authors.weights import TASK_KIND, present

        if present(TASK_KIND[task]) is None:
            return None
    if engine != "ldm":
        raise ModelUnavailableError(f"the paper's heads ({AUTHORS_SPEC}) run on the LDM engine, not the "
                                    f"{engine} engine")
    import torch

    from mm_core.heads.authors import authors_head

    try:
        head = authors_head(task)
    except ModelUnavailableError as exc:
        if named:
            raise
        fallback = analytic_head(task)
        return fallback, f"{fallback.describe()} (the paper's head could not be used: {exc})"
    slow = "" if torch.cuda.is_available() else " (no GPU here: it runs on the CPU, expect minutes per image)"
    return head, head.describe() + slow
# ---------------------------------------------------------------------- end issue 22


def _check(task: str, mode: str = "automatic") -> None:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def _serves(spec, task: str) -> bool:
    """Whether the checkpoint ``spec`` is for ``task`` (read from its config, weights not loaded)."""
    from mm_core.heads.learned.checkpoints import read_config, resolve

    kind = read_config(resolve(spec))["head_type"]
    return kind == TASK_HEAD_TYPES[task] or task in MULTI_TASK_HEADS.get(kind, ())


def _default(task: str, engine: str, mode: str):
    """The shipped default of :data:`DEFAULTS`, else the analytic head; a broken default never stops a run."""
    name = DEFAULTS.get((task, engine, mode))
    if name is None:
        other = [m for m in MODES if m != mode and (task, engine, m) in DEFAULTS]
        why = (f"the learned {task} default is for {other[0]} mode only" if other
               else f"no learned {task} head ships for the {engine} engine")
        head = analytic_head(task)
        return head, f"{head.describe()} ({why})"
    try:
        return _learned(name, task, engine)
    except (InputError, ModelUnavailableError) as exc:
        head = analytic_head(task)
        return head, f"{head.describe()} (the learned head could not be used: {exc})"


def _learned_or_analytic(spec, task: str, engine: str):
    """The checkpoint ``spec`` asked for; one that is there but cannot be used runs the analytic head.

    A name or folder that points at nothing, or a checkpoint for another task, is the user's
    mix-up and stays an error (the first message lists the shipped names); a checkpoint that
    is unreadable, incomplete or for another engine, or a hub id that cannot be fetched, gives
    the analytic head and a note that says why (issue 21: a broken checkpoint never stops a run).
    """
    from mm_core.heads.learned.checkpoints import resolve

    if not str(spec).startswith("hub:"):
        resolve(spec)  # InputError for a name or path that is not there
    try:
        return _learned(spec, task, engine)
    except WrongTaskError:
        raise
    except (InputError, ModelUnavailableError) as exc:
        head = analytic_head(task)
        return head, f"{head.describe()} (the head {spec} could not be used: {exc})"


class WrongTaskError(InputError):
    """A checkpoint for another task than the one it was given for."""


def _learned(spec, task: str, engine: str):
    """A learned head from a shipped name, folder or hub id, checked against ``task`` and ``engine``."""
    from mm_core.heads.learned.base import load_head

    head = load_head(spec, engine=engine)
    if task in MULTI_TASK_HEADS.get(head.head_type, ()):
        return (head.counter() if task == "count" else head), head.describe()
    if head.head_type != TASK_HEAD_TYPES[task]:
        raise WrongTaskError(f"{spec} is a {head.head_type} head; the {task} task needs a {TASK_HEAD_TYPES[task]} head")
    return head, head.describe()
