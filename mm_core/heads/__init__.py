"""Task heads: turn match maps into instance labels, densities and tracks.

Analytic heads (no training): :mod:`.segmentation`, :mod:`.counting`, :mod:`.tracking`;
learned heads: :mod:`.learned`; :mod:`.registry` says which head serves a task (shipped defaults,
named set-ups) and resolves a ``head=`` argument.
"""

#: Task -> the ``head_type`` a learned checkpoint for that task has.
TASK_HEAD_TYPES = {"segment": "segmentation", "count": "counting", "track": "linking"}
#: Learned heads that serve several tasks: ``head_type`` -> tasks (for ``track``, the per-frame
#: segmentation uses it through the ``segment`` task).
MULTI_TASK_HEADS = {"generalist": ("segment", "count"), "cellmatch": ("segment", "count")}
#: Engine modes: no box (``automatic``) or one or more exemplar boxes (``exemplar``); the
#: shipped default heads are chosen per task, engine and mode.
MODES = ("automatic", "exemplar")
