"""Which head runs: the shipped defaults per task and engine, and :func:`select_head`.

Checkpoints are found by :mod:`mm_core.heads.learned.checkpoints` and loaded by
:func:`mm_core.heads.learned.base.load_head`; nothing is cached here (a
:class:`mm_core.Matcher` holds the heads it loaded).
"""

from __future__ import annotations

from mm_core.errors import InputError
from mm_core.heads import MODES, MULTI_TASK_HEADS, TASK_HEAD_TYPES
from mm_core.heads.learned.base import LearnedHead, load_head
from mm_core.heads.learned.checkpoints import REGISTRY, available_heads, resolve

__all__ = ["DEFAULTS", "MODES", "REGISTRY", "available_heads", "load_head", "resolve", "select_head"]

#: Shipped heads used by default: (task, engine, mode) -> registry name. Filled only for
#: heads that beat the analytic head on held-out dev data in that mode (issue 11's rule,
#: see the README's "Learned heads" section); a mode without an entry keeps the analytic head.
DEFAULTS: dict[tuple[str, str, str], str] = {
    # passes in automatic mode (README "Learned heads": 3 of 4 dev sets better in AP50 and AP,
    # worst AP50 difference -0.0002); exemplar mode and counting fail, they stay analytic
    ("segment", "classic", "automatic"): "generalist-classic",
}
_ANALYTIC = {"segment": "analytic watershed head", "count": "analytic density head",
             "track": "analytic linking (overlap + distance + descriptors)"}


def select_head(spec, task: str, engine: str, mode: str = "automatic") -> tuple[LearnedHead | None, str]:
    """Pick the head for ``task`` on ``engine``'s maps in ``mode``, and say which in words.

    Parameters
    ----------
    spec : None, "auto", "analytic", registry name, folder or ``hub:owner/name``
        ``None``/``"auto"``: the shipped default for this task, engine and mode when
        there is one, else the analytic head; ``"analytic"``/``"none"``: always
        analytic; anything else: that head, whatever the mode.
    task : {"segment", "count", "track"}
    engine : str
        Name of the engine that makes the maps (``MatchMaps.engine``).
    mode : {"automatic", "exemplar"}
        Whether the call has exemplar boxes (defaults can differ per mode).

    Returns
    -------
    head : LearnedHead or None
        ``None`` means: use the analytic head.
    note : str
        E.g. ``"learned segmentation head 'seg-classic' (trained on classic engine maps)"``.
    """
    if task not in TASK_HEAD_TYPES:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASK_HEAD_TYPES)}")
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if spec is not None and str(spec).lower() in ("analytic", "none"):
        return None, f"{_ANALYTIC[task]}, as requested"
    if spec is None or str(spec).lower() == "auto":
        name = DEFAULTS.get((task, engine, mode))
        if name is None:
            other = [m for m in MODES if m != mode and (task, engine, m) in DEFAULTS]
            why = (f"the learned {task} default is for {other[0]} mode only" if other
                   else f"no learned {task} head ships for the {engine} engine")
            return None, f"{_ANALYTIC[task]} ({why})"
        spec = name
    head = load_head(spec, engine=engine)
    if task in MULTI_TASK_HEADS.get(head.head_type, ()):
        return (head.counter() if task == "count" else head), head.describe()
    if head.head_type != TASK_HEAD_TYPES[task]:
        raise InputError(f"{spec} is a {head.head_type} head; the {task} task needs a {TASK_HEAD_TYPES[task]} head")
    return head, head.describe()
