"""``python -m mm_core check-heads FOLDER``: load every authors' checkpoint in a folder strictly.

One line per file present: ``<file>: ok (...)`` or ``<file>: <why>`` naming the first missing,
unexpected or mis-shaped key. Exit code 0 when every file present is good, 1 when one is not,
2 when the folder is missing or holds none of the files. No Stable Diffusion weights are
needed: modules are built on the meta device and take the file's tensors as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mm_core.errors import MMError

__all__ = ["TASK_EMBED", "check_file", "check_folder", "main"]

#: The authors' fourth file: a text-token embedding (never loaded by their released code).
TASK_EMBED = "task_embed.pth"
#: Width of a CLIP ViT-L/14 text-token embedding (Stable Diffusion v1).
TOKEN_DIM = 768


def _files() -> dict[str, str]:
    from mm_core.heads.authors.weights import FILES

    return {name: kind for kind, name in FILES.items()}


def _task_embed_line(state) -> str:
    """Check a token embedding: a 768-value tensor, or a one-entry dict holding one."""
    import torch

    value, where = state, ""
    if isinstance(state, dict):
        if len(state) != 1:
            raise MMError(f"expected one token embedding, found {len(state)} entries "
                          f"({', '.join(map(repr, list(state)[:3]))}{', ...' if len(state) > 3 else ''})")
        (key, value), = state.items()
        where = f" under {key!r}"
    if not isinstance(value, torch.Tensor) or value.numel() != TOKEN_DIM:
        got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise MMError(f"expected a {TOKEN_DIM}-value token embedding{where}, found {got}")
    return f"ok (token embedding{where}, shape {list(value.shape)})"


def _read_any(path: Path):
    """Any weights-only content of a .pth (the token file need not be a dict)."""
    import torch

    from mm_core.errors import ModelUnavailableError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip errors, unpickling errors, OSError: one message
        raise ModelUnavailableError(f"cannot be read as a PyTorch file (corrupt or truncated?): "
                                    f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}") from None


def check_file(path: str | Path) -> str:
    """Check one file; returns ``"ok (...)"`` or raises with the reason.

    Parameters
    ----------
    path : path
        One of ``microscopy_matching_{seg,cnt,tra}.pth`` or ``task_embed.pth``.

    Returns
    -------
    str
        ``"ok (...)"`` with what was loaded.

    Raises
    ------
    MMError
        The file cannot be read or has another layout (the message names the first bad key).
    """
    from mm_core.heads.authors import layout
    from mm_core.heads.authors.weights import read_state

    path = Path(path)
    if path.name == TASK_EMBED:
        return _task_embed_line(_read_any(path))
    kind = _files()[path.name]
    module = layout.build(kind, device="meta")
    state = read_state(path)
    problem = layout.first_mismatch(module, state)
    if problem is not None:
        raise MMError(problem)
    layout.load_state(module, state, path.name)
    n = sum(t.numel() for t in module.state_dict().values())
    return f"ok ({layout.describe(kind)}, {len(state)} tensors, {n:,} values)"


def check_folder(folder: str | Path) -> tuple[list[str], bool]:
    """Check every authors' file present in ``folder``.

    Parameters
    ----------
    folder : path

    Returns
    -------
    lines : list of str
        ``"<file>: ok (...)"`` or ``"<file>: <reason>"``, one per file present.
    good : bool
        Whether every file present loaded.
    """
    folder = Path(folder)
    lines, good = [], True
    for name in [*_files(), TASK_EMBED]:
        path = folder / name
        if not path.is_file():
            continue
        try:
            lines.append(f"{name}: {check_file(path)}")
        except MMError as exc:
            msg = str(exc)
            lines.append(msg if msg.startswith(name) else f"{name}: {msg}")
            good = False
    return lines, good


def main(folder: str) -> int:
    """Print one line per checkpoint in ``folder``; 0 all good, 1 a mismatch, 2 nothing to check."""
    path = Path(folder)
    if not path.is_dir():
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return 2
    lines, good = check_folder(path)
    if not lines:
        names = ", ".join([*_files(), TASK_EMBED])
        print(f"error: {folder} holds none of the authors' files ({names})", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0 if good else 1
