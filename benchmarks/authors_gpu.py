"""Speed and memory of the paper's heads on the LDM engine (issue 22), with random weights.

SD v1.4-size UNet/VAE/CLIP text encoder built from ``sd14_configs`` (random weights, as in
``bench_ldm.py``) and the three authors' head modules at full size with random weights
(nothing is downloaded; the numbers say nothing about quality). Reports:

- first-call time: building the engine and the three heads, plus the first segment call;
- ms per 512 x 512 image for segment and count (automatic and exemplar), median after a
  warm-up call, and ms per frame for tracking (a 4-frame sequence);
- peak GPU memory with all three heads resident (peak RSS on a CPU).

    python benchmarks/authors_gpu.py                 # on a GPU (fp16)
    python benchmarks/authors_gpu.py --tiny          # CPU smoke test: tiny SD, 1-block ViT / tracker

Target (issue 22): segment and count <= 150 ms per 512² on one H100 after warm-up,
<= 16 GB GPU memory with all three heads resident.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_engine(tiny: bool, device: str, dtype):
    from mm_core.engines.ldm import LDMEngine

    if tiny:
        from mm_core.heads.authors.testing import TINY_SD_SIZE, save_authors_tiny_pipeline

        folder = save_authors_tiny_pipeline(Path(tempfile.mkdtemp()) / "sd")
        return LDMEngine.from_pretrained(folder, device=device, dtype=dtype, size=TINY_SD_SIZE), TINY_SD_SIZE
    from bench_ldm import build

    parts = build(device)
    parts.pop("feature_extractor")
    return LDMEngine.from_components(**parts, device=device, dtype=dtype), None


def make_heads(tiny: bool, sd_size):
    from mm_core.heads.authors.count import AuthorsCountHead
    from mm_core.heads.authors.layout import build
    from mm_core.heads.authors.segment import AuthorsSegmentHead
    from mm_core.heads.authors.track import AuthorsTrackHead

    small = {"vit_depth": 1, "tracker_layers": 1} if tiny else {}
    torch.manual_seed(0)
    return (AuthorsSegmentHead(build("seg", **small), sd_size=sd_size),
            AuthorsCountHead(build("cnt"), sd_size=sd_size),
            AuthorsTrackHead(build("tra", **small), sd_size=sd_size))


def peak(device: str) -> str:
    if device == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    import resource

    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def timed(fn, repeats: int, device: str, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny SD and small heads on the CPU (a smoke test)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float16 (default on CUDA), bfloat16 or float32")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if args.device == "cuda" else torch.float32)
    repeats = args.repeats or (1 if args.tiny or args.device == "cpu" else 10)
    from bench_ldm import test_image

    image, boxes = test_image(512)
    boxes = np.asarray(boxes[:3], np.float32)
    from mm_core.models import Matcher

    t0 = time.perf_counter()
    engine, sd_size = make_engine(args.tiny, args.device, dtype)
    seg, cnt, tra = make_heads(args.tiny, sd_size)
    m = Matcher(engine=engine, head={"segment": seg, "count": cnt, "track": tra})
    m.segment(image)
    _sync(args.device)
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
          f"dtype {dtype}, tiny={args.tiny}")
    print(f"first call (engine + 3 heads built on the device, then one segment call): "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows = {
        "segment automatic": lambda: m.segment(image),
        "segment exemplar": lambda: m.segment(image, boxes),
        "count automatic": lambda: m.count(image),
        "count exemplar": lambda: m.count(image, boxes),
    }
    for name, fn in rows.items():
        print(f"  {name:18s} {timed(fn, repeats, args.device, not args.tiny):9.1f} ms per 512² image "
              f"(median of {repeats}{'' if not args.tiny else ', no warm-up'})",
              flush=True)
    frames = [np.roll(image, 4 * t, 1) for t in range(2 if args.tiny else 4)]
    ms = timed(lambda: m.track(frames), 1, args.device, not args.tiny) / len(frames)
    print(f"  {f'track ({len(frames)} frames)':18s} {ms:9.1f} ms per frame", flush=True)
    print(f"all three heads resident: {peak(args.device)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
