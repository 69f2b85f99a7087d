"""Progress reports: the one type of the ``progress`` callbacks every long task takes.

The lowest layer of the package (it imports nothing of it), so the pipelines, the tiled
runs, the batch and the app all share it.
"""

from __future__ import annotations

from collections.abc import Callable

#: Called as ``progress(fraction, description)`` while a task runs (fraction from 0 to 1).
ProgressFn = Callable[[float, str], None]


def tick(progress: ProgressFn | None, fraction: float, description: str) -> None:
    """Report ``fraction`` done with ``description`` to ``progress`` when one is given."""
    if progress is not None:
        progress(fraction, description)
