"""ResNet-50 with frozen batch norm, named as torchvision names it; LOCA's backbone around it.

Written from the architecture of He et al., "Deep Residual Learning for Image Recognition"
(CVPR 2016; bottleneck blocks with the stride on the 3x3 convolution, "ResNet v1.5") and the
key layout recorded in ``../shared/research/authors_heads.md`` (section 0.1): the authors'
checkpoints hold a torchvision-named ``resnet50`` whose batch norms are frozen (four buffers
``weight, bias, running_mean, running_var``, no ``num_batches_tracked``). No torchvision here.

:class:`LocaBackbone` is the feature extractor of LOCA (Dukic et al., ICCV 2023): layers 2, 3
and 4 resized bilinearly (corners aligned) to 1/``reduction`` of the input and concatenated
(512 + 1024 + 2048 = 3584 channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Bottleneck", "FrozenBatchNorm2d", "LocaBackbone", "ResNet50"]

#: Blocks per stage and bottleneck widths of ResNet-50.
BLOCKS = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms, all four stored as buffers.

    Parameters
    ----------
    n : int
        Number of channels.
    eps : float
        Added to the running variance.
    """

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / sqrt(var + eps) * weight + bias`` per channel."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=False)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 residual block, widths ``planes`` and ``4 * planes``.

    Parameters
    ----------
    cin : int
        Input channels.
    planes : int
        Width of the inner convolutions.
    stride : int
        Stride of the 3x3 convolution (and of the shortcut).
    """

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * EXPANSION
        self.conv1, self.bn1 = _conv(cin, planes, 1), FrozenBatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride), FrozenBatchNorm2d(planes)
        self.conv3, self.bn3 = _conv(planes, cout, 1), FrozenBatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(_conv(cin, cout, 1, stride), FrozenBatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, ``relu(branch(x) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _stage(cin: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(cin, planes, stride)]
    layers += [Bottleneck(planes * EXPANSION, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(nn.Module):
    """ResNet-50 (frozen batch norm) with torchvision's attribute names, ``fc`` included (unused)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = 64
        for i, (blocks, planes) in enumerate(zip(BLOCKS, WIDTHS)):
            setattr(self, f"layer{i + 1}", _stage(cin, planes, blocks, 1 if i == 0 else 2))
            cin = planes * EXPANSION
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 1000)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layers 1-4 (strides 4, 8, 16, 32).

        Parameters
        ----------
        x : Tensor
            Images ``[B, 3, H, W]``.

        Returns
        -------
        list of Tensor
            Four feature maps, 256, 512, 1024 and 2048 channels.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, 1000]`` (kept for completeness; LOCA uses :meth:`stages`)."""
        return self.fc(torch.flatten(self.avgpool(self.stages(x)[-1]), 1))


class LocaBackbone(nn.Module):
    """ResNet-50 stages 2-4, each resized to ``H / reduction`` and concatenated (3584 channels).

    Parameters
    ----------
    reduction : int
        Output stride of the concatenated map (8 in the authors' LOCA).
    """

    num_channels = 512 + 1024 + 2048

    def __init__(self, reduction: int = 8):
        super().__init__()
        self.reduction = reduction
        self.backbone = ResNet50()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, 3584, H / reduction, W / reduction]`` of images ``[B, 3, H, W]``."""
        size = (x.shape[-2] // self.reduction, x.shape[-1] // self.reduction)
        feats = self.backbone.stages(x)[1:]
        return torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=True) for f in feats], dim=1)
