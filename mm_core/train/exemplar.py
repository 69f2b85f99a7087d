"""Training of the LDM engine's exemplar projector (``python -m mm_core.train exemplar``).

Objective (:func:`mm_core.heads.learned.exemplar_attention_loss`): the exemplar
token's cross-attention map, as a distribution over pixels, against the normalised
mask of all objects in the image. The frozen VAE latents are computed once per
image; each step draws one ground-truth object's box per image as the exemplar.
The result is a safetensors file with ``projector.*`` weights that
``LDMEngine.from_pretrained(heads=...)`` (or ``MM_LDM_HEADS``) loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from skimage.measure import regionprops
from torch import nn

from mm_core.train.data import load_image, load_labels
from mm_core.errors import InputError
from mm_core.heads.learned.checkpoints import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from mm_core.heads.learned.exemplar import exemplar_attention_loss


class ProjectorHead(nn.Module):
    """Holds the engine's projector for training; saves only its trainable conv + linear."""

    head_type = "exemplar_projector"

    def __init__(self, engine):
        super().__init__()
        if getattr(engine, "projector", None) is None:
            raise InputError("the LDM engine has no exemplar projector (its ResNet backbone is missing)")
        self.projector = engine.projector
        self.projector.conv.requires_grad_(True)
        self.projector.linear.requires_grad_(True)
        self.config = {"engine": "ldm", "n_features": 0, "info": {}}

    def train(self, mode: bool = True):  # the backbone stays in eval mode (frozen batch norms)
        self.training = mode
        self.projector.conv.train(mode)
        self.projector.linear.train(mode)
        return self

    def parameters(self, recurse: bool = True):  # only what is trained
        return [p for p in self.projector.parameters() if p.requires_grad]

    def state_dict(self, *args, **kwargs):
        return {k: v for k, v in self.projector.head_state_dict().items()}

    def load_state_dict(self, state, strict: bool = True):
        return self.projector.load_state_dict(state, strict=False)

    def save_pretrained(self, folder) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {f"projector.{k}": v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"head_type": self.head_type, "engine": "ldm"})
        cfg = {"head_type": self.head_type, "format_version": FORMAT_VERSION, **self.config}
        (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, default=str))
        return folder


def prepare(samples, engine) -> list[tuple]:
    """``(image01, latents, labels at engine size, boxes)`` per image."""
    out = []
    s = engine.size
    for smp in samples:
        img = load_image(smp.image)
        lab = load_labels(smp.target)
        if lab.max() == 0:
            continue
        x01 = engine.prepare(img, s)
        lat = engine.encode(x01)
        fy, fx = s / lab.shape[0], s / lab.shape[1]
        boxes = np.array([[p.bbox[1] * fx, p.bbox[0] * fy, p.bbox[3] * fx, p.bbox[2] * fy]
                          for p in regionprops(lab)], np.float32)
        out.append((x01, lat, torch.as_tensor(lab > 0), boxes))
    if not out:
        raise InputError("no image with objects to train the exemplar projector on")
    return out


def projector_loss(engine, items, rng: np.random.Generator | None) -> torch.Tensor:
    """Mean objective over ``items``; one box per image (random, or the largest when ``rng`` is None)."""
    losses = []
    for x01, lat, mask, boxes in items:
        k = int(rng.integers(len(boxes))) if rng is not None else int(np.argmax(
            (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        attn = engine.exemplar_cross_attention(x01, [boxes[k:k + 1]], lat)
        losses.append(exemplar_attention_loss(attn.float(), mask[None].float()))
    return torch.stack(losses).mean()


def exemplar_task(args, train_s, val_s, engine, settings: dict):
    """``(head, step_loss, validate)`` for ``python -m mm_core.train exemplar``."""
    if getattr(engine, "name", "") != "ldm":
        raise InputError("the exemplar projector belongs to the LDM engine: use --engine ldm")
    head = ProjectorHead(engine)
    train, val = prepare(train_s, engine), prepare(val_s, engine)

    def step(rng):
        idx = rng.integers(len(train), size=min(args.batch_size, len(train)))
        return projector_loss(engine, [train[int(i)] for i in idx], rng)

    def validate(h):
        with torch.no_grad():
            return float(projector_loss(engine, val, None))

    return head, step, validate
