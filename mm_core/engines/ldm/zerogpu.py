"""Hugging Face ZeroGPU: run the LDM engine's GPU work inside a ``spaces.GPU`` function.

On a Space with ZeroGPU hardware (Hugging Face sets ``SPACES_ZERO_GPU``) a GPU is attached
only while a function decorated with ``spaces.GPU`` runs. :func:`gpu_runner` gives the
engine the callable that does one match: on ZeroGPU (``spaces`` importable and the
variable set) it is the engine's own match wrapped in ``spaces.GPU``; anywhere else it
is the engine's own match, unchanged. ``spaces`` is imported only there, so it need not
be installed. The decorated function is a module-level one that looks the engine up by
key: ZeroGPU runs it in a worker process and only the key and the image travel.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable

from mm_core.settings import get_settings

#: Environment variable that Hugging Face sets on ZeroGPU Spaces.
ZERO_GPU_ENV = "SPACES_ZERO_GPU"

_ENGINES: dict[int, object] = {}
_GPU_MATCH: Callable | None = None


def gpu_duration() -> int:
    """Longest GPU time one match may take, in seconds (``spaces.GPU(duration=...)``):
    ``MM_ZEROGPU_DURATION``, default 60. A tiled 4096² image is the slow case."""
    return get_settings().zerogpu_duration


def spaces_installed() -> bool:
    """Whether Hugging Face's ``spaces`` package can be imported (without importing it)."""
    return importlib.util.find_spec("spaces") is not None


def on_zerogpu() -> bool:
    """True on ZeroGPU hardware with the ``spaces`` package importable."""
    flag = os.environ.get(ZERO_GPU_ENV, "").strip().lower() in ("1", "true", "yes")
    return flag and spaces_installed()


def _match(key: int, image, boxes, per_object: bool):
    return _ENGINES[key]._match_locked(image, boxes, per_object)


def gpu_runner(engine) -> Callable:
    """The callable ``(image, boxes, per_object) -> MatchMaps`` the engine runs its matches with."""
    global _GPU_MATCH
    if not on_zerogpu():
        return engine._match_locked
    import spaces

    if _GPU_MATCH is None:
        _GPU_MATCH = spaces.GPU(duration=gpu_duration())(_match)
    _ENGINES[id(engine)] = engine
    return functools.partial(_GPU_MATCH, id(engine))
