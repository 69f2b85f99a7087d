"""Matching engines behind one interface (:class:`~mm_core.engines.base.Engine`).

- ``classic``: weight-free within-image matching with a filter bank, any CPU.
- ``ldm``: frozen Stable Diffusion v1.4 attention matching (needs the weights,
  best on a GPU).

:func:`get_engine` returns an engine instance and the reason it was chosen; engines
are created once per process and reused.
"""

from __future__ import annotations

from mm_core.engines.base import Engine, MatchMaps
from mm_core.errors import InputError

ENGINE_NAMES = ("auto", "classic", "ldm")
_CACHE: dict[str, Engine] = {}


def _ldm_available() -> tuple[bool, str]:
    from mm_core.engines.ldm import availability

    return availability()


def get_engine(name: str = "auto") -> tuple[Engine, str]:
    """Return ``(engine, reason)`` for ``name`` in ``auto``, ``classic``, ``ldm``.

    ``auto`` picks the LDM engine only when a GPU and its weights are available,
    else the weight-free ``classic`` engine; ``reason`` says which and why, in words
    fit for the CLI and the app.
    """
    name = (name or "auto").lower()
    if name not in ENGINE_NAMES:
        raise InputError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")
    if name == "auto":
        ok, why = _ldm_available()
        name = "ldm" if ok else "classic"
        reason = (f"LDM engine (Stable Diffusion v1.4 attention): {why}" if ok
                  else f"weight-free engine: {why}")
    elif name == "ldm":
        reason = "LDM engine (Stable Diffusion v1.4 attention), as requested"
    else:
        reason = "weight-free engine, as requested"
    if name not in _CACHE:
        if name == "ldm":
            from mm_core.engines.ldm import LDMEngine

            _CACHE[name] = LDMEngine.from_pretrained()
        else:
            from mm_core.engines.classic import ClassicEngine

            _CACHE[name] = ClassicEngine()
    return _CACHE[name], reason


__all__ = ["Engine", "MatchMaps", "get_engine", "ENGINE_NAMES"]
