"""Pixel size (µm per pixel) of an image: read from its file, given by the user, or unknown.

Where the pixel size comes from, in order:

1. given (``pixel_size=`` of the readers, :class:`mm_core.Matcher` or ``--pixel-size``):
   ``source = "given"``;
2. the file (``source = "from file"``):

   - OME-TIFF: ``Pixels/@PhysicalSizeX`` (and ``Y``) with their units (default µm);
   - ImageJ TIFF: the X/Y resolution tags (pixels per unit) with the ImageJ ``unit``;
   - other TIFFs: the X/Y resolution tags with ``ResolutionUnit`` centimetre or inch.
     A resolution giving more than :data:`MAX_FROM_TAGS` µm per pixel (72 or 300 dpi
     written by programs that know nothing of the microscope) is ignored;
   - OME-Zarr: the ``scale`` of the first dataset's ``coordinateTransformations``
     (times a multiscale-level ``scale``) on the ``y``/``x`` axes, with their ``unit``;
3. unknown: measurements stay in pixels (``source = "unknown: pixels"``).

A non-square pixel is reported by its X size (the Y size goes to ``info``).
"""

from __future__ import annotations

import math

from mm_core.errors import InputError

#: Where the pixel size in use came from.
FROM_FILE, GIVEN, UNKNOWN = "from file", "given", "unknown: pixels"
#: Largest pixel size (µm) believed from plain TIFF resolution tags (72 dpi is 352.8 µm).
MAX_FROM_TAGS = 50.0
#: Micrometres per unit, by the unit names files use.
_UM_PER = {
    "m": 1e6, "meter": 1e6, "metre": 1e6, "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "um": 1.0, "µm": 1.0, "μm": 1.0,
    "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "u": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6,
    "in": 25400.0, "inch": 25400.0,
}

__all__ = ["FROM_FILE", "GIVEN", "UNKNOWN", "check_pixel_size", "describe_pixel_size", "resolve_pixel_size",
           "tiff_pixel_size", "um_per_unit", "zarr_pixel_size"]


def um_per_unit(unit) -> float | None:
    """Micrometres in one ``unit`` ("µm", "micron", "nm", "mm", "cm", "inch", ...); None if unknown."""
    if unit is None:
        return None
    key = str(unit).strip().lower().replace("\\u00b5", "µ").replace("\xb5", "µ")
    return _UM_PER.get(key)


def check_pixel_size(value, what: str = "the pixel size") -> float | None:
    """A pixel size given by a person, checked.

    Parameters
    ----------
    value : float, str or None
        µm per pixel; ``None``, ``""`` or ``"auto"`` mean "not given".
    what : str
        Name in the message (e.g. ``"--pixel-size"``).

    Returns
    -------
    float or None

    Raises
    ------
    InputError
        Zero, negative, not finite or not a number: one message naming the value.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto", "none")):
        return None
    msg = f"{what} must be a positive number of micrometres per pixel (e.g. 0.24), got {value!r}"
    if isinstance(value, bool):
        raise InputError(msg)
    try:
        out = float(str(value).strip().replace(",", ".")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise InputError(msg) from None
    if not math.isfinite(out) or out <= 0:
        raise InputError(msg)
    return out


def resolve_pixel_size(given=None, from_file: float | None = None) -> tuple[float | None, str]:
    """The pixel size in use and where it came from: the given one, else the file's, else none.

    Returns
    -------
    (float or None, str)
        µm per pixel and :data:`GIVEN`, :data:`FROM_FILE` or :data:`UNKNOWN`.
    """
    size = check_pixel_size(given)
    if size is not None:
        return size, GIVEN
    if from_file is not None and math.isfinite(from_file) and from_file > 0:
        return float(from_file), FROM_FILE
    return None, UNKNOWN


def describe_pixel_size(size: float | None, source: str) -> str:
    """One sentence for summaries, e.g. ``"Pixel size: 0.24 µm (from file)."``."""
    if size is None:
        return "Pixel size: unknown, so measurements are in pixels (give one to get µm)."
    return f"Pixel size: {size:.4g} µm ({source})."


def _ome_size(tif) -> tuple[float, float] | None:
    import tifffile

    try:
        meta = tifffile.xml2dict(tif.ome_metadata)
        image = meta["OME"]["Image"]
        pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    out = []
    for ax in ("X", "Y"):
        value = pixels.get(f"PhysicalSize{ax}")
        factor = um_per_unit(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
        if value is None or factor is None:
            return None
        out.append(float(value) * factor)
    return out[0], out[1]


def _tag_size(page, unit_um: float | None) -> tuple[float, float] | None:
    """Pixel size from the X/Y resolution tags (pixels per unit) and µm per unit."""
    if unit_um is None:
        return None
    try:
        xres, yres = page.get_resolution()
    except Exception:  # noqa: BLE001 - a missing or damaged tag is no calibration
        return None
    if not (xres and yres) or xres <= 0 or yres <= 0:
        return None
    return unit_um / float(xres), unit_um / float(yres)


def tiff_pixel_size(tif) -> tuple[float | None, dict]:
    """µm per pixel of an open :class:`tifffile.TiffFile`, and notes for ``info``.

    Returns
    -------
    (float or None, dict)
        The X pixel size (None when the file says nothing usable) and
        ``{"pixel_size_um": ..., "pixel_size_yx_um": ..., "calibration": how}``.
    """
    page = tif.pages.first
    found, how = None, ""
    if tif.is_ome:
        found, how = _ome_size(tif), "OME PhysicalSizeX/Y"
    if found is None and tif.is_imagej:
        unit = (tif.imagej_metadata or {}).get("unit")
        found, how = _tag_size(page, um_per_unit(unit)), f"ImageJ resolution ({unit})"
    if found is None:
        res_unit = int(getattr(page, "resolutionunit", 1) or 1)
        unit_um = {2: 25400.0, 3: 10000.0}.get(res_unit)
        found, how = _tag_size(page, unit_um), "TIFF resolution tags"
        if found is not None and found[0] > MAX_FROM_TAGS:
            return None, {"calibration": f"resolution tags ignored ({found[0]:.0f} µm per pixel is a print "
                                         "resolution, not a microscope's)"}
    if found is None:
        return None, {}
    return found[0], {"pixel_size_um": found[0], "pixel_size_yx_um": [found[1], found[0]], "calibration": how}


def zarr_pixel_size(attrs: dict) -> tuple[float | None, dict]:
    """µm per pixel from OME-Zarr attributes (first multiscale, first dataset), and notes.

    The dataset's ``scale`` transformation times the multiscale's own (if any), on the
    axes named ``y`` and ``x``, converted with the axes' ``unit`` (µm when absent).
    """
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    try:
        m = ms[0]
        axes = [a["name"] if isinstance(a, dict) else str(a) for a in m["axes"]]
        units = [a.get("unit") if isinstance(a, dict) else None for a in m["axes"]]
        scale = [1.0] * len(axes)
        for part in (m.get("coordinateTransformations") or [], m["datasets"][0].get("coordinateTransformations") or []):
            for tr in part:
                if tr.get("type") == "scale":
                    scale = [a * float(b) for a, b in zip(scale, tr["scale"])]
        ix, iy = axes.index("x"), axes.index("y")
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        return None, {}
    fx, fy = um_per_unit(units[ix] or "micrometer"), um_per_unit(units[iy] or "micrometer")
    if fx is None or fy is None or scale[ix] <= 0 or scale[iy] <= 0:
        return None, {}
    x, y = scale[ix] * fx, scale[iy] * fy
    if x == 1.0 and y == 1.0 and units[ix] is None:
        return None, {}  # an identity scale without units says nothing about the microscope
    return x, {"pixel_size_um": x, "pixel_size_yx_um": [y, x], "calibration": "OME-Zarr coordinateTransformations"}
