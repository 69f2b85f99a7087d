"""Finding, fetching and checking the authors' released head checkpoints.

The files (Hugging Face hub repository ``phoebe777777/111``; see
``docs``/README "The paper's heads"): ``microscopy_matching_seg.pth`` (segmentation),
``microscopy_matching_cnt.pth`` (counting), ``microscopy_matching_tra.pth`` (tracking).
``task_embed.pth`` is not needed: the authors' released code never loads it (the task
token starts from the embedding of the words "segment", "count" or "track").

Where a file is looked for, in order:

1. the ``folder`` argument, else the folder named by ``MM_AUTHORS_HEADS``;
2. the local Hugging Face cache (a copy fetched earlier);
3. the hub, only when downloads are allowed (``MM_ALLOW_DOWNLOAD=1``, as for the
   Stable Diffusion weights, and ``HF_HUB_OFFLINE`` unset).

A download goes through ``huggingface_hub.hf_hub_download``: it resumes an interrupted
transfer and moves the file into the cache only once it is complete. The file's SHA-256
is then compared with the hub's record (for files stored with Git LFS); a mismatch
removes the cached copy. Every local file is checked for a plausible size before it is
read, and a file that does not unpickle as a state dict gives one message.

Nothing here imports torch or huggingface_hub at module import.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mm_core.errors import ModelUnavailableError

REPO_ID = "phoebe777777/111"
HEADS_ENV = "MM_AUTHORS_HEADS"
DOWNLOAD_ENV = "MM_ALLOW_DOWNLOAD"
#: Checkpoint of each head kind.
FILES = {"seg": "microscopy_matching_seg.pth", "cnt": "microscopy_matching_cnt.pth",
         "tra": "microscopy_matching_tra.pth"}
#: Which checkpoint each task needs.
TASK_KIND = {"segment": "seg", "count": "cnt", "track": "tra"}
#: Parameter + buffer element counts of the full-size modules (research note, section 0).
ELEMENTS = {"seg": 344_078_465, "cnt": 40_272_460, "tra": 356_137_280}

__all__ = ["DOWNLOAD_ENV", "ELEMENTS", "FILES", "HEADS_ENV", "REPO_ID", "TASK_KIND", "check_size",
           "download_allowed", "find_file", "heads_folder", "present", "read_state", "sha256"]


def heads_folder(folder: str | os.PathLike | None = None) -> Path | None:
    """The folder given, else ``MM_AUTHORS_HEADS``, else ``None``."""
    from mm_core.settings import get_settings

    value = folder if folder is not None else get_settings().authors_heads.strip()
    return Path(value).expanduser() if value else None


def download_allowed(allow_download: bool | None = None) -> bool:
    """Same rule as the Stable Diffusion weights: the argument, else ``MM_ALLOW_DOWNLOAD``; never offline."""
    from mm_core.engines.ldm.loading import _download_allowed

    return _download_allowed(allow_download)


def _cached(filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(REPO_ID, filename)
    return Path(hit) if isinstance(hit, str) and os.path.isfile(hit) else None


def _how_to_fix(kind: str, folder: Path | None) -> str:
    where = (f"the folder {str(folder)!r} (from {HEADS_ENV} or the path given) has no {FILES[kind]}"
             if folder is not None else f"{HEADS_ENV} is not set and the Hugging Face cache has no copy")
    return (f"The paper's {kind} head ({FILES[kind]}) is not on this machine: {where}, and downloads are "
            f"off. Put the authors' files in a folder and set {HEADS_ENV}=/path/to/folder, or set "
            f"{DOWNLOAD_ENV}=1 to fetch them from the Hugging Face hub ({REPO_ID}) on first use.")


def present(kind: str, folder: str | os.PathLike | None = None) -> Path | None:
    """The local file of ``kind`` (folder or cache) if there is one; never downloads."""
    root = heads_folder(folder)
    if root is not None and (root / FILES[kind]).is_file():
        return root / FILES[kind]
    return _cached(FILES[kind])


def sha256(path: str | os.PathLike, block: int = 1 << 24) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _hub_sha256(filename: str) -> str | None:
    """The hub's LFS SHA-256 of ``filename`` (``None`` when the hub does not record one)."""
    from huggingface_hub import HfApi

    infos = HfApi().get_paths_info(REPO_ID, [filename])
    lfs = getattr(infos[0], "lfs", None) if infos else None
    return getattr(lfs, "sha256", None) if lfs is not None else None


def _drop_cached(path: Path) -> None:
    """Remove a cached download (the snapshot link and the blob it points to)."""
    blob = path.resolve()
    for p in {path, blob}:
        try:
            p.unlink()
        except OSError:
            pass


def _download(kind: str) -> Path:
    from huggingface_hub import hf_hub_download

    filename = FILES[kind]
    try:
        path = Path(hf_hub_download(repo_id=REPO_ID, filename=filename))
    except Exception as exc:  # noqa: BLE001 - network, authentication, missing file: one line
        raise ModelUnavailableError(
            f"Downloading {filename} from the Hugging Face hub ({REPO_ID}) failed: {type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0]}. Put the file in a folder and set {HEADS_ENV}.") from None
    try:
        expected = _hub_sha256(filename)
    except Exception:  # noqa: BLE001 - the record is a bonus; the size and unpickling checks remain
        expected = None
    if expected is not None and sha256(path) != expected:
        _drop_cached(path)
        raise ModelUnavailableError(f"{filename} from {REPO_ID} does not match the hub's checksum; the "
                                    f"copy was removed. Try again (or set {HEADS_ENV} to a folder with "
                                    f"a good copy).")
    return path


def find_file(kind: str, folder: str | os.PathLike | None = None, allow_download: bool | None = None) -> Path:
    """The checkpoint file of ``kind`` ("seg", "cnt" or "tra"): folder, cache, or a download.

    Raises
    ------
    ModelUnavailableError
        Not on this machine and downloads are off (the message names the folder and
        ``MM_AUTHORS_HEADS``), or the download failed.
    """
    if kind not in FILES:
        raise ModelUnavailableError(f"unknown head kind {kind!r}; one of {', '.join(FILES)}")
    local = present(kind, folder)
    if local is not None:
        return local
    if not download_allowed(allow_download):
        raise ModelUnavailableError(_how_to_fix(kind, heads_folder(folder)))
    return _download(kind)


def check_size(path: Path, n_elements: int) -> None:
    """A file too small to hold ``n_elements`` values (at 2 bytes each) is truncated: one message."""
    size = path.stat().st_size
    if size < 2 * n_elements:
        raise ModelUnavailableError(
            f"{path.name} looks truncated or is not the authors' file: {size:,} bytes, but the head has "
            f"{n_elements:,} values (at least {2 * n_elements:,} bytes). Fetch it again.")


def read_state(path: str | os.PathLike, n_elements: int | None = None) -> dict:
    """Read a checkpoint as a state dict (tensors only, no code runs), with the size check.

    Parameters
    ----------
    path : path
    n_elements : int, optional
        Element count of the module it is meant for (size check); ``None`` skips it.

    Raises
    ------
    ModelUnavailableError
        Truncated, corrupt or not a state dict (one line naming the file).
    """
    import torch

    path = Path(path)
    if n_elements:
        check_size(path, n_elements)
    try:
        try:  # memory-mapped: a 1.4 GB file is not read twice into memory
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # mmap needs the zip format; other errors are the file's
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip errors, unpickling errors, OSError: one message
        raise ModelUnavailableError(
            f"{path.name} cannot be read as a PyTorch checkpoint (corrupt or truncated?): "
            f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}. Fetch it again.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ModelUnavailableError(f"{path.name} is not a state dict (got {type(state).__name__})")
    return state
