"""MicroscopyMatching in the browser: segmentation, counting and tracking (layout and handlers).

A thin Gradio shell over one :class:`mm_core.Matcher`, made at start-up; pictures
come from :mod:`mm_core.viz`, downloads from :func:`mm_core.export.save` (the same
files as the CLI); :mod:`mm_core.app.helpers` holds what needs no Gradio.

Run ``python app.py`` (http://127.0.0.1:7860) or ``python app.py --host 0.0.0.0 --port 7860``;
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (set by Hugging Face Spaces) work too.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
from gradio_bbox_annotator import BBoxAnnotator

from mm_core import export, viz, viz_tracks
from mm_core.app import display, offline
from mm_core.app import helpers as au
from mm_core.errors import MMError

log = logging.getLogger("mm_core.app")
#: Example files shown in the gallery (the repository's ``examples/`` unless ``MM_EXAMPLES`` is set).
EXAMPLES = Path(os.environ.get("MM_EXAMPLES", Path(__file__).resolve().parents[2] / "examples"))
MAX_FILE_SIZE = os.environ.get("MM_APP_MAX_FILE_SIZE", "200mb")
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"]
SEQUENCE_TYPES = [".tif", ".tiff", ".zip"]
THUMBS = Path(tempfile.gettempdir()) / "mm_app_thumbs"  # example thumbnails, made at start-up
EXAMPLE_FILES = {  # tab -> example files shipped in examples/ (see examples/README.md); real ones first
    "seg": ["real_nuclei_fluorescence.tif", "real_he_tissue.png", "real_brightfield_cells.png",
            "nuclei_fluorescence.tif", "phase_cells.png", "crowded_cells.png"],
    "count": ["real_nuclei_fluorescence.tif", "real_he_tissue.png", "real_brightfield_cells.png",
              "crowded_cells.png", "nuclei_fluorescence.tif"],
    "track": ["timelapse_division.tif"],
}
CSS = """
.mm-big {display:flex; align-items:baseline; gap:.6em; padding:.3em 0}
.mm-big-num {font-size:3.2em; font-weight:700; line-height:1}
.mm-big-cap {font-size:1.1em; opacity:.75}
""" + display.CSS
MATCHER = {"matcher": None, "reason": "engine not loaded yet"}


def load_engine() -> None:
    """Make the app's one :class:`mm_core.Matcher`, at start-up (the LDM engine stays resident)."""
    from mm_core.models import Matcher

    try:
        MATCHER["matcher"] = Matcher(engine=os.environ.get("MM_ENGINE", "auto"))
        MATCHER["reason"] = MATCHER["matcher"].engine_note
    except Exception as exc:
        log.exception("engine could not be loaded")
        MATCHER["matcher"], MATCHER["reason"] = None, f"no engine could be loaded ({exc})"


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


def guarded(what: str):
    """Show :class:`MMError` messages as they are, anything else as a short message + a log line."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except MMError as exc:
                raise gr.Error(str(exc), title="Input refused") from None
            except Exception:
                log.exception("unexpected error while %s", what)
                raise gr.Error(
                    f"Something went wrong while {what}; the details were logged. "
                    "Please try again or with another file."
                ) from None

        return wrapper

    return deco


# ---- handlers ------------------------------------------------------------------------------------


def on_upload(path, sequence: bool):
    """File chosen (upload, annotator or example): read it, show it in the annotator.

    Returns ``(loaded, annotator value, summary, mode line, upload widget)``; a refused
    file is reported as a warning and the widgets are emptied for the next try.
    """
    empty = (None, None, "", au.mode_line(None), None)
    if not path:
        return empty
    try:
        loaded = au.load_upload(path, sequence, au.new_request_dir())
    except MMError as exc:
        gr.Warning(display.app_message(str(exc)), title="File refused")
        return empty
    # the upload box is emptied again: it stays a drop zone for the next file
    return loaded, (loaded.preview, []), f"**Loaded:** {loaded.summary}", au.mode_line(None), None


_MODE_JS = """(v) => {
  const n = (v && v.annotations) ? v.annotations.length : 0;
  if (n === 0) return %r;
  return "**Exemplar mode** — " + n + (n > 1 ? " boxes" : " box") + ": objects that match "
    + (n > 1 ? "them" : "it") + " are found.";
}""" % au.mode_line(None)


def _inputs(loaded, ann):
    if loaded is None:
        raise gr.Error("Upload an image first (or pick an example).", title="No image")
    return au.boxes_from_annotation(ann, loaded.preview_scale), au.new_request_dir()


def _progress(progress):
    return lambda frac, desc="": progress(min(max(float(frac), 0.0), 1.0), desc=desc)


def _note(res) -> str:
    """The details section after a run: engine and head, in technical terms."""
    return display.details_markdown(res.engine_note, getattr(res, "head_note", ""), LIMITS)


LIMITS = (f"up to {au.MAX_PIXELS:,} pixels per image or frame (MM_APP_MAX_PIXELS), {au.MAX_FRAMES} frames "
          f"(MM_APP_MAX_FRAMES), files up to {MAX_FILE_SIZE} (MM_APP_MAX_FILE_SIZE)")



def _downloads(files) -> list[str]:
    """The files offered for download: everything :func:`mm_core.export.save` wrote but the
    loose CTC frames (they are inside the CTC zip) and folders (the GEFF zarr: its zip is offered)."""
    return [str(f) for f in files if not (f.name.startswith("mask") and f.suffix == ".tif")
            and f.name != "res_track.txt" and not f.is_dir()]


def run_segment(loaded, ann, opacity, show_map, progress=gr.Progress()):
    boxes, out = _inputs(loaded, ann)
    res = matcher().segment(loaded.frames[0], boxes=boxes, progress=_progress(progress))
    files = export.save(res, out, loaded.name, intensity=loaded.frames[0])
    cache = {"result": res, "boxes": boxes, "display": viz.display_image(loaded.frames[0])}
    return (cache, rerender(au.segmentation_view, cache, opacity),
            display.result_html(res.n_objects, "objects", res.warnings), _downloads(files),
            _map_update(cache, show_map), _note(res), display.SEG_LEGEND)


def run_count(loaded, ann, opacity, show_map, progress=gr.Progress()):
    boxes, out = _inputs(loaded, ann)
    res = matcher().count(loaded.frames[0], boxes=boxes, progress=_progress(progress))
    files = export.save(res, out, loaded.name)
    cache = {"result": res, "boxes": boxes, "display": viz.display_image(loaded.frames[0])}
    return (cache, rerender(au.count_view, cache, opacity),
            display.result_html(res.count, "objects counted", res.warnings), _downloads(files),
            _map_update(cache, show_map), _note(res), display.density_legend(res.density))


def run_track(loaded, ann, show_map, progress=gr.Progress()):
    boxes, out = _inputs(loaded, ann)
    frames = loaded.frames
    small = len(frames) * frames[0].shape[0] * frames[0].shape[1] <= 20_000_000
    res = matcher().track(frames, boxes=boxes, progress=_progress(progress), keep_maps=bool(show_map) or small)
    progress(1.0, desc="drawing")
    images = [viz.display_image(f) for f in frames]
    rendered = viz_tracks.render_tracks(images, res.masks, tracks=res.tracks, numbers=True, min_side=384)
    gif = viz.write_animation(out / f"{loaded.name}_tracks.gif", rendered, fps=4)
    files = export.save(res, out, loaded.name)
    maps = [au.map_view(im, m) for im, m in zip(images, res.maps)] if res.maps else None
    cache = {"rendered": rendered, "maps": maps, "gif": str(gif)}
    stats = display.result_html(res.n_tracks, "tracks", res.warnings, extra=[(res.n_divisions, "divisions")])
    slider = gr.update(maximum=len(rendered) - 1, value=0, visible=True)
    return (cache, str(gif), slider, stats, _downloads(files), _track_map(cache, 0, show_map), _note(res),
            gr.update(visible=True))


def _map_update(cache, show):
    if not show or not cache:
        return gr.update(visible=bool(show), value=None)
    res = cache["result"]
    return gr.update(visible=True, value=au.map_view(cache["display"], res.maps))


def _track_map(cache, t, show):
    if not show or not cache:
        return gr.update(visible=bool(show), value=None)
    if not cache.get("maps"):
        gr.Warning("Match maps were not kept for this long sequence: tick 'show match map' before Run.")
        return gr.update(visible=True, value=None)
    return gr.update(visible=True, value=cache["maps"][int(t)])


def rerender(view, cache, opacity):
    """Opacity changed: redraw from the cached result, no re-run."""
    return None if not cache else view(cache["result"], opacity, cache["boxes"], cache["display"])


def show_frame(cache, t, show_map):
    """Slider moved: the one tracks panel shows that frame (still)."""
    if not cache:
        return gr.update(), gr.update()
    return cache["rendered"][int(t)], _track_map(cache, t, show_map)


def play(cache):
    """The tracks panel shows the animation again."""
    return gr.update() if not cache else cache["gif"]


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


# ---- layout --------------------------------------------------------------------------------------


def _input_column(tab: str, sequence: bool, loaded: gr.State):
    """Upload, examples, annotator and mode line, wired to ``loaded``; returns the annotator."""
    kinds = ("multi-page TIFF, OME-TIFF or a zip of frames" if sequence
             else "PNG, JPEG or TIFF (16-bit, multi-channel)")
    where = "on the first frame " if sequence else ""
    summary = gr.Markdown(elem_id=f"{tab}-summary", render=False)
    ann = BBoxAnnotator(
        label=f"Optional: drag a box {where}around one typical object; Delete removes a selected box",
        categories=["exemplar"],
        interactive=True,
        elem_id=f"{tab}-annotator",
        show_download_button=False,
        visible=False,
        render=False,
    )
    mode = gr.Markdown(au.mode_line(None), elem_id=f"{tab}-mode", render=False)
    load = guarded("reading the file")(functools.partial(on_upload, sequence=sequence))
    upload = gr.File(
        label=f"Drop a file here or click to choose one ({kinds})",
        file_types=SEQUENCE_TYPES if sequence else IMAGE_TYPES,
        elem_id=f"{tab}-upload",
        height=130,
    )
    outs = [loaded, ann, summary, mode, upload]
    examples = [str(EXAMPLES / n) for n in EXAMPLE_FILES[tab] if (EXAMPLES / n).exists()]
    gallery = gr.Gallery(
        [(str(au.example_thumbnail(e, sequence, THUMBS)), Path(e).name) for e in examples],
        label="Examples: click one to load it (real images are public domain, CC0; see examples/README.md)",
        elem_id=f"{tab}-examples",
        columns=4,
        height=190,
        allow_preview=False,
        object_fit="contain",
        interactive=False,
        show_download_button=False,
        show_share_button=False,
        show_fullscreen_button=False,
    )

    def pick(evt: gr.SelectData):
        return load(examples[evt.index])

    for comp in (summary, ann, mode):
        comp.render()
    loads = [gallery.select(pick, None, outs, concurrency_limit=4),
             upload.upload(load, [upload], outs, concurrency_limit=4),
             ann.upload(lambda v: load(v[0] if v else None), [ann], outs, concurrency_limit=4)]
    for ev in loads:
        ev.then(_show_annotator, [loaded], [ann], queue=False, show_progress="hidden")
    emptied = lambda: (None, None, "", au.mode_line(None), None)
    upload.clear(emptied, None, outs, queue=False)
    ann.clear(emptied, None, outs, queue=False).then(_show_annotator, [loaded], [ann], queue=False)
    # In the browser: boxes being dragged have fractional corners, which the server would refuse.
    ann.change(None, [ann], [mode], js=_MODE_JS, show_progress="hidden")
    # what clears the previous result: a new file, an example, or emptying the file
    triggers = [gallery.select, upload.upload, ann.upload, upload.clear, ann.clear]
    return ann, triggers


#: The two single-image tabs differ only in these words and functions.
IMAGE_TABS = {
    "seg": {"title": "Segmentation", "verb": "segmenting", "run": "run_segment", "view": au.segmentation_view,
            "picture": "Objects", "opacity": ("Fill opacity", 0.45),
            "files": "Downloads: labels TIFF, per-object CSV, ImageJ ROIs"},
    "count": {"title": "Counting", "verb": "counting", "run": "run_count", "view": au.count_view,
              "picture": "Density and detected centres", "opacity": ("Heat-map opacity", 0.6),
              "files": "Downloads: density TIFF, count CSV, centres CSV"},
}  # fmt: skip


def _outputs(tab: str, files_label: str):
    """Show-match-map toggle, the map with its legend, and the downloads box of a tab."""
    show_map = gr.Checkbox(label="Show match map (what the result is based on)", elem_id=f"{tab}-showmap")
    mapimg = gr.Image(label="Match map", visible=False, interactive=False, elem_id=f"{tab}-map")
    legend = gr.HTML(display.match_legend(), visible=False, elem_id=f"{tab}-map-legend")
    show_map.change(lambda v: gr.update(visible=bool(v)), [show_map], [legend], queue=False,
                    show_progress="hidden")
    files = gr.File(label=files_label, file_count="multiple", interactive=False, elem_id=f"{tab}-files")
    return show_map, mapimg, files


def _image_tab(tab: str, spec: dict, eng_md) -> None:
    """Segmentation or Counting tab."""
    with gr.Tab(spec["title"], id=tab):
        loaded, cache = gr.State(time_to_live=3600), gr.State(time_to_live=3600)
        with gr.Row():
            with gr.Column():
                ann, triggers = _input_column(tab, False, loaded)
                run = gr.Button(f"Run {spec['title'].lower()}", variant="primary", elem_id=f"{tab}-run")
            with gr.Column():
                big = gr.HTML(elem_id=f"{tab}-count")
                picture = gr.Image(label=spec["picture"], type="numpy", format="png", interactive=False,
                                   elem_id=f"{tab}-overlay")
                legend = gr.HTML(elem_id=f"{tab}-legend")
                label, value = spec["opacity"]
                opacity = gr.Slider(0, 1, value=value, step=0.05, label=label, elem_id=f"{tab}-opacity")
                show_map, mapimg, files = _outputs(tab, spec["files"])
        results = [cache, picture, big, files, mapimg, eng_md, legend]
        run.click(guarded(spec["verb"])(globals()[spec["run"]]), [loaded, ann, opacity, show_map], results)
        gr.on(triggers, cleared_image_tab, None, [cache, picture, big, files, mapimg, legend], queue=False,
              show_progress="hidden")
        opacity.change(functools.partial(rerender, spec["view"]), [cache, opacity], [picture],
                       show_progress="hidden", concurrency_limit=None)
        show_map.change(_map_update, [cache, show_map], [mapimg], show_progress="hidden")


def _track_tab(eng_md) -> None:
    with gr.Tab("Tracking", id="track"):
        loaded, cache = gr.State(time_to_live=3600), gr.State(time_to_live=3600)
        with gr.Row():
            with gr.Column():
                ann, triggers = _input_column("track", True, loaded)
                run = gr.Button("Run tracking", variant="primary", elem_id="track-run")
            with gr.Column():
                stats = gr.HTML(elem_id="track-count")
                anim = gr.Image(label="Tracks: number = track, trail = last frames, white ring = new "
                                "daughters after a division", type="filepath", format="png",
                                interactive=False, elem_id="track-anim")
                with gr.Row():
                    frame = gr.Slider(0, 1, value=0, step=1, label="Frame (move to stop on one frame)",
                                      visible=False, elem_id="track-frame", scale=4)
                    again = gr.Button("▶ Play", visible=False, elem_id="track-play", scale=1)
                show_map, mapimg, files = _outputs("track", "Downloads: CTC result zip, tracks CSV, GEFF zip")
        run.click(guarded("tracking")(run_track), [loaded, ann, show_map],
                  [cache, anim, frame, stats, files, mapimg, eng_md, again])
        frame.input(show_frame, [cache, frame, show_map], [anim, mapimg], show_progress="hidden",
                    concurrency_limit=None)
        again.click(play, [cache], [anim], show_progress="hidden")
        gr.on(triggers, cleared_track_tab, None, [cache, anim, frame, stats, files, mapimg, again],
              queue=False, show_progress="hidden")
        show_map.change(_track_map, [cache, frame, show_map], [mapimg], show_progress="hidden")


def build_app() -> gr.Blocks:
    """The Blocks app (not launched)."""
    theme = gr.themes.Default(
        font=[gr.themes.Font("ui-sans-serif"), gr.themes.Font("system-ui"), "sans-serif"],
        font_mono=[gr.themes.Font("ui-monospace"), gr.themes.Font("Consolas"), "monospace"],
    )
    with gr.Blocks(title="MicroscopyMatching", theme=theme, css=CSS, delete_cache=(1800, 3600),
                   analytics_enabled=False, head=display.BOX_JS) as demo:
        gr.Markdown(
            "# MicroscopyMatching\nFinds, counts and tracks the objects of a microscopy image by "
            "looking for what repeats in it: no training, no settings. Optionally draw a box around "
            "one typical object."
        )
        gr.Markdown(engine_line(), elem_id="engine-line")
        with gr.Accordion("Details (for the technically minded)", open=False, elem_id="details"):
            details = gr.Markdown(display.details_markdown(MATCHER["reason"], "", LIMITS),
                                  elem_id="details-text")
        for tab, spec in IMAGE_TABS.items():
            _image_tab(tab, spec, details)
        _track_tab(details)
        gr.Markdown("Results are kept for an hour, then deleted. Nothing leaves this computer.")
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="MicroscopyMatching web app")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="simultaneous runs (default: 1 with the LDM engine on a GPU, else 2)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    load_engine()
    log.info("engine: %s", MATCHER["reason"])
    gpu = getattr(getattr(MATCHER["matcher"], "engine", None), "name", "") == "ldm"
    limit = args.concurrency or (1 if gpu else 2)
    demo = build_app()
    demo.queue(default_concurrency_limit=limit, max_size=64)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(EXAMPLES), str(au.OUTPUT_ROOT)],
        show_api=False,
        share=False,
        app_kwargs={"middleware": offline.middleware()},  # no CDN script on the page (works offline)
    )

