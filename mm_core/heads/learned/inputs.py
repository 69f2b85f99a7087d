"""What a learned head sees: the image and the engine's maps, resampled to one grid.

Every learned head works on a *working grid*: the input image rescaled so that the
engine's object scale (``MatchMaps.scale``) becomes ``target_diameter`` pixels, as
Cellpose rescales to a fixed cell diameter. That makes one head usable on images
whose objects are 8 or 80 pixels wide. Image, maps and features are sampled onto a
region of that grid with one bilinear :func:`torch.nn.functional.grid_sample` each,
whatever resolution the engine returned them at, so training crops and tiled
inference use the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mm_core.engines.base import MatchMaps
from mm_core.errors import InputError
from mm_core.transforms import to_gray

#: Image + foreground + centres: the channels every engine provides.
BASE_CHANNELS = ("image", "foreground", "centers")


@dataclass
class HeadInputs:
    """One image's head inputs at their native resolutions (numpy, float32).

    Attributes
    ----------
    base : ndarray, (3, H, W)
        Grey image (inverted when objects are dark, see :func:`align_polarity`),
        foreground and centre maps at input resolution.
    features : ndarray or None, (C, h, w)
        Engine features at the engine's resolution.
    scale : float
        Engine's object diameter in input pixels.
    engine : str
        Engine that made the maps.
    """

    base: np.ndarray
    features: np.ndarray | None
    scale: float
    engine: str

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.base.shape[1]), int(self.base.shape[2])

    @property
    def n_features(self) -> int:
        return 0 if self.features is None else int(self.features.shape[0])


def gather_inputs(maps: MatchMaps, image: np.ndarray) -> HeadInputs:
    """Collect a head's inputs from match maps and the normalised image.

    Parameters
    ----------
    maps : MatchMaps
        Output of an engine's ``match``.
    image : ndarray, (H, W) or (H, W, 3)
        The normalised image the maps were computed on.

    Returns
    -------
    HeadInputs
    """
    gray = to_gray(image).astype(np.float32)
    if gray.shape != tuple(maps.image_shape):
        raise InputError(f"the image is {gray.shape[1]}x{gray.shape[0]} but the match maps were made "
                         f"for a {maps.image_shape[1]}x{maps.image_shape[0]} image")
    fg = maps.at_input("foreground")
    base = np.stack([align_polarity(np.clip(gray, -1.0, 3.0), fg), fg, maps.at_input("centers")])
    feats = None if maps.features is None else np.asarray(maps.features, np.float32)
    return HeadInputs(base=base.astype(np.float32), features=feats, scale=float(maps.scale),
                      engine=str(maps.engine))


def align_polarity(gray: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Invert ``gray`` (``1 - gray``) when the engine's foreground is darker than the background.

    Heads then always see objects brighter than their surroundings, whichever
    contrast (fluorescence, phase contrast, EM, brightfield) the image has.
    """
    fg = foreground > 0.5
    if fg.all() or not fg.any():
        return gray
    return gray if gray[fg].mean() >= gray[~fg].mean() else (1.0 - gray)


def working_factor(scale: float, target_diameter: float, lo: float = 0.25, hi: float = 4.0) -> float:
    """Zoom factor that brings objects of ``scale`` pixels to ``target_diameter``."""
    if not np.isfinite(scale) or scale <= 0:
        return 1.0
    return float(np.clip(target_diameter / scale, lo, hi))


def _grid(region: tuple[float, float, float, float], out_shape: tuple[int, int],
          src_shape: tuple[int, int], input_shape: tuple[int, int]) -> torch.Tensor:
    """Sampling grid for ``region`` = (y0, x0, y1, x1) in *input* pixel coordinates.

    The source array may have another resolution than the input image
    (``src_shape`` vs ``input_shape``); coordinates are mapped by pixel areas.
    """
    y0, x0, y1, x1 = region
    oh, ow = out_shape
    # centres of the output pixels, in input-image pixel units
    ys = y0 + (torch.arange(oh, dtype=torch.float32) + 0.5) * (y1 - y0) / oh
    xs = x0 + (torch.arange(ow, dtype=torch.float32) + 0.5) * (x1 - x0) / ow
    ih, iw = input_shape
    gy = ys / ih * 2 - 1  # align_corners=False normalised coords are resolution free
    gx = xs / iw * 2 - 1
    gyy, gxx = torch.meshgrid(gy, gx, indexing="ij")
    return torch.stack([gxx, gyy], dim=-1)[None]


def sample_region(arr: np.ndarray | torch.Tensor, region, out_shape, input_shape,
                  mode: str = "bilinear") -> torch.Tensor:
    """Sample a ``(C, h, w)`` array over ``region`` of the input image onto ``out_shape``.

    Out-of-image samples repeat the border. Returns a ``(C, oh, ow)`` float tensor.
    """
    t = torch.as_tensor(np.ascontiguousarray(arr) if isinstance(arr, np.ndarray) else arr,
                        dtype=torch.float32)
    grid = _grid(region, out_shape, tuple(t.shape[-2:]), input_shape)
    return F.grid_sample(t[None], grid, mode=mode, padding_mode="border", align_corners=False)[0]


def sample_inputs(inp: HeadInputs, region, out_shape) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Base channels and features of ``inp`` sampled over ``region`` onto ``out_shape``."""
    base = sample_region(inp.base, region, out_shape, inp.shape)
    feats = None if inp.features is None else sample_region(inp.features, region, out_shape, inp.shape)
    return base, feats
