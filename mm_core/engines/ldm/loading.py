"""Finding and loading the Stable Diffusion v1.4 components, the diffusers way.

Where the weights come from, in order:

1. the ``model_id`` argument of :func:`load_components` (or of
   :meth:`~mm_core.engines.ldm.LDMEngine.from_pretrained`);
2. the environment variable ``MM_SD_MODEL``;
3. the default hub id ``CompVis/stable-diffusion-v1-4``.

Either a local folder laid out as a diffusers pipeline (``vae/``, ``unet/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) or a hub id. A hub id is read
from the local Hugging Face cache only (``local_files_only=True``): nothing is
downloaded unless ``allow_download=True`` or ``MM_ALLOW_DOWNLOAD=1`` is set (and
``HF_HUB_OFFLINE`` is not), so a machine without network never hangs on a download.
Fetch the weights once with :func:`download_weights` (``python -m
mm_core.engines.ldm.loading CompVis/stable-diffusion-v1-4``) or any hub client.

Components are loaded once per process per ``(model_id, device, dtype)`` and kept
resident; a second request returns the same objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mm_core.errors import ModelUnavailableError
from mm_core.settings import Settings, get_settings

DEFAULT_MODEL_ID = Settings().sd_model
MODEL_ENV = Settings.env("sd_model")
DOWNLOAD_ENV = Settings.env("allow_download")
#: Sub-folders of a diffusers pipeline folder that the engine needs.
SUBFOLDERS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin",
                 "model.safetensors", "model.fp16.safetensors", "pytorch_model.bin",
                 "pytorch_model.fp16.bin")



@dataclass
class SDComponents:
    """The frozen Stable Diffusion parts the engine runs."""

    vae: torch.nn.Module
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    model_id: str
    device: torch.device
    dtype: torch.dtype


def resolve_model_id(model_id: str | os.PathLike | None = None) -> str:
    """Return the model id or folder to load: argument, then ``MM_SD_MODEL``, then the default."""
    return str(model_id or get_settings().sd_model)


def default_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """CUDA fp16 when a GPU is present, else CPU fp32 (``MM_LDM_DTYPE=bfloat16`` for bf16)."""
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        name = get_settings().ldm_dtype
        if name:
            dtype = getattr(torch, name)
        else:
            dtype = torch.float16 if dev.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return dev, dtype


def _looks_like_path(model_id: str) -> bool:
    """A folder on disk, or something that cannot be a hub id (``owner/name``)."""
    return (Path(model_id).expanduser().exists() or os.path.isabs(model_id)
            or model_id.startswith((".", "~")) or model_id.count("/") > 1 or "\\" in model_id)


def _download_allowed(allow_download: bool | None) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if allow_download is None:
        return get_settings().allow_download
    return bool(allow_download)


def _how_to_fix(model_id: str) -> str:
    return (f"Point the engine at a local copy of Stable Diffusion v1.4 (a diffusers folder with "
            f"{', '.join(s + '/' for s in SUBFOLDERS)}): set the environment variable {MODEL_ENV}=/path/to/"
            f"stable-diffusion-v1-4 or pass model_id=...; or fetch it once with `python -m "
            f"mm_core.engines.ldm.loading {model_id}` on a machine with network (or set {DOWNLOAD_ENV}=1 "
            f"to allow downloading on first use). Without the weights, use the weight-free engine "
            f"(engine='classic').")


def _load_all(source: str, local_only: bool, device: torch.device, dtype: torch.dtype) -> SDComponents:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = {"local_files_only": local_only}
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kw)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kw)
    text_encoder = text_encoder.to(dtype=dtype)
    mods = [m.to(device).eval().requires_grad_(False) for m in (vae, unet, text_encoder)]
    return SDComponents(*mods, tokenizer, scheduler, source, device, dtype)


def load_components(model_id: str | os.PathLike | None = None, device=None, dtype=None,
                    allow_download: bool | None = None) -> SDComponents:
    """Load VAE, UNet, CLIP text encoder, tokenizer and DDPM scheduler.

    Parameters
    ----------
    model_id : str or path, optional
        Hub id or local diffusers folder; see :func:`resolve_model_id`.
    device, dtype : optional
        Defaults from :func:`default_device_dtype`.
    allow_download : bool, optional
        Try the hub when the weights are not cached. Default: ``MM_ALLOW_DOWNLOAD``.
        Ignored (no download) when ``HF_HUB_OFFLINE`` is set.

    Returns
    -------
    SDComponents

    Raises
    ------
    ModelUnavailableError
        The weights are not in the folder or the cache (and may not be downloaded);
        the message names the model id and how to point at a local copy.
    """
    source = resolve_model_id(model_id)
    dev, dt = default_device_dtype(device, dtype)
    if _looks_like_path(source):
        path = Path(source).expanduser()
        missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
        if missing:
            what = "does not exist" if not path.exists() else f"lacks {', '.join(missing)}"
            raise ModelUnavailableError(f"Stable Diffusion weights not found: the folder {source!r} "
                                        f"{what}. {_how_to_fix(DEFAULT_MODEL_ID)}")
        attempts = [(str(path), True)]
    else:
        attempts = [(source, True)] + ([(source, False)] if _download_allowed(allow_download) else [])
    error: Exception | None = None
    for src, local_only in attempts:
        try:
            comps = _load_all(src, local_only, dev, dt)
            break
        except (OSError, ValueError) as exc:  # missing files, offline, bad folder
            error = exc
    else:
        tried = "the local folder" if _looks_like_path(source) else (
            "the local Hugging Face cache" + (" and the hub" if len(attempts) > 1 else
                                              " only (downloads are off)"))
        raise ModelUnavailableError(
            f"Stable Diffusion weights for {source!r} could not be loaded from {tried}: "
            f"{type(error).__name__}: {(str(error).splitlines() or [''])[0].rstrip('.')}. "
            f"{_how_to_fix(source)}") from error
    comps.model_id = source
    return comps


def weights_present(model_id: str | os.PathLike | None = None) -> tuple[bool, str]:
    """Whether every component's config and weights are on disk (folder or cache); never downloads."""
    source = resolve_model_id(model_id)
    if _looks_like_path(source):
        root = Path(source).expanduser()

        def find(sub: str, name: str) -> bool:
            return (root / sub / name).is_file()
    else:
        from huggingface_hub import try_to_load_from_cache

        def find(sub: str, name: str) -> bool:
            hit = try_to_load_from_cache(source, f"{sub}/{name}")
            return isinstance(hit, str) and os.path.isfile(hit)
    for sub in ("vae", "unet", "text_encoder"):
        cfg = "config.json"
        if not find(sub, cfg) or not any(find(sub, w) for w in _WEIGHT_FILES):
            return False, f"the Stable Diffusion weights ({source}, {sub}/) are not on this machine"
    if not find("scheduler", "scheduler_config.json") or not (find("tokenizer", "vocab.json")
                                                              or find("tokenizer", "tokenizer.json")):
        return False, f"the Stable Diffusion tokenizer/scheduler files ({source}) are not on this machine"
    return True, f"weights found for {source}"


def availability(model_id: str | os.PathLike | None = None) -> tuple[bool, str]:
    """``(True, reason)`` only with a CUDA GPU and the weights already on disk; never downloads."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU on this machine (the LDM engine needs one to be practical)"
    ok, why = weights_present(model_id)
    if not ok:
        return False, f"{why}; set {MODEL_ENV} to a local copy"
    return True, f"CUDA GPU and {why}"


def download_weights(model_id: str | None = None, cache_dir: str | None = None) -> str:
    """Fetch the five components of ``model_id`` into the Hugging Face cache (needs network)."""
    from huggingface_hub import snapshot_download

    source = resolve_model_id(model_id)
    patterns = [f"{s}/*.json" for s in SUBFOLDERS] + ["tokenizer/*.txt"] + [
        f"{s}/{w}" for s in ("vae", "unet", "text_encoder") for w in
        ("diffusion_pytorch_model.safetensors", "model.safetensors")]
    return snapshot_download(source, allow_patterns=patterns, cache_dir=cache_dir)


if __name__ == "__main__":  # python -m mm_core.engines.ldm.loading [model_id]
    import sys

    print(download_weights(sys.argv[1] if len(sys.argv) > 1 else None))
