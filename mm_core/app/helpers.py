"""Helpers of the Gradio app (:mod:`mm_core.app.ui`) that need no browser and no Gradio.

Loading an upload into a preview, turning annotator boxes into exemplar boxes,
per-request output folders, and the pictures re-rendered from a result. The app only
wires these to widgets; the tests call them directly.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mm_core import viz
from mm_core.errors import InputError
from mm_core.settings import get_settings
from mm_core.transforms import scale_boxes

log = logging.getLogger("mm_core.app")

#: Pixel limit with the LDM engine (GPU memory), unless ``MM_APP_MAX_PIXELS`` is lower.
LDM_MAX_PIXELS = 4096 * 4096
#: Longest side of the picture shown in the box annotator.
PREVIEW_SIDE = 1024
def output_root() -> Path:
    """Root of the per-request output folders (``MM_APP_OUTPUT_ROOT``, default ``<temp>/mm_app``)."""
    return Path(get_settings().app_output_root or Path(tempfile.gettempdir()) / "mm_app")


#: Marker file of a folder this app made (request folders and the per-process served folder):
#: clean-up deletes only folders holding it, never anything else found under the output root.
MARKER = ".mm_app_made"
_SERVED: dict[Path, Path] = {}


def _make_marked(folder: Path) -> Path:
    (folder / MARKER).write_bytes(b"")
    return folder


def served_root(root: Path | None = None) -> Path:
    """This process's own folder under the output root (made once, fresh, mode 700, marked).

    Request folders live here, and only here is served to the browser: whatever else is
    in the output root (another program's files, an older run's folders) is neither
    served nor deleted, and the root's own permissions are left as they are.
    """
    root = Path(root or output_root())
    folder = _SERVED.get(root)
    if folder is None or not folder.is_dir():
        if not root.is_dir():
            root.mkdir(parents=True, mode=0o700)
        folder = _SERVED[root] = _make_marked(Path(tempfile.mkdtemp(prefix="mm-app-", dir=root)))
    return folder


def new_request_dir(root: Path | None = None) -> Path:
    """Create a fresh, marked output folder (mode 700) under ``root`` (default :func:`served_root`).

    Old folders are deleted by the app's clean-up timer (:func:`cleanup_old`), not here.
    """
    root = Path(root) if root is not None else served_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)  # the mode applies only when it is made here
    out = root / uuid.uuid4().hex
    out.mkdir(mode=0o700)
    return _make_marked(out)


def _made_here(sub: Path) -> bool:
    return sub.is_dir() and not sub.is_symlink() and (sub / MARKER).is_file()


def cleanup_old(root: Path, max_age_s: float | None = None, now: float | None = None) -> int:
    """Delete the folders this app made under ``root`` (marked, see :data:`MARKER`) last
    modified more than ``max_age_s`` ago (default ``MM_APP_MAX_AGE_S``, an hour); return how
    many. Served folders of earlier app processes are emptied the same way and removed once
    empty and old. Nothing unmarked is touched."""
    now = time.time() if now is None else now
    max_age_s = get_settings().app_max_age_s if max_age_s is None else max_age_s
    n = 0
    for sub in Path(root).iterdir() if Path(root).is_dir() else ():
        try:
            if not _made_here(sub):
                continue
            if sub.name.startswith("mm-app-"):  # a served folder: its request folders, then itself
                n += cleanup_old(sub, max_age_s, now)
                if sub not in _SERVED.values() and [p.name for p in sub.iterdir()] == [MARKER] \
                        and now - sub.stat().st_mtime > max_age_s:
                    shutil.rmtree(sub, ignore_errors=True)
            elif now - sub.stat().st_mtime > max_age_s:
                shutil.rmtree(sub, ignore_errors=True)
                n += 1
        except OSError:
            continue
    return n


def received_file(path: str | Path, roots) -> Path:
    """``path`` resolved (symlinks followed), if it is a regular file inside one of ``roots``.

    The app reads only what it was sent: ``roots`` are this server's upload folders. A path
    elsewhere (another file on the server, a link out of the upload folder, ``..``) or a file
    that is not a regular file (a FIFO, a device, a folder) is refused.

    Raises
    ------
    InputError
        One message naming the file and why it is refused.
    """
    name = Path(str(path)).name or str(path)
    try:
        real = Path(os.path.realpath(os.fspath(path)))
        inside = any(real.is_relative_to(Path(os.path.realpath(r))) for r in roots)
        regular = inside and stat.S_ISREG(os.stat(real).st_mode)
    except (OSError, ValueError, TypeError):
        inside = regular = False
    if not inside:
        raise InputError(f"{name} was not uploaded to this server; the app reads only files sent to it "
                         "(upload the file)")
    if not regular:
        raise InputError(f"{name} is not a regular file (a folder, pipe or device); upload an image file")
    return real


@dataclass
class Loaded:
    """An upload ready to run: its raw frames on disk, the preview shown for drawing boxes.

    The frames live in ``frames.npy`` in the upload's request folder, so what a
    session holds between requests is a few hundred bytes, not the image.
    """

    folder: Path  #: the upload's request folder (frames.npy, preview.png)
    name: str
    preview: str  #: PNG path shown in the annotator (first frame)
    preview_scale: float  #: preview pixels per image pixel
    summary: str  #: one line describing the upload
    shape: tuple = ()  #: (H, W) of a frame
    info: dict = field(default_factory=dict)

    @property
    def frames(self) -> np.ndarray:
        """``(T, H, W[, 3])`` raw float32 frames, memory-mapped from disk."""
        try:
            return np.load(self.folder / FRAMES_FILE, mmap_mode="r")
        except (OSError, ValueError):
            raise InputError(
                f"{self.name} is no longer on the server (uploads are deleted after "
                f"{get_settings().app_max_age_s / 60:.0f} minutes or when the session ends); load the file again"
            ) from None


#: Name of the raw frames of an upload in its request folder.
FRAMES_FILE = "frames.npy"


def write_preview(image: np.ndarray, path: Path, max_side: int = PREVIEW_SIDE) -> tuple[Path, float]:
    """Write a normalised 8-bit PNG of ``image`` (raw intensities) for display."""
    rgb = viz.to_rgb8(viz.display_image(image))
    im = Image.fromarray(rgb)
    scale = 1.0
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    im.save(path)
    return Path(path), scale


def load_upload(path: str | Path, sequence: bool, out_dir: Path | None = None,
                max_pixels: int | None = None) -> Loaded:
    """Read an uploaded file with :mod:`mm_core.io`; write its frames and preview into ``out_dir``.

    ``out_dir`` (default: a new request folder) is made only once the file has been
    read, so a refused upload leaves no folder behind.

    Raises
    ------
    InputError
        Whatever :mod:`mm_core.io` refuses, or a sequence with fewer than 2 frames.
    """
    from mm_core.io import read_image, read_sequence

    path, settings = Path(path), get_settings()
    max_pixels = max_pixels or settings.app_max_pixels  # the caller's (lower with LDM), else MM_APP_MAX_PIXELS
    if sequence:
        seq = read_sequence(path, max_frames=settings.app_max_frames, max_pixels=max_pixels,
                            max_total_pixels=settings.app_max_total_pixels)
        frames = list(seq.frames)
        if len(frames) < 2:
            raise InputError(
                f"{path.name} holds {len(frames)} frame; tracking needs a time-lapse of at least 2 frames"
            )
        dtype, what, size = seq.dtype, f"{len(frames)} frames", getattr(seq, "pixel_size", None)
    else:
        img = read_image(path, max_pixels=max_pixels)
        frames = [img.data]
        dtype, size = img.dtype, getattr(img, "pixel_size", None)
        what = f"{img.n_channels} channel{'s' if img.n_channels != 1 else ''}"
    h, w = frames[0].shape[:2]
    out_dir = Path(out_dir) if out_dir is not None else new_request_dir()
    np.save(out_dir / FRAMES_FILE, np.stack(frames).astype(np.float32, copy=False))
    del frames
    preview, scale = write_preview(np.load(out_dir / FRAMES_FILE, mmap_mode="r")[0], out_dir / "preview.png")
    summary = f"{path.name}: {w}×{h} px, {dtype}, {what}" + (f", {size:.4g} µm/px" if size else "")
    return Loaded(folder=out_dir, name=path.stem, preview=str(preview), preview_scale=scale,
                  summary=summary, shape=(h, w), info={"pixel_size": size})


def example_thumbnail(path: str | Path, sequence: bool, out_dir: Path, side: int = 160) -> Path:
    """Write (once) a small PNG of an example file for the examples gallery."""
    from mm_core.io import read_image, read_sequence

    path = Path(path)
    out = Path(out_dir) / f"{path.stem}_{'seq' if sequence else 'img'}_{side}.png"
    if not out.exists() or out.stat().st_mtime < path.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        first = read_sequence(path).frames[0] if sequence else read_image(path).data
        write_preview(first, out, max_side=side)
    return out


def boxes_from_annotation(value, preview_scale: float = 1.0) -> np.ndarray | None:
    """Exemplar boxes ``(N, 4)`` (``x0, y0, x1, y1``, x1/y1 exclusive) from a BBoxAnnotator value.

    The annotator gives ``(image_path, [(left, top, right, bottom, label), ...])`` with
    inclusive corner pixels of the preview; ``None`` or no box means automatic mode.
    """
    if not value or len(value) < 2 or not value[1]:
        return None
    rows = []
    for ann in value[1]:
        left, top, right, bottom = (float(v) for v in ann[:4])
        x0, x1 = sorted((left, right))
        y0, y1 = sorted((top, bottom))
        rows.append((x0, y0, x1 + 1.0, y1 + 1.0))
    boxes = np.asarray(rows, np.float32)
    if preview_scale != 1.0:
        boxes = scale_boxes(boxes, (1.0 / preview_scale, 1.0 / preview_scale))
    return boxes


def mode_line(boxes: np.ndarray | None) -> str:
    """What the run will do, in words, for the line under the annotator."""
    if boxes is None or len(boxes) == 0:
        return (
            "**Automatic mode** — no box drawn: the objects that repeat in the image are found by "
            "themselves. Draw a box around one typical object to switch to exemplar mode."
        )
    n = len(boxes)
    return (
        f"**Exemplar mode** — {n} box{'es' if n > 1 else ''}: "
        f"objects that match {'them' if n > 1 else 'it'} are found."
    )


# ---- pictures (re-rendered from cached results, no re-run) -------------------------------------


def segmentation_view(
    result, opacity: float, boxes: np.ndarray | None = None, display: np.ndarray | None = None
) -> np.ndarray:
    """Coloured instances with outlines over the image (``display``, default the
    normalised input), exemplar boxes in yellow."""
    base = result.image if display is None else display
    return viz.upscale_nearest(
        viz.draw_boxes(viz.overlay_labels(base, result.labels, opacity=opacity), boxes)
    )


def count_view(
    result, opacity: float, boxes: np.ndarray | None = None, display: np.ndarray | None = None
) -> np.ndarray:
    """Density heat-map, centre dots and exemplar boxes (the count is shown next to it)."""
    base = result.image if display is None else display
    img = viz.overlay_heatmap(muted(base), result.density, opacity=opacity, gamma=0.5)
    pts = result.points
    radius = max(1.5, min(4.0, 0.12 * float(getattr(result.maps, "scale", None) or 10)))
    img = viz.upscale_nearest(viz.draw_boxes(viz.draw_points(img, pts["y"], pts["x"], radius=radius), boxes))
    if "n" in pts and (pts["n"] > 1).any():  # a clump counted as several objects: say how many
        many = pts[pts["n"] > 1]
        zoom = viz.zoom_factor(result.density.shape)
        img = viz.draw_texts(img, many["y"], many["x"], [str(k) for k in many["n"]], zoom=zoom,
                             offset=(radius * zoom + 2, 0))
    return img


def muted(image: np.ndarray) -> np.ndarray:
    """A light grey version of a picture (float in [0.45, 0.95]) that heat-map colours stand out
    on: on a stained (H&E) image the map's purples and reds would otherwise look like the stain."""
    arr = np.asarray(image, np.float32)
    if arr.dtype != np.float32 or arr.max(initial=0) > 1.0:
        arr = arr / 255.0
    grey = arr[..., :3].mean(-1) if arr.ndim == 3 else arr
    return 0.45 + 0.5 * np.clip(grey, 0.0, 1.0)


def map_view(result_image: np.ndarray, maps) -> np.ndarray:
    """The engine's match map (first display map, else foreground) as a heat-map over the image."""
    return viz.upscale_nearest(viz.match_map_image(result_image, maps))
