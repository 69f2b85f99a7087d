"""Tiny random-weight Stable Diffusion parts, saved as a diffusers folder (tests, demos).

The layout mirrors SD v1.4 at a small size so every code path runs: a VAE with three
downsamplings (a 128x128 image -> a 16x16 latent), a UNet with three cross-attention
levels (self-attention at 16x16 = fraction 1, cross-attention at 8x8 and 4x4 =
fractions 1/2 and 1/4, like 64/32/16 in SD), a 2-layer CLIP text encoder of width 32,
a character-level CLIP tokenizer and SD's DDPM schedule. :func:`save_tiny_pipeline`
writes them with ``save_pretrained`` so they load back through the same
``from_pretrained`` code as the real weights.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TINY_SIZE = 128  #: image side the tiny pipeline is meant for (latent 16x16)
HIDDEN = 32


def tiny_tokenizer_files(folder: Path) -> None:
    """Character-level CLIP BPE vocabulary (no merges) with CLIP's special tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?-'<>_")
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_tiny_components(seed: int = 0, unet_channels: tuple[int, ...] = (32, 32, 64, 64), hidden: int = HIDDEN,
                          unet_head_dim: int = 2, text_heads: int = 4, text_layers: int = 2,
                          text_mlp: int = 37) -> dict:
    """Random-weight vae, unet, text_encoder, tokenizer, scheduler, feature_extractor (CPU, fp32).

    The keyword arguments size the UNet's blocks (``unet_channels``, ``unet_head_dim``) and the
    text encoder (``hidden`` = its width and the UNet's cross-attention width, ``text_heads``,
    ``text_layers``, ``text_mlp``); the defaults are the engine's tests' tiny pipeline, and the
    authors' heads use SD's 320-channel last up block and 768-d text states
    (:mod:`mm_core.heads.authors.testing`).
    """
    import tempfile

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, ResNetConfig, ResNetModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=unet_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                          "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden, attention_head_dim=unet_head_dim, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=TINY_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        tiny_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                                  model_max_length=77, pad_token="<|endoftext|>")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer) + 8, hidden_size=hidden, intermediate_size=text_mlp,
        num_hidden_layers=text_layers, num_attention_heads=text_heads, max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False)
    resnet = ResNetModel(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 32, 64],
                                      depths=[1, 1, 1, 1], layer_type="bottleneck", hidden_act="relu"))
    return {"vae": vae.eval(), "unet": unet.eval(), "text_encoder": text_encoder.eval(),
            "tokenizer": tokenizer, "scheduler": scheduler, "feature_extractor": resnet.eval()}


def save_tiny_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny parts as a diffusers pipeline folder (``vae/``, ``unet/`` ...) plus ``resnet/``."""
    folder = Path(folder)
    parts = build_tiny_components(seed)
    for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        parts[name].save_pretrained(folder / name)
    parts["feature_extractor"].save_pretrained(folder / "resnet")
    return folder


_TINY_DIR: Path | None = None


def tiny_pipeline_dir() -> Path:
    """One tiny pipeline folder per process (created on first use, removed at exit)."""
    global _TINY_DIR
    if _TINY_DIR is None:
        import atexit
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="mm_tiny_sd_"))
        atexit.register(shutil.rmtree, tmp, True)
        _TINY_DIR = save_tiny_pipeline(tmp / "tiny-sd")
    return _TINY_DIR
