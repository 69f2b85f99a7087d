"""The exemplar projector: ResNet-50 stride-8 features, RoIAlign 3x3, conv + linear.

It turns exemplar boxes into one embedding per box, of the text encoder's hidden
size (768 for SD v1.4), that the engine writes into the token sequence. The conv and
linear layers only mean something once trained (see :meth:`ExemplarProjector.load`);
the backbone is ``microsoft/resnet-50`` (``MM_RESNET_MODEL``) through
``transformers.ResNetModel.from_pretrained``.

:func:`mm_core.engines.roi_align.roi_align` (the one RoIAlign of the project, shared with
the authors' heads) pools the boxes, as torchvision's ``roi_align(aligned=True)`` with
``sampling_ratio=2``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.engines.roi_align import roi_align
from mm_core.errors import ModelUnavailableError
from mm_core.settings import Settings, get_settings

DEFAULT_BACKBONE = Settings().resnet_model
BACKBONE_ENV = Settings.env("resnet_model")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def stride8_features(backbone: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The backbone's hidden state at stride 8 (``hidden_states[2]`` of a ResNet-50)."""
    out = backbone(pixels, output_hidden_states=True)
    target = pixels.shape[-1] / 8.0
    for h in out.hidden_states:
        if abs(h.shape[-1] - target) < 1:
            return h
    raise ValueError("the backbone has no stride-8 feature map")


class ExemplarProjector(nn.Module):
    """Boxes -> token embeddings: backbone stride-8 map, RoIAlign 3x3, conv, ReLU, linear.

    Parameters
    ----------
    backbone : transformers.ResNetModel
        Frozen feature extractor (ResNet-50 in the paper).
    embed_dim : int
        Output size (the text encoder's hidden size).
    hidden : int
        Channels of the 3x3 conv.
    """

    def __init__(self, backbone: nn.Module, embed_dim: int, hidden: int = 512):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        in_ch = backbone.config.hidden_sizes[1]  # stage 2 = stride 8
        self.conv = nn.Conv2d(in_ch, hidden, kernel_size=3)
        self.linear = nn.Linear(hidden, embed_dim)
        self.trained = False
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, image01: torch.Tensor) -> torch.Tensor:
        """Stride-8 backbone features of ``(B, 3, H, W)`` images in [0, 1]."""
        x = (image01 - self.mean.to(image01)) / self.std.to(image01)
        return stride8_features(self.backbone, x.to(self.conv.weight.dtype))

    def forward(self, image01: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(K, embed_dim)`` of boxes ``(K, 5)`` (batch index, x0, y0, x1, y1)."""
        feats = self.features(image01)
        rois = roi_align(feats, boxes, 3, spatial_scale=feats.shape[-1] / image01.shape[-1], sampling_ratio=2,
                         aligned=True)
        x = F.relu(self.conv(rois))  # (K, hidden, 1, 1)
        return self.linear(x.flatten(1))

    def head_state_dict(self) -> dict:
        """Trainable weights only (conv + linear), as saved by the heads trainer."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load(self, path: str | os.PathLike, prefix: str = "projector.") -> None:
        """Load trained conv/linear weights from a safetensors file (keys ``projector.conv.*`` ...)."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise ModelUnavailableError(f"{path} holds no {prefix}* weights for the exemplar projector")
        missing, unexpected = self.load_state_dict(sub, strict=False)
        missing = [m for m in missing if not m.startswith("backbone.")]
        if missing or unexpected:
            raise ModelUnavailableError(f"{path}: projector weights do not fit (missing {missing}, "
                                        f"unexpected {unexpected})")
        self.trained = True


def load_backbone(model_id: str | None = None, allow_download: bool = False) -> nn.Module:
    """Load the ResNet backbone (``MM_RESNET_MODEL`` or ``microsoft/resnet-50``), cache first."""
    from transformers import ResNetModel

    source = str(model_id or get_settings().resnet_model)
    tries = [True] + ([False] if allow_download and not Path(source).exists() else [])
    err = None
    for local_only in tries:
        try:
            return ResNetModel.from_pretrained(source, local_files_only=local_only).eval()
        except (OSError, ValueError) as exc:
            err = exc
    raise ModelUnavailableError(f"ResNet-50 backbone {source!r} for the exemplar projector could not be "
                                f"loaded ({type(err).__name__}); set {BACKBONE_ENV} to a local "
                                f"transformers ResNet folder.") from err
