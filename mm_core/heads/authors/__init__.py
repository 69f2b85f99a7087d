"""The paper's released task heads (segmentation, counting, tracking) on the LDM engine.

The authors of MicroscopyMatching released trained heads on the Hugging Face hub
(``phoebe777777/111``). This package holds modules of our own whose state dicts load
those checkpoints strictly (:mod:`.layout` and the modules it builds) and the three
inference paths over our LDM engine (:mod:`.sd`, :mod:`.segment`, :mod:`.count`,
:mod:`.track`, with :mod:`.flows` for flows to masks). :mod:`.weights` finds or fetches
the files. We ship none of the authors' files; see the README section "The paper's heads".

Importing this package is light (no torch): :func:`authors_head` imports the rest.
"""

from __future__ import annotations

#: The name that selects these heads (``Matcher.from_pretrained("microscopymatching")``,
#: ``head="microscopymatching"``).
AUTHORS_SPEC = "microscopymatching"

__all__ = ["AUTHORS_SPEC", "authors_head", "is_authors_spec"]


def is_authors_spec(spec) -> bool:
    """Whether a head spec names the authors' heads."""
    return isinstance(spec, str) and spec.strip().lower() in (AUTHORS_SPEC, "authors")


def authors_head(task: str, folder=None, allow_download: bool | None = None, **options):
    """The authors' head of ``task`` ("segment", "count" or "track"), weights loaded.

    Parameters
    ----------
    task : {"segment", "count", "track"}
    folder : path, optional
        Folder with the checkpoints (default ``MM_AUTHORS_HEADS``, then the cache, then
        the hub when ``MM_ALLOW_DOWNLOAD=1``).
    allow_download : bool, optional
    **options
        Passed to the head (``seed``, ``seeded``, small-module options for tests).

    Returns
    -------
    object
        A head with the task's interface (``match`` + ``predict``, or for tracking
        ``track_sequence``).

    Raises
    ------
    ModelUnavailableError
        Weights missing (downloads off), corrupt, or of another layout.
    """
    from mm_core.errors import InputError

    key = (task, None if folder is None else str(folder), allow_download, tuple(sorted(options.items())))
    if key in _LOADED:  # both modes (and the tracking path) share one loaded head
        return _LOADED[key]
    if task == "segment":
        from mm_core.heads.authors.segment import AuthorsSegmentHead as cls
    elif task == "count":
        from mm_core.heads.authors.count import AuthorsCountHead as cls
    elif task == "track":
        from mm_core.heads.authors.track import AuthorsTrackHead as cls
    else:
        raise InputError(f"unknown task {task!r}; choose one of segment, count, track")
    head = cls.load(folder=folder, allow_download=allow_download, **options)
    for old in [k for k in _LOADED if k[0] == task]:  # one loaded head per task: a new set-up replaces it
        del _LOADED[old]
    _LOADED[key] = head
    return head


_LOADED: dict = {}
