"""Frames held in a folder or a zip: listing in natural order, and safe zip reading.

Zip members are read into memory, never extracted, so nothing is written to disk.
Before anything is decompressed every entry is checked from the zip's own headers:
no absolute paths, no ``..``, no symbolic links, no encryption, a bounded number of
entries, a bounded total uncompressed size and compression ratio. While a member
is read, its size is counted again, so a header that lies cannot get past the caps.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from mm_core.errors import InputError
from mm_core.io.limits import IMAGE_EXTENSIONS, RATIO_FLOOR, Limits, natural_key

_CHUNK = 1 << 20


def _is_junk(parts) -> bool:
    """``__MACOSX/`` folders and dot-files (``.DS_Store``, ``._t000.tif``) are skipped."""
    return any(p == "__MACOSX" or p.startswith(".") for p in parts)


def is_image_name(name: str) -> bool:
    """True for names with an image extension (see ``IMAGE_EXTENSIONS``)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_folder(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, in natural order (``t2`` before ``t10``).

    Dot-files, ``__MACOSX`` and files without an image extension are skipped;
    sub-folders are not searched.
    """
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise InputError(f"the folder {folder.name} cannot be read ({exc.strerror or exc})") from None
    files = [p for p in entries if p.is_file() and not _is_junk([p.name]) and is_image_name(p.name)]
    if not files:
        subdirs = sorted(p.name for p in entries if p.is_dir() and not _is_junk([p.name]))
        hint = (
            f" (it has sub-folders: {', '.join(subdirs[:5])}; choose the one holding the frames)"
            if subdirs
            else ""
        )
        raise InputError(f"the folder {folder.name} holds no PNG, JPEG, BMP or TIFF images{hint}")
    return sorted(files, key=lambda p: natural_key(p.name))


def expand_inputs(inputs) -> list[Path]:
    """Files given directly, plus the image files inside given folders (natural order).

    Parameters
    ----------
    inputs : sequence of str or Path
        Image files and folders (a folder contributes :func:`list_folder`).

    Returns
    -------
    list of Path
        Files are kept as given (the readers refuse what they cannot read).
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        out.extend(list_folder(p) if p.is_dir() else [p])
    return out


def _check_member_name(info: zipfile.ZipInfo, zname: str) -> None:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InputError(
            f"{zname} was refused: its entry {name!r} is a symbolic link, "
            "which could point outside the archive"
        )
    norm = name.replace("\\", "/")
    if "\x00" in norm or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise InputError(f"{zname} was refused: its entry {name!r} has an absolute path")
    if ".." in PurePosixPath(norm).parts:
        raise InputError(f"{zname} was refused: its entry {name!r} points outside the archive ('..')")


def open_zip(path: Path, limits: Limits) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """Open a zip and return it with its image members, checked and in natural order.

    Raises
    ------
    InputError
        A hostile or broken archive (see the module docstring), or one without images.
    """
    zname = path.name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(f"{zname} is not a readable zip archive ({exc})") from None
    try:
        return zf, _image_members(zf, zname, limits)
    except BaseException:
        zf.close()
        raise


def _image_members(zf: zipfile.ZipFile, zname: str, limits: Limits) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > limits.max_zip_members:
        raise InputError(
            f"{zname} holds {len(infos):,} entries, more than the limit of "
            f"{limits.max_zip_members:,} (MM_MAX_ZIP_MEMBERS)"
        )
    members = []
    for info in infos:
        _check_member_name(info, zname)
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if info.is_dir() or not parts or _is_junk(parts) or not is_image_name(parts[-1]):
            continue
        if info.flag_bits & 0x1:
            raise InputError(f"{zname} was refused: {info.filename} is password-protected")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and ratio > limits.max_zip_ratio:
            raise InputError(
                f"{zname} was refused: {info.filename} would expand {ratio:,.0f} times "
                f"(limit {limits.max_zip_ratio}, MM_MAX_ZIP_RATIO); this looks like a zip bomb"
            )
        members.append(info)
    if not members:
        raise InputError(f"{zname} holds no PNG, JPEG, BMP or TIFF images")
    total = sum(m.file_size for m in members)
    if total > limits.max_zip_bytes:
        raise InputError(
            f"{zname} was refused: its images would take {total / 2**20:,.0f} MiB once "
            f"uncompressed, more than the limit of {limits.max_zip_bytes / 2**20:,.0f} MiB "
            "(MM_MAX_ZIP_BYTES)"
        )
    folders = sorted({str(PurePosixPath(m.filename.replace("\\", "/")).parent) for m in members})
    if len(folders) > 1:
        shown = ", ".join(f or "." for f in folders[:4])
        raise InputError(
            f"{zname} holds images in {len(folders)} different folders ({shown}); "
            "put the frames of one sequence in one folder per zip"
        )
    return sorted(members, key=lambda m: natural_key(m.filename))


def member_name(info: zipfile.ZipInfo) -> str:
    """The file name of a zip member, without its folder."""
    return PurePosixPath(info.filename.replace("\\", "/")).name


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, zname: str, budget: list[int]) -> bytes:
    """Read one member into memory, counting bytes against its header and ``budget``.

    ``budget`` is a one-item list with the bytes still allowed for the whole archive;
    it is decreased in place.
    """
    name = member_name(info)
    chunks, size = [], 0
    try:
        with zf.open(info) as fh:
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > info.file_size or size > budget[0]:
                    raise InputError(
                        f"{zname} was refused: {name} expands beyond the size its header "
                        "declares or beyond the archive limit; this looks like a zip bomb"
                    )
                chunks.append(chunk)
    except InputError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError,
            NotImplementedError) as exc:
        raise InputError(f"{name} in {zname} could not be decompressed ({exc})") from None
    budget[0] -= size
    return b"".join(chunks)
