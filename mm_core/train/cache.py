"""Disk cache of engine outputs, so a frozen engine runs once per training image.

One ``.npz`` per (image content, engine, boxes): the key is a SHA-1 of the
normalised image bytes, its shape, the engine name (and its ``version`` attribute
when it has one) and the boxes. Features are stored as float16 to keep the cache
small.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mm_core.engines.base import MatchMaps
from mm_core.io.atomic import atomic_path

DEFAULT_CACHE = Path(".cache") / "mm_heads"


def cache_key(image: np.ndarray, engine_name: str, boxes: np.ndarray | None, engine_version: str = "") -> str:
    """Hex key for ``image`` (normalised array), engine and boxes."""
    h = hashlib.sha1()
    arr = np.ascontiguousarray(image, dtype=np.float32)
    h.update(arr.tobytes())
    h.update(str(arr.shape).encode())
    h.update(f"{engine_name}|{engine_version}".encode())
    h.update(b"none" if boxes is None else np.ascontiguousarray(boxes, np.float32).tobytes())
    return h.hexdigest()


def engine_sources(engine) -> list[Path]:
    """Source files of the engine's module and of every ``mm_core`` module it imports, even indirectly.

    Found with grimp's import graph (the library behind import-linter), so a change
    anywhere the maps depend on (``mm_core.transforms`` say) is seen, not only in the
    engine's own package.
    """
    import importlib.util

    import grimp

    module = type(engine).__module__
    if not module.startswith("mm_core."):
        return []
    graph = grimp.build_graph("mm_core", cache_dir=None)
    names = sorted({module} | set(graph.find_upstream_modules(module)))
    files = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            files.append(Path(spec.origin))
    return files


def engine_version(engine) -> str:
    """The engine's ``version`` attribute plus a hash of every source file its maps depend on.

    Editing the engine's code, or any ``mm_core`` module it imports
    (:func:`engine_sources`), therefore invalidates cached maps.
    """
    h = hashlib.sha1(str(getattr(engine, "version", "")).encode())
    for f in engine_sources(engine):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class EngineCache:
    """Run ``engine.match`` through a disk cache.

    Parameters
    ----------
    engine : Engine
        Any engine (``name``, ``match``).
    folder : path, optional
        Cache folder (default ``.cache/mm_heads``); ``None`` or ``""`` disables caching.
    version : str, optional
        Engine version in the key; default :func:`engine_version` (changes whenever
        the engine's code does). Pin it to reuse maps across engine edits you know
        do not matter.
    """

    def __init__(self, engine, folder=DEFAULT_CACHE, version: str | None = None, features: bool = True):
        self.engine = engine
        self.features = features  # False: cached maps are read without their (large) features
        self.folder = Path(folder) / engine.name if folder else None
        self.hits = 0
        self.misses = 0
        self.version = engine_version(engine) if version is None else str(version)

    def match(self, image: np.ndarray, boxes: np.ndarray | None = None) -> MatchMaps:
        """Cached ``engine.match(image, boxes)``."""
        if self.folder is None:
            self.misses += 1
            return self.engine.match(image, boxes)
        key = cache_key(image, self.engine.name, boxes, self.version)
        path = self.folder / f"{key}.npz"
        if path.is_file():
            try:
                maps = load_maps(path, features=self.features)
                self.hits += 1
                return maps
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)
        maps = self.engine.match(image, boxes)
        self.misses += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        save_maps(path, maps)
        return maps


def atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to the npz file ``path`` through :func:`mm_core.io.atomic.atomic_path` (a
    temporary file of a unique name, then renamed), so that processes sharing a cache folder (two
    trainings side by side) never read a half-written file or rename each other's temporary file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def save_maps(path: Path, maps: MatchMaps) -> None:
    """Write ``maps`` to ``path`` (npz, through :func:`atomic_savez`)."""
    arrays = {"foreground": maps.foreground.astype(np.float32), "centers": maps.centers.astype(np.float32)}
    if maps.features is not None:
        arrays["features"] = np.asarray(maps.features).astype(np.float16)
    meta = {"scale": float(maps.scale), "image_shape": list(maps.image_shape), "engine": maps.engine,
            "mode": maps.mode, "conditioning": maps.conditioning}
    atomic_savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def load_maps(path: Path, features: bool = True) -> MatchMaps:
    """Read maps written by :func:`save_maps` (display maps and info are not kept; features
    only with ``features=True``)."""
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        feats = z["features"].astype(np.float32) if features and "features" in z.files else None
        return MatchMaps(foreground=z["foreground"], centers=z["centers"], scale=meta["scale"],
                         image_shape=tuple(meta["image_shape"]), engine=meta["engine"], mode=meta["mode"],
                         conditioning=meta["conditioning"], features=feats, info={"cached": True})
