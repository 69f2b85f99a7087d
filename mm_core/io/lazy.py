"""Lazy reading of large images: TIFF/BigTIFF through ``tifffile.aszarr``, zarr and OME-Zarr.

:func:`open_lazy` opens a file without decoding it and returns a :class:`LazyImage`
whose :meth:`~LazyImage.read` decodes one window at a time, so whole slides of tens of
thousands of pixels a side are processed tile by tile in bounded memory.

Accepted layouts: axes ``Y`` and ``X`` plus, optionally, ``C`` (TIFF ``S`` samples
count as channels: 1 or 3 channels, or the ones picked with ``channels``) and any other
axis of size 1. A time axis, a Z stack or an unknown axis of size > 1 is refused with
the axes found, and so is a zarr holding no image array.

Work caps before work: a TIFF or zarr that declares far more pixels than it stores
(more than ``MM_MAX_DECLARED_RATIO`` declared bytes per stored byte, or tiles that all
point at the same data) is refused when opened, and reading one image stops with a
message after ``MM_READ_TIME_BUDGET_S`` seconds in all.

Pixel limit: lazily read images may hold up to :data:`MAX_LAZY_PIXELS` pixels
(4,294,967,296 = 65,536 x 65,536) per plane, set with the environment variable
``MM_MAX_LAZY_PIXELS``; the in-memory limit ``MM_MAX_PIXELS`` (8,192 x 8,192) does not
apply to them because they are never decoded whole.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mm_core.errors import InputError
from mm_core.io.decode import check_regular
from mm_core.io.calibration import tiff_pixel_size, zarr_pixel_size
from mm_core.io.limits import MIN_SIDE, megapixels
from mm_core.settings import Settings, get_settings

#: Default cap on pixels per plane of a lazily read image (65,536 x 65,536).
MAX_LAZY_PIXELS = Settings().max_lazy_pixels
#: Environment variable that overrides :data:`MAX_LAZY_PIXELS`.
LAZY_PIXELS_ENV = Settings.env("max_lazy_pixels")
#: Pixels sampled (on a regular grid) to estimate the normalisation percentiles.
SAMPLE_PIXELS = 4_000_000
_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")


@dataclass
class LazyImage:
    """A 2-D image on disk, read window by window.

    Attributes
    ----------
    array : zarr.Array
        The stored array (any axis order).
    axes : str
        Axes of ``array``, upper case (``C`` for channels).
    source : str
        File name, for messages.
    channels : list of int or None
        Channels kept (``None``: the one channel, or the three RGB ones).
    """

    array: object
    axes: str
    source: str
    channels: list | None = None
    info: dict = field(default_factory=dict)
    _handle: object = None
    deadline: float | None = None  #: ``time.monotonic()`` after which reading stops (the read budget)

    @property
    def pixel_size(self) -> float | None:
        """µm per pixel read from the file (None: not calibrated)."""
        return self.info.get("pixel_size_um")

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return int(self.array.shape[self.axes.index("Y")]), int(self.array.shape[self.axes.index("X")])

    @property
    def n_channels(self) -> int:
        """Channels in the output (1 or 3)."""
        if self.channels is not None:
            return len(self.channels)
        return int(self.array.shape[self.axes.index("C")]) if "C" in self.axes else 1

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype."""
        return np.dtype(self.array.dtype)

    def read(self, y0: int, y1: int, x0: int, x1: int, step: int = 1) -> np.ndarray:
        """Decode the window ``[y0:y1, x0:x1]`` as float32 ``(h, w)`` or ``(h, w, 3)``.

        Raises
        ------
        InputError
            The image's read budget (``MM_READ_TIME_BUDGET_S``) is spent.
        """
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise InputError(f"{self.source} took more than {get_settings().read_time_budget_s:,.0f} s to read "
                             "(MM_READ_TIME_BUDGET_S); its stored data is slow to decode (one huge strip or "
                             "tile?); save it tiled (e.g. 512x512 tiles) or raise the budget")
        index = []
        for ax, n in zip(self.axes, self.array.shape):
            if ax == "Y":
                index.append(slice(y0, y1, step))
            elif ax == "X":
                index.append(slice(x0, x1, step))
            elif ax == "C":
                index.append(slice(None))
            else:
                index.append(0)
        arr = np.asarray(self.array[tuple(index)])
        kept = [a for a in self.axes if a in "YXC"]
        arr = np.moveaxis(arr, [kept.index(a) for a in "YX" + "C" * ("C" in kept)], list(range(len(kept))))
        if arr.ndim == 3:
            arr = arr[..., self.channels] if self.channels is not None else arr
            if arr.shape[-1] == 1:
                arr = arr[..., 0]
        return arr.astype(np.float32)

    def sample(self, n_pixels: int = SAMPLE_PIXELS) -> np.ndarray:
        """A regular subsample of about ``n_pixels`` pixels (for percentiles)."""
        h, w = self.shape
        step = max(1, int(np.sqrt(h * w / n_pixels)))
        rows = []
        for y in range(0, h, 1024 * step):  # bounded memory: decode a band at a time
            rows.append(self.read(y, min(h, y + 1024 * step), 0, w, step=step))
        return np.concatenate(rows, axis=0)

    def close(self) -> None:
        """Close the underlying file (TIFF)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> LazyImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_zarr(path) -> bool:
    """True for a zarr / OME-Zarr folder (v2 or v3 metadata)."""
    p = Path(path)
    return p.is_dir() and (p.suffix.lower() == ".zarr" or any((p / m).exists() for m in _ZARR_MARKERS))


def _stored_tiff(tf) -> tuple[int, int, int]:
    """``(bytes stored, data blocks, distinct blocks)`` of a TIFF's first series."""
    blocks = [(o, c) for page in tf.series[0].pages if page is not None
              for o, c in zip(page.dataoffsets, page.databytecounts) if c > 0]
    distinct = set(blocks)
    return sum(c for _, c in distinct), len(blocks), len(distinct)


def _stored_zarr(path: Path) -> int:
    """Bytes of the files of a zarr folder (its chunks and metadata)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def check_declared(img: LazyImage, stored: int, blocks: int = 0, distinct: int = 0) -> None:
    """Refuse an image that declares far more than it stores (see the module docstring).

    Raises
    ------
    InputError
        Tiles pointing at the same data, or more than ``MM_MAX_DECLARED_RATIO`` declared
        bytes per stored byte.
    """
    h, w = img.shape
    declared = h * w * img.n_channels * img.dtype.itemsize
    if blocks >= 8 and distinct < blocks / 2:
        raise InputError(f"{img.source} is refused: {blocks - distinct:,} of its {blocks:,} tiles or strips point "
                         "at data already used by another; the file is forged or damaged")
    ratio = get_settings().max_declared_ratio
    if declared > 64 * 2**20 and declared > ratio * max(stored, 1):
        raise InputError(f"{img.source} declares {w:,}x{h:,} pixels ({declared / 2**20:,.0f} MiB) but stores only "
                         f"{stored / 2**10:,.0f} KiB of image data, more than {ratio} times less "
                         "(MM_MAX_DECLARED_RATIO); a forged or nearly empty file is not processed")


def max_lazy_pixels() -> int:
    """The lazy pixel cap: ``MM_MAX_LAZY_PIXELS`` if set, else :data:`MAX_LAZY_PIXELS`."""
    return get_settings().max_lazy_pixels


def tiff_plane_pixels(path) -> int | None:
    """Pixels per plane of a TIFF's first series from its header (None if not a readable TIFF)."""
    import tifffile

    if not Path(path).is_file():  # a FIFO or device would block: the reader refuses it
        return None
    try:
        with tifffile.TiffFile(path) as tf:
            s = tf.series[0]
            axes = s.axes.upper()
            return (
                int(s.shape[axes.index("Y")] * s.shape[axes.index("X")])
                if "Y" in axes and "X" in axes
                else None
            )
    except Exception:  # noqa: BLE001 - not a TIFF, or damaged: the normal reader says why
        return None


def _ome_axes(attrs: dict, source: str = "the zarr") -> tuple[str, str] | None:
    """``(dataset path, axes)`` of the first multiscale of OME-Zarr attributes, or None.

    Raises
    ------
    InputError
        Metadata that says OME-Zarr but lacks what it needs (axes names, a dataset path).
    """
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        return None
    try:
        m = ms[0]
        datasets = m.get("datasets") or []
        axes = m.get("axes") or ["t", "c", "z", "y", "x"][-len(datasets or [{}]):]
        names = "".join(str(a["name"] if isinstance(a, dict) else a)[:1] for a in axes)
        return str(datasets[0]["path"]), names.upper()
    except (KeyError, IndexError, TypeError, AttributeError):
        raise InputError(f"{source}: its OME-Zarr metadata (multiscales) is malformed: it needs "
                         "axes with names and at least one dataset with a path") from None


def _guess_axes(shape: tuple, source: str) -> str:
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3 and shape[-1] in (3, 4):
        return "YXC"
    if len(shape) == 3 and shape[0] in (1, 3):
        return "CYX"
    raise InputError(
        f"{source}: the zarr array of shape {shape} has no axes metadata and its axes "
        "cannot be told apart; give a 2-D (Y, X) array, (Y, X, 3) RGB, or an OME-Zarr with axes"
    )


def _open_zarr(path: Path):
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - any zarr failure becomes one message
        raise InputError(f"{path.name} cannot be opened as zarr: {exc}") from None
    if isinstance(node, zarr.Array):
        return node, _guess_axes(node.shape, path.name), {"format": "zarr"}
    attrs = dict(node.attrs)
    ome = _ome_axes(attrs, path.name)
    if ome is not None:
        key, axes = ome
        try:
            arr = node[key]
        except KeyError:
            raise InputError(
                f"{path.name}: OME-Zarr metadata names the image data '{key}', which is missing"
            ) from None
        if len(axes) != arr.ndim:
            raise InputError(
                f"{path.name}: OME-Zarr axes {','.join(axes.lower())} do not match the "
                f"{arr.ndim} dimensions of its image data"
            )
        return arr, axes, {"format": "OME-Zarr", "dataset": key, **zarr_pixel_size(attrs)[1]}
    arrays = [k for k, v in node.members() if isinstance(v, zarr.Array)]
    if len(arrays) == 1:
        arr = node[arrays[0]]
        return arr, _guess_axes(arr.shape, path.name), {"format": "zarr", "dataset": arrays[0]}
    found = ", ".join(k for k, _ in node.members()) or "nothing"
    raise InputError(
        f"{path.name} holds no image data: no OME-Zarr multiscales metadata and "
        f"{len(arrays)} arrays (found: {found}; axes found: none)"
    )


def _open_tiff(path: Path):
    import tifffile
    import zarr

    try:
        tf = tifffile.TiffFile(path)
        s = tf.series[0]
        axes = s.axes.upper().replace("S", "C")
        node = zarr.open(s.aszarr(), mode="r")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path.name} cannot be read lazily as TIFF: {exc}") from None
    arr = node if isinstance(node, zarr.Array) else node["0"]  # pyramids: full resolution
    return arr, axes, {"format": "TIFF (lazy)", "series": len(tf.series), **tiff_pixel_size(tf)[1]}, tf


def _check_axes(arr, axes: str, source: str, channels) -> list | None:
    shape = tuple(arr.shape)
    desc = f"axes {axes} with shape {shape}"
    if "Y" not in axes or "X" not in axes or len(set(axes)) != len(axes):
        raise InputError(f"{source}: unknown image axes ({desc}); expected Y and X, optionally C")
    for ax, n in zip(axes, shape):
        if ax in "YXC" or n == 1:
            continue
        what = {"T": "time points (use the tracking task)", "Z": "Z slices"}.get(
            ax, f"entries along axis {ax}"
        )
        raise InputError(
            f"{source} has {n} {what} ({desc}); whole images are read as one 2-D plane "
            "with Y, X and optionally C"
        )
    nc = shape[axes.index("C")] if "C" in axes else 1
    if channels is not None:
        picked = [channels] if np.isscalar(channels) else list(channels)
        bad = [c for c in picked if not 0 <= int(c) < nc]
        if bad or len(picked) not in (1, 3):
            raise InputError(f"{source} has {nc} channel(s) ({desc}); pick 1 or 3 of channels 0 to {nc - 1}")
        return [int(c) for c in picked]
    if nc == 4:
        return [0, 1, 2]  # RGBA: alpha dropped
    if nc not in (1, 3):
        raise InputError(f"{source} has {nc} channels ({desc}); choose 1 or 3 with channels / --channels")
    return None


def open_lazy(path, channels=None) -> LazyImage:
    """Open a large TIFF/BigTIFF, zarr or OME-Zarr image without decoding it.

    Parameters
    ----------
    path : str or Path
        A TIFF file, or a zarr / OME-Zarr folder.
    channels : None, int or list of int
        Channels to keep (1 or 3); ``None``: 1 channel or RGB (alpha dropped).

    Returns
    -------
    LazyImage
        Close it (or use it as a context manager) when done.

    Raises
    ------
    InputError
        No image data, unknown or unsupported axes (named in the message), too small,
        or more pixels than ``MM_MAX_LAZY_PIXELS``.
    """
    path = Path(path)
    check_regular(path)
    handle = None
    if is_zarr(path):
        arr, axes, info = _open_zarr(path)
    else:
        arr, axes, info, handle = _open_tiff(path)
    try:
        picked = _check_axes(arr, axes, path.name, channels)
        img = LazyImage(arr, axes, path.name, picked, info, handle)
        h, w = img.shape
        cap = max_lazy_pixels()
        if h * w > cap:
            raise InputError(
                f"{path.name} is {w:,}x{h:,} pixels ({megapixels(h * w)}), more than the limit "
                f"for lazily read images of {megapixels(cap)} ({LAZY_PIXELS_ENV})"
            )
        if min(h, w) < MIN_SIDE:
            raise InputError(
                f"{path.name} is only {w}x{h} pixels; images must be at least {MIN_SIDE}x{MIN_SIDE}"
            )
        check_declared(img, *(_stored_tiff(handle) if handle is not None else (_stored_zarr(path),)))
        img.deadline = time.monotonic() + get_settings().read_time_budget_s
    except InputError:
        if handle is not None:
            handle.close()
        raise
    info.update(axes=axes, shape=[int(n) for n in arr.shape], dtype=str(arr.dtype))
    return img


def describe(img: LazyImage) -> str:
    """One line about a lazily opened image, e.g. for logs."""
    h, w = img.shape
    return json.dumps(
        {"source": img.source, "width": w, "height": h, "axes": img.axes, "format": img.info.get("format")}
    )
