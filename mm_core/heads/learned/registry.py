"""Which head runs: the shipped defaults per task and engine, and :func:`select_head`.

Checkpoints are found by :mod:`mm_core.heads.learned.checkpoints` and loaded by
:func:`mm_core.heads.learned.base.load_head`; nothing is cached here (a
:class:`mm_core.Matcher` holds the heads it loaded).
"""

from __future__ import annotations

from mm_core.errors import InputError
from mm_core.heads import MULTI_TASK_HEADS, TASK_HEAD_TYPES
from mm_core.heads.learned.base import LearnedHead, load_head
from mm_core.heads.learned.checkpoints import REGISTRY, available_heads, resolve

__all__ = ["DEFAULTS", "REGISTRY", "available_heads", "load_head", "resolve", "select_head"]


#: Shipped heads used by default: (task, engine) -> registry name. Filled only for heads
#: that beat the analytic head on held-out dev data (see the README's heads section).
DEFAULTS: dict[tuple[str, str], str] = {}
_ANALYTIC = {"segment": "analytic watershed head", "count": "analytic density head",
             "track": "analytic linking (overlap + distance + descriptors)"}


def select_head(spec, task: str, engine: str) -> tuple[LearnedHead | None, str]:
    """Pick the head for ``task`` on ``engine``'s maps, and say which in words.

    Parameters
    ----------
    spec : None, "auto", "analytic", registry name, folder or ``hub:owner/name``
        ``None``/``"auto"``: the shipped default for this task and engine when there
        is one, else the analytic head; ``"analytic"``/``"none"``: always analytic.
    task : {"segment", "count", "track"}
    engine : str
        Name of the engine that makes the maps (``MatchMaps.engine``).

    Returns
    -------
    head : LearnedHead or None
        ``None`` means: use the analytic head.
    note : str
        E.g. ``"learned segmentation head 'seg-classic' (trained on classic engine maps)"``.
    """
    if task not in TASK_HEAD_TYPES:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASK_HEAD_TYPES)}")
    if spec is not None and str(spec).lower() in ("analytic", "none"):
        return None, f"{_ANALYTIC[task]}, as requested"
    if spec is None or str(spec).lower() == "auto":
        name = DEFAULTS.get((task, engine))
        if name is None:
            return None, f"{_ANALYTIC[task]} (no learned {task} head ships for the {engine} engine)"
        spec = name
    head = load_head(spec, engine=engine)
    if task in MULTI_TASK_HEADS.get(head.head_type, ()):
        return (head.counter() if task == "count" else head), head.describe()
    if head.head_type != TASK_HEAD_TYPES[task]:
        raise InputError(f"{spec} is a {head.head_type} head; the {task} task needs a {TASK_HEAD_TYPES[task]} head")
    return head, head.describe()
