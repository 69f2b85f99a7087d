"""The app's event handlers: what runs when a file is loaded, Run is pressed or a slider moves.

Each handler reads widget values, calls the app's one :class:`mm_core.Matcher`, saves the
files with :func:`mm_core.export.save`, keeps what redrawing needs in the session store
(:mod:`mm_core.app.lifecycle`, :mod:`mm_core.app.results`) and returns widget values.
The layout that wires them is :mod:`mm_core.app.ui`.
"""

from __future__ import annotations

import dataclasses
import logging

import gradio as gr
import numpy as np

from mm_core import export, viz
from mm_core.app import display, zoom
from mm_core.app import helpers as au
from mm_core.app import results as ar
from mm_core.app.lifecycle import STORE
from mm_core.app.lifecycle import session_of as _session
from mm_core.batching.whole import run_image
from mm_core.errors import InputError, MMError
from mm_core.settings import get_settings
from mm_core.viz import tracks as viz_tracks
from mm_core.viz.plots import write_result_plots

log = logging.getLogger("mm_core.app")
MATCHER = {"matcher": None, "reason": "engine not loaded yet"}


def load_engine() -> None:
    """Make the app's one :class:`mm_core.Matcher`, at start-up (the LDM engine stays resident)."""
    from mm_core.models import Matcher

    paper = _paper_matcher()
    if paper is not None:
        return
    try:
        MATCHER["matcher"] = Matcher(engine=get_settings().engine)
        MATCHER["reason"] = MATCHER["matcher"].engine_note
    except Exception as exc:
        log.exception("engine could not be loaded")
        MATCHER["matcher"], MATCHER["reason"] = None, f"no engine could be loaded ({exc})"


def _paper_matcher():
    """``MM_PRETRAINED=microscopymatching``: the paper's heads on the LDM engine, loaded now.

    When they cannot be had (no GPU weights, no head weights and downloads off, a corrupt
    file, another layout) the app runs the weight-free engine and says why.
    """
    from mm_core.models import Matcher
    from mm_core.settings import get_settings

    name = get_settings().pretrained.strip()
    if not name:
        return None
    try:
        m = Matcher.from_pretrained(name)
        notes = m.head_notes()  # loads every head: a bad file shows up now, not at the first click
        MATCHER["matcher"], MATCHER["reason"] = m, f"{m.engine_note}; heads: {notes['segment']}"
        return m
    except Exception as exc:  # noqa: BLE001 - any failure falls back to the weight-free engine, with the reason
        log.warning("the %s set-up could not be loaded: %s", name, exc)
        MATCHER["matcher"] = Matcher(engine="classic")
        MATCHER["reason"] = (f"weight-free engine: the {name} set-up could not be loaded "
                             f"({(str(exc).splitlines() or [''])[0]})")
        return MATCHER["matcher"]


def matcher():
    """The app's Matcher (made on first use when start-up did not make it)."""
    if MATCHER["matcher"] is None:
        load_engine()
    if MATCHER["matcher"] is None:
        raise gr.Error(f"The analysis engine is not available: {MATCHER['reason']}", title="No engine")
    return MATCHER["matcher"]


def engine_line() -> str:
    """What runs, in plain words (the technical note goes to the details section)."""
    return display.engine_words(getattr(getattr(MATCHER["matcher"], "engine", None), "name", None))


def max_pixels() -> int:
    """The app's pixel limit per image: ``MM_APP_MAX_PIXELS`` (100 MP by default, tiled) with the
    weight-free engine, at most 16.8 MP with the LDM engine."""
    ldm = getattr(getattr(MATCHER["matcher"], "engine", None), "name", "") == "ldm"
    limit = get_settings().app_max_pixels
    return min(limit, au.LDM_MAX_PIXELS) if ldm else limit


def _empty_input():
    return None, None, "", au.mode_line(None), None


def upload_roots() -> list[str]:
    """The folders that hold what was uploaded to this server (Gradio's upload/cache folder)."""
    from gradio.utils import get_upload_folder

    return [str(get_upload_folder())]


def on_upload(path, sequence: bool):
    """File uploaded (upload box or annotator): check that it was uploaded here, read it, show it.

    Returns ``(loaded, annotator value, summary, mode line, upload widget)``. A refused
    file raises :class:`InputError` (shown as an error, and an error for API clients);
    the event's ``failure`` listener then empties the widgets for the next try. A path
    outside this server's upload folder (symlinks resolved) is refused unread.
    """
    if not path:
        return _empty_input()
    return load_file(au.received_file(path, upload_roots()), sequence)


def load_file(path, sequence: bool):
    """Read a file the app trusts (an upload checked by :func:`on_upload`, or one of its examples)."""
    if not path:
        return _empty_input()
    try:
        loaded = au.load_upload(path, sequence, max_pixels=max_pixels())
    except MMError as exc:  # the app's setting names in the message (MM_APP_MAX_PIXELS, ...)
        raise InputError(display.app_message(str(exc))) from None
    # the upload box is emptied again: it stays a drop zone for the next file
    return loaded, (loaded.preview, []), f"**Loaded:** {loaded.summary}", au.mode_line(None), None


def _inputs(loaded, ann):
    if loaded is None:
        raise gr.Error("Upload an image first (or pick an example).", title="No image")
    return zoom.boxes_in_image(ann, loaded), au.new_request_dir()


def _progress(progress):
    return display.Estimate(progress)


def _note(res) -> str:
    """The details section after a run: engine and head, in technical terms."""
    return display.details_markdown(res.engine_note, getattr(res, "head_note", ""), limits_line())


def limits_line() -> str:
    """The app's input limits and their settings, one line for the details section."""
    s = get_settings()
    return (f"up to {s.app_max_pixels:,} pixels per image or frame (MM_APP_MAX_PIXELS), {s.app_max_frames} frames "
            f"(MM_APP_MAX_FRAMES), files up to {s.app_max_file_size} (MM_APP_MAX_FILE_SIZE)")



def _downloads(files) -> list[str]:
    """The files offered for download: everything :func:`mm_core.export.save` wrote but the
    loose CTC frames (they are inside the CTC zip) and folders (the GEFF zarr: its zip is offered)."""
    return [str(f) for f in files if not (f.name.startswith("mask") and f.suffix == ".tif")
            and f.name != "res_track.txt" and not f.is_dir()]


def run_segment(loaded, ann, opacity, show_map, request: gr.Request = None, progress=gr.Progress(),
                pixel=None):
    boxes, out = _inputs(loaded, ann)
    opacity = ar.as_fraction(opacity)
    frame = loaded.frames[0]
    # larger than a tile (2048 px a side): tile by tile, progress per tile (the library's tiling)
    res = _calibrated(run_image(matcher(), "segment", frame, boxes, _progress(progress), _size(pixel)), pixel)
    files = [*export.save(res, out, loaded.name, intensity=frame), *write_result_plots(res, out, loaded.name)]
    key = ar.keep_image_result(STORE, _session(request), "seg", res, frame, boxes, out)
    return (key, rerender(au.segmentation_view, key, opacity),
            display.result_html(res.n_objects, "objects", res.warnings), _downloads(files),
            _map_update(key, show_map), _note(res), display.SEG_LEGEND)


def run_count(loaded, ann, opacity, show_map, request: gr.Request = None, progress=gr.Progress(),
              pixel=None):
    boxes, out = _inputs(loaded, ann)
    opacity = ar.as_fraction(opacity)
    frame = loaded.frames[0]
    res = _calibrated(run_image(matcher(), "count", frame, boxes, _progress(progress), _size(pixel)), pixel)
    files = export.save(res, out, loaded.name)
    key = ar.keep_image_result(STORE, _session(request), "count", res, frame, boxes, out)
    return (key, rerender(au.count_view, key, opacity),
            display.result_html(res.count, "objects counted", res.warnings), _downloads(files),
            _map_update(key, show_map), _note(res), display.density_legend(res.density))


def run_track(loaded, ann, show_map, request: gr.Request = None, progress=gr.Progress(), pixel=None):
    boxes, out = _inputs(loaded, ann)
    frames = loaded.frames
    small = len(frames) * frames[0].shape[0] * frames[0].shape[1] <= 20_000_000
    res = matcher().track(list(frames), boxes=boxes, progress=_progress(progress),
                          keep_maps=bool(show_map) or small, pixel_size=_size(pixel))
    res = _calibrated(res, pixel)
    progress(1.0, desc="drawing")
    images = [viz.display_image(f) for f in frames]
    rendered = np.stack(viz_tracks.render_tracks(images, res.masks, tracks=res.tracks, numbers=True,
                                                 min_side=384))
    gif = viz.write_animation(out / f"{loaded.name}_tracks.gif", list(rendered), fps=4)
    files = [*export.save(res, out, loaded.name), *write_result_plots(res, out, loaded.name)]
    maps = np.stack([au.map_view(im, m) for im, m in zip(images, res.maps)]) if res.maps else None
    key = ar.keep_track_result(STORE, _session(request), rendered, maps, out, gif=gif,
                               pixel_note=res.pixel_size_note())
    stats = display.result_html(res.n_tracks, "tracks", res.warnings, extra=[(res.n_divisions, "divisions")])
    slider = gr.update(maximum=len(rendered) - 1, value=0, visible=True)
    return (key, str(gif), slider, stats, _downloads(files), _track_map(key, 0, show_map), _note(res),
            gr.update(visible=True))


def _size(pixel):
    """The µm per pixel of ``pixel`` ``(size, source)`` (from :func:`mm_core.app.tables.pixel_choice`)."""
    return None if pixel is None else pixel[0]


def _calibrated(res, pixel):
    """``res`` saying where its pixel size came from (the app passes a file's size on as a number)."""
    return res if pixel is None or pixel[0] is None else dataclasses.replace(res, pixel_size_source=pixel[1])


def _map_update(key, show):
    cache = ar.kept(STORE, key)
    if not show or not cache:
        return gr.update(visible=bool(show), value=None)
    if cache["result"].maps is None:
        gr.Warning("A large image runs tile by tile: its match map is not kept.")
        return gr.update(visible=True, value=None)
    return gr.update(visible=True, value=au.map_view(cache["display"], cache["result"].maps))


def _track_map(key, t, show):
    cache = ar.kept(STORE, key)
    if not show or not cache:
        return gr.update(visible=bool(show), value=None)
    if not cache.get("maps"):
        gr.Warning("Match maps were not kept for this long sequence: tick 'show match map' before Run.")
        return gr.update(visible=True, value=None)
    return gr.update(visible=True, value=ar.track_picture(cache, "maps", t))


def rerender(view, key, opacity):
    """Opacity changed: redraw from the kept result, no re-run."""
    cache = ar.kept(STORE, key)
    opacity = ar.as_fraction(opacity)
    return None if not cache else view(cache["result"], opacity, cache["boxes"], cache["display"])


def show_frame(key, t, show_map):
    """Slider moved: the one tracks panel shows that frame (still)."""
    cache = ar.kept(STORE, key)
    if not cache:
        return gr.update(), gr.update()
    return ar.track_picture(cache, "rendered", t), _track_map(key, t, show_map)


def play(key):
    """The tracks panel shows the animation again."""
    cache = ar.kept(STORE, key)
    return gr.update() if not cache else str(cache["gif"])


# ---- stale results: a new file clears the previous one's ---------------------------------------


def cleared_image_tab():
    """Outputs of a Segmentation/Counting tab emptied (cache, picture, number, files, map, legend)."""
    return None, None, "", None, gr.update(value=None), ""


def cleared_track_tab():
    """Outputs of the Tracking tab emptied (cache, panel, slider, numbers, files, map, play button)."""
    return (None, None, gr.update(visible=False, value=0), "", None, gr.update(value=None),
            gr.update(visible=False))


def _show_annotator(loaded):
    """The annotator appears with a loaded file only (the upload box is the one place to load)."""
    return gr.update(visible=loaded is not None)
