"""Decoding one image file (or zip member) into a canonical ``(T, Z, C, Y, X)`` array.

The format is recognised from the first bytes of the content, not from the file
extension, so a PNG named ``.tif`` is read as a PNG and a text file named ``.png``
is refused. Sizes are checked from the header before any pixel is decoded:
PNG and BMP from their own header bytes, TIFF through tifffile's series shapes
(first series of the file), JPEG through Pillow's lazy :func:`PIL.Image.open`
(Pillow's own decompression-bomb guard, 2 x ``Image.MAX_IMAGE_PIXELS``, stays in
force as a hard ceiling for PNG/JPEG/BMP). Axes are planned by
:func:`mm_core.io.layout.plan_axes`.
"""

from __future__ import annotations

import io
import os
import logging
import re
import stat
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from mm_core.errors import InputError
from mm_core.io.calibration import tiff_pixel_size
from mm_core.io.layout import RawImage, plan_axes, too_large
from mm_core.io.limits import Limits, megapixels

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"PK\x03\x04", "ZIP"),
    (b"PK\x05\x06", "ZIP"),
)
_OTHER = (
    (b"GIF8", "a GIF"),
    (b"RIFF", "a WebP/RIFF"),
    (b"\x00\x00\x00\x0cjP", "a JPEG 2000"),
    (b"ZISRAWFILE", "a Zeiss CZI"),
    (b"\x1f\x8b", "a gzip-compressed"),
    (b"%PDF", "a PDF"),
)
_PROPRIETARY = (".czi", ".nd2", ".lif", ".oib", ".oif", ".vsi", ".ims", ".dv", ".sld", ".lei")
SUPPORTED = "PNG, JPEG, BMP or TIFF"
_EXTENSIONS = {"TIFF": (".tif", ".tiff"), "PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "BMP": (".bmp",)}


def sniff(head: bytes, name: str) -> str:
    """Format of a file from its first bytes: 'PNG', 'JPEG', 'BMP', 'TIFF' or 'ZIP'.

    Raises
    ------
    InputError
        Empty, text or any other content, with a message saying what it looks like.
    """
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if not head:
        raise InputError(f"{name} is empty (0 bytes); the upload or copy may have failed")
    if Path(name).suffix.lower() in _PROPRIETARY:
        raise InputError(
            f"{name} is a proprietary microscope file; export it as OME-TIFF "
            "(e.g. in Fiji: File > Save As > OME-TIFF) and open that instead"
        )
    for magic, what in _OTHER:
        if head.startswith(magic):
            raise InputError(f"{name} is {what} file, not a {SUPPORTED} image; save it as TIFF or PNG")
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        raise InputError(f"{name} is a text file, not a {SUPPORTED} image")
    raise InputError(f"{name} is not a {SUPPORTED} image (its content is not recognised)")


def check_regular(path: Path) -> None:
    """Refuse what is not a regular file or a folder (a FIFO, socket or device would block
    or never end), before anything opens it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{path.name} does not exist ({path})") from None
    except OSError as exc:
        raise InputError(f"{path.name} cannot be opened ({exc.strerror or exc})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(f"{path.name} is not a regular file (a pipe, socket or device); give an image file")


def read_head(path: Path, n: int = 16) -> bytes:
    """The first ``n`` bytes of a file, with a clear error if it cannot be opened."""
    check_regular(path)
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except FileNotFoundError:
        raise InputError(f"{path.name} does not exist ({path})") from None
    except IsADirectoryError:
        raise InputError(f"{path.name} is a folder, not an image file") from None
    except OSError as exc:
        raise InputError(f"{path.name} cannot be opened ({exc.strerror or exc})") from None


def _bomb(name: str, exc: Exception, limits: Limits) -> InputError:
    """Pillow's decompression-bomb refusal, in our words."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" of {megapixels(int(found.group(1)))}" if found else ""
    return InputError(
        f"{name} declares an image{size}, too large to open safely; the limit is "
        f"{megapixels(limits.max_pixels)} per image (MM_MAX_PIXELS); crop or bin it first"
    )


def header_size(head: bytes, fmt: str) -> tuple[int, int] | None:
    """``(height, width)`` read straight from a PNG or BMP header, or None."""
    if fmt == "PNG" and len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return h, w
    if fmt == "BMP" and len(head) >= 26:
        dib = struct.unpack("<I", head[14:18])[0]
        if dib >= 40:
            w, h = struct.unpack("<ii", head[18:26])
            return abs(h), abs(w)
        if dib == 12:
            w, h = struct.unpack("<HH", head[18:22])
            return h, w
    return None


@contextmanager
def _tiff_damage(name: str):
    """Turn tifffile's logged 'invalid page offset' (a cut-off file) into an error."""
    records = []

    class _Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler, logger = _Catch(logging.WARNING), logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
    if any("invalid page offset" in m or "truncat" in m.lower() for m in records):
        raise InputError(f"{name} is damaged or truncated (the file ends before its last image)")


def _check_tiff_data(series, size: int, name: str) -> None:
    ends = []
    if series.dataoffset is not None:
        ends.append(series.dataoffset + series.nbytes)
    else:
        for page in series.pages:
            if page is None:
                raise InputError(f"{name} is damaged: some of its images are missing")
            ends.extend(o + c for o, c in zip(page.dataoffsets, page.databytecounts))
    if ends and max(ends) > size:
        raise InputError(f"{name} is damaged or truncated (the file ends before its image data)")


def _is_alpha(extras: tuple, photometric: int, n_samples: int) -> bool:
    """Whether the last colour sample of a TIFF is an alpha channel to drop.

    Only one trailing sample marked as alpha (ExtraSamples 1 = associated or
    2 = unassociated) after gray (2 samples) or RGB/YCbCr (4 samples) is alpha.
    Extra samples marked "unspecified" (0), or several extra samples, are data
    channels (multi-channel microscopy saved as samples) and are all kept.
    """
    if len(extras) != 1 or extras[0] not in (1, 2):
        return False
    return (photometric in (0, 1) and n_samples == 2) or (photometric in (2, 6) and n_samples == 4)


def _decode_tiff(fh, size: int, name: str, limits: Limits, mode: str, pages_as_channels: bool) -> RawImage:
    with _tiff_damage(name), tifffile.TiffFile(fh) as tif:
        if not tif.series:
            raise InputError(f"{name} is a TIFF file without any image in it")
        series = tif.series[0]
        if mode == "sequence" and len(tif.series) > 1 and series.kind in ("generic", "uniform"):
            other = tif.series[1]
            raise InputError(
                f"the pages of {name} differ in size: some are {other.shape[-1]}x{other.shape[-2]} "
                f"but the first is {series.shape[-1]}x{series.shape[-2]}; all frames must be the same size"
            )
        squeezed, perm, out_shape, notes = plan_axes(
            series.shape, series.axes, name, limits, mode, pages_as_channels
        )
        _check_tiff_data(series, size, name)
        page = series.pages[0] if series.pages else tif.pages.first
        photometric = int(getattr(page, "photometric", 1) or 1)
        extras = tuple(int(e) for e in (getattr(page, "extrasamples", ()) or ()))
        arr = series.asarray()
        info = dict(
            notes,
            file_axes=series.axes,
            file_shape=tuple(series.shape),
            series=len(tif.series),
            kind=series.kind,
        )
        info.update(tiff_pixel_size(tif)[1])
    arr = arr.reshape(squeezed).transpose(perm).reshape(out_shape)
    rgb = photometric in (2, 6) and "S" in series.axes  # RGB or YCbCr colour samples
    if "S" in series.axes and _is_alpha(extras, photometric, out_shape[2]):
        arr = arr[:, :, :-1]
        info["alpha_dropped"] = True
    elif extras:
        info["extra_samples_kept"] = len(extras)
    return RawImage(arr, "TIFF", str(series.dtype), rgb and arr.shape[2] == 3, info)


_CONVERT = {
    "P": "RGB",
    "PA": "RGBA",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
    "RGBX": "RGB",
    "RGBa": "RGBA",
    "La": "LA",
}


def _decode_pillow(src, fmt: str, name: str, limits: Limits, mode: str) -> RawImage:
    formats = ["JPEG", "MPO"] if fmt == "JPEG" else [fmt]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(src, formats=formats)
        except Image.DecompressionBombError as exc:
            raise _bomb(name, exc, limits) from None
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
            raise InputError(f"{name} is damaged or not a valid {fmt} image ({exc})") from None
        with im:
            w, h = im.size
            if h * w > limits.max_pixels:
                raise too_large(name, h, w, limits)
            dtype = {"1": "bool", "I": "int32", "F": "float32"}.get(
                im.mode, "uint16" if im.mode.startswith("I;16") else "uint8"
            )
            info = {"file_mode": im.mode}
            if getattr(im, "n_frames", 1) > 1:
                info["frames_ignored"] = im.n_frames - 1
            try:
                im.load()
                target = _CONVERT.get(im.mode)
                if im.mode == "P" and "transparency" in im.info:
                    target = "RGBA"
                conv = im.convert(target) if target else im
                arr = np.asarray(conv)
            except Exception as exc:  # noqa: BLE001
                raise InputError(
                    f"{name} is damaged or truncated and cannot be decoded as {fmt} ({exc})"
                ) from None
            out_mode = conv.mode
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.ndim == 2:
        arr = arr[..., None]
    rgb = out_mode in ("RGB", "RGBA")
    if out_mode in ("RGBA", "LA"):
        arr, info["alpha_dropped"] = arr[..., :-1], True
    info.update(file_axes="YXS" if arr.shape[-1] > 1 else "YX", file_shape=(h, w, arr.shape[-1]))
    squeezed, perm, out_shape, notes = plan_axes(arr.shape, "YXS", name, limits, mode)
    arr = arr.reshape(squeezed).transpose(perm).reshape(out_shape)
    return RawImage(arr, fmt, dtype, rgb, dict(info, **notes))


def _png16_color(head: bytes) -> bool:
    return len(head) >= 26 and head[24] == 16 and head[25] in (2, 6)


def decode(
    src: Path | bytes,
    name: str,
    limits: Limits,
    mode: str = "image",
    pages_as_channels: bool = False,
    fmt: str | None = None,
) -> RawImage:
    """Decode a file (path) or zip member (bytes) into a :class:`RawImage`.

    Raises
    ------
    InputError
        Unknown or damaged content, or a size over the limits (checked before decoding).
    """
    if isinstance(src, (bytes, bytearray)):
        head, size = bytes(src[:32]), len(src)
    else:
        head = read_head(src, 32)
        size = src.stat().st_size
    fmt = fmt or sniff(head, name)
    if fmt == "ZIP":
        raise InputError(f"{name} is a zip archive inside an archive; zips are not opened recursively")
    hw = header_size(head, fmt)
    if hw and hw[0] * hw[1] > limits.max_pixels:
        raise too_large(name, hw[0], hw[1], limits)
    try:
        if fmt == "TIFF":
            fh = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src)
            raw = _decode_tiff(fh, size, name, limits, mode, pages_as_channels)
        elif fmt == "PNG" and _png16_color(head):
            raw = _decode_png16(src, name, limits, mode)
        else:
            fh = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
            raw = _decode_pillow(fh, fmt, name, limits, mode)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{name} is too large for the memory of this machine") from None
    except Exception as exc:  # noqa: BLE001 - tifffile/imagecodecs raise many types on bad files
        raise InputError(
            f"{name} is damaged or not a valid {fmt} file ({type(exc).__name__}: {exc})"
        ) from None
    ext = Path(name).suffix.lower()
    if ext and ext not in _EXTENSIONS[fmt]:
        raw.info["note"] = f"named {ext} but holds a {fmt} image; read as {fmt}"
    return raw


def _decode_png16(src, name: str, limits: Limits, mode: str) -> RawImage:
    """16-bit colour PNG (Pillow would reduce it to 8 bits): header via Pillow, pixels via imagecodecs."""
    import imagecodecs

    data = bytes(src) if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
                w, h = im.size
        except Image.DecompressionBombError as exc:
            raise _bomb(name, exc, limits) from None
    if h * w > limits.max_pixels:
        raise too_large(name, h, w, limits)
    try:
        arr = imagecodecs.png_decode(data)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{name} is damaged or truncated and cannot be decoded as PNG ({exc})") from None
    info = {
        "file_mode": "RGB;16" if arr.shape[-1] == 3 else "RGBA;16",
        "file_axes": "YXS",
        "file_shape": tuple(arr.shape),
    }
    if arr.shape[-1] == 4:
        arr, info["alpha_dropped"] = arr[..., :3], True
    squeezed, perm, out_shape, notes = plan_axes(arr.shape, "YXS", name, limits, mode)
    arr = arr.reshape(squeezed).transpose(perm).reshape(out_shape)
    return RawImage(arr, "PNG", "uint16", True, dict(info, **notes))
