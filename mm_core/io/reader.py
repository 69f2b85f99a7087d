"""``read_image`` and ``read_sequence``: files, folders and zips to float32 arrays.

What comes back are raw intensities as float32 (not normalised; pipelines call
:func:`mm_core.transforms.normalize`). One image is ``(H, W)`` for one channel or
``(H, W, 3)`` for three (RGB). Decisions, for every format:

- Alpha is dropped (RGBA -> RGB, gray + alpha -> gray). In a TIFF only one
  trailing sample marked as alpha after gray or RGB is alpha; every other extra
  sample (ExtraSamples "unspecified", or several extra samples) is a channel.
- Channels: ``channels=None`` keeps 1 channel as ``(H, W)`` and 3 as ``(H, W, 3)``;
  2 or more than 3 channels become one composite channel, the mean of the
  per-channel percentile-normalised channels. ``channels=k`` or ``[k]`` picks one
  channel, ``[a, b, c]`` three (``(H, W, 3)``), any other number of picked
  channels is composited; ``channels="composite"`` always composites.
- Depth (Z): a max projection over the slices (``info["z_projection"]``).
- Time (T): ``read_image`` refuses a file with more than one time point (use
  ``read_sequence``); ``read_sequence`` takes T as frames, and pages without axes
  metadata as frames; a Z stack without a time axis is read as frames (Fiji saves
  plain stacks of frames as slices), noted in ``info["time_axis"]``.
- TIFF files with several image series (multi-position OME, thumbnails) are read
  from their first series; ``info["series"]`` says how many there are.
- Content: images smaller than 8x8 and all-NaN images are refused; ``read_image``
  also refuses blank (constant) images. ``read_sequence`` accepts blank frames,
  lists them in ``info["blank_frames"]`` and refuses a sequence of blank frames only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mm_core.errors import InputError
from mm_core.io.archive import list_folder, member_name, open_zip, read_member
from mm_core.io.calibration import UNKNOWN, resolve_pixel_size
from mm_core.io.decode import decode, read_head, sniff
from mm_core.io.layout import RawImage
from mm_core.io.limits import MIN_SIDE, Limits, megapixels
from mm_core.transforms import normalize

Channels = None | int | str | Sequence[int]


@dataclass
class ImageData:
    """One image and what was read."""

    data: np.ndarray  #: float32 (H, W) or (H, W, 3), raw intensities
    axes: str  #: "YX" or "YXC"
    dtype: str  #: dtype in the file, e.g. "uint16"
    n_channels: int  #: channels in the file (alpha not counted)
    source: str  #: file name (``member in archive.zip`` for a zip)
    info: dict = field(default_factory=dict)  #: format, file axes/shape, choices made
    pixel_size: float | None = None  #: µm per pixel in use (None: unknown, measure in pixels)
    pixel_size_source: str = UNKNOWN  #: "from file", "given" or "unknown: pixels"


@dataclass
class SequenceData:
    """Frames of a time-lapse, all the same size."""

    frames: list  #: float32 arrays, each (H, W) or (H, W, 3)
    names: list  #: one name per frame (file names, or tNNN for frames of one file)
    source: str
    dtype: str = ""
    info: dict = field(default_factory=dict)
    pixel_size: float | None = None  #: µm per pixel in use (None: unknown)
    pixel_size_source: str = UNKNOWN  #: "from file", "given" or "unknown: pixels"

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def shape(self) -> tuple:
        """``(T, H, W)`` or ``(T, H, W, 3)``."""
        return (len(self.frames), *self.frames[0].shape) if self.frames else (0,)


def _size(arr: np.ndarray) -> str:
    return f"{arr.shape[1]}x{arr.shape[0]}" + (" RGB" if arr.ndim == 3 else "")


def check_content(data: np.ndarray, name: str = "the image", allow_constant: bool = False) -> None:
    """Refuse an image with nothing to analyse, with a message naming it.

    Parameters
    ----------
    data : ndarray
        ``(H, W)`` or ``(H, W, C)`` array.
    name : str
        What to call the image in the message (e.g. its file name).
    allow_constant : bool
        Accept a blank (constant) image.

    Raises
    ------
    InputError
        Not a 2-D image, smaller than 8x8, no finite value (all NaN/inf), or
        (unless ``allow_constant``) every pixel the same value.
    """
    arr = np.asarray(data)
    if arr.ndim not in (2, 3) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{name} is not a 2-D image (got an array of shape {arr.shape}, type {arr.dtype})")
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{name} is only {w}x{h} pixels; images must be at least {MIN_SIDE}x{MIN_SIDE}")
    if np.iscomplexobj(arr):
        raise InputError(f"{name} holds complex numbers, not intensities")
    finite = np.isfinite(arr) if np.issubdtype(arr.dtype, np.floating) else None
    if finite is not None and not finite.any():
        raise InputError(f"{name} has no valid pixel values (every pixel is NaN or infinite)")
    if not allow_constant:
        vals = arr[finite] if finite is not None else arr
        lo, hi = vals.min(), vals.max()
        if lo == hi:
            raise InputError(
                f"{name} is blank: every pixel has the value {lo:g}, so there is nothing to analyse"
            )


def _channel_list(channels: Channels, n: int, name: str):
    if channels is None:
        return None
    if isinstance(channels, str):
        if channels.lower() != "composite":
            raise InputError(f"channels must be channel numbers or 'composite', got {channels!r}")
        return "composite"
    try:
        picked = [channels] if np.isscalar(channels) else list(channels)
    except TypeError:
        raise InputError(f"channels must be channel numbers or 'composite', got {channels!r}") from None
    if not picked:
        raise InputError("no channel was chosen")
    for c in picked:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise InputError(f"channel numbers must be whole numbers, got {c!r}")
        if not 0 <= c < n:
            have = "only channel 0" if n == 1 else f"channels 0 to {n - 1}"
            raise InputError(f"{name} has {n} channel{'s' * (n > 1)} ({have}); channel {c} does not exist")
    return [int(c) for c in picked]


def _composite(cyx: np.ndarray) -> np.ndarray:
    """Mean of the per-channel percentile-normalised channels (one channel out)."""
    return normalize(np.moveaxis(cyx, 0, -1)).mean(axis=-1, dtype=np.float32)


def _to_output(zcyx: np.ndarray, channels: Channels, name: str, info: dict) -> np.ndarray:
    """One time point ``(Z, C, Y, X)`` -> float32 ``(Y, X)`` or ``(Y, X, 3)``."""
    if zcyx.shape[0] > 1:
        cyx = np.fmax.reduce(zcyx, axis=0)
        info["z_projection"] = f"max of {zcyx.shape[0]} slices"
    else:
        cyx = zcyx[0]
    n = cyx.shape[0]
    picked = _channel_list(channels, n, name)
    if isinstance(picked, list):
        cyx = cyx[picked]
        info["channels_used"] = picked
    k = cyx.shape[0]
    if picked == "composite" or k not in (1, 3):
        info["composite"] = f"mean of {k} percentile-normalised channels"
        return _composite(cyx)
    return cyx[0].astype(np.float32) if k == 1 else np.moveaxis(cyx, 0, -1).astype(np.float32)


def _single(raw: RawImage, channels: Channels, name: str) -> np.ndarray:
    return _to_output(raw.array[0], channels, name, raw.info)


def _zip_or_path(path: Path) -> str:
    """Format of a path from its first bytes ('TIFF', 'PNG', ..., 'ZIP'), or 'DIR' for a folder."""
    if path.is_dir():
        return "DIR"
    return sniff(read_head(path), path.name)


def read_image(path, channels: Channels = None, max_pixels: int | None = None, pixel_size=None) -> ImageData:
    """Read one 2-D image (PNG, JPEG, BMP, TIFF/OME-TIFF/ImageJ, or a zip holding one image).

    Parameters
    ----------
    path : str or Path
        The file. The format is recognised from its content, not its extension.
    channels : None, int, list of int or "composite"
        Channels to use (see the module docstring); ``None`` = automatic.
    max_pixels : int, optional
        Pixel cap per image, checked from the header before decoding
        (default ``MM_MAX_PIXELS`` or 64 Mpx).
    pixel_size : float, optional
        µm per pixel; overrides the file's calibration (see :mod:`mm_core.io.calibration`).

    Returns
    -------
    ImageData
        ``pixel_size`` / ``pixel_size_source``: given, from the file, or unknown.

    Raises
    ------
    InputError
        Unreadable, damaged, hostile, too large, too small, all-NaN or blank input,
        or a time-lapse (use :func:`read_sequence`).
    """
    path = Path(path)
    limits = Limits.resolve(max_pixels=max_pixels)
    resolve_pixel_size(pixel_size)  # a bad value is refused before the file is read
    fmt = _zip_or_path(path)
    if fmt == "DIR":
        raise InputError(
            f"{path.name} is a folder; a folder of frames is a time-lapse: open it with "
            "read_sequence (the tracking task)"
        )
    name, extra = path.name, {}
    if fmt == "ZIP":
        zf, members = open_zip(path, limits)
        with zf:
            if len(members) != 1:
                raise InputError(
                    f"{path.name} holds {len(members)} images; one image is expected here "
                    "(a zip of frames is a time-lapse: use read_sequence / the tracking task)"
                )
            name = f"{member_name(members[0])} in {path.name}"
            extra["member"] = members[0].filename
            src = read_member(zf, members[0], path.name, [limits.max_zip_bytes])
        raw = decode(src, member_name(members[0]), limits, "image", channels is not None)
    else:
        raw = decode(path, path.name, limits, "image", channels is not None, fmt=fmt)
    n_channels = raw.array.shape[2]
    data = _single(raw, channels, name)
    check_content(data, name)
    info = dict(raw.info, format=raw.fmt, rgb=raw.rgb and data.ndim == 3, path=str(path), **extra)
    size, source = resolve_pixel_size(pixel_size, info.get("pixel_size_um"))
    return ImageData(
        pixel_size=size,
        pixel_size_source=source,
        data=data,
        axes="YX" if data.ndim == 2 else "YXC",
        dtype=raw.dtype,
        n_channels=n_channels,
        source=name,
        info=info,
    )


class _Collector:
    """Checks frames one by one: same size, total pixel budget, content."""

    def __init__(self, limits: Limits, source: str, expected: int = 0):
        self.limits, self.source, self.expected = limits, source, expected
        self.frames, self.names, self.blank, self.total = [], [], [], 0

    def add(self, frame: np.ndarray, name: str) -> None:
        cap = self.limits.max_total_pixels
        if not self.frames and self.expected * frame.size > cap:  # frames x pixels, before the other frames
            raise InputError(
                f"{self.source} holds {self.expected:,} frames of {_size(frame)}, "
                f"{megapixels(self.expected * frame.size)} in all, more than the limit of {megapixels(cap)} "
                "(MM_MAX_TOTAL_PIXELS); use fewer or smaller frames"
            )
        check_content(frame, f"frame {name}", allow_constant=True)
        if self.frames and frame.shape != self.frames[0].shape:
            raise InputError(
                f"frame {name} is {_size(frame)} but {self.names[0]} is {_size(self.frames[0])}; "
                f"all frames of {self.source} must be the same size"
            )
        self.total += frame.size
        if self.total > self.limits.max_total_pixels:
            raise InputError(
                f"{self.source} holds more than {megapixels(self.limits.max_total_pixels)} in all "
                "(MM_MAX_TOTAL_PIXELS); use fewer or smaller frames"
            )
        if np.nanmin(frame) == np.nanmax(frame):
            self.blank.append(name)
        self.frames.append(frame)
        self.names.append(name)

    def finish(self, dtype: str, info: dict) -> SequenceData:
        if self.frames and len(self.blank) == len(self.frames):
            raise InputError(f"every frame of {self.source} is blank (constant); there is nothing to analyse")
        info = dict(info, n_frames=len(self.frames))
        if self.blank:
            info["blank_frames"] = list(self.blank)
        return SequenceData(frames=self.frames, names=self.names, source=self.source, dtype=dtype, info=info)


def _check_count(n: int, source: str, limits: Limits) -> None:
    if n > limits.max_frames:
        raise InputError(
            f"{source} holds {n:,} frames, more than the limit of {limits.max_frames:,} (MM_MAX_FRAMES)"
        )


def first_frame_name(path) -> str | None:
    """The name :func:`read_sequence` gives a time-lapse's first frame, read from its listing only.

    A folder's or zip's first image file (natural order), ``t000`` for a multi-frame file;
    ``None`` when the path cannot be read (:func:`read_sequence` then says why).
    """
    path = Path(path)
    try:
        fmt = _zip_or_path(path)
        if fmt == "DIR":
            files = list_folder(path)
            return files[0].name if files else None
        if fmt == "ZIP":
            zf, members = open_zip(path, Limits.resolve())
            with zf:
                return member_name(members[0]) if members else None
    except (InputError, OSError):
        return None
    return "t000"


def read_sequence(
    path, channels: Channels = None, max_frames: int | None = None, max_pixels: int | None = None,
    max_total_pixels: int | None = None, pixel_size=None,
) -> SequenceData:
    """Read a time-lapse: a folder or zip of frames, or one multi-frame TIFF.

    Parameters
    ----------
    path : str or Path
        A folder or zip of image files (one frame each, natural order: ``t2``
        before ``t10``; ``__MACOSX``, dot-files and non-image files are skipped),
        or a TIFF / OME-TIFF / ImageJ hyperstack with a time axis or plain pages.
    channels : None, int, list of int or "composite"
        As in :func:`read_image`, applied to every frame.
    max_frames : int, optional
        Frame cap (default ``MM_MAX_FRAMES`` or 2000), checked before decoding.
    max_pixels : int, optional
        Pixel cap per frame (default ``MM_MAX_PIXELS`` or 64 Mpx).
    max_total_pixels : int, optional
        Cap on frames x pixels (default ``MM_MAX_TOTAL_PIXELS``), checked from the header
        of a TIFF, and after the first frame of a folder or zip (before the others are read).
    pixel_size : float, optional
        µm per pixel; overrides the calibration of the (first) file.

    Returns
    -------
    SequenceData

    Raises
    ------
    InputError
        As :func:`read_image`, plus too many frames, frames of different sizes,
        or a sequence whose frames are all blank.
    """
    path = Path(path)
    limits = Limits.resolve(max_pixels=max_pixels, max_frames=max_frames, max_total_pixels=max_total_pixels)
    resolve_pixel_size(pixel_size)  # a bad value is refused before the files are read
    fmt = _zip_or_path(path)
    col = _Collector(limits, path.name)
    info, dtype = {"path": str(path)}, ""
    if fmt == "DIR":
        files = list_folder(path)
        _check_count(len(files), path.name, limits)
        col.expected = len(files)
        for f in files:
            raw = decode(f, f.name, limits, "frame", channels is not None)
            dtype = dtype or raw.dtype
            col.add(_single(raw, channels, f.name), f.name)
        info.update(time_axis="files in a folder", format=raw.fmt, n_channels=raw.array.shape[2])
    elif fmt == "ZIP":
        zf, members = open_zip(path, limits)
        with zf:
            _check_count(len(members), path.name, limits)
            col.expected = len(members)
            budget = [limits.max_zip_bytes]
            for m in members:
                mname = member_name(m)
                raw = decode(
                    read_member(zf, m, path.name, budget), mname, limits, "frame", channels is not None
                )
                dtype = dtype or raw.dtype
                col.add(_single(raw, channels, mname), mname)
        info.update(time_axis="files in a zip", format=raw.fmt, n_channels=raw.array.shape[2])
    else:
        raw = decode(path, path.name, limits, "sequence", False, fmt=fmt)
        dtype, width = raw.dtype, 4 if raw.array.shape[0] > 1000 else 3
        for t in range(raw.array.shape[0]):
            col.add(_to_output(raw.array[t], channels, path.name, raw.info), f"t{t:0{width}d}")
        info.update(raw.info, format=raw.fmt, n_channels=raw.array.shape[2])
        info.setdefault("time_axis", "none (a single image)")
    for key in ("z_projection", "composite", "channels_used", "alpha_dropped", "pixel_size_um", "calibration"):
        if key in raw.info:
            info[key] = raw.info[key]
    seq = col.finish(dtype, info)
    seq.pixel_size, seq.pixel_size_source = resolve_pixel_size(pixel_size, info.get("pixel_size_um"))
    return seq
