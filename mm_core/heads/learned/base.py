"""The base class of learned heads: config, checkpoints, engine check, tiled inference.

A checkpoint is a folder with ``model.safetensors`` (the weights) and
``config.json`` (``head_type``, ``engine``, ``format_version``, architecture and
how it was trained). A head trained on the maps of one engine refuses maps of
another one, with a message that says what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mm_core.transforms.tiles import blend_window, tile_starts

from mm_core.engines.base import MatchMaps
from mm_core.errors import InputError
from mm_core.heads.learned.checkpoints import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    check_engine,
    read_config,
    resolve,
)
from mm_core.heads.learned.inputs import (
    HeadInputs,
    gather_inputs,
    sample_inputs,
    working_factor,
)

#: ``head_type`` -> class; every subclass of :class:`LearnedHead` registers itself here.
HEAD_TYPES: dict[str, type[LearnedHead]] = {}


class LearnedHead(nn.Module):
    """A trainable head on top of frozen match maps.

    Subclasses set ``head_type``, ``defaults`` (architecture config) and
    ``n_outputs``, build their layers from ``self.config`` and implement
    ``forward(base, feats)`` on working-grid tensors.

    Parameters
    ----------
    engine : str
        Engine whose maps the head is trained on (``"classic"`` or ``"ldm"``).
    n_features : int
        Feature channels of that engine's ``MatchMaps.features`` (0: none).
    **config
        Overrides of ``defaults``.
    """

    head_type = "base"
    defaults: ClassVar[dict] = {}
    n_outputs = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        HEAD_TYPES[cls.head_type] = cls

    def __init__(self, engine: str, n_features: int = 0, **config):
        super().__init__()
        unknown = set(config) - set(self.defaults) - {"info"}
        if unknown:
            raise InputError(f"unknown {self.head_type} head settings: {', '.join(sorted(unknown))}")
        self.config = {**self.defaults, **config, "engine": str(engine), "n_features": int(n_features)}
        self.config.setdefault("info", {})

    # ------------------------------------------------------------------ identity
    @property
    def engine(self) -> str:
        return self.config["engine"]

    def describe(self) -> str:
        """One line saying which head this is (for the CLI and the app)."""
        name = self.config["info"].get("name") or self.head_type
        return f"learned {self.head_type} head '{name}' (trained on {self.engine} engine maps)"

    def check_maps(self, maps: MatchMaps) -> None:
        """Refuse maps from another engine or with another feature layout."""
        check_engine(self.config, maps.engine, self.head_type)
        got = 0 if maps.features is None else int(np.shape(maps.features)[0])
        if got != self.config["n_features"]:
            raise InputError(f"the {self.head_type} head expects {self.config['n_features']} engine feature "
                             f"channels but the {maps.engine} engine gave {got}; retrain the head for this "
                             f"engine version")

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, folder) -> Path:
        """Write ``model.safetensors`` + ``config.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"head_type": self.head_type,
                                                                "engine": self.engine})
        cfg = {"head_type": self.head_type, "format_version": FORMAT_VERSION, **self.config}
        (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, default=_json_default))
        return folder

    @classmethod
    def from_config(cls, cfg: dict) -> LearnedHead:
        arch = {k: v for k, v in cfg.items() if k in cls.defaults or k == "info"}
        return cls(engine=cfg["engine"], n_features=cfg.get("n_features", 0), **arch)

    @classmethod
    def from_pretrained(cls, path, engine: str | None = None) -> LearnedHead:
        """Load a head from a checkpoint folder, a shipped name or a hub id."""
        head = load_head(path, engine=engine)
        if not isinstance(head, cls):
            raise InputError(f"{path} holds a {head.head_type} head, not a {cls.head_type} head")
        return head

    # ------------------------------------------------------------------ inference
    def working_shape(self, inp: HeadInputs) -> tuple[float, tuple[int, int]]:
        f = working_factor(inp.scale, self.config["target_diameter"])
        h, w = inp.shape
        return f, (max(16, int(round(h * f))), max(16, int(round(w * f))))

    @torch.no_grad()
    def predict_dense(self, inp: HeadInputs) -> tuple[np.ndarray, float]:
        """Raw outputs ``(K, Hw, Ww)`` on the working grid (tiled, blended) and the zoom factor."""
        self.eval()
        f, (hw, ww) = self.working_shape(inp)
        size, overlap = int(self.config["tile"]), int(self.config["tile_overlap"])
        mult = int(self.config.get("size_multiple", 8))
        th = min(size, -(-hw // mult) * mult)
        tw = min(size, -(-ww // mult) * mult)
        acc = np.zeros((self.n_outputs, max(hw, th), max(ww, tw)), np.float32)
        wsum = np.zeros(acc.shape[1:], np.float32)
        win = blend_window((th, tw), overlap)
        for y in tile_starts(acc.shape[1], th, overlap):
            for x in tile_starts(acc.shape[2], tw, overlap):
                region = (y / f, x / f, (y + th) / f, (x + tw) / f)
                base, feats = sample_inputs(inp, region, (th, tw))
                out = self(base[None], None if feats is None else feats[None])[0].numpy()
                acc[:, y:y + th, x:x + tw] += out * win
                wsum[y:y + th, x:x + tw] += win
        return (acc / np.maximum(wsum, 1e-6))[:, :hw, :ww], f

    def inputs(self, maps: MatchMaps, image: np.ndarray) -> HeadInputs:
        self.check_maps(maps)
        return gather_inputs(maps, image)


def to_input_size(arr: np.ndarray, shape: tuple[int, int], keep_sum: bool = False) -> np.ndarray:
    """Resize ``(K, h, w)`` working-grid outputs to the input ``shape`` (antialiased when shrinking)."""
    t = torch.as_tensor(arr, dtype=torch.float32)[None]
    shrink = t.shape[-2] > shape[0] or t.shape[-1] > shape[1]
    out = F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False, antialias=shrink)[0]
    out = out.numpy()
    if keep_sum:
        out = out * (arr.shape[-2] * arr.shape[-1]) / float(shape[0] * shape[1])
    return out.astype(np.float32)


def load_weights(head: LearnedHead, folder: Path) -> LearnedHead:
    """Load ``model.safetensors`` into ``head`` (strict: every tensor must match)."""
    try:
        state = load_file(str(Path(folder) / WEIGHTS_NAME))
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types)
        raise InputError(f"{Path(folder) / WEIGHTS_NAME} is not a readable safetensors file "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"the weights in {folder} do not fit its config.json: {str(exc).splitlines()[0]}") from None
    return head.eval()


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def load_head(path_or_name, engine: str | None = None) -> LearnedHead:
    """Load a learned head.

    Parameters
    ----------
    path_or_name : str or Path
        Checkpoint folder, shipped name or hub id.
    engine : str, optional
        Engine whose maps the head will read; a head trained on another engine is
        refused with :class:`~mm_core.errors.InputError`.

    Returns
    -------
    LearnedHead
        In eval mode, with ``predict(maps, image)`` and ``describe()``.
    """
    folder = resolve(path_or_name)
    cfg = read_config(folder)
    if engine is not None:
        check_engine(cfg, engine, cfg["head_type"])
    if cfg["head_type"] == "exemplar_projector":
        raise InputError(f"{folder} holds the LDM engine's exemplar projector, not a task head: load it with "
                         f"LDMEngine.from_pretrained(heads='{folder / WEIGHTS_NAME}') or set MM_LDM_HEADS to that file")
    classes = HEAD_TYPES
    if cfg["head_type"] not in classes:
        raise InputError(f"{folder} holds an unknown head type {cfg['head_type']!r} "
                         f"(known: {', '.join(classes)})")
    head = load_weights(classes[cfg["head_type"]].from_config(cfg), folder)
    head.config["info"].setdefault("name", folder.name)
    return head


class CounterView:
    """The counting face of a multi-task segmentation head: ``head.counter()`` returns one.

    It shares the head (and its scale memo); subclasses say how labels become a density.
    """

    head_type = "counting"

    def __init__(self, head):
        self.head = head
        self.config = head.config

    def fit_scale(self, maps, image: np.ndarray) -> float:
        """The head's object scale for ``image`` (see the head's ``fit_scale``)."""
        return self.head.fit_scale(maps, image)
