"""The Stable Diffusion pass the authors' heads were trained on, run on our LDM engine.

What differs from the engine's own match (:mod:`mm_core.engines.ldm.engine`), following
the research note (section 2, "Shared SD feature extraction"):

- the image enters the VAE in [-0.5, 0.5] (``x - 0.5``), and the latent is a *sample*
  of the posterior, not its mean;
- the prompt is ``"<task-prompt> repetitive objects"`` where the placeholder token's input
  embedding is that of the task's word ("segment", "count" or "track": what the released
  code ends up using), encoded with the padding attention mask;
- an exemplar embedding *overwrites* one row of the text-encoder output (no insertion);
- attention is averaged over the second half of the heads only (the authors' store keeps
  ``attn[h // 2:]``); self-attention at the latent side, cross-attention at 1/2 and 1/4;
- the decoder feature is the output of the last up block (320 channels in SD v1.4).

One UNet pass per call, through :meth:`LDMEngine.unet_pass` (our capture processors,
installed with ``set_attn_processor``). Deterministic by default: the posterior sample and
the DDPM noise come from CPU generators seeded with ``seed``; ``seeded=False`` draws them
from torch's global generator, as the authors' code does.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mm_core.engines.ldm.maps import rgb01

SIZE = 512  #: side of the square every head works at
MAP = 64  #: side of the attention maps the heads read
PLACEHOLDER = "<task-prompt>"
TEMPLATE = "repetitive objects"
WORDS = {"segment": "segment", "count": "count", "track": "track"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_KEY = "authors_last_up"

__all__ = ["MAP", "SIZE", "AuthorsSD", "Pass", "minmax", "self_cross"]


def minmax(x: torch.Tensor) -> torch.Tensor:
    """``(x - min) / (max - min + 1e-6)``, the authors' normalisation."""
    return (x - x.min()) / (x.max() - x.min() + 1e-6)


@dataclass
class Pass:
    """What one UNet pass gave: attention and the last decoder feature."""

    self_attn: torch.Tensor  #: (N, N) float32 over the latent grid
    cross: torch.Tensor  #: (L, MAP, MAP) float32 per-token cross-attention
    unet: torch.Tensor  #: (1, C, MAP, MAP) float32 last up-block output
    hw: tuple[int, int]  #: latent grid

    def token(self, i: int) -> torch.Tensor:
        """Cross-attention map of token ``i``, ``(MAP, MAP)``."""
        return self.cross[i]

    def self_cross(self, c: torch.Tensor) -> torch.Tensor:
        """:func:`self_cross` of a ``(MAP, MAP)`` map through this pass's self-attention."""
        return self_cross(self.self_attn, c, self.hw)


def self_cross(self_attn: torch.Tensor, c: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``out[i] = mean_k S[i, k] c[k]``: where each pixel attends, weighted by ``c`` (MAP x MAP out)."""
    cl = c[None, None].float()
    if tuple(c.shape) != tuple(hw):
        cl = F.interpolate(cl, size=hw, mode="bilinear", align_corners=False)
    out = (self_attn.float() @ cl.flatten()) / cl.numel()
    out = out.reshape(1, 1, *hw)
    if tuple(hw) != (MAP, MAP):
        out = F.interpolate(out, size=(MAP, MAP), mode="bilinear", align_corners=False)
    return out[0, 0]


class AuthorsSD:
    """The authors' SD feature extraction over an :class:`~mm_core.engines.ldm.LDMEngine`.

    Parameters
    ----------
    engine : LDMEngine
    seed : int
        Seed of the posterior sample and the noise.
    seeded : bool
        ``False``: draw them from torch's global generator (the authors' behaviour).
    sd_size : int, optional
        Side of the image given to the VAE (default 512; tests use the tiny pipeline's side).
    """

    def __init__(self, engine, seed: int = 0, seeded: bool = True, sd_size: int | None = None):
        if not hasattr(engine, "c") or not hasattr(engine, "unet_pass"):
            from mm_core.errors import ModelUnavailableError

            raise ModelUnavailableError("the paper's heads run on the LDM engine (Stable Diffusion v1.4); "
                                        f"this matcher runs the {getattr(engine, 'name', '?')} engine")
        self.engine, self.seed, self.seeded = engine, int(seed), bool(seeded)
        self.sd_size = int(sd_size or SIZE)
        self._text: dict[tuple[str, bool], torch.Tensor] = {}
        up = engine.c.unet.up_blocks[-1]
        if not getattr(up, "_mm_authors_hooked", False):  # one hook per UNet, writes into the engine's dict
            up.register_forward_hook(lambda m, i, o: engine._features.__setitem__(FEATURE_KEY, o.detach()))
            up._mm_authors_hooked = True

    @property
    def device(self) -> torch.device:
        """The engine's device."""
        return self.engine.c.device

    @property
    def dtype(self) -> torch.dtype:
        """The engine's dtype (the heads run in it too)."""
        return self.engine.c.dtype

    # ------------------------------------------------------------------ inputs
    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """Normalised ``(H, W[, 3])`` image -> ``(1, 3, 512, 512)`` RGB in [0, 1] (antialiased resize)."""
        x = torch.from_numpy(rgb01(image)).permute(2, 0, 1)[None].to(self.device)
        if x.shape[-2:] != (SIZE, SIZE):
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
        return x.clamp(0, 1)

    @staticmethod
    def imagenet(x01: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation (what the LOCA backbone reads)."""
        mean = torch.tensor(IMAGENET_MEAN, device=x01.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x01.device).view(1, 3, 1, 1)
        return (x01 - mean) / std

    def _generator(self, salt: int) -> torch.Generator | None:
        return torch.Generator("cpu").manual_seed(self.seed + salt) if self.seeded else None

    @torch.no_grad()
    def latents(self, x01: torch.Tensor) -> torch.Tensor:
        """Noisy latents at the engine's timestep: a posterior sample of ``x - 0.5``, plus DDPM noise."""
        c = self.engine.c
        x = x01
        if self.sd_size != SIZE:
            x = F.interpolate(x, size=(self.sd_size, self.sd_size), mode="bilinear", align_corners=False,
                              antialias=True)
        dist = c.vae.encode((x - 0.5).to(self.device, self.dtype)).latent_dist
        eps = torch.randn(dist.mean.shape, generator=self._generator(0), dtype=torch.float32)
        lat = (dist.mean + dist.std * eps.to(dist.mean)) * c.vae.config.scaling_factor
        noise = torch.randn(lat.shape, generator=self._generator(1), dtype=torch.float32).to(lat)
        t = torch.full((lat.shape[0],), self.engine.timestep, dtype=torch.long, device=lat.device)
        return c.scheduler.add_noise(lat, noise, t)

    @torch.no_grad()
    def text(self, task: str, template: bool = True) -> torch.Tensor:
        """``(1, 77, D)`` encoder output of the task's prompt (cached per task).

        ``template=False``: the placeholder alone (the tracking embeddings' prompt).
        """
        key = (task, template)
        if key not in self._text:
            tok, enc = self.engine.c.tokenizer, self.engine.c.text_encoder
            if PLACEHOLDER not in tok.get_vocab():
                tok.add_tokens([PLACEHOLDER])
                enc.resize_token_embeddings(len(tok))
            table = enc.get_input_embeddings().weight
            word = tok(WORDS[task], add_special_tokens=False).input_ids[0]
            table.data[tok.convert_tokens_to_ids(PLACEHOLDER)] = table.data[word]
            length = int(enc.config.max_position_embeddings)
            t = tok(f"{PLACEHOLDER} {TEMPLATE}" if template else PLACEHOLDER, padding="max_length", max_length=length, truncation=True,
                    return_tensors="pt")
            dev = next(enc.parameters()).device
            hidden = enc(t.input_ids.to(dev), t.attention_mask.to(dev))[0]
            self._text[key] = hidden.to(self.dtype)
        return self._text[key]

    # ------------------------------------------------------------------ the pass
    @contextmanager
    def _authors_store(self):
        store = self.engine.store
        saved = (store.self_fractions, store.cross_fractions, store.last_half_heads)
        store.self_fractions, store.cross_fractions, store.last_half_heads = (1.0,), (0.5, 0.25), True
        try:
            yield store
        finally:
            store.self_fractions, store.cross_fractions, store.last_half_heads = saved

    @torch.no_grad()
    def run(self, latents: torch.Tensor, hidden: torch.Tensor, need_self: bool = True) -> Pass:
        """One UNet pass on ``latents`` conditioned on ``hidden`` ``(1, L, D)``; the maps the heads read."""
        eng = self.engine
        with eng._lock, self._authors_store() as store:
            eng.unet_pass(latents, hidden.to(latents.dtype), capture_self=need_self,
                          graph_ok=hidden.shape[1] == eng.c.tokenizer.model_max_length)
            hw = tuple(latents.shape[-2:])
            selfa = store.self_attention()[0].float() if need_self else torch.zeros(0)
            cross = store.cross_attention((MAP, MAP))[0].float()
            feat = eng._features[FEATURE_KEY].float()
            if feat.shape[-2:] != (MAP, MAP):
                feat = F.interpolate(feat, size=(MAP, MAP), mode="bilinear", align_corners=False)
            return Pass(self_attn=selfa, cross=cross, unet=feat[:1].clone(), hw=hw)

    def boxes512(self, boxes: np.ndarray | None, shape: tuple[int, int]) -> torch.Tensor | None:
        """Boxes ``x0, y0, x1, y1`` in input pixels -> ``(K, 4)`` float32 in the 512 frame."""
        if boxes is None or len(boxes) == 0:
            return None
        h, w = shape
        b = np.asarray(boxes, np.float32) / np.array([w, h, w, h], np.float32) * SIZE
        return torch.from_numpy(b).to(self.device)
