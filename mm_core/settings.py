"""One settings object: every ``MM_*`` environment variable, its default and what it does.

The environment is read once, by :func:`get_settings`; code reads ``get_settings().field``
instead of ``os.environ``. Tests (or a long-lived process after changing the environment)
call :func:`reload_settings`. The README's settings table is generated from :data:`FIELDS`
by :func:`settings_table` (a test checks that they agree).

Adding a setting: one :func:`setting` field below, with its variable name and a one-line doc.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache

from mm_core.errors import InputError

__all__ = ["Settings", "get_settings", "reload_settings", "settings_table"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def setting(env: str, default, doc: str):
    """A settings field read from the environment variable ``env`` (``doc``: one line for the README)."""
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Every setting of the library, the CLI and the app; see the module docstring."""

    engine: str = setting("MM_ENGINE", "auto", "Engine the app and `Matcher()` use: `auto`, `classic` or `ldm`.")
    allow_download: bool = setting(
        "MM_ALLOW_DOWNLOAD", False, "Allow fetching model weights from the Hugging Face hub on first use.")
    app_max_pixels: int = setting(
        "MM_APP_MAX_PIXELS", 100_000_000,
        "Most pixels per image or frame the app accepts (checked before decoding); large images run tiled.")

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
            raw = environ.get(f.metadata["env"], "")
            if raw.strip():
                values[f.name] = _parse(raw.strip(), f.default, f.metadata["env"])
        return cls(**values)


def _parse(raw: str, default, env: str):
    try:
        if isinstance(default, bool):
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError(raw)
            return raw.lower() in _TRUE
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise InputError(f"Environment variable {env}={raw!r} is not a valid "
                         f"{type(default).__name__} (default {default!r}).") from None
    return raw


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings, read from the environment on first use and then kept."""
    return Settings.from_env()


def reload_settings() -> Settings:
    """Read the environment again (after a test or a caller changed it)."""
    get_settings.cache_clear()
    return get_settings()


def settings_table() -> str:
    """The README's settings table (Markdown), one row per field: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in fields(Settings):
        default = "" if f.default is MISSING else f.default
        rows.append(f"| `{f.metadata['env']}` | `{default}` | {f.metadata['doc']} |")
    return "\n".join(rows)
