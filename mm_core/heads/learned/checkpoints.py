"""Where learned-head checkpoints live and what their ``config.json`` must say.

A checkpoint is a folder with ``model.safetensors`` (the weights) and ``config.json``
(``head_type``, ``engine``, ``format_version``, architecture and how it was
trained). It is named by a folder, a shipped name (a folder shipped inside the
package, ``mm_core/heads/learned/weights/<name>``) or a Hugging Face hub id
(``hub:owner/name``). Which head serves a task by default is said in
:mod:`mm_core.heads.registry`, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

from mm_core.errors import InputError, ModelUnavailableError

#: Version of the checkpoint format (bumped when config keys change meaning).
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: The shipped checkpoints: one folder per name.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def available_heads() -> dict[str, Path]:
    """Shipped names -> their folders in :data:`WEIGHTS_DIR`."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {d.name: d for d in sorted(WEIGHTS_DIR.iterdir()) if (d / CONFIG_NAME).is_file()}


def resolve(path_or_name) -> Path:
    """Local folder of a checkpoint given as a folder, a shipped name or ``hub:<owner>/<name>``."""
    p = Path(str(path_or_name)).expanduser()
    if p.is_dir():
        return p
    if p.is_file() and p.name in (CONFIG_NAME, WEIGHTS_NAME):
        return p.parent
    name = str(path_or_name)
    known = available_heads()
    if name in known:
        return known[name]
    if name.startswith("hub:"):
        return _from_hub(name.removeprefix("hub:"))
    choices = ", ".join(sorted(known)) or "none shipped"
    raise InputError(f"no head checkpoint at {path_or_name!r}: give a folder with {CONFIG_NAME} and "
                     f"{WEIGHTS_NAME}, a hub id (hub:owner/name) or a shipped name ({choices})")


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except Exception as exc:  # noqa: BLE001  (offline, unknown repo, ...)
        raise ModelUnavailableError(f"the head {repo_id!r} could not be fetched from the Hugging Face hub "
                                    f"({type(exc).__name__}); download it on a connected machine and pass "
                                    f"its folder instead") from None


def check_engine(cfg: dict, engine: str, head_type: str = "head") -> None:
    """Raise :class:`InputError` when a head trained on one engine meets another."""
    want = cfg.get("engine")
    if want and engine and want != engine and want != "any":  # "any": reads no engine maps
        raise InputError(f"this {head_type} head was trained on the {want} engine's match maps and cannot "
                         f"read the {engine} engine's maps; run with --engine {want} or use a head trained "
                         f"for the {engine} engine (python -m mm_core.train ... --engine {engine})")


def read_config(folder: Path) -> dict:
    """Read and check ``config.json`` of a checkpoint folder."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file() or not (Path(folder) / WEIGHTS_NAME).is_file():
        raise ModelUnavailableError(f"{folder} is not a head checkpoint: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None
    for key in ("head_type", "engine"):
        if key not in cfg:
            raise InputError(f"{path} does not say which {key.replace('_', ' ')} it is for")
    if int(cfg.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer mm_core (format {cfg['format_version']}); upgrade mm_core")
    return cfg
