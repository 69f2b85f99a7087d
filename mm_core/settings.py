"""One settings object: every ``MM_*`` environment variable, its default and what it does.

The environment is read once, by :func:`get_settings`; code reads ``get_settings().field``
instead of ``os.environ``. Tests (or a long-lived process after changing the environment)
call :func:`reload_settings`. ``Settings()`` (no environment) holds the defaults, so a
module that needs a default names it as ``Settings().field``, never a second literal.
The README's settings table is generated from the fields by :func:`settings_table`
(``python -m mm_core settings --markdown``; a test checks that they agree).

A value that does not parse (``MM_APP_MAX_PIXELS=abc``) raises one
:class:`~mm_core.errors.InputError` naming the variable. Variables owned by other
libraries (``HF_HUB_OFFLINE``, ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``,
``SPACES_ZERO_GPU``) stay theirs and are read where they are used.

Adding a setting: one :func:`setting` field below, with its variable name and a one-line doc.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache

from mm_core.errors import InputError

__all__ = ["Settings", "get_settings", "reload_settings", "settings_table"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def setting(env: str, default, doc: str, *, positive: bool = False, choices: tuple[str, ...] = ()):
    """A settings field read from the environment variable ``env``.

    Parameters
    ----------
    env : str
        The variable's name (``MM_...``).
    default : str, bool, int or float
        The value when the variable is unset or empty; its type is the field's type.
    doc : str
        One line for the README's table.
    positive : bool
        Numbers must be above zero.
    choices : tuple of str
        The values a text setting may take (empty: any).
    """
    return field(default=default, metadata={"env": env, "doc": doc, "positive": positive, "choices": choices})


@dataclass(frozen=True)
class Settings:
    """Every setting of the library, the CLI and the app; see the module docstring."""

    # ---- engine and weights
    engine: str = setting("MM_ENGINE", "auto", "Engine the app runs: `auto`, `classic` or `ldm`.",
                          choices=("auto", "classic", "ldm"))
    allow_download: bool = setting(
        "MM_ALLOW_DOWNLOAD", False, "Allow fetching model weights from the Hugging Face hub on first use.")
    sd_model: str = setting("MM_SD_MODEL", "CompVis/stable-diffusion-v1-4",
                            "Stable Diffusion v1.4 of the LDM engine: a local diffusers folder or a hub id.")
    resnet_model: str = setting("MM_RESNET_MODEL", "microsoft/resnet-50",
                                "ResNet-50 backbone of the LDM exemplar projector: a local folder or a hub id.")
    ldm_heads: str = setting("MM_LDM_HEADS", "",
                             "Safetensors file with trained LDM projector / task-token weights (unset: none).")
    ldm_dtype: str = setting("MM_LDM_DTYPE", "", "Torch dtype of the LDM engine (unset: float16 on CUDA, "
                             "else float32).", choices=("float32", "float16", "bfloat16"))
    zerogpu_duration: int = setting("MM_ZEROGPU_DURATION", 60,
                                    "Longest GPU time of one match on a ZeroGPU Space, seconds.", positive=True)
    # ---- input limits of the library and the CLI (see mm_core.io.limits)
    max_pixels: int = setting("MM_MAX_PIXELS", 64 * 1024 * 1024,
                              "Most pixels per image plane read into memory (8192 x 8192).", positive=True)
    max_frames: int = setting("MM_MAX_FRAMES", 2000, "Most frames per time-lapse.", positive=True)
    max_total_pixels: int = setting("MM_MAX_TOTAL_PIXELS", 512 * 1024 * 1024,
                                    "Most pixels per file or sequence, all planes (2 GiB as float32).",
                                    positive=True)
    max_zip_bytes: int = setting("MM_MAX_ZIP_BYTES", 2 * 1024**3,
                                 "Most uncompressed bytes of the images in a zip.", positive=True)
    max_zip_ratio: int = setting("MM_MAX_ZIP_RATIO", 200,
                                 "Highest compression ratio of a zip member above 1 MiB.", positive=True)
    max_zip_members: int = setting("MM_MAX_ZIP_MEMBERS", 10_000, "Most entries in a zip.", positive=True)
    max_boxes: int = setting("MM_MAX_BOXES", 64, "Most exemplar boxes per image.", positive=True)
    max_lazy_pixels: int = setting("MM_MAX_LAZY_PIXELS", 65536 * 65536,
                                   "Most pixels per plane of a lazily read (tiled) image.", positive=True)
    # ---- the web app
    app_output_root: str = setting("MM_APP_OUTPUT_ROOT", "",
                                   "Folder of the app's per-request outputs (unset: `<temp>/mm_app`).")
    app_max_age_s: float = setting("MM_APP_MAX_AGE_S", 3600.0,
                                   "Seconds after which the app deletes an output folder.", positive=True)
    app_max_pixels: int = setting(
        "MM_APP_MAX_PIXELS", 100_000_000,
        "Most pixels per image or frame the app accepts (checked before decoding); large images run tiled.",
        positive=True)
    app_max_frames: int = setting("MM_APP_MAX_FRAMES", 300, "Most frames per time-lapse uploaded to the app.",
                                  positive=True)
    app_max_file_size: str = setting("MM_APP_MAX_FILE_SIZE", "200mb",
                                     "Largest upload to the app (Gradio's `max_file_size`, e.g. `200mb`).")
    app_idle_s: float = setting("MM_APP_IDLE_S", 600.0,
                                "Seconds without use after which the app frees a session's results.",
                                positive=True)
    app_closed_grace_s: float = setting("MM_APP_CLOSED_GRACE_S", 30.0,
                                        "Seconds a closed session's results wait for it to reconnect.")
    app_max_state_mb: float = setting("MM_APP_MAX_STATE_MB", 1024.0,
                                      "Most megabytes of results the app server holds.", positive=True)
    app_examples: str = setting("MM_EXAMPLES", "", "Folder of the app's example files (unset: `examples/`).")
    app_debug: bool = setting("MM_APP_DEBUG", False, "Log the app at DEBUG level.")
    # -- the paper's released heads (mm_core.heads.authors; issue 22)
    authors_heads: str = setting(
        "MM_AUTHORS_HEADS", "", "Folder with the authors' head checkpoints (`microscopy_matching_*.pth`).")
    pretrained: str = setting(
        "MM_PRETRAINED", "", "Named set-up the app loads (`microscopymatching`: the paper's system on the LDM "
        "engine); empty: `MM_ENGINE` and the default heads.")
    # -- trust boundaries (issue 20)
    app_max_total_pixels: int = setting(
        "MM_APP_MAX_TOTAL_PIXELS", 100_000_000,
        "App: most pixels of a time-lapse upload, frames x pixels, checked after its first frame.")
    app_max_rss_mb: float = setting(
        "MM_APP_MAX_RSS_MB", 3072.0,
        "App: process memory (RSS, MB) above which the oldest kept results are evicted.")
    max_declared_ratio: int = setting(
        "MM_MAX_DECLARED_RATIO", 500,
        "Most bytes a large TIFF/zarr may declare per byte it really stores (a forged or empty file).")
    read_time_budget_s: float = setting(
        "MM_READ_TIME_BUDGET_S", 1800.0, "Seconds one large (lazily read) image may take to read in all.")
    dask_scratch: str = setting(
        "MM_DASK_SCRATCH", "", "Scratch folder of local Dask workers (default: `.dask-scratch` in `--out`).")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every field from ``environ`` (default ``os.environ``); unset or empty keeps the default.

        Raises
        ------
        InputError
            A value that does not parse as the field's type, naming the variable.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"], "").strip()
            if raw:
                values[f.name] = _parse(raw, f)
        return cls(**values)

    @staticmethod
    def env(name: str) -> str:
        """The environment variable of the field ``name`` (for messages: ``set MM_SD_MODEL=...``)."""
        return Settings.__dataclass_fields__[name].metadata["env"]


def _parse(raw: str, f):
    """``raw`` as the type of field ``f``, checked; one message naming the variable otherwise."""
    env, default, meta = f.metadata["env"], f.default, f.metadata
    if isinstance(default, bool):
        if raw.lower() not in _TRUE + _FALSE:
            raise _bad(env, raw, "one of " + "/".join(_TRUE + _FALSE))
        return raw.lower() in _TRUE
    if isinstance(default, (int, float)):
        whole = isinstance(default, int)
        what = ("a positive " if meta["positive"] else "a ") + ("whole number" if whole else "number")
        try:
            value = float(raw)
        except ValueError:
            raise _bad(env, raw, what) from None
        if (whole and not value.is_integer()) or (meta["positive"] and value <= 0) or not math.isfinite(value):
            raise _bad(env, raw, what)
        return int(value) if whole else value
    if meta["choices"] and raw not in meta["choices"]:
        raise _bad(env, raw, "one of " + ", ".join(meta["choices"]))
    return raw


def _bad(env: str, raw: str, what: str) -> InputError:
    return InputError(f"environment variable {env} must be {what}, got {raw!r}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings, read from the environment on first use and then kept.

    Raises
    ------
    InputError
        A variable whose value does not parse (asked again on the next call).
    """
    return Settings.from_env()


def reload_settings() -> Settings:
    """Read the environment again (after a test or a caller changed it)."""
    get_settings.cache_clear()
    return get_settings()


def settings_table() -> str:
    """The README's settings table (Markdown), one row per field: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in fields(Settings):
        default = "unset" if f.default == "" else f"`{f.default}`"
        rows.append(f"| `{f.metadata['env']}` | {default} | {f.metadata['doc']} |")
    return "\n".join(rows)
