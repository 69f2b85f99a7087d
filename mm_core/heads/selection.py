"""One entry point for choosing a task's head: learned when asked (or shipped as default), else analytic.

Every head returned here has the interface of its task:

- ``segment``: ``predict(maps, image) -> labels``;
- ``count``: ``predict(maps, image) -> (density, points)``;
- ``track``: ``frame_summary(...)`` and ``link_sequence(...)`` (see :mod:`mm_core.heads.tracking`);

and ``describe()``, one line naming it.
"""

from __future__ import annotations

from mm_core.errors import InputError, ModelUnavailableError
from mm_core.heads.counting import DensityHead
from mm_core.heads.segmentation import WatershedHead
from mm_core.heads.tracking import AnalyticLinker

TASKS = ("segment", "count", "track")
_ANALYTIC = {"segment": WatershedHead, "count": DensityHead, "track": AnalyticLinker}

__all__ = ["TASKS", "analytic_head", "head_for", "head_or_fallback"]


def analytic_head(task: str):
    """The analytic (untrained) head of ``task``.

    Parameters
    ----------
    task : {"segment", "count", "track"}

    Returns
    -------
    WatershedHead, DensityHead or AnalyticLinker
    """
    if task not in _ANALYTIC:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return _ANALYTIC[task]()


def head_for(spec, task: str, engine: str, mode: str = "automatic"):
    """The head that turns ``engine``'s maps into ``task`` output, and a line saying which.

    Parameters
    ----------
    spec : None, "auto", "analytic", registry name, checkpoint folder or ``hub:owner/name``
        ``None``/``"auto"``: the shipped learned default for this task, engine and
        mode when there is one, else the analytic head.
    task : {"segment", "count", "track"}
    engine : str
        Name of the engine whose maps the head reads (``"classic"`` or ``"ldm"``).
    mode : {"automatic", "exemplar"}
        Without or with exemplar boxes (the shipped defaults are per mode).

    Returns
    -------
    head : object
        A head with the task's interface (see the module docstring).
    note : str
        E.g. ``"analytic watershed head (no learned segment head ships for the classic engine)"``.

    Raises
    ------
    InputError
        An unknown task, or a checkpoint for another task or engine.
    ModelUnavailableError
        A checkpoint that cannot be found or fetched.
    """
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if spec is not None and not isinstance(spec, str) and not hasattr(spec, "__fspath__"):
        if hasattr(spec, "describe"):  # a head object given directly
            return spec, spec.describe()
        raise InputError(f"a head is given by name or folder (or 'analytic'), got {type(spec).__name__}")
    from mm_core.heads.learned.registry import select_head

    learned, note = select_head(spec, task, engine, mode)
    if learned is None:
        return analytic_head(task), note
    return learned, note


def head_or_fallback(spec, task: str, engine: str, mode: str = "automatic"):
    """:func:`head_for`, but a checkpoint that cannot be loaded falls back to the analytic head.

    Returns
    -------
    head : object
    note : str
        Says that the analytic head runs instead, and why.
    """
    try:
        return head_for(spec, task, engine, mode)
    except (InputError, ModelUnavailableError) as exc:
        head = analytic_head(task)
        return head, f"{head.describe()} (the learned head could not be used: {exc})"
