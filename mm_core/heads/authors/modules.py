"""The three top-level modules whose state dicts are the authors' released checkpoints.

Each holds ``loca_model`` (:class:`~.loca.LOCA`) and ``counting_adapter`` (``adapter``, an
exemplar-to-token adapter, and a task ``regressor``); tracking adds ``track_model``
(:class:`~.tracker.TrackingTransformer`). Names, shapes and order are those recorded in
``../shared/research/authors_heads_keys/{seg,cnt,tra}_keys.tsv`` (see
``../shared/research/authors_heads.md``, sections 0-1); the forward passes follow section 2 of
that note. The code is ours; see the papers cited in :mod:`.loca`, :mod:`.vit` and :mod:`.tracker`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.heads.authors.loca import LOCA
from mm_core.engines.roi_align import roi_align
from mm_core.heads.authors.tracker import AUTHORS_CONFIG, TrackingTransformer
from mm_core.heads.authors.vit import CellposeViT

__all__ = ["CountingHeadModule", "ExemplarAdapter", "SegmentationHeadModule", "TrackingHeadModule"]

#: Side of the attention maps and UNet feature, and of the frame the boxes are given in.
GRID, FRAME = 64, 512


class ExemplarAdapter(nn.Module):
    """Exemplar boxes on a LOCA response map -> one 768-d text-token embedding per box.

    The response map is resized to the 512 frame, each box pooled to 3 x 3 by RoIAlign at
    1/8 scale of its 512-frame coordinates (so, as the authors do it, the pooled window is
    1/8 of the box's position on the upsampled map), then ``conv1`` (3 x 3, no activation),
    flatten and ``fc``. ``pool`` is kept for the checkpoint layout; it is not used.
    """

    def __init__(self, channels: int = 256, kernel: int = 3, token_dim: int = 768):
        super().__init__()
        self.kernel = kernel
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(channels * kernel * kernel, token_dim)

    def pooled(self, response: torch.Tensor, boxes: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
        """``[K, C, 3, 3]`` RoIAlign of ``boxes [K, 4]`` (512 frame) on the response map of image 0."""
        big = F.interpolate(response[:1], size=(FRAME, FRAME), mode="bilinear", align_corners=align_corners)
        return roi_align(big, [boxes.to(big.dtype)], self.kernel, spatial_scale=1 / 8, aligned=True)

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """``conv1`` -> flatten -> ``fc``: ``[K, C, 3, 3]`` -> ``[K, 768]``."""
        return self.fc(self.conv1(pooled).flatten(1))

    def forward_boxes(self, response: torch.Tensor, boxes: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
        """One embedding per box, ``[K, 768]``."""
        return self.embed(self.pooled(response, boxes, align_corners))

    def forward(self, response: torch.Tensor, boxes: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
        """The mean exemplar embedding ``[1, 768]`` (boxes averaged after pooling).

        Parameters
        ----------
        response : Tensor
            Final LOCA response map ``[1, 256, 64, 64]``.
        boxes : Tensor
            ``[K, 4]`` boxes ``(x0, y0, x1, y1)`` in the 512 frame.
        align_corners : bool
            Of the 64 -> 512 resize (not recorded; ``False`` is PyTorch's default).
        """
        return self.embed(self.pooled(response, boxes, align_corners).mean(dim=0, keepdim=True))


class SegRegressor(nn.Module):
    """Segmentation regressor: attention maps + UNet feature -> ``feat`` for the ViT; the ViT itself."""

    def __init__(self, vit_depth: int = 24):
        super().__init__()
        self.norm = nn.LayerNorm((GRID, GRID))
        self.inc_0 = nn.Conv2d(3, 3, 3, padding=1)
        self.vit = CellposeViT(depth=vit_depth)

    def features(self, attn_stack: torch.Tensor, unet_feat: torch.Tensor, size: int = FRAME,
                 align_corners: bool = False) -> torch.Tensor:
        """``inc_0(resize(cat([norm(attn_stack[:, [1, 3]]), mean_c(unet_feat)])))``: ``[B, 3, size, size]``.

        Parameters
        ----------
        attn_stack : Tensor
            ``[B, 4, 64, 64]`` stacked attention maps (channels 1 and 3 are used).
        unet_feat : Tensor
            ``[B, 320, 64, 64]``.
        size : int
            Output side (512).
        align_corners : bool
            Of the bilinear resize (not recorded; PyTorch's default).
        """
        maps = torch.cat([self.norm(attn_stack[:, [1, 3]]), unet_feat.mean(dim=1, keepdim=True)], dim=1)
        return self.inc_0(F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=align_corners))


class TrackRegressor(SegRegressor):
    """Tracking regressor: the segmentation parts plus the per-instance attention embedding."""

    def __init__(self, vit_depth: int = 24, d_model: int = 320):
        super().__init__(vit_depth)
        self.inc_1 = nn.Conv2d(2, 1, 3, padding=1)
        self.mlp = nn.Linear(GRID * GRID, d_model)

    def instance_embedding(self, prev_maps: torch.Tensor, next_maps: torch.Tensor) -> torch.Tensor:
        """``mlp(flatten(inc_1(cat([norm(prev), norm(next)]))))``: ``[n, 64, 64] x 2`` -> ``[1, n, 320]``."""
        pair = torch.stack([self.norm(prev_maps), self.norm(next_maps)], dim=1)
        return self.mlp(self.inc_1(pair).flatten(1))[None]


class CountRegressor(nn.Module):
    """The counting checkpoint's ``regressor``: stored but not used at inference (LOCA gives the density).

    Its forward (1x1 fusion, then three conv + transposed-conv x2 stages, then 1x1 to one channel)
    is our reading of the layer shapes; nothing depends on it.
    """

    def __init__(self, cin: int = 324):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(cin, 256, 1), nn.LeakyReLU(), nn.LayerNorm((GRID, GRID)))
        self.layer2 = self._up(256, 128)
        self.layer3 = self._up(128, 64)
        self.layer4 = self._up(64, 32)
        self.conv = nn.Sequential(nn.Conv2d(32, 1, 1), nn.LeakyReLU())
        self.norm = nn.LayerNorm((GRID, GRID))

    @staticmethod
    def _up(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(),
                             nn.ConvTranspose2d(cout, cout, 4, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 324, 64, 64]`` -> ``[B, 1, 512, 512]``."""
        return self.conv(self.layer4(self.layer3(self.layer2(self.layer1(x)))))


class CountingAdapter(nn.Module):
    """The checkpoints' ``counting_adapter``: ``adapter`` and a task ``regressor``."""

    def __init__(self, regressor: nn.Module):
        super().__init__()
        self.adapter = ExemplarAdapter()
        self.regressor = regressor


class _HeadModule(nn.Module):
    def __init__(self, regressor: nn.Module):
        super().__init__()
        self.loca_model = LOCA()
        self.counting_adapter = CountingAdapter(regressor)


class SegmentationHeadModule(_HeadModule):
    """``microscopy_matching_seg.pth``: LOCA + adapter + ViT regressor (757 entries at full size).

    Parameters
    ----------
    vit_depth : int
        ViT blocks (24; fewer only for tests).
    """

    def __init__(self, vit_depth: int = 24):
        super().__init__(SegRegressor(vit_depth))


class CountingHeadModule(_HeadModule):
    """``microscopy_matching_cnt.pth``: LOCA + adapter + the unused counting regressor (423 entries)."""

    def __init__(self):
        super().__init__(CountRegressor())


class TrackingHeadModule(_HeadModule):
    """``microscopy_matching_tra.pth``: LOCA + adapter + tracking regressor + transformer (1023 entries).

    Parameters
    ----------
    vit_depth : int
        ViT blocks (24; fewer only for tests).
    tracker_layers : int
        Encoder and decoder layers of the tracking transformer (6; fewer only for tests).
    """

    def __init__(self, vit_depth: int = 24, tracker_layers: int = 6):
        super().__init__(TrackRegressor(vit_depth, AUTHORS_CONFIG["d_model"]))
        config = {**AUTHORS_CONFIG, "num_encoder_layers": tracker_layers, "num_decoder_layers": tracker_layers}
        self.track_model = TrackingTransformer(**config)
