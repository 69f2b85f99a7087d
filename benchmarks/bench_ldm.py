"""Speed and memory of the LDM engine at the real Stable Diffusion v1.4 size.

The UNet, VAE and CLIP text encoder are built from SD v1.4's own configs (below,
copied from the ``CompVis/stable-diffusion-v1-4`` folder) with *random* weights:
nothing is downloaded, and the numbers say nothing about map quality. The tokenizer
is the tiny character-level one (tokenising costs nothing either way); the exemplar
projector's backbone is a random ResNet-50 (``transformers.ResNetConfig()``).

Timed per 512x512 image, after one warm-up pass: VAE encode (+ exemplar embedding),
UNet pass with attention capture, self-cross and the map post-processing, for
automatic mode, exemplar mode with an untrained projector (self-attention), a
"trained" projector (random conv/linear, marked trained) and ``match_objects`` with
20 boxes in one pass. CUDA timings are synchronised. Prints peak RSS (CPU) or peak
GPU memory.

    python benchmarks/bench_ldm.py                      # CPU fp32
    python benchmarks/bench_ldm.py --dtype bfloat16     # CPU bf16
    python benchmarks/bench_ldm.py --device cuda --compare-fp32   # GPU fp16 (+ fp32 agreement)
"""

from __future__ import annotations

import argparse
import resource
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIG_DIR = Path(__file__).resolve().parent / "sd14_configs"


def _config(name: str) -> dict:
    """SD v1.4 component config (as in the model's config.json files), kept in sd14_configs/."""
    cfg = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


UNET_CONFIG = _config("unet")
VAE_CONFIG = _config("vae")
CLIP_TEXT_CONFIG = _config("text_encoder")
SCHEDULER_CONFIG = _config("scheduler")


def build(device: str, seed: int = 0) -> dict:
    """Random-weight SD v1.4-size parts (fp32, built directly on ``device``)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, ResNetConfig, ResNetModel

    from mm_core.engines.ldm.testing import build_tiny_components

    tokenizer = build_tiny_components()["tokenizer"]
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        text = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT_CONFIG))
        resnet = ResNetModel(ResNetConfig())  # ResNet-50
    return {"vae": vae, "unet": unet, "text_encoder": text, "tokenizer": tokenizer,
            "scheduler": DDPMScheduler(**SCHEDULER_CONFIG), "feature_extractor": resnet}


def test_image(size: int = 512, seed: int = 0) -> tuple[np.ndarray, list]:
    """Bright disks on a noisy background, and boxes around 20 of them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = 0.1 * rng.random((size, size))
    boxes = []
    for cy, cx in rng.integers(30, size - 30, size=(40, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 14 ** 2] += 0.8
        boxes.append([cx - 16, cy - 16, cx + 16, cy + 16])
    return img.astype(np.float32), boxes[:20]


def peak_memory(device: str) -> str:
    if device == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def run_modes(engine, image, boxes, modes, repeats: int, device: str) -> dict:
    results = {}
    calls = {
        "automatic": lambda: engine.match(image),
        "exemplar-untrained": lambda: engine.match(image, boxes[:3]),
        "exemplar-projector": lambda: engine.match(image, boxes[:3]),
        "objects-20": lambda: engine.match_objects(image, boxes),
    }
    for mode in modes:
        engine.projector.trained = mode in ("exemplar-projector", "objects-20")
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times, maps = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            maps = calls[mode]()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        parts = ", ".join(f"{k[:-2]} {v * 1e3:.0f} ms" for k, v in engine.timings.items() if k != "total_s")
        print(f"  {mode:20s} {np.median(times) * 1e3:9.1f} ms/image (median of {repeats}; {parts}); "
              f"{peak_memory(device)}; finite={bool(np.isfinite(maps.foreground).all())}; "
              f"{maps.conditioning[:60]}", flush=True)
        results[mode] = maps
    return results


def compare_plain(engine, image, repeats: int, device: str) -> None:
    """Eager UNet pass: plain SDPA processors vs our capturing ones (same inputs)."""
    from mm_core.engines.ldm import plain_sdpa

    latents = engine.encode(engine.prepare(image))
    hidden = engine.text().hidden

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = engine._now()
            fn()
            times.append(engine._now() - t0)
        return float(np.median(times)) * 1e3

    def plain():
        with torch.no_grad():
            engine.c.unet(latents, torch.tensor([engine.timestep], device=latents.device),
                          encoder_hidden_states=hidden.to(latents.dtype))

    plain_sdpa(engine.c.unet)
    t_plain = timed(plain)
    t_capture = timed(lambda: engine.unet_pass(latents, hidden))  # re-installs the capture
    msg = f"  UNet pass, eager: plain SDPA {t_plain:.1f} ms, with capture {t_capture:.1f} ms"
    if device == "cuda" and engine.cuda_graphs:
        graphed = timed(lambda: engine.unet_pass(latents, hidden, graph_ok=True))
        msg += f", capture as CUDA graph {graphed:.1f} ms"
    print(msg, flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: fp16 on CUDA)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per mode (default 1 CPU, 10 GPU)")
    ap.add_argument("--modes", default="automatic,exemplar-untrained,exemplar-projector,objects-20")
    ap.add_argument("--compare-fp32", action="store_true", help="also run fp32 and compare maps")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compare-plain", action="store_true",
                    help="time the bare UNet pass with plain SDPA against the capturing one")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="eager UNet passes on CUDA")
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of one automatic match")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mm_core.engines.ldm import LDMEngine

    device = args.device
    default = torch.float16 if device == "cuda" else torch.float32
    dtype = getattr(torch, args.dtype) if args.dtype else default
    repeats = args.repeats or (10 if device == "cuda" else 1)
    modes = args.modes.split(",")
    print(f"torch {torch.__version__}; device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda"
             else f" ({torch.get_num_threads()} threads)")
          + f"; dtype {dtype}", flush=True)
    t0 = time.perf_counter()
    parts = build(device)
    n_params = sum(p.numel() for k in ("unet", "vae", "text_encoder") for p in parts[k].parameters())
    print(f"built random SD v1.4-size parts ({n_params / 1e6:.0f} M parameters) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    image, boxes = test_image()
    ref = None
    if args.compare_fp32 and dtype != torch.float32:
        eng32 = LDMEngine.from_components(**parts, device=device, dtype=torch.float32,
                                          cuda_graphs=False if args.no_cuda_graphs else None)
        eng32.match(image)  # warm-up
        print("fp32:", flush=True)
        ref = run_modes(eng32, image, boxes, modes, max(1, repeats // 5), device)
        eng32.close()
        del eng32
    engine = LDMEngine.from_components(**parts, device=device, dtype=dtype,
                                       cuda_graphs=False if args.no_cuda_graphs else None)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        print(f"weights resident: {torch.cuda.memory_allocated() / 2**30:.2f} GiB", flush=True)
    t0 = time.perf_counter()
    engine.match(image)  # warm-up (kernel selection, allocator)
    print(f"warm-up pass {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"{dtype} (CUDA graphs: {engine.cuda_graphs}; {engine.graph_error or 'no graph error'}):",
          flush=True)
    res = run_modes(engine, image, boxes, modes, repeats, device)
    if args.compare_plain:
        compare_plain(engine, image, repeats, device)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=acts) as prof:
            engine.match(image)
        key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=50))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=50))
    if ref is not None:
        for mode in modes:
            a, b = ref[mode].foreground, res[mode].foreground
            r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
            print(f"  {mode:20s} {dtype} vs fp32 foreground: max |diff| {np.abs(a - b).max():.4f}, "
                  f"Pearson r {r:.5f}, finite {bool(np.isfinite(b).all())}")


if __name__ == "__main__":
    main()
