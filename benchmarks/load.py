"""Load test of the web app: concurrent API sessions, hostile files, server memory per round.

Starts ``app.py`` on loopback (classic engine, a fresh output folder and Gradio
cache), then runs ``--rounds`` rounds of ``--sessions`` concurrent ``gradio_client``
sessions (each one new, as a new user). Session ``i`` of a round loads an image
(512², 2048² or 4096² in a repeating pattern, by default one 4096², two 2048² and
five 512² per round of 8; every other one with an exemplar box) and runs segmentation or
counting on it, then changes the opacity; every third session first tries a
hostile file (truncated TIFF, text named .png, a zip bomb, a one-frame
"time-lapse") that must be refused with a message (a refusal counts as success,
anything else as an error). After each round it prints the run latencies
(p50/p95), the errors and the server's resident memory (RSS); at the end it waits
past the app's idle time (``MM_APP_IDLE_S``, set by ``--idle``) and prints the RSS
again.

Then ``--track-rounds`` rounds of ``--track-sessions`` tracking sessions (a time-lapse of
``--track-frames`` frames). A sampler reads the server's RSS every half second (the peak
is printed), and the RSS is read again 10 s after the last session ended.

Targets. Issue 13: 10 rounds x 8 sessions, zero errors, RSS after the last round within
1.5 GB of the RSS after the first, and back near it after the idle time. Issue 20 (with
the clients' default timeouts)::

    python benchmarks/load.py --rounds 6 --sessions 6 --sizes 2048 --track-rounds 2 --track-sessions 3

zero errors, peak RSS <= 4 GB, and within 1 GB of the start 10 s after the sessions end.

Usage::

    python benchmarks/load.py [--sessions 8] [--rounds 10] [--idle 30] [--sizes 512 2048 4096]
                              [--track-rounds 2 --track-sessions 3 --track-frames 10] [--patient]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]


# ---- inputs ---------------------------------------------------------------------------------------
def blobs(size: int, seed: int) -> np.ndarray:
    """A fluorescence-like uint16 image of size x size with disks of about 14 px."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 200.0, np.float32)
    n = int(0.15 * size * size / (np.pi * 49))
    cy, cx = rng.uniform(8, size - 8, (2, n))
    r = rng.uniform(5, 8, n)
    for y, x, rad in zip(cy, cx, r):
        y0, y1, x0, x1 = int(y - rad), int(y + rad) + 1, int(x - rad), int(x + rad) + 1
        yy, xx = np.ogrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1][(yy - y) ** 2 + (xx - x) ** 2 <= rad**2] = 1500.0
    img += rng.normal(0, 60, img.shape)
    return img.clip(0, 65535).astype(np.uint16)


def make_inputs(folder: Path, sizes: list[int]) -> tuple[dict, dict]:
    """Good images per size, and hostile files, written into ``folder``."""
    good = {}
    for s in sizes:
        good[s] = folder / f"cells_{s}.tif"
        tifffile.imwrite(good[s], blobs(s, seed=s), compression="zlib")
    hostile = {}
    data = good[sizes[0]].read_bytes()
    hostile["truncated.tif"] = data[: len(data) // 3]
    hostile["notes.png"] = b"this is a text file, not an image\n" * 20
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("t000.tif", b"\0" * (300 * 2**20))  # 300 MB of zeros: a zip bomb
    hostile["bomb.zip"] = buf.getvalue()
    hostile["empty.tif"] = b""
    good["movie"] = folder / "movie.tif"
    tifffile.imwrite(good["movie"], np.stack([np.roll(blobs(512, seed=7), 3 * t, axis=1) for t in range(10)]),
                     imagej=True, metadata={"axes": "TYX"})
    paths = {}
    for name, raw in hostile.items():
        (folder / name).write_bytes(raw)
        paths[name] = folder / name
    return good, paths


# ---- server -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB (from /proc)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def start_server(work: Path, port: int, idle: float, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, MM_ENGINE="classic", MM_APP_IDLE_S=str(idle),
               MM_APP_OUTPUT_ROOT=str(work / "requests"), GRADIO_TEMP_DIR=str(work / "gradio"),
               GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log = open(log_path, "w")  # noqa: SIM115 - kept open for the server's lifetime
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}; see {log_path}")
        try:
            urllib.request.urlopen(url, timeout=2).read(100)
            return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("the app did not start within 180 s")


# ---- one session -----------------------------------------------------------------------------------
PATIENT = {"on": False}  # --patient: long client timeouts (a script on a loaded box); else the defaults


def connect(url: str, out: dict):
    """A new gradio_client session (retried on a late answer), or None after the last try."""
    from gradio_client import Client

    for attempt in range(6):  # a busy server may answer the first connection late; clients retry
        try:
            extra = {"httpx_kwargs": {"timeout": 600}} if PATIENT["on"] else {}
            return Client(url, verbose=False, download_files=False, **extra)
        except Exception as exc:  # noqa: BLE001 - counted, and an error after the last try
            out["retries"] += 1
            if attempt == 5:
                out["errors"].append(f"could not connect: {type(exc).__name__}: {exc}")
                return None
            time.sleep(5 * (attempt + 1))


def track_session(url: str, movie: Path) -> dict:
    """One new client that uploads a time-lapse and tracks it."""
    from gradio_client import handle_file

    out = {"latency": None, "errors": [], "refused": 0, "size": "track", "retries": 0}
    client = connect(url, out)
    if client is None:
        return out
    try:
        loaded = client.predict(handle_file(str(movie)), api_name="/track_upload")
        ann, pixel = loaded[0], loaded[-1]  # the pixel-size field as the upload filled it
        t0 = time.perf_counter()
        client.predict({"image": handle_file(ann["image"]["path"]), "annotations": []}, False, pixel,
                       api_name="/track_run")
        out["latency"] = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - every failure of a good request is an error
        out["errors"].append(f"track: {type(exc).__name__}: {str(exc)[:300]}")
    return out


def session(url: str, i: int, rnd: int, good: dict, hostile: dict, sizes: list[int]) -> dict:
    """One new client: maybe a hostile upload, then load, run and re-render; returns timings/errors."""
    from gradio_client import handle_file

    out = {"latency": None, "errors": [], "refused": 0, "size": None, "retries": 0}
    client = connect(url, out)
    if client is None:
        return out
    tab = "seg" if (i + rnd) % 2 == 0 else "count"
    if i % 3 == 0:
        name = sorted(hostile)[(i // 3 + rnd) % len(hostile)]
        where = "track" if name.endswith(".zip") else tab
        try:
            client.predict(handle_file(str(hostile[name])), api_name=f"/{where}_upload")
            out["errors"].append(f"{name} was accepted")
        except Exception as exc:  # noqa: BLE001 - a refusal is what we want here
            msg = str(exc)
            if msg and "verbose error reporting" not in msg:
                out["refused"] += 1
            else:
                out["errors"].append(f"{name}: refusal without a clear message: {msg[:200]}")
    size = sizes[(i + rnd) % len(sizes)]  # the mix: a pattern of sizes, shifted each round
    out["size"] = size
    try:
        loaded = client.predict(handle_file(str(good[size])), api_name=f"/{tab}_upload")
        ann, pixel = loaded[0], loaded[-1]  # the pixel-size field as the upload filled it
        boxes = []
        if i % 2 == 1:  # exemplar mode: one box around the first blob-sized patch in the preview
            boxes = [{"left": 10, "top": 10, "right": 40, "bottom": 40, "label": "exemplar"}]
        value = {"image": handle_file(ann["image"]["path"]), "annotations": boxes}  # same machine
        t0 = time.perf_counter()
        client.predict(value, 0.5, False, pixel, api_name=f"/{tab}_run")
        out["latency"] = time.perf_counter() - t0
        client.predict(0.3, api_name=f"/{tab}_opacity")
    except Exception as exc:  # noqa: BLE001 - every failure of a good request is an error
        out["errors"].append(f"{tab} {size}: {type(exc).__name__}: {str(exc)[:300]}")
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--idle", type=float, default=30.0, help="MM_APP_IDLE_S of the server, seconds")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 4096, 512, 512, 2048, 512, 512],
                        help="image sizes, cycled over the sessions (shifted by one each round)")
    parser.add_argument("--track-rounds", type=int, default=0, help="rounds of tracking sessions after the others")
    parser.add_argument("--track-sessions", type=int, default=3)
    parser.add_argument("--patient", action="store_true", help="clients wait up to 600 s (default: their defaults)")
    args = parser.parse_args(argv)
    PATIENT["on"] = args.patient
    work = Path(tempfile.mkdtemp(prefix="mm_load_"))
    good, hostile = make_inputs(work, sorted(set(args.sizes)))
    port = free_port()
    proc = start_server(work, port, args.idle, work / "server.log")
    url = f"http://127.0.0.1:{port}/"
    print(f"app pid {proc.pid} on {url}; start RSS {rss_mb(proc.pid):.0f} MB; "
          f"{args.rounds} rounds x {args.sessions} sessions, sizes {args.sizes}", flush=True)
    print(f"{'round':>5} {'p50 s':>7} {'p95 s':>7} {'errors':>6} {'refused':>7} {'retries':>7} {'RSS MB':>7}",
          flush=True)
    rows, all_lat, errors = [], [], []
    start_rss, peak, sampling = rss_mb(proc.pid), [0.0], threading.Event()

    def sample():
        while not sampling.wait(0.5):
            peak[0] = max(peak[0], rss_mb(proc.pid))

    threading.Thread(target=sample, daemon=True).start()
    plan = [("image", r) for r in range(args.rounds)] + [("track", r) for r in range(args.track_rounds)]
    try:
        for kind, rnd in plan:
            n = args.sessions if kind == "image" else args.track_sessions
            with ThreadPoolExecutor(n) as pool:
                if kind == "image":
                    results = list(pool.map(lambda i, r=rnd: session(url, i, r, good, hostile, args.sizes),
                                            range(n)))
                else:
                    results = list(pool.map(lambda i: track_session(url, good["movie"]), range(n)))
            lat = [r["latency"] for r in results if r["latency"] is not None]
            errs = [e for r in results for e in r["errors"]]
            all_lat += lat
            errors += errs
            rss = rss_mb(proc.pid)
            rows.append(rss)
            print(f"{kind[0]}{rnd + 1:>4} {percentile(lat, 50):>7.1f} {percentile(lat, 95):>7.1f} {len(errs):>6} "
                  f"{sum(r['refused'] for r in results):>7} {sum(r['retries'] for r in results):>7} {rss:>7.0f}",
                  flush=True)
            for e in errs:
                print(f"      error: {e}", flush=True)
        time.sleep(10)
        after_rss = rss_mb(proc.pid)
        print(f"10 s after the last session: RSS {after_rss:.0f} MB", flush=True)
        wait = args.idle + max(5.0, min(60.0, args.idle / 4)) + 5
        print(f"waiting {wait:.0f} s (idle time {args.idle:.0f} s + clean-up interval) ...", flush=True)
        time.sleep(wait)
        idle_rss = rss_mb(proc.pid)
    finally:
        sampling.set()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    growth = rows[-1] - rows[0]
    print(f"all runs: p50 {percentile(all_lat, 50):.1f} s, p95 {percentile(all_lat, 95):.1f} s, "
          f"{len(all_lat)} runs, {len(errors)} errors")
    print(f"RSS after round 1: {rows[0]:.0f} MB; after round {len(rows)}: {rows[-1]:.0f} MB "
          f"(growth {growth:+.0f} MB, target <= 1536); after idle: {idle_rss:.0f} MB")
    print(f"RSS at start {start_rss:.0f} MB, peak {peak[0]:.0f} MB (target <= 4096), 10 s after the sessions "
          f"{after_rss:.0f} MB (target <= start + 1024)")
    ok = not errors and growth <= 1536 and peak[0] <= 4096 and after_rss <= start_rss + 1024
    print("target met" if ok else "target NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
