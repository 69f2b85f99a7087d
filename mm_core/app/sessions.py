"""What the app keeps per session, bounded: an LRU by bytes with an idle expiry.

Handlers keep only what re-rendering needs (labels, a uint8 display image, the
density, small maps), never engine features, and keep it here instead of in
``gr.State``: a state holds only the key. The store frees an entry

- when the same session replaces it (a new upload or run in the same tab);
- when the session ends (Gradio's unload, after ``MM_APP_CLOSED_GRACE_S`` seconds in case
  it reconnects; or the end of its state);
- after ``MM_APP_IDLE_S`` seconds without use, checked by a timer, so API clients
  that never send a heartbeat are freed too;
- when the whole store holds more than ``MM_APP_MAX_STATE_MB`` (least recently used first), counting
  the arrays it holds and the files its results map into memory (tracking pictures);
- when the whole process holds more than ``MM_APP_MAX_RSS_MB`` (its resident memory, read
  from ``/proc``): the oldest results go first, until it is under or one is left.

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

from mm_core.settings import get_settings

log = logging.getLogger("mm_core.app")



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
    if isinstance(obj, Path):  # a file a result maps into memory when shown (tracking pictures)
        try:
            return int(obj.stat().st_size) if obj.is_file() else 0
        except OSError:
            return 0
    if isinstance(obj, (str, bytes)):
        return len(obj)
    return 64


def process_rss() -> int:
    """Resident memory of this process in bytes (0 where ``/proc`` is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def max_rss() -> int:
    """The process memory budget in bytes (``MM_APP_MAX_RSS_MB``)."""
    from mm_core.settings import get_settings

    return int(get_settings().app_max_rss_mb * 2**20)


@dataclass
class _Entry:
    value: Any
    nbytes: int
    session: str
    folder: Path | None
    last: float


def release_memory() -> None:
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
    max_bytes : int, optional
        Most bytes held in all; beyond, least recently used entries are evicted
        (default ``MM_APP_MAX_STATE_MB``).
    idle_s : float, optional
        Entries unused for this long are dropped by :meth:`sweep` (default ``MM_APP_IDLE_S``).
    clock : callable
        Time source (seconds), for tests.
    """

    def __init__(self, max_bytes: int | None = None, idle_s: float | None = None, clock=time.monotonic):
        settings = get_settings()
        max_bytes = settings.app_max_state_mb * 2**20 if max_bytes is None else max_bytes
        idle_s = settings.app_idle_s if idle_s is None else idle_s
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
            release_memory()

    def drop_session(self, session: str | None) -> int:
        """Forget every entry of a session now; returns how many."""
        with self._lock:
            keys = [k for k, e in self._items.items() if e.session == session]
        for k in keys:
            self.drop(k)
        return len(keys)

    def close_session(self, session: str | None, grace_s: float | None = None) -> int:
        """A session's connection ended: free its entries ``grace_s`` seconds from now (by
        :meth:`sweep`) unless it comes back and uses them (Gradio's heartbeat also drops and
        reconnects on a busy server or a flaky network). Returns how many entries.
        ``grace_s`` defaults to ``MM_APP_CLOSED_GRACE_S``."""
        grace_s = get_settings().app_closed_grace_s if grace_s is None else grace_s
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
        if process_rss() > max_rss():  # what the process really holds: release, then evict oldest
            release_memory()
            while process_rss() > max_rss() and len(self._items) > 1:
                self._items.pop(next(k for k in self._items if k != keep))
                evicted += 1
                release_memory()
        if evicted:
            log.info("memory cap: %d result(s) evicted, %.0f MB held, process %.0f MB", evicted,
                     self.nbytes / 2**20, process_rss() / 2**20)
            release_memory()

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
