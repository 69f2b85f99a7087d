"""Which file each session has loaded in each tab, so a late result never lands under another file.

A run is tagged with the identity of the file it ran on (its upload folder, unique per
upload). Loading a file sets the tab's identity; choosing a new file (before it is even
read) clears it. When a run ends, :meth:`CurrentFiles.is_current` says whether its file is
still the one loaded; if not, the app drops the result instead of showing it under the new
file. Gradio-free and thread-safe; a few bytes per session and tab.
"""

from __future__ import annotations

import threading


def identity(loaded) -> str | None:
    """The identity of a loaded file (its upload folder), or ``None`` for no file."""
    folder = getattr(loaded, "folder", None)
    return None if folder is None else str(folder)


class CurrentFiles:
    """``(session, tab) -> identity`` of the file loaded now."""

    def __init__(self):
        self._now: dict[tuple[str, str], str | None] = {}
        self._lock = threading.Lock()

    def set(self, session: str | None, tab: str, loaded) -> None:
        """``loaded`` (or ``None``: a new file is being chosen) is now the tab's file."""
        if session is None:  # outside a server (unit tests): nothing to tell apart
            return
        with self._lock:
            self._now[(session, tab)] = identity(loaded)

    def let_go(self, session: str | None, tab: str, loaded) -> None:
        """A new file is being chosen in place of ``loaded``: no result of ``loaded`` may show now.

        Does nothing when another file is already loaded (this notice came late, after the new
        file was read: requests are not ordered on a busy server)."""
        if session is None:
            return
        with self._lock:
            key = (session, tab)
            if self._now.get(key, identity(loaded)) == identity(loaded):
                self._now[key] = None

    def is_current(self, session: str | None, tab: str, loaded) -> bool:
        """Whether ``loaded`` is still the tab's file (always true outside a server or when
        the session never loaded through the page, e.g. an API client that sent its own state)."""
        if session is None:
            return True
        with self._lock:
            if (session, tab) not in self._now:
                return True
            return self._now[(session, tab)] == identity(loaded)

    def drop_session(self, session: str | None) -> None:
        """Forget a session (its tab closed)."""
        with self._lock:
            for key in [k for k in self._now if k[0] == session]:
                del self._now[key]


#: The app's one registry.
CURRENT = CurrentFiles()
