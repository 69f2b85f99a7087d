"""Tiny random-weight SD parts shaped for the authors' heads (tests, ``benchmarks/authors_gpu.py --tiny``).

Like :mod:`mm_core.engines.ldm.testing`, but with what the heads need from SD v1.4: a last
up block of 320 channels (their fuse and regressor read it) and 768-d text states (the
adapter writes 768-d exemplar rows). The VAE downsamples 8x, so a ``TINY_SD_SIZE`` image
gives a 16 x 16 latent (the heads still work at 512 / 64 x 64: :class:`.sd.AuthorsSD`
resizes). Saved with ``save_pretrained`` and loaded back through the engine's own
``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

TINY_SD_SIZE = 128  #: image side the tiny pipeline is run at (latent 16 x 16)

__all__ = ["TINY_SD_SIZE", "save_authors_tiny_pipeline"]


def save_authors_tiny_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny diffusers pipeline folder (``vae/ unet/ text_encoder/ tokenizer/ scheduler/``)."""
    from mm_core.engines.ldm.testing import build_tiny_components

    folder = Path(folder)
    parts = build_tiny_components(seed, unet_channels=(320, 64, 64, 64), hidden=768, unet_head_dim=8,
                                  text_heads=12, text_layers=1, text_mlp=256)
    for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        parts[name].save_pretrained(folder / name)
    return folder
