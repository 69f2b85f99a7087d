"""CUDA-graph replay of the VAE encoder and the capturing UNet pass (GPU only, optional).

In eager mode one SD v1.4 UNet pass launches about a thousand small kernels and the
host, not the GPU, sets the pace. :class:`GraphedUNet` records the whole pass --
attention capture included -- once per input shape into a ``torch.cuda.CUDAGraph``
and then replays it: the inputs are copied into static tensors, and afterwards the
:class:`~mm_core.engines.ldm.attention.AttentionStore` and the decoder-feature dict
are pointed at the graph's static outputs (valid until the next replay).

Only shapes seen with the automatic or one-exemplar sequence are worth a graph; the
engine runs per-object passes (their sequence length changes with the number of
objects) eagerly. At most ``max_graphs`` graphs are kept (least recently used out).
:class:`GraphedCall` does the same for a plain one-tensor function (the VAE encoder).
"""

from __future__ import annotations

from collections import OrderedDict

import torch


class GraphedUNet:
    """Record-once, replay-many UNet pass for fixed ``(latents, hidden)`` shapes."""

    def __init__(self, unet, store, features: dict, max_graphs: int = 2):
        self.unet, self.store, self.features = unet, store, features
        self.max_graphs = max_graphs
        self._graphs: OrderedDict = OrderedDict()

    def _key(self, latents, hidden, timestep) -> tuple:
        s = self.store
        return (tuple(latents.shape), tuple(hidden.shape), latents.dtype, int(timestep),
                tuple(s.self_fractions), tuple(s.cross_fractions), s.enabled, s.latent_hw,
                getattr(s, "last_half_heads", False))

    def _record(self, latents, hidden, t) -> dict:
        entry = {"lat": latents.clone(), "hid": hidden.clone(), "t": t.clone()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph, as torch requires
            for _ in range(2):
                self.store.reset()
                self.unet(entry["lat"], entry["t"], encoder_hidden_states=entry["hid"])
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.store.reset()
        with torch.cuda.graph(graph):
            self.unet(entry["lat"], entry["t"], encoder_hidden_states=entry["hid"])
        s = self.store
        entry.update(graph=graph, state=(s.self_sum, s.self_count, dict(s.cross_sum), dict(s.cross_count)),
                     feats=dict(self.features))
        return entry

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> None:
        key = self._key(latents, hidden, t[0])
        entry = self._graphs.pop(key, None)
        if entry is None:
            while len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            entry = self._record(latents, hidden, t)
        self._graphs[key] = entry
        entry["lat"].copy_(latents)
        entry["hid"].copy_(hidden)
        entry["graph"].replay()
        s = self.store
        s.self_sum, s.self_count = entry["state"][0], entry["state"][1]
        s.cross_sum, s.cross_count = dict(entry["state"][2]), dict(entry["state"][3])
        self.features.clear()
        self.features.update(entry["feats"])

    def clear(self) -> None:
        self._graphs.clear()


class GraphedCall:
    """Record ``fn(x)`` (one tensor in, one tensor out) once per input shape and replay it.

    Used for the VAE encoder. The returned tensor is a copy (the static output is
    overwritten by the next replay).
    """

    def __init__(self, fn, max_graphs: int = 2):
        self.fn, self.max_graphs = fn, max_graphs
        self._graphs: OrderedDict = OrderedDict()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        entry = self._graphs.pop(key, None)
        if entry is None:
            while len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            entry = {"inp": x.clone()}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.fn(entry["inp"])
            torch.cuda.current_stream().wait_stream(side)
            entry["graph"] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(entry["graph"]):
                entry["out"] = self.fn(entry["inp"])
        self._graphs[key] = entry
        entry["inp"].copy_(x)
        entry["graph"].replay()
        return entry["out"].clone()

    def clear(self) -> None:
        self._graphs.clear()
