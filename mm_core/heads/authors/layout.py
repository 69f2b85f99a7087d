"""Building the authors' head modules and loading their checkpoints strictly.

:func:`build` makes the module of a checkpoint kind ("seg", "cnt", "tra"), on the meta device
when asked (no memory until weights are assigned). :func:`first_mismatch` compares a state dict
with a module's layout and names the first missing, unexpected or mis-shaped key;
:func:`load_state` refuses a checkpoint of another layout with that one message
(:class:`~mm_core.errors.ModelUnavailableError`) and otherwise loads it strictly.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext

import torch
from torch import nn

from mm_core.errors import ModelUnavailableError

__all__ = ["KINDS", "build", "describe", "first_mismatch", "layout", "load_state"]

#: Checkpoint kinds and the module each one fills.
KINDS = ("seg", "cnt", "tra")


def build(kind: str, *, vit_depth: int = 24, tracker_layers: int = 6, device=None) -> nn.Module:
    """The module whose state dict is the ``kind`` checkpoint's, in eval mode.

    Parameters
    ----------
    kind : {"seg", "cnt", "tra"}
        Segmentation, counting or tracking checkpoint.
    vit_depth : int
        ViT blocks (24 as released; fewer only for tests).
    tracker_layers : int
        Tracking-transformer encoder and decoder layers (6 as released; fewer only for tests).
    device : str or torch.device, optional
        ``"meta"`` builds without allocating (fill it with :func:`load_state`).

    Returns
    -------
    torch.nn.Module
        :class:`~.modules.SegmentationHeadModule`, :class:`~.modules.CountingHeadModule` or
        :class:`~.modules.TrackingHeadModule`.
    """
    from mm_core.heads.authors import modules

    if kind not in KINDS:
        raise ValueError(f"unknown head kind {kind!r}; one of {', '.join(KINDS)}")
    with torch.device(device) if device is not None else nullcontext():
        if kind == "seg":
            module = modules.SegmentationHeadModule(vit_depth=vit_depth)
        elif kind == "cnt":
            module = modules.CountingHeadModule()
        else:
            module = modules.TrackingHeadModule(vit_depth=vit_depth, tracker_layers=tracker_layers)
    return module.eval()


def layout(module_or_layout) -> dict[str, tuple[int, ...]]:
    """Key -> shape, in state-dict order, of a module (or a mapping already of that form)."""
    if isinstance(module_or_layout, nn.Module):
        return {k: tuple(v.shape) for k, v in module_or_layout.state_dict().items()}
    return {k: tuple(v) for k, v in module_or_layout.items()}


def _shape(value) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def first_mismatch(expected, state: Mapping) -> str | None:
    """The first difference between a state dict and the expected layout, or ``None``.

    Keys are walked in the expected (state-dict) order; the first one that is missing or has
    another shape is named, else the first unexpected key of ``state``. Counts of the other
    differences follow in brackets.

    Parameters
    ----------
    expected : torch.nn.Module or mapping
        A module, or key -> shape.
    state : mapping
        The checkpoint's state dict.

    Returns
    -------
    str or None
        E.g. ``"missing key 'loca_model.fuse.0.bias' [256] (and 2 more missing)"``.
    """
    want = layout(expected)
    missing = [k for k in want if k not in state]
    shaped = [k for k in want if k in state and _shape(state[k]) != want[k]]
    extra = [k for k in state if k not in want]
    if not (missing or shaped or extra):
        return None
    others = {"missing": len(missing), "mis-shaped": len(shaped), "unexpected": len(extra)}
    first = next(k for k in [*want, *extra] if k in missing or k in shaped or k in extra)
    if first in missing:
        what, others["missing"] = f"missing key {first!r} {list(want[first])}", others["missing"] - 1
    elif first in shaped:
        got = _shape(state[first])
        what = (f"key {first!r} has shape {list(got)}, expected {list(want[first])}" if got is not None
                else f"key {first!r} is a {type(state[first]).__name__}, not a tensor")
        others["mis-shaped"] -= 1
    else:
        what, others["unexpected"] = f"unexpected key {first!r}", others["unexpected"] - 1
    rest = ", ".join(f"{n} more {name}" for name, n in others.items() if n)
    return f"{what} (and {rest})" if rest else what


def describe(kind: str) -> str:
    """Human name of a checkpoint kind."""
    return {"seg": "segmentation", "cnt": "counting", "tra": "tracking"}[kind] + " head"


def load_state(module: nn.Module, state: Mapping, name: str) -> None:
    """Load ``state`` into ``module`` strictly, or refuse with one message naming the first bad key.

    A module on the meta device takes the checkpoint's tensors as they are (``assign=True``);
    a real one copies them.

    Parameters
    ----------
    module : torch.nn.Module
        From :func:`build`.
    state : mapping
        The checkpoint's state dict.
    name : str
        Shown in the message (the file name).

    Raises
    ------
    ModelUnavailableError
        The checkpoint has another layout.
    """
    problem = first_mismatch(module, state)
    if problem is not None:
        raise ModelUnavailableError(f"{name} does not have the layout of the authors' checkpoint: {problem}")
    on_meta = any(t.is_meta for t in module.state_dict().values())
    module.load_state_dict(dict(state), strict=True, assign=on_meta)
    if on_meta:
        _keep_frozen(module)


def _keep_frozen(module: nn.Module) -> None:
    """``assign=True`` takes the loaded tensors' ``requires_grad``; inference needs none."""
    for p in module.parameters():
        p.requires_grad_(False)
