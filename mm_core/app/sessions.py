"""What the app keeps per session, bounded: an LRU by bytes with an idle expiry.

Handlers keep only what re-rendering needs (labels, a uint8 display image, the
density, small maps), never engine features, and keep it here instead of in
``gr.State``: a state holds only the key. The store frees an entry

- when the same session replaces it (a new upload or run in the same tab);
- when the session ends (Gradio's unload, after :data:`CLOSED_GRACE_S` seconds in case
  it reconnects; or the end of its state);
- after :data:`IDLE_S` seconds without use, checked by a timer, so API clients
  that never send a heartbeat are freed too;
- when the whole store holds more than :data:`MAX_BYTES` (least recently used first).

Dropping an entry for good (replaced, session over, idle) also deletes its request
folder; an entry evicted for memory keeps its folder (its downloads stay valid
until the folder clean-up).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("mm_core.app")

#: Seconds without use after which a session's results are freed (``MM_APP_IDLE_S``).
IDLE_S = float(os.environ.get("MM_APP_IDLE_S", "600"))
#: Seconds a closed session's results are kept in case it reconnects (``MM_APP_CLOSED_GRACE_S``).
CLOSED_GRACE_S = float(os.environ.get("MM_APP_CLOSED_GRACE_S", "30"))
#: Most bytes of results held by one server process (``MM_APP_MAX_STATE_MB``, default 1024 MB).
MAX_BYTES = int(float(os.environ.get("MM_APP_MAX_STATE_MB", "1024")) * 2**20)


def size_of(obj: Any, _depth: int = 0) -> int:
    """Bytes held by the arrays and tables in ``obj`` (dataclasses, dicts, lists, tuples)."""
    if _depth > 6 or obj is None:
        return 0
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if hasattr(obj, "memory_usage") and hasattr(obj, "columns"):  # pandas DataFrame
        return int(obj.memory_usage(index=True, deep=False).sum())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(size_of(getattr(obj, f.name), _depth + 1) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(size_of(v, _depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(size_of(v, _depth + 1) for v in obj)
    if isinstance(obj, (str, bytes)):
        return len(obj)
    return 64


@dataclass
class _Entry:
    value: Any
    nbytes: int
    session: str
    folder: Path | None
    last: float


def _release_memory() -> None:
    """Give freed heap pages back to the system (glibc keeps them otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def remove_folder(folder: Path | None) -> None:
    """Delete a request folder (never follows a symlink)."""
    if folder is not None and folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder, ignore_errors=True)


class SessionStore:
    """Results per session and slot, bounded by bytes and idle time (thread-safe).

    Parameters
    ----------
    max_bytes : int
        Most bytes held in all; beyond, least recently used entries are evicted.
    idle_s : float
        Entries unused for this long are dropped by :meth:`sweep`.
    clock : callable
        Time source (seconds), for tests.
    """

    def __init__(self, max_bytes: int = MAX_BYTES, idle_s: float = IDLE_S, clock=time.monotonic):
        self.max_bytes, self.idle_s, self.clock = int(max_bytes), float(idle_s), clock
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._timer: threading.Thread | None = None

    # ---- use
    @staticmethod
    def key(session: str | None, slot: str) -> str:
        """The key of ``slot`` (e.g. ``"seg/result"``) in a session (a fresh one without a session)."""
        return f"{session or uuid.uuid4().hex}:{slot}"

    def put(self, key: str, value: Any, folder: Path | None = None) -> str:
        """Keep ``value`` under ``key``, replacing (and dropping) what was there; returns ``key``."""
        nbytes = size_of(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None and old.folder != folder:
                remove_folder(old.folder)
            self._items[key] = _Entry(value, nbytes, key.split(":", 1)[0], folder, self.clock())
            self._evict(keep=key)
        return key

    def get(self, key: str | None) -> Any | None:
        """The value under ``key`` (and mark it used), or ``None`` when it is gone."""
        if not key:
            return None
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            entry.last = self.clock()
            self._items.move_to_end(key)
            return entry.value

    def move(self, src: str, dst: str) -> str | None:
        """Keep the entry of ``src`` (with its folder) under ``dst`` instead, replacing what was
        there; returns ``dst``, or ``None`` when ``src`` is gone."""
        with self._lock:
            entry = self._items.pop(src, None)
            if entry is None:
                return None
            old = self._items.pop(dst, None)
            entry.last = self.clock()
            self._items[dst] = entry
        if old is not None and old.folder != entry.folder:
            remove_folder(old.folder)
        return dst

    def drop(self, key: str | None) -> None:
        """Forget ``key`` and delete its folder."""
        if not isinstance(key, str):
            return
        with self._lock:
            entry = self._items.pop(key, None)
        if entry is not None:
            log.debug("dropped %s", key)
            remove_folder(entry.folder)
            _release_memory()

    def drop_session(self, session: str | None) -> int:
        """Forget every entry of a session now; returns how many."""
        with self._lock:
            keys = [k for k, e in self._items.items() if e.session == session]
        for k in keys:
            self.drop(k)
        return len(keys)

    def close_session(self, session: str | None, grace_s: float = CLOSED_GRACE_S) -> int:
        """A session's connection ended: free its entries ``grace_s`` seconds from now (by
        :meth:`sweep`) unless it comes back and uses them (Gradio's heartbeat also drops and
        reconnects on a busy server or a flaky network). Returns how many entries."""
        now = self.clock()
        with self._lock:
            entries = [e for e in self._items.values() if e.session == session]
            for e in entries:
                e.last = min(e.last, now - self.idle_s + grace_s)
        return len(entries)

    def sweep(self) -> int:
        """Drop the entries idle for more than ``idle_s``; returns how many."""
        now = self.clock()
        with self._lock:
            keys = [k for k, e in self._items.items() if now - e.last > self.idle_s]
        for k in keys:
            self.drop(k)
        if keys:
            log.info("%d result(s) unused for %.0f s freed, %.0f MB held", len(keys), self.idle_s,
                     self.nbytes / 2**20)
        return len(keys)

    def _evict(self, keep: str) -> None:
        evicted = 0
        while self.nbytes > self.max_bytes and len(self._items) > 1:
            oldest = next(k for k in self._items if k != keep)
            self._items.pop(oldest)
            evicted += 1
        if evicted:
            log.info("memory cap: %d result(s) evicted, %.0f MB held", evicted, self.nbytes / 2**20)
            _release_memory()

    # ---- state
    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return sum(e.nbytes for e in self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    # ---- timer
    def start_timer(self, interval_s: float, also=None) -> None:
        """Run :meth:`sweep` (and ``also()``, e.g. the folder clean-up) every ``interval_s`` seconds."""
        if self._timer is not None and self._timer.is_alive():
            return

        def loop():
            while True:
                time.sleep(interval_s)
                try:
                    self.sweep()
                    if also is not None:
                        also()
                except Exception:
                    log.exception("clean-up timer")

        self._timer = threading.Thread(target=loop, name="mm-app-cleanup", daemon=True)
        self._timer.start()
