"""The LDM matching engine: one frozen Stable Diffusion v1.4 UNet pass per image.

Weights: ``LDMEngine.from_pretrained()`` reads ``MM_SD_MODEL`` (a local diffusers
folder of SD v1.4, or a hub id already cached), see :mod:`.loading`; trained heads
(projector, task token) from ``MM_LDM_HEADS``.

Forward pass (the paper's): the normalised image is clipped to [0, 1], grey images
are replicated to RGB, resized to ``size`` x ``size`` (512; the aspect ratio is not
kept, maps are resized back by :meth:`MatchMaps.at_input`) and scaled to [-1, 1];
the VAE posterior *mean* (deterministic) times ``vae.config.scaling_factor``
(0.18215) is noised by the DDPM scheduler at timestep 20 with noise from a
``torch.Generator`` seeded with ``seed`` (drawn on the CPU, so identical on any
device); one UNet pass follows, with attention captured by
:mod:`.attention`.

Maps (latent resolution, 64x64 for SD v1.4):

- ``display["cross_attention"]``: cross-attention of the template tokens
  (automatic), of the exemplar token (trained projector), or, with an untrained
  projector, the mean self-attention row of the box pixels times the UNet-feature
  similarity to the box (``sharpen``); normalised to [0, 1];
- ``display["self_cross"]`` = ``foreground``: ``sum_p cross[p] self[p, j]``, normalised;
- ``centers``: the foreground smoothed by a Gaussian of a quarter object diameter;
- ``scale``: object diameter from the self-attention's local extent
  (:func:`.maps.estimate_scale`), in input pixels;
- ``features``: UNet decoder features (``up_blocks[feature_blocks]`` outputs).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

from mm_core.engines.base import MatchMaps
from mm_core.engines.ldm import conditioning as cond
from mm_core.engines.ldm.attention import AttentionStore, box_self_attention, install_capture, self_cross
from mm_core.engines.ldm.graphs import GraphedCall, GraphedUNet
from mm_core.engines.ldm.loading import SDComponents, default_device_dtype, load_components
from mm_core.engines.ldm.maps import center_map, estimate_scale, normalise01, rgb01
from mm_core.engines.ldm.projector import ExemplarProjector, load_backbone
from mm_core.engines.ldm.tiled_maps import tiled_maps
from mm_core.engines.ldm.zerogpu import gpu_runner, on_zerogpu
from mm_core.settings import get_settings
from mm_core.transforms import prepare_boxes


class LDMEngine:
    """Frozen SD v1.4 attention matching (see the module docstring).

    Parameters
    ----------
    components : SDComponents
    size : int
        Side of the square the image is resized to (a tile's side when tiling).
    timestep : int
        DDPM timestep of the added noise.
    seed : int
        Seed of the noise.
    self_fractions, cross_fractions : tuple of float
        Attention resolutions captured, as fractions of the latent side.
    feature_blocks : tuple of int
        Indices into ``unet.up_blocks`` whose outputs form ``MatchMaps.features``.
    sharpen : bool
        Untrained exemplar mode: weight the box's self-attention by feature similarity.
    tile : bool
        Tiled inference at ``tile_scale`` x the input size (``size`` tiles, ``tile_overlap``).
    projector : ExemplarProjector, optional
        Trained exemplar projector; without one, exemplar mode uses self-attention.
    cuda_graphs : bool, optional
        Replay the VAE encoder and the UNet pass as CUDA graphs (:mod:`.graphs`); default: on CUDA.
    """

    name = "ldm"

    def __init__(self, components: SDComponents, *, size: int = 512, timestep: int = 20, seed: int = 0,
                 self_fractions=(1.0,), cross_fractions=(0.5, 0.25), feature_blocks=(-2,),
                 template: str = cond.TEMPLATE, sharpen: bool = True, chunk: int = 1024,
                 tile: bool = False, tile_overlap: int = 64, tile_scale: float = 1.0,
                 projector: ExemplarProjector | None = None, cuda_graphs: bool | None = None):
        self.c = components
        self.size, self.timestep, self.seed = int(size), int(timestep), int(seed)
        self.template, self.sharpen, self.chunk = template, sharpen, int(chunk)
        self.tile, self.tile_overlap, self.tile_scale = tile, int(tile_overlap), float(tile_scale)
        self.projector = projector
        self.store = AttentionStore(tuple(self_fractions), tuple(cross_fractions))
        install_capture(self.c.unet, self.store)
        self._features: dict[int, torch.Tensor] = {}
        self.feature_blocks = tuple(feature_blocks)
        self._hooks = [self.c.unet.up_blocks[i].register_forward_hook(self._feature_hook(i))
                       for i in self.feature_blocks]
        self._text: cond.TextConditioning | None = None
        self.cuda_graphs = (self.c.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        if on_zerogpu():  # the GPU comes and goes between calls: no captured CUDA graphs
            self.cuda_graphs = False
        self._run = gpu_runner(self)  # spaces.GPU on Hugging Face ZeroGPU, else the plain match
        self._graphed = GraphedUNet(self.c.unet, self.store, self._features)
        self._graphed_vae = GraphedCall(self._vae_latents)
        self.graph_error: str | None = None
        self.unet_calls = 0
        self.timings: dict[str, float] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model_id=None, device=None, dtype=None, *, allow_download=None,
                        heads: str | None = None, **kwargs) -> LDMEngine:
        """Load SD v1.4 (see :mod:`.loading`) and build the engine.

        Every call loads the weights again: hold the engine (a :class:`mm_core.Matcher`
        does) rather than calling this per image.

        ``heads`` (or ``MM_LDM_HEADS``): a safetensors file with trained
        ``projector.*`` weights and/or a ``task_token`` embedding.
        """
        comps = load_components(model_id, device, dtype, allow_download=allow_download)
        engine = cls(comps, **kwargs)
        heads = heads or get_settings().ldm_heads
        if heads:
            engine.load_heads(heads, allow_download=bool(allow_download))
        return engine

    @classmethod
    def from_components(cls, vae, unet, text_encoder, tokenizer, scheduler, feature_extractor=None,
                        device=None, dtype=None, **kwargs) -> LDMEngine:
        """Build from already-loaded parts (tests, custom checkpoints).

        ``feature_extractor``: a ``transformers.ResNetModel`` for the exemplar
        projector (untrained until :meth:`load_heads`).
        """
        dev, dt = default_device_dtype(device, dtype)
        mods = [m.to(device=dev) if m.dtype == dt else m.to(device=dev, dtype=dt)
                for m in (vae, unet, text_encoder)]
        mods = [m.eval().requires_grad_(False) for m in mods]
        comps = SDComponents(*mods, tokenizer, scheduler, "in-memory components", dev, dt)
        engine = cls(comps, **kwargs)
        if feature_extractor is not None:
            engine.projector = ExemplarProjector(feature_extractor, text_encoder.config.hidden_size
                                                 ).to(device=dev, dtype=dt)
        return engine

    def load_heads(self, path, allow_download: bool = False) -> None:
        """Load a trained projector (``projector.*``) and/or task token (``task_token``)."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        if "task_token" in state:
            self.set_task_embedding(state["task_token"])
        if any(k.startswith("projector.") for k in state):
            if self.projector is None:
                self.projector = ExemplarProjector(load_backbone(allow_download=allow_download),
                                                   self.c.text_encoder.config.hidden_size)
            self.projector.load(path)
            self.projector.to(device=self.c.device, dtype=self.c.dtype)

    def set_task_embedding(self, embedding: torch.Tensor | None) -> None:
        """Set (or with ``None`` drop) the learned task token placed before the template."""
        cond.set_task_embedding(self.c.tokenizer, self.c.text_encoder, embedding)
        self._text = None

    @property
    def vae_factor(self) -> int:
        """Image pixels per latent pixel (8 for SD v1.4)."""
        return 2 ** (len(self.c.vae.config.block_out_channels) - 1)

    @property
    def projector_trained(self) -> bool:
        return self.projector is not None and self.projector.trained

    def close(self) -> None:
        """Remove this engine's feature hooks and drop its captured tensors."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._features.clear()
        self._graphed.clear()
        self._graphed_vae.clear()
        self.store.reset()

    # ------------------------------------------------------------------ forward pass
    def _feature_hook(self, index: int):
        def hook(module, inputs, output):
            self._features[index] = output if self.store.keep_grad else output.detach()
        return hook

    def text(self) -> cond.TextConditioning:
        if self._text is None:
            self._text = cond.encode_text(self.c.tokenizer, self.c.text_encoder, self.template)
        return self._text

    def prepare(self, image: np.ndarray, size: int | None = None) -> torch.Tensor:
        """Normalised ``(H, W)`` / ``(H, W, 3)`` image -> ``(1, 3, size, size)`` in [0, 1]."""
        x = torch.from_numpy(rgb01(image)).permute(2, 0, 1)[None].to(self.c.device)
        s = size or self.size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x.clamp(0, 1)

    @torch.no_grad()
    def encode(self, image01: torch.Tensor) -> torch.Tensor:
        """Noisy latents at ``timestep``: VAE mean x scaling factor + seeded DDPM noise."""
        x = (image01.to(self.c.device) * 2 - 1).to(self.c.dtype)
        latents = None
        if self.cuda_graphs and x.is_cuda:
            try:
                latents = self._graphed_vae(x)
            except RuntimeError as exc:  # capture unsupported here: stay eager from now on
                self.cuda_graphs, self.graph_error = False, f"{type(exc).__name__}: {exc}"
                self._graphed_vae.clear()
        if latents is None:
            latents = self._vae_latents(x)
        gen = torch.Generator("cpu").manual_seed(self.seed)
        noise = torch.randn(latents.shape, generator=gen, dtype=torch.float32).to(latents)
        t = torch.full((latents.shape[0],), self.timestep, dtype=torch.long)
        return self.c.scheduler.add_noise(latents, noise, t.to(latents.device))

    def _vae_latents(self, x: torch.Tensor) -> torch.Tensor:
        return self.c.vae.encode(x).latent_dist.mean * self.c.vae.config.scaling_factor

    def unet_pass(self, latents: torch.Tensor, hidden: torch.Tensor, capture_self: bool = True,
                  graph_ok: bool = False) -> None:
        """One UNet pass that fills ``self.store`` (the attention maps) and the decoder features.

        ``graph_ok``: the pass may be replayed as a CUDA graph (fixed-length sequences only).
        """
        procs = self.c.unet.attn_processors
        if getattr(next(iter(procs.values())), "store", None) is not self.store:  # another engine's
            install_capture(self.c.unet, self.store)
        self.store.reset()
        self.store.latent_hw = tuple(latents.shape[-2:])
        saved = self.store.self_fractions
        if not capture_self:
            self.store.self_fractions = ()
        try:
            t = torch.full((latents.shape[0],), self.timestep, device=latents.device, dtype=torch.long)
            self.unet_calls += 1
            hidden = hidden.to(latents.dtype)
            if graph_ok and self.cuda_graphs and latents.is_cuda and not self.store.keep_grad:
                try:
                    return self._graphed(latents, t, hidden)
                except RuntimeError as exc:  # capture unsupported here: stay eager from now on
                    self.cuda_graphs, self.graph_error = False, f"{type(exc).__name__}: {exc}"
                    self._graphed.clear()
                    self.store.reset()
            self.c.unet(latents, t, encoder_hidden_states=hidden)
        finally:
            self.store.self_fractions = saved

    def decoder_features(self, hw: tuple[int, int]) -> torch.Tensor:
        """``(B, C, h, w)`` float32 decoder features of the last pass, resized to ``hw``."""
        feats = [F.interpolate(self._features[i].float(), size=hw, mode="bilinear", align_corners=False)
                 if self._features[i].shape[-2:] != hw else self._features[i].float()
                 for i in self.feature_blocks]
        return torch.cat(feats, dim=1)

    # ------------------------------------------------------------------ one square image
    def box_masks(self, boxes: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
        """(K, h*w) latent pixels whose centres fall inside each box (``size``-pixel coordinates)."""
        h, w = hw
        fy, fx = self.size / h, self.size / w
        cy, cx = (np.arange(h) + 0.5) * fy, (np.arange(w) + 0.5) * fx
        masks = []
        for x0, y0, x1, y1 in boxes:
            m = ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
            if not m.any():  # box smaller than a latent pixel: its nearest one
                m[min(h - 1, int((y0 + y1) / 2 / fy)), min(w - 1, int((x0 + x1) / 2 / fx))] = True
            masks.append(m.reshape(-1))
        return torch.from_numpy(np.stack(masks))

    @torch.no_grad()
    def exemplar_embeddings(self, x01: torch.Tensor, boxes: np.ndarray, per_object: bool) -> torch.Tensor:
        """Projector embeddings ``(K, D)`` of boxes (``size``-pixel coordinates), or their mean ``(1, D)``."""
        rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(np.asarray(boxes, np.float32))], 1)
        emb = self.projector(x01.to(self.c.device, self.c.dtype), rois.to(self.c.device))
        return emb if per_object else emb.mean(0, keepdim=True)

    def exemplar_cross_attention(self, image01: torch.Tensor, boxes: list,
                                 latents: torch.Tensor | None = None) -> torch.Tensor:
        """Differentiable exemplar-token attention (:func:`.training.exemplar_cross_attention`)."""
        from mm_core.engines.ldm.training import exemplar_cross_attention

        with self._lock:
            return exemplar_cross_attention(self, image01, boxes, latents)

    def match_square(self, x01: torch.Tensor, boxes: np.ndarray | None, per_object: bool,
                     emb: torch.Tensor | None = None, protos: torch.Tensor | None = None) -> dict:
        """Maps of one ``size`` x ``size`` image; boxes in its pixel coordinates.

        ``emb``: exemplar embeddings to insert (else computed from ``boxes`` when the
        projector is trained); ``protos``: ``(K, C)`` unit box features, used instead of
        the boxes' self-attention (tiles that need not contain the box).
        """
        t0 = self._now()
        latents = self.encode(x01)
        text = self.text()
        hidden, kind = text.hidden, "text"
        if emb is None and boxes is not None and self.projector_trained:
            emb = self.exemplar_embeddings(x01, boxes, per_object)
        t1 = self._now()
        if emb is not None:
            kind = "projector"
            hidden = cond.insert_slots(hidden, text.slot, emb)
        elif boxes is not None or protos is not None:
            kind = "self-attention"
        with torch.no_grad():
            self.unet_pass(latents, hidden, graph_ok=emb is None or emb.shape[0] == 1)
            t2 = self._now()
            hw = tuple(latents.shape[-2:])
            selfa = self.store.self_attention()[0]  # (N, N)
            cross = self.store.cross_attention(hw)[0].flatten(1)  # (L, N)
            feats = self.decoder_features(hw)[0]  # (C, h, w)
            fvec = F.normalize(feats.flatten(1), dim=0)  # (C, N) unit per pixel
            if kind == "text":
                queries = cross[text.template_columns].mean(0, keepdim=True)
            elif kind == "projector":
                n_slots = emb.shape[0]
                queries = cross[text.slot:text.slot + n_slots]
            elif protos is not None:  # tile that may not hold the box: feature similarity
                queries = (protos.to(fvec) @ fvec).clamp_min(0)
                if not per_object:
                    queries = queries.mean(0, keepdim=True)
            else:
                masks = self.box_masks(boxes, hw).to(selfa.device)
                queries = box_self_attention(selfa, masks)
                if self.sharpen:
                    m = masks.float().to(fvec)
                    protos = F.normalize((m @ fvec.T) / m.sum(1, keepdim=True), dim=1)
                    queries = queries * (protos @ fvec).clamp_min(0)
                if not per_object:
                    queries = queries.mean(0, keepdim=True)
            sc = self_cross(queries, selfa, self.chunk)
        t3 = self._now()
        for key, dt in (("encode_s", t1 - t0), ("unet_s", t2 - t1), ("self_cross_s", t3 - t2)):
            self.timings[key] = self.timings.get(key, 0.0) + dt
        return {"cross": queries.float().cpu().numpy().reshape(-1, *hw),
                "self_cross": sc.cpu().numpy().reshape(-1, *hw), "self": selfa, "hw": hw,
                "features": feats.cpu().numpy(), "kind": kind, "fvec": fvec}

    # ------------------------------------------------------------------ public API
    def match(self, image: np.ndarray, boxes: np.ndarray | None = None) -> MatchMaps:
        """Match maps for ``image`` (normalised) and optional boxes ``(N, 4)`` ``x0, y0, x1, y1``.

        Several boxes are one exemplar (their embeddings, or self-attention maps,
        averaged). Boxes outside the image raise :class:`~mm_core.errors.InputError`.
        """
        return self._match(image, boxes, per_object=False)

    def match_objects(self, image: np.ndarray, boxes: np.ndarray) -> MatchMaps:
        """One UNet pass, one map per box: ``info["object_maps"]`` is ``(K, h, w)`` in [0, 1].

        ``foreground`` is their pixel-wise maximum. Used for tracking (the previous
        frame's objects as exemplars).
        """
        return self._match(image, boxes, per_object=True)

    def _now(self) -> float:
        if self.c.device.type == "cuda":
            torch.cuda.synchronize(self.c.device)
        return time.perf_counter()

    def _match(self, image, boxes, per_object: bool) -> MatchMaps:
        with self._lock:  # one pass at a time: the capture store is shared
            return self._run(image, boxes, per_object)

    def _match_locked(self, image, boxes, per_object: bool) -> MatchMaps:
        self.timings = {}
        t0 = self._now()
        image = np.asarray(image, np.float32)
        shape = tuple(image.shape[:2])
        boxes = prepare_boxes(boxes, shape)
        if self.tile:
            out = tiled_maps(self, image, boxes, per_object)
        else:
            fy, fx = self.size / shape[0], self.size / shape[1]
            sq_boxes = None if boxes is None else boxes * np.array([fx, fy, fx, fy], np.float32)
            out = self.match_square(self.prepare(image), sq_boxes, per_object)
            out["input_per_latent"] = float(np.sqrt(shape[0] * shape[1] / np.prod(out["hw"])))
            out["scale"] = estimate_scale(out["self"], out["hw"],
                                          normalise01(out["self_cross"].max(0)), out["input_per_latent"])
            out["tiles"] = 1
        object_maps = np.stack([normalise01(m) for m in out["self_cross"]])
        fg = normalise01(object_maps.max(0)) if per_object else object_maps[0]
        cross = normalise01(out["cross"].max(0))
        kind = out["kind"]
        conditioning = cond.describe(kind, 0 if boxes is None else len(boxes), per_object, self.template,
                                     cond.task_token_on(self.c.text_encoder), self.sharpen)
        info = {"timestep": self.timestep, "seed": self.seed, "size": self.size, "tiles": out["tiles"],
                "conditioning_kind": kind, "model": self.c.model_id, "dtype": str(self.c.dtype),
                "cuda_graph": self.cuda_graphs and self.c.device.type == "cuda",
                "timings": self.timings}
        if per_object:
            info["object_maps"] = object_maps
        diameter_latent = out["scale"] / out["input_per_latent"]
        maps = MatchMaps(foreground=fg, centers=center_map(fg, diameter_latent), scale=float(out["scale"]),
                         image_shape=shape, engine="ldm", mode="automatic" if boxes is None else "exemplar",
                         conditioning=conditioning, features=out["features"].astype(np.float32, copy=False),
                         display={"cross_attention": cross, "self_cross": fg}, info=info)
        total = self._now() - t0
        self.timings["other_s"] = total - sum(self.timings.values())  # resizing, scale, centres, copies
        self.timings["total_s"] = total
        return maps
