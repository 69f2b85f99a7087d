"""Many images at once: one task per image, on this process or on a Dask cluster.

:func:`batch` runs ``segment`` or ``count`` over a list of image paths, or ``track`` over a
list of time-lapses (one task per time-lapse), and writes every result into one folder as
soon as it is ready, with a ``manifest.csv`` (one row per input: ``image, output, status``,
``objects``, ``count`` or ``tracks``, ``pixel_size, seconds, message``) that is appended to and
flushed after every input. A single time-lapse writes its files into the folder itself, several
each into a subfolder named by its ``output``. With ``workers > 1`` the images run as
tasks on a :class:`distributed.LocalCluster` of single-threaded worker processes;
with ``scheduler=`` they go to an existing Dask scheduler (a SLURM/PBS cluster through
dask-jobqueue, Kubernetes, ...), whose workers must see the input and output folders.
Each worker builds its model (engine + head) once, in a worker plugin.

An image that cannot be used, or that fails, is recorded with its message and the
others go on; a worker that dies is recorded the same way. ``resume=True`` skips the
images whose manifest row says ``done`` and whose output files are all present
(outputs are written under a temporary name and renamed when complete, so an
interrupted run never leaves a file that looks complete).

Images larger than ``tile`` pixels on a side are processed tile by tile
(:mod:`mm_core.batching.tiled`); TIFFs above :data:`mm_core.batching.tasks.LAZY_FROM_PIXELS` and zarr/OME-Zarr inputs
are also read lazily and their labels written as OME-Zarr (``<base>.ome.zarr`` with a
``labels`` group) beside a BigTIFF ``<base>.tif``.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from mm_core.batching.tasks import VALUE_COLUMNS, Item, Model, TaskOptions, outputs, process
from mm_core.errors import InputError, MMError, printable
from mm_core.io.atomic import open_replacing
from mm_core.batching.tiled import DEFAULT_TILE

try:  # the distributed extra; without it batches run in this process only
    from distributed import WorkerPlugin as _PluginBase
except ImportError:  # pragma: no cover
    _PluginBase = object

MANIFEST = "manifest.csv"
PLUGIN_NAME = "mm_core-model"
TASKS = tuple(VALUE_COLUMNS)
#: Seconds to wait for an existing scheduler before giving up.
CONNECT_TIMEOUT = 10
#: Seconds to wait for a finished image's manifest row (a few hundred bytes) from its worker.
RESULT_TIMEOUT = 60


# --------------------------------------------------------------------------- manifest
class Manifest:
    """``manifest.csv`` in the output folder, one row per image, flushed as rows arrive."""

    def __init__(self, out: Path, task: str, keep: Iterable[dict] = ()):
        self.path = out / MANIFEST
        self.value_col = VALUE_COLUMNS[task]
        self.cols = ["image", "output", "status", self.value_col, "pixel_size", "seconds", "message"]
        self.rows: list[dict] = []
        self._fh = open_replacing(self.path)  # a link planted at the name is replaced
        self._w = csv.writer(self._fh)
        self._w.writerow(self.cols)
        for row in keep:
            self.add(row)

    def add(self, row: dict) -> None:
        """Append one row and flush it to disk."""
        value = row.get("value", row.get(self.value_col))
        v = "" if value is None or (isinstance(value, float) and np.isnan(value)) else (
            f"{float(value):.6g}" if self.value_col == "count" else str(int(float(value))))
        rec = dict(row, value=v)
        self.rows.append(rec)
        self._w.writerow([rec["image"], rec["output"], rec["status"], v, rec.get("pixel_size", ""),
                          rec["seconds"], rec["message"]])
        self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


def read_manifest(path) -> pd.DataFrame:
    """Read a ``manifest.csv`` (empty frame when absent or unreadable)."""
    try:
        return pd.read_csv(path, keep_default_na=False, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def _already_done(out: Path, task: str, items: list[Item]) -> dict[str, dict]:
    old = read_manifest(out / MANIFEST)
    if old.empty or "status" not in old:
        return {}
    col = VALUE_COLUMNS[task]
    done = {}
    by_key = {(it.path, it.base): it for it in items}
    for _, r in old[old["status"] == "done"].iterrows():
        it = by_key.get((r["image"], r["output"]))
        if it is None:
            continue
        names = outputs(task, it.base, lazy=(out / f"{it.base}.ome.zarr").exists())
        if all((it.out_dir(out) / n).exists() for n in names):
            done[it.path] = {"image": it.path, "output": it.base, "status": "done",
                             "value": float(r[col]) if r.get(col, "") != "" else float("nan"),
                             "pixel_size": r.get("pixel_size", ""),
                             "seconds": r.get("seconds", ""), "message": "resumed: outputs complete"}
    return done


# --------------------------------------------------------------------------- running
class ModelPlugin(_PluginBase):
    """Dask worker plugin: the worker's :class:`Model`, built on first use and kept."""

    name = PLUGIN_NAME

    def __init__(self, options: TaskOptions):
        self.options, self.model = options, None

    def setup(self, worker=None) -> None:  # noqa: D401 - dask hook
        """Limit native threads: one task at a time per single-threaded worker."""
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:  # pragma: no cover
            pass

    def teardown(self, worker=None) -> None:
        """Drop the model when the worker closes."""
        self.model = None

    def get(self) -> Model:
        """The worker's model, built on first use."""
        if self.model is None:
            self.model = Model(self.options)
        return self.model


def _on_worker(item: Item, options: TaskOptions) -> dict:
    from distributed import get_worker

    plugin = get_worker().plugins[PLUGIN_NAME]
    try:
        model = plugin.get()
    except MMError as exc:
        return {"image": item.path, "output": item.base, "status": "failed", "value": float("nan"),
                "pixel_size": "", "seconds": 0.0, "message": str(exc)}
    return process(model, item, options)


#: Dask settings of the batch: an image whose worker dies is tried once more on another worker by
#: Dask; after the other images the batch runs it once more, alone (_dask_rows: a neighbour's death
#: can take it down too), then records it as failed; workers may start processes (the LDM
#: engine's loaders). Dask's default queueing (worker-saturation 1.1) is kept: holding one task per
#: worker (1.0) left workers idle between images and was 1.6x slower on 80 VGG images, 2 workers.
CLUSTER_CONFIG = {"distributed.scheduler.allowed-failures": 1, "distributed.worker.daemon": False}


def scratch_dir(out) -> Path:
    """Where local Dask workers keep their files: ``MM_DASK_SCRATCH``, else ``<out>/.dask-scratch``."""
    from mm_core.settings import get_settings

    return Path(get_settings().dask_scratch or Path(out) / ".dask-scratch")


def _security():
    """A temporary TLS context (self-signed, in memory): only this process and the workers it
    starts hold the key, so other local processes cannot use the cluster; None without
    the ``cryptography`` package (then the cluster is reachable from this machine only)."""
    try:
        from distributed.security import Security

        return Security.temporary()
    except ImportError:  # pragma: no cover - cryptography comes with distributed's usual installs
        return None


def _client(workers: int, scheduler: str | None, out: Path | None = None):
    import dask
    from distributed import Client, LocalCluster

    dask.config.set(CLUSTER_CONFIG)
    if scheduler:
        try:
            return Client(scheduler, timeout=f"{CONNECT_TIMEOUT}s"), None
        except Exception as exc:  # noqa: BLE001 - every connection failure gets one message
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({reason}); check the address "
                             "and that the scheduler is running") from None
    one = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    scratch = scratch_dir(out if out is not None else ".")
    try:
        scratch.mkdir(parents=True, exist_ok=True)
        dask.config.set({"temporary-directory": str(scratch)})
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, env=one, silence_logs=40, local_directory=str(scratch),
                               security=_security())
    except Exception as exc:  # noqa: BLE001
        raise MMError(f"could not start {workers} local Dask worker processes "
                      f"({type(exc).__name__}: {exc})") from None
    return Client(cluster), cluster


def _dask_rows(items: list[Item], options: TaskOptions, workers: int, scheduler: str | None):
    client, cluster = _client(workers, scheduler, Path(options.out))
    try:
        from distributed import as_completed, wait

        client.register_plugin(ModelPlugin(options), name=PLUGIN_NAME)
        futures = {client.submit(_on_worker, it, options, key=f"mm-{i}-{it.base}", pure=False): it
                   for i, it in enumerate(items)}
        suspects = []
        for fut in as_completed(futures):
            it = futures[fut]
            row = _row_of(fut, it)
            # _on_worker never raises: a failed future means its workers died (this image's fault,
            # or a neighbour's queued on the same worker), or its result died with one
            if fut.status == "error" or row is None:
                suspects.append(it)
            else:
                yield row
            fut.release()
        for it in suspects:  # once more, one at a time: an image that kills its worker takes no other down
            fut = client.submit(_on_worker, it, options, key=f"mm-again-{it.base}", pure=False)
            wait([fut])
            yield _row_of(fut, it) or _failed(it, "the worker holding its result died twice")
            fut.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
            import shutil

            shutil.rmtree(scratch_dir(options.out) / "dask-scratch-space", ignore_errors=True)
            try:
                scratch_dir(options.out).rmdir()  # the default one, when left empty
            except OSError:
                pass


def _failed(it: Item, msg: str) -> dict:
    return {"image": it.path, "output": it.base, "status": "failed", "value": float("nan"),
            "pixel_size": "", "seconds": 0.0, "message": msg}


def _row_of(fut, it: Item) -> dict | None:
    """The manifest row of a completed future; None when its result was lost with its worker."""
    if fut.status == "error":
        exc = fut.exception()
        return _failed(it, f"the worker running it died or failed ({type(exc).__name__}: {exc})")
    try:
        return fut.result(timeout=RESULT_TIMEOUT) if fut.status == "finished" else None
    except Exception:  # noqa: BLE001 - lost between completion and fetch
        return None


def _local_rows(items: list[Item], options: TaskOptions, verbose: bool = False, matcher=None):
    model = None
    for it in items:
        if model is None:
            model = Model(options, matcher)
            if verbose:
                print(f"engine: {model.engine_note}\nhead: {model.head_note}", file=sys.stderr)
        yield process(model, it, options)


def unique_bases(paths: list) -> list[str]:
    """Output stems: file stems (``.ome`` and ``.zarr`` dropped), ``_2``, ``_3`` ... for repeats."""
    seen, out = set(), []
    for p in paths:
        stem = Path(p).name
        for suffix in (".zarr", ".zip", ".tiff", ".tif", ".png", ".jpg", ".jpeg", ".bmp", ".ome"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        base, k = stem, 2
        while base in seen:
            base, k = f"{stem}_{k}", k + 1
        seen.add(base)
        out.append(base)
    return out


def batch(paths: Iterable, task: str = "segment", out="results", workers: int = 1,
          scheduler: str | None = None, resume: bool = False, engine: str = "auto", head=None,
          boxes: dict | None = None, channels=None, tile: int = DEFAULT_TILE, overlap: int | None = None,
          progress: bool = True, on_result: Callable[[dict], None] | None = None,
          pixel_size=None, tile_progress=None, matcher=None) -> pd.DataFrame:
    """Segment or count many images, or track many time-lapses; results stream into ``out`` as they finish.

    Parameters
    ----------
    paths : iterable of str or Path
        Image files (and zarr folders), in the order their outputs are named; for ``track``,
        time-lapses (multi-page or OME TIFFs, zips or folders of frames).
    task : {"segment", "count", "track"}
    out : str or Path
        Output folder (created); ``manifest.csv`` and every result go here.
    workers : int
        Worker processes of a local Dask cluster (1: run in this process, no Dask).
    scheduler : str, optional
        Address of an existing Dask scheduler (e.g. ``tcp://10.0.0.5:8786``); ``workers``
        is then ignored.
    resume : bool
        Skip images already done (manifest row ``done`` and every output present).
    engine, head
        As in :func:`mm_core.segment`.
    boxes : dict, optional
        ``{path or file name or stem: [[x0, y0, x1, y1], ...]}`` exemplar boxes per image (for
        ``track``: on the first frame).
    channels : None, int or list of int
        As in :func:`mm_core.read_image`.
    tile, overlap : int
        Images larger than ``tile`` pixels on a side are tiled (see :mod:`mm_core.batching.tiled`;
        not for ``track``).
    progress : bool
        Show a progress bar (stderr).
    on_result : callable, optional
        Called with each manifest row as it arrives.
    pixel_size : float, optional
        µm per pixel of every image, overriding the files' calibration (default: each file's own,
        else pixels); the manifest's ``pixel_size`` says which was used.
    tile_progress : callable, optional
        ``progress(fraction, "tile i/n")`` over the tiles of each tiled image (in-process runs only).
    matcher : Matcher, optional
        The model to run (in-process runs only; ``engine``/``head`` are then not used): a caller
        that holds one (the app) does not load a second.

    Returns
    -------
    pandas.DataFrame
        The manifest.
    """
    if task not in TASKS:
        raise InputError(f"unknown batch task {task!r}; choose one of {', '.join(TASKS)}")
    from mm_core.io.calibration import check_pixel_size

    pixel_size = check_pixel_size(pixel_size, "--pixel-size")
    if int(workers) < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if int(tile) < 64:
        raise InputError(f"--tile must be at least 64 pixels, got {tile}")
    if overlap is not None and not 0 <= int(overlap) < int(tile) // 2:
        raise InputError(f"--overlap must be from 0 to less than half the tile ({int(tile) // 2}), "
                         f"got {overlap}")
    paths = [str(p) for p in paths]
    if not paths:
        raise InputError("no input images were given")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out}: {exc.strerror}") from None
    boxes = boxes or {}

    def boxes_of(p: str):
        name = Path(p).name
        for key in (p, name, Path(name).stem):
            if key in boxes:
                return tuple(tuple(float(v) for v in b) for b in boxes[key])
        return None

    several = task == "track" and len(paths) > 1  # time-lapses: one subfolder each
    items = [Item(p, b, boxes_of(p), b if several else "") for p, b in zip(paths, unique_bases(paths))]
    ch = None if channels is None else (tuple(channels) if not np.isscalar(channels) else (int(channels),))
    local = workers == 1 and not scheduler
    options = TaskOptions(task, str(out), engine, head, ch, int(tile), overlap, show_tiles=bool(progress and local),
                          pixel_size=pixel_size, tile_progress=tile_progress if local else None)
    done = _already_done(out, task, items) if resume else {}
    todo = [it for it in items if it.path not in done]
    manifest = Manifest(out, task, keep=done.values())
    from tqdm import tqdm

    bar = tqdm(total=len(items), initial=len(done), desc=task, unit="sequence" if task == "track" else "image",
               file=sys.stderr,
               disable=not progress)
    try:
        rows = (_local_rows(todo, options, progress, matcher) if local
                else _dask_rows(todo, options, int(workers), scheduler))
        for row in rows:
            manifest.add(row)
            bar.update(1)
            if progress:
                what = VALUE_COLUMNS[task]
                name = printable(Path(row["image"]).name)
                size = f"; pixel size {row['pixel_size']}" if row.get("pixel_size") else ""
                tqdm.write(f"{name}: {row['value']:g} {what}{size}" if row["status"] == "done"
                           else f"skipped {name}: {printable(row['message'])}", file=sys.stderr)
                if row["status"] == "done" and row["message"]:
                    for w in row["message"].split(" | "):
                        tqdm.write(f"warning: {name}: {printable(w.removeprefix('warning: '))}",
                                   file=sys.stderr)
            if on_result is not None:
                on_result(row)
    finally:
        bar.close()
        manifest.close()
    table = read_manifest(out / MANIFEST)
    if task == "count" and not table.empty:
        from mm_core.export import write_counts

        ok = table[table["status"] == "done"]
        order = {it.base: i for i, it in enumerate(items)}
        rows = sorted(zip(ok["output"], ok["count"]), key=lambda r: order.get(r[0], len(order)))
        write_counts(out / "counts.csv", rows)
    return table
