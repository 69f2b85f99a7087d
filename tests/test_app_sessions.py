"""The app's per-session store: small results, freed on replace/session end/idle, capped by bytes."""

from __future__ import annotations

import time

import numpy as np

from mm_core.app import sessions
from mm_core.app.sessions import SessionStore, size_of


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _mb(n):
    return np.zeros(n * 2**20, np.uint8)


def test_size_of_counts_arrays_in_nested_values():
    assert size_of({"a": _mb(1), "b": [_mb(2), (_mb(1), "x")]}) >= 4 * 2**20
    assert size_of(None) == 0


def test_replace_drop_session_and_folders(tmp_path):
    store = SessionStore(max_bytes=100 * 2**20, idle_s=60)
    f1, f2 = tmp_path / "r1", tmp_path / "r2"
    f1.mkdir()
    f2.mkdir()
    k = store.key("sess", "seg/result")
    assert k == store.key("sess", "seg/result") and store.key(None, "x") != store.key(None, "x")
    store.put(k, {"labels": _mb(5)}, f1)
    store.put(k, {"labels": _mb(5)}, f2)  # a new run in the same tab replaces the old one
    assert len(store) == 1 and not f1.exists() and f2.exists()
    store.put(store.key("sess", "count/result"), _mb(1))
    store.put(store.key("other", "seg/result"), _mb(1))
    assert store.drop_session("sess") == 2 and not f2.exists() and len(store) == 1
    store.drop(None)
    store.drop(12)  # not a key: ignored


def test_lru_cap_by_bytes_keeps_the_newest(tmp_path):
    store = SessionStore(max_bytes=10 * 2**20, idle_s=60)
    folder = tmp_path / "kept"
    folder.mkdir()
    store.put("a:r", _mb(4), folder)
    store.put("b:r", _mb(4))
    assert store.get("a:r") is not None  # a used: b is now the least recent
    store.put("c:r", _mb(4))
    assert "b:r" not in store and "a:r" in store and "c:r" in store
    assert store.nbytes <= 10 * 2**20
    store.put("d:r", _mb(20))  # larger than the cap alone: kept, everything else evicted
    assert list(store._items) == ["d:r"] and folder.exists()  # evicted for memory: folder kept


def test_idle_entries_are_swept_by_the_timer(tmp_path):
    clock = Clock()
    store = SessionStore(max_bytes=2**30, idle_s=30, clock=clock)
    folder = tmp_path / "r"
    folder.mkdir()
    store.put("api:r", _mb(1), folder)
    store.put("web:r", _mb(1))
    clock.t = 20
    assert store.get("web:r") is not None
    clock.t = 40
    assert store.sweep() == 1 and "api:r" not in store and not folder.exists() and "web:r" in store
    # the timer thread sweeps without any request arriving
    real = SessionStore(max_bytes=2**30, idle_s=0.05)
    real.put("x:r", _mb(1))
    calls = []
    real.start_timer(0.02, also=lambda: calls.append(1))
    deadline = time.time() + 5
    while len(real) and time.time() < deadline:
        time.sleep(0.02)
    assert len(real) == 0 and calls


def test_closed_session_is_freed_after_a_grace_period_unless_it_comes_back(tmp_path):
    clock = Clock()
    store = SessionStore(max_bytes=2**30, idle_s=600, clock=clock)
    store.put("gone:seg", _mb(1))
    store.put("back:seg", _mb(1))
    assert store.close_session("gone", grace_s=30) == 1 and store.close_session("back", grace_s=30) == 1
    clock.t = 10
    assert store.get("back:seg") is not None  # the heartbeat reconnected and the session went on
    clock.t = 31
    assert store.sweep() == 1 and "gone:seg" not in store and "back:seg" in store


# ---- issue 20: a memory budget that counts what is really held ---------------------------------
def test_files_a_result_maps_into_memory_are_counted(tmp_path):
    big = tmp_path / "rendered.npy"
    np.save(big, np.zeros((20, 256, 256, 3), np.uint8))
    kept = {"rendered": big, "maps": None, "n": 20, "gif": str(tmp_path / "x.gif")}
    assert sessions.size_of(kept) >= big.stat().st_size


def test_the_oldest_results_are_evicted_when_the_process_holds_more_than_its_budget(monkeypatch):
    held = {"rss": 0}
    monkeypatch.setattr(sessions, "process_rss", lambda: held["rss"], raising=False)
    monkeypatch.setattr(sessions, "max_rss", lambda: 1000, raising=False)
    store = sessions.SessionStore(max_bytes=10**9, idle_s=600)
    for k in ("a", "b", "c"):
        store.put(store.key(k, "seg"), {"x": np.zeros(10)})
    assert len(store) == 3  # under the budget: all kept
    held["rss"] = 5000  # the process grew past its budget (and stays there): the oldest go, the newest stays
    store.put(store.key("d", "seg"), {"x": np.zeros(10)})
    assert list(store._items) == ["d:seg"]
