"""Finding and loading learned heads: a checkpoint folder, a registry name or a hub id.

The registry maps short names to a folder shipped inside the package
(``mm_core/heads/learned/weights/<name>``) or to a Hugging Face hub id. Heads are
loaded once per process.
"""

from __future__ import annotations

from pathlib import Path

from mm_core.errors import InputError, ModelUnavailableError
from mm_core.heads.learned.base import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LearnedHead,
    check_engine,
    load_weights,
    read_config,
)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: name -> folder (relative to ``WEIGHTS_DIR``) or ``hub:<repo id>``.
REGISTRY: dict[str, str] = {}
_LOADED: dict[tuple[str, str | None], LearnedHead] = {}


def head_classes() -> dict[str, type[LearnedHead]]:
    """``head_type`` -> class, for every learned head."""
    from mm_core.heads.learned.counting import CountingHead
    from mm_core.heads.learned.generalist import GeneralistHead
    from mm_core.heads.learned.segmentation import SegmentationHead
    from mm_core.heads.learned.tracking import LinkingHead

    return {c.head_type: c for c in (SegmentationHead, CountingHead, LinkingHead, GeneralistHead)}


def available_heads() -> dict[str, str]:
    """Registered names (and shipped folders found in ``WEIGHTS_DIR``) -> location."""
    out = dict(REGISTRY)
    if WEIGHTS_DIR.is_dir():
        for d in sorted(WEIGHTS_DIR.iterdir()):
            if (d / CONFIG_NAME).is_file():
                out.setdefault(d.name, d.name)
    return out


def resolve(path_or_name) -> Path:
    """Local folder of a checkpoint given as a folder, a registry name or ``hub:<owner>/<name>``."""
    p = Path(str(path_or_name)).expanduser()
    if p.is_dir():
        return p
    if p.is_file() and p.name in (CONFIG_NAME, WEIGHTS_NAME):
        return p.parent
    name = str(path_or_name)
    known = available_heads()
    if name in known:
        loc = known[name]
        if not loc.startswith("hub:"):
            return WEIGHTS_DIR / loc
        name = loc
    if name.startswith("hub:"):
        return _from_hub(name.removeprefix("hub:"))
    choices = ", ".join(sorted(known)) or "none shipped"
    raise InputError(f"no head checkpoint at {path_or_name!r}: give a folder with {CONFIG_NAME} and "
                     f"{WEIGHTS_NAME}, a hub id (hub:owner/name) or a registered name ({choices})")


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except Exception as exc:  # noqa: BLE001  (offline, unknown repo, ...)
        raise ModelUnavailableError(f"the head {repo_id!r} could not be fetched from the Hugging Face hub "
                                    f"({type(exc).__name__}); download it on a connected machine and pass "
                                    f"its folder instead") from None


def load_head(path_or_name, engine: str | None = None) -> LearnedHead:
    """Load a learned head.

    Parameters
    ----------
    path_or_name : str or Path
        Checkpoint folder, registry name or hub id.
    engine : str, optional
        Engine whose maps the head will read; a head trained on another engine is
        refused with :class:`~mm_core.errors.InputError`.

    Returns
    -------
    LearnedHead
        In eval mode, with ``predict(maps, image)`` and ``describe()``.
    """
    folder = resolve(path_or_name)
    key = (str(folder.resolve()), engine)
    if key in _LOADED:
        return _LOADED[key]
    cfg = read_config(folder)
    if engine is not None:
        check_engine(cfg, engine, cfg["head_type"])
    if cfg["head_type"] == "exemplar_projector":
        raise InputError(f"{folder} holds the LDM engine's exemplar projector, not a task head: load it with "
                         f"LDMEngine.from_pretrained(heads='{folder / WEIGHTS_NAME}') or set MM_LDM_HEADS to that file")
    classes = head_classes()
    if cfg["head_type"] not in classes:
        raise InputError(f"{folder} holds an unknown head type {cfg['head_type']!r} "
                         f"(known: {', '.join(classes)})")
    head = load_weights(classes[cfg["head_type"]].from_config(cfg), folder)
    head.config["info"].setdefault("name", folder.name)
    _LOADED[key] = head
    return head


#: Shipped heads used by default: (task, engine, mode) -> registry name. Filled only for heads
#: that beat the analytic head on the dev data by the rule of the README's "Learned heads"
#: section (trained on ``train/`` only). ``mode`` is ``"automatic"`` or ``"exemplar"``.
DEFAULTS: dict[tuple, str] = {}
_TASK_TYPES = {"segment": "segmentation", "count": "counting", "track": "linking"}
#: Heads that serve several tasks (``head_type`` -> tasks); ``track`` = the per-frame segmentation.
_MULTI_TASK = {"generalist": ("segment", "count", "track")}
_ANALYTIC = {"segment": "analytic watershed head", "count": "analytic density head",
             "track": "analytic linking (overlap + distance + descriptors)"}


def default_name(task: str, engine: str, mode: str | None = None) -> str | None:
    """Registry name of the shipped default head for ``task``/``engine``/``mode``, or ``None``."""
    if mode is not None and (task, engine, mode) in DEFAULTS:
        return DEFAULTS[(task, engine, mode)]
    return DEFAULTS.get((task, engine))


def select_head(spec, task: str, engine: str, mode: str | None = None):
    """Pick the head for ``task`` on ``engine``'s maps, and say which in words.

    Parameters
    ----------
    spec : None, "auto", "analytic", registry name, folder or ``hub:owner/name``
        ``None``/``"auto"``: the shipped default for this task, engine and mode when
        there is one, else the analytic head; ``"analytic"``/``"none"``: always analytic.
    task : {"segment", "count", "track"}
    engine : str
        Name of the engine that makes the maps (``MatchMaps.engine``).
    mode : {"automatic", "exemplar"}, optional
        Engine mode (defaults may differ per mode).

    Returns
    -------
    head : object with ``predict(maps, image)`` and ``describe()``, or None
        ``None`` means: use the analytic head. For ``track`` a learned head is the
        per-frame segmentation head.
    note : str
        E.g. ``"learned segmentation head 'seg-classic' (trained on classic engine maps)"``.

    Notes
    -----
    A shipped default that cannot be loaded (missing, corrupt, other engine) never
    stops a run: the analytic head is used and the note says why. A head asked for
    by name or folder that cannot be loaded raises :class:`~mm_core.errors.InputError`
    (or :class:`~mm_core.errors.ModelUnavailableError`) with one clear message.
    """
    if task not in _TASK_TYPES:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(_TASK_TYPES)}")
    if spec is not None and str(spec).lower() in ("analytic", "none"):
        return None, f"{_ANALYTIC[task]}, as requested"
    if spec is None or str(spec).lower() == "auto":
        name = default_name(task, engine, mode)
        if name is None:
            what = f" in {mode} mode" if mode else ""
            return None, f"{_ANALYTIC[task]} (no learned {task} head ships for the {engine} engine{what})"
        try:
            return _task_view(load_head(name, engine=engine), task, name)
        except (InputError, ModelUnavailableError, OSError, ValueError) as exc:
            return None, (f"{_ANALYTIC[task]}: the shipped learned head '{name}' could not be used "
                          f"({str(exc).splitlines()[0]})")
    return _task_view(load_head(spec, engine=engine), task, spec)


def _task_view(head: LearnedHead, task: str, spec):
    """``(head for task, note)``; a multi-task head gives its view for ``task``."""
    if task in _MULTI_TASK.get(head.head_type, ()):
        view = head.counter() if task == "count" else head
        note = view.describe() + (" (per-frame segmentation; analytic linking)" if task == "track" else "")
        return view, note
    if head.head_type != _TASK_TYPES[task]:
        raise InputError(f"{spec} is a {head.head_type} head; the {task} task needs a {_TASK_TYPES[task]} head")
    return head, head.describe()
