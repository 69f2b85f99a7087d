"""Which file each session has loaded in each tab, so a late result never lands under another file.

A run is tagged with the token of the file it ran on (its upload folder, hashed: unique per
upload). Loading a file sets the tab's token; choosing a new file (before it is even read)
lets go of the token of the file it replaces. When a run ends, :meth:`CurrentFiles.is_current`
says whether its file is still the one loaded; if not, the app drops the result instead of
showing it under the new file.

Which file a new choice replaces must come from the page, as it was when the user chose:
the page holds the token in a hidden field and sends it with the notice. A ``gr.State`` is
read on the server when the notice is processed, and on a busy server that can be after the
new file was read, so the notice would let go of the new file itself and its results would
never show (the browser tests' "result not shown within 120 s"). Gradio-free and
thread-safe; a few bytes per session and tab.
"""

from __future__ import annotations

import hashlib
import logging
import threading

log = logging.getLogger("mm_core.app")


def identity(loaded) -> str | None:
    """The token of a loaded file (its upload folder, hashed), or ``None`` for no file."""
    folder = getattr(loaded, "folder", None)
    if folder is None:
        return None
    return hashlib.blake2b(str(folder).encode(), digest_size=8).hexdigest()


class CurrentFiles:
    """``(session, tab) -> token`` of the file loaded now."""

    def __init__(self):
        self._now: dict[tuple[str, str], str | None] = {}
        self._lock = threading.Lock()

    def set(self, session: str | None, tab: str, loaded) -> None:
        """``loaded`` (or ``None``: no file) is now the tab's file."""
        if session is None:  # outside a server (unit tests): nothing to tell apart
            return
        with self._lock:
            self._now[(session, tab)] = identity(loaded)
        log.debug("session %s, %s: file %s loaded", session, tab, identity(loaded))

    def let_go(self, session: str | None, tab: str, token: str | None) -> None:
        """A new file is being chosen in place of the file ``token`` (as the page showed it when
        the user chose; empty or ``None``: no file): no result of that file may show now.

        Does nothing when another file is already loaded (this notice came late, after the new
        file was read: requests are not ordered on a busy server)."""
        if session is None:
            return
        token = token or None
        with self._lock:
            key = (session, tab)
            if self._now.get(key, token) == token:
                self._now[key] = None
        log.debug("session %s, %s: file %s let go", session, tab, token)

    def now(self, session: str | None, tab: str) -> str | None:
        """The token of the tab's file now (``None``: none, or being chosen)."""
        with self._lock:
            return self._now.get((session, tab))

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
