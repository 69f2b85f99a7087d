"""Tiny random-weight SD parts shaped for the authors' heads (tests, ``benchmarks/authors_gpu.py --tiny``).

Like :mod:`mm_core.engines.ldm.testing`, but with what the heads need from SD v1.4: a last
up block of 320 channels (their fuse and regressor read it) and 768-d text states (the
adapter writes 768-d exemplar rows). The VAE downsamples 8x, so a ``TINY_SD_SIZE`` image
gives a 16 x 16 latent (the heads still work at 512 / 64 x 64: :class:`.sd.AuthorsSD`
resizes). Saved with ``save_pretrained`` and loaded back through the engine's own
``from_pretrained``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

TINY_SD_SIZE = 128  #: image side the tiny pipeline is run at (latent 16 x 16)

__all__ = ["TINY_SD_SIZE", "save_authors_tiny_pipeline"]


def save_authors_tiny_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny diffusers pipeline folder (``vae/ unet/ text_encoder/ tokenizer/ scheduler/``)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from mm_core.engines.ldm.testing import tiny_tokenizer_files

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(320, 64, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=TINY_SD_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        tiny_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                                  model_max_length=77, pad_token="<|endoftext|>")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer) + 8, hidden_size=768, intermediate_size=256, num_hidden_layers=1,
        num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False)
    for name, part in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder), ("tokenizer", tokenizer),
                       ("scheduler", scheduler)):
        part.save_pretrained(folder / name)
    return folder
