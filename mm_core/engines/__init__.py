"""Matching engines behind one interface (:class:`~mm_core.engines.base.Engine`).

- ``classic``: weight-free within-image matching with a filter bank, any CPU.
- ``ldm``: frozen Stable Diffusion v1.4 attention matching (needs the weights,
  best on a GPU).

:func:`choose_engine` decides which engine a name means (``auto`` looks for a GPU
and the weights) and says why; :func:`create_engine` builds one. Nothing is cached
here: a :class:`mm_core.Matcher` holds the engine it made.
"""

from __future__ import annotations

from mm_core.engines.base import Engine, MatchMaps
from mm_core.errors import InputError

ENGINE_NAMES = ("auto", "classic", "ldm")

__all__ = ["ENGINE_NAMES", "Engine", "MatchMaps", "choose_engine", "create_engine"]


def _ldm_available() -> tuple[bool, str]:
    from mm_core.engines.ldm import availability

    return availability()


def choose_engine(name: str = "auto") -> tuple[str, str]:
    """Decide which engine ``name`` means, without loading it.

    Parameters
    ----------
    name : {"auto", "classic", "ldm"}
        ``auto`` picks the LDM engine only when a CUDA GPU and its weights are
        available, else the weight-free ``classic`` engine.

    Returns
    -------
    engine : str
        ``"classic"`` or ``"ldm"``.
    reason : str
        Which engine and why, in words fit for the CLI and the app.

    Raises
    ------
    InputError
        ``name`` is not an engine name.
    """
    if not isinstance(name, str) or name.lower() not in ENGINE_NAMES:
        raise InputError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")
    name = name.lower()
    if name == "auto":
        ok, why = _ldm_available()
        if ok:
            return "ldm", f"LDM engine (Stable Diffusion v1.4 attention): {why}"
        return "classic", f"weight-free engine: {why}"
    if name == "ldm":
        return "ldm", "LDM engine (Stable Diffusion v1.4 attention), as requested"
    return "classic", "weight-free engine, as requested"


def create_engine(name: str, device: str | None = None) -> Engine:
    """Build a new engine (loading its weights, for the LDM engine).

    Parameters
    ----------
    name : {"classic", "ldm"}
        A name as returned by :func:`choose_engine`.
    device : str, optional
        Torch device of the LDM engine (default: CUDA when present); the classic
        engine runs on the CPU.

    Returns
    -------
    Engine

    Raises
    ------
    ModelUnavailableError
        The LDM engine's weights are not on this machine (and may not be downloaded).
    """
    if name == "ldm":
        from mm_core.engines.ldm import LDMEngine

        return LDMEngine.from_pretrained(device=device)
    if name == "classic":
        from mm_core.engines.classic import ClassicEngine

        return ClassicEngine()
    raise InputError(f"unknown engine {name!r}; choose classic or ldm")
