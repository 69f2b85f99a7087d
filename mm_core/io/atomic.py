"""Writing a file so that it never lands anywhere but at its own path.

Every output file is first written to a fresh temporary name in the destination
folder (created with ``O_EXCL``, so it never follows an existing link) and then
moved onto its name with :func:`os.replace`. ``os.replace`` replaces whatever
is at the name, a symlink included, instead of writing through it, so a link
planted in an output folder cannot redirect a write outside it; a reader never
sees a half-written file; a failed write leaves no temporary file behind.
:func:`atomic_dir` does the same for a folder (a zarr store): it is written under a
temporary name and swapped in whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mm_core.errors import InputError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Permissions of written files (what ``open(path, "w")`` would give under this umask).
FILE_MODE = 0o666 & ~_umask()
#: Permissions of written folders.
DIR_MODE = 0o777 & ~_umask()


def out_path(path) -> Path:
    """Return ``path`` as a Path, creating its missing parent folders (every writer's first step)."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise InputError(f"cannot write the file {p}: a folder of that name exists")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


@contextmanager
def atomic_path(path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or Path
        The file to write. Its folder must exist.
    mode : int, optional
        Permission bits of the result (default :data:`FILE_MODE`).

    Yields
    ------
    Path
        An empty file in the same folder, to be written by the caller.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:80]}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE if mode is None else mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write(path, data: bytes | str, mode: int | None = None) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` through :func:`atomic_path`."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(raw)
    return Path(path)


def _replace_folder(tmp: Path, target: Path) -> None:
    """Move the folder ``tmp`` onto ``target``: a link or file there is removed (never followed),
    an old folder is moved aside first and deleted after."""
    old = None
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
    elif target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name[:80]}.", suffix=".old", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; it replaces ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or Path
        The folder to write (its parent must exist). Whatever is there (a folder, a file, a
        symlink) is replaced only when the block succeeds; a symlink is removed, never followed.

    Yields
    ------
    Path
        The folder to fill; removed with its content when the block fails.
    """
    target = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name[:80]}.", suffix=".part", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_replacing(path, newline: str | None = "") -> IO[str]:
    """A new, empty text file (UTF-8) moved onto ``path`` at once, open for appending rows.

    For a log written row by row (a batch's ``manifest.csv``): the file is made under a
    fresh name (``O_EXCL``) and renamed onto ``path`` before the first row, so a symlink
    at ``path`` is replaced, never written through; later rows go to the open file, not
    to the name. Characters that are not valid UTF-8 (file names from another system)
    are written escaped instead of raising.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:80]}.", suffix=".part", dir=target.parent)
    try:
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace", newline=newline)


def clear_name(path) -> Path:
    """Remove whatever is at ``path`` (a file, a symlink, a folder: never what a link points
    to), so that the next write creates a new entry there; returns ``path``."""
    import shutil

    target = Path(path)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    return target
