"""What the three authors' heads share: loading, device placement, the exemplar path, maps.

A head holds one checkpoint's module (built by :func:`.layout.build`, weights loaded
strictly by :func:`.layout.load_state`) and runs over whatever LDM engine the pipeline
gives it (:meth:`AuthorsHead.match`, called by :mod:`mm_core.pipelines` instead of the
engine's own match). The engine's components are not copied: the head only adds a
forward hook on the UNet's last up block and a placeholder token to the tokenizer.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from mm_core.engines.base import MatchMaps
from mm_core.engines.ldm.maps import center_map, estimate_scale, normalise01
from mm_core.heads.authors import weights
from mm_core.heads.authors.sd import AuthorsSD, Pass

#: LOCA needs boxes; without exemplars the authors feed it these two (512 frame).
DUMMY_BOXES = ((100.0, 100.0, 130.0, 130.0), (200.0, 200.0, 250.0, 250.0))

__all__ = ["DUMMY_BOXES", "AuthorsHead"]


def n_elements(module: torch.nn.Module) -> int:
    """Values in ``module.state_dict()`` (the size check's yardstick)."""
    return int(sum(v.numel() for v in module.state_dict().values()))


class AuthorsHead:
    """Base of the authors' heads: one checkpoint's module over the LDM engine.

    Parameters
    ----------
    module : torch.nn.Module
        The checkpoint's module, weights loaded.
    seed : int
        Seed of the SD pass (posterior sample and noise).
    seeded : bool
        ``False``: unseeded, as the authors' code runs (results vary between calls).
    sd_size : int, optional
        Side of the image the VAE sees (default 512; the tiny test pipeline uses less).
    source : str
        Where the weights came from (for :meth:`describe`).
    """

    kind = ""  #: "seg", "cnt" or "tra"
    task = ""
    label = ""

    def __init__(self, module: torch.nn.Module, *, seed: int = 0, seeded: bool = True, sd_size: int | None = None,
                 source: str = "in-memory module"):
        self.module = module.eval().requires_grad_(False)
        self.seed, self.seeded, self.sd_size, self.source = int(seed), bool(seeded), sd_size, source
        self._sd: dict[int, AuthorsSD] = {}
        self._placed: tuple | None = None
        self._lock = threading.RLock()

    @classmethod
    def load(cls, folder=None, allow_download: bool | None = None, *, vit_depth: int = 24,
             tracker_layers: int = 6, **options) -> AuthorsHead:
        """Find (or fetch) this head's checkpoint and load it strictly.

        Parameters
        ----------
        folder : path, optional
            Folder with the authors' files (default ``MM_AUTHORS_HEADS``, then cache, then hub).
        allow_download : bool, optional
            Default ``MM_ALLOW_DOWNLOAD``.
        vit_depth, tracker_layers : int
            Module size (smaller only for tests).
        **options
            ``seed``, ``seeded``, ``sd_size``.

        Raises
        ------
        ModelUnavailableError
            Missing (downloads off), truncated, corrupt, or another layout (first mismatching key).
        """
        from mm_core.heads.authors.layout import build, load_state

        path = Path(weights.find_file(cls.kind, folder, allow_download))
        module = build(cls.kind, vit_depth=vit_depth, tracker_layers=tracker_layers, device="meta")
        state = weights.read_state(path, n_elements(module))
        load_state(module, state, path.name)
        return cls(module, source=str(path), **options)

    # ------------------------------------------------------------------ engine side
    def sd(self, engine) -> AuthorsSD:
        """The SD pass over ``engine`` (one per engine), and this module on its device and dtype."""
        with self._lock:
            key = id(engine)
            if key not in self._sd:
                self._sd = {key: AuthorsSD(engine, self.seed, self.seeded, self.sd_size)}
            sd = self._sd[key]
            where = (sd.device, sd.dtype)
            if self._placed != where:
                self.module.to(device=sd.device, dtype=sd.dtype)
                self._placed = where
            return sd

    def encode(self, sd: AuthorsSD, x01: torch.Tensor) -> torch.Tensor:
        """LOCA's encoded image (backbone + encoder), reusable for several box sets."""
        with torch.no_grad():
            return self.module.loca_model.encode(sd.imagenet(x01).to(sd.dtype))

    def exemplar(self, sd: AuthorsSD, x01: torch.Tensor | None, boxes512: torch.Tensor | None,
                 per_box: bool = False, encoded: torch.Tensor | None = None):
        """LOCA response maps and the adapter's exemplar embedding(s) for ``boxes512``.

        ``encoded``: :meth:`encode`'s output for this image (then ``x01`` is not read).

        Returns
        -------
        responses : list of Tensor
            LOCA's response maps ``(1, 256, 64, 64)`` (with :data:`DUMMY_BOXES` when no box).
        embedding : Tensor or None
            ``(1, D)`` mean over the boxes, or ``(K, D)`` with ``per_box``; ``None`` without boxes.
        """
        loca, adapter = self.module.loca_model, self.module.counting_adapter.adapter
        b = boxes512 if boxes512 is not None else torch.tensor(DUMMY_BOXES, device=sd.device)
        f_e = encoded if encoded is not None else self.encode(sd, x01)
        with torch.no_grad():
            responses = loca.responses(f_e, b[None].to(sd.dtype))
            if boxes512 is None:
                return responses, None
            fn = adapter.forward_boxes if per_box else adapter.forward
            return responses, fn(responses[-1], boxes512.to(sd.dtype))

    @staticmethod
    def overwrite(hidden: torch.Tensor, row: int, embedding: torch.Tensor | None) -> torch.Tensor:
        """A copy of ``hidden`` ``(1, L, D)`` with row ``row`` replaced by ``embedding`` ``(1, D)``."""
        if embedding is None:
            return hidden
        out = hidden.clone()
        out[:, row] = embedding.reshape(1, -1).to(out)
        return out

    # ------------------------------------------------------------------ results
    def maps(self, p: Pass, fg64: torch.Tensor, shape: tuple[int, int], mode: str, conditioning: str,
             payload: dict) -> MatchMaps:
        """:class:`MatchMaps` with the exemplar map as foreground and the head's tensors in ``info``."""
        fg = normalise01(fg64.detach().float().cpu().numpy())
        hw = p.hw
        fg_lat = fg if hw == fg.shape else normalise01(
            torch.nn.functional.interpolate(torch.from_numpy(fg)[None, None], size=hw, mode="area")[0, 0].numpy())
        per_latent = float(np.sqrt(shape[0] * shape[1] / (hw[0] * hw[1])))
        if p.self_attn.numel():
            scale = estimate_scale(p.self_attn, hw, fg_lat, per_latent)
        else:
            scale = max(shape) / 16.0
        diam64 = scale / np.sqrt(shape[0] * shape[1]) * fg.shape[0]
        info = {"authors": payload, "seed": self.seed if self.seeded else None,
                "timestep": getattr(self._engine_of(), "timestep", None), "head": self.describe()}
        return MatchMaps(foreground=fg, centers=center_map(fg, diam64), scale=float(scale), image_shape=shape,
                         engine="ldm", mode=mode, conditioning=conditioning,
                         display={"cross_attention": fg}, info=info)

    def _engine_of(self):
        return next(iter(self._sd.values())).engine if self._sd else None

    def describe(self) -> str:
        """One line naming the head and where its weights came from."""
        how = "seeded" if self.seeded else "unseeded, as the authors run it"
        return f"the paper's {self.label} head (authors' weights: {Path(self.source).name}; {how})"
