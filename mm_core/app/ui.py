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
import numpy as np
from gradio_bbox_annotator import BBoxAnnotator

from mm_core import export, viz
from mm_core.app import helpers as au
from mm_core.app import results as ar
from mm_core.app.lifecycle import STORE, checked_input, drop_loaded, end_session, guarded, start_cleanup
from mm_core.app.lifecycle import session_of as _session

log = logging.getLogger("mm_core.app")
#: Example files shown in the gallery (the repository's ``examples/`` unless ``MM_EXAMPLES`` is set).
EXAMPLES = Path(os.environ.get("MM_EXAMPLES", Path(__file__).resolve().parents[2] / "examples"))
MAX_FILE_SIZE = os.environ.get("MM_APP_MAX_FILE_SIZE", "200mb")
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"]
SEQUENCE_TYPES = [".tif", ".tiff", ".zip"]
THUMBS = Path(tempfile.gettempdir()) / "mm_app_thumbs"  # example thumbnails, made at start-up
EXAMPLE_FILES = {  # tab -> example files shipped in examples/ (see examples/README.md)
    "seg": ["nuclei_fluorescence.tif", "phase_cells.png", "crowded_cells.png"],
    "count": ["crowded_cells.png", "nuclei_fluorescence.tif", "phase_cells.png"],
    "track": ["timelapse_division.tif"],
}
CSS = """
.mm-big {display:flex; align-items:baseline; gap:.6em; padding:.3em 0}
.mm-big-num {font-size:3.2em; font-weight:700; line-height:1}
.mm-big-cap {font-size:1.1em; opacity:.75}
"""
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
    return f"**Engine:** {MATCHER['reason']}"


# ---- handlers ------------------------------------------------------------------------------------


def _empty_input():
    return None, None, "", au.mode_line(None), None


def on_upload(path, sequence: bool):
    """File chosen (upload, annotator or example): read it, show it in the annotator.

    Returns ``(loaded, annotator value, summary, mode line, upload widget)``. A refused
    file raises :class:`InputError` (shown as an error, and an error for API clients);
    the event's ``failure`` listener then empties the widgets for the next try.
    """
    if not path:
        return _empty_input()
    loaded = au.load_upload(path, sequence)
    return loaded, (loaded.preview, []), loaded.summary, au.mode_line(None), gr.update()


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
    """Engine line after a run, and which head ran."""
    line = f"**Engine:** {res.engine_note}"
    head = getattr(res, "head_note", "")
    return f"{line}  \n**Head:** {head}" if head else line


def _downloads(files) -> list[str]:
    """The files offered for download: everything :func:`mm_core.export.save` wrote but the
    loose CTC frames (they are inside the CTC zip)."""
    return [str(f) for f in files if not (f.name.startswith("mask") and f.suffix == ".tif")
            and f.name != "res_track.txt"]


def run_segment(loaded, ann, opacity, show_map, request: gr.Request = None, progress=gr.Progress()):
    boxes, out = _inputs(loaded, ann)
    opacity = ar.as_fraction(opacity)
    frame = loaded.frames[0]
    res = matcher().segment(frame, boxes=boxes, progress=_progress(progress))
    files = export.save(res, out, loaded.name, intensity=frame)
    key = ar.keep_image_result(STORE, _session(request), "seg", res, frame, boxes, out)
    return (key, rerender(au.segmentation_view, key, opacity),
            au.big_number_html(res.n_objects, "objects"), _downloads(files),
            _map_update(key, show_map), _note(res))


def run_count(loaded, ann, opacity, show_map, request: gr.Request = None, progress=gr.Progress()):
    boxes, out = _inputs(loaded, ann)
    opacity = ar.as_fraction(opacity)
    frame = loaded.frames[0]
    res = matcher().count(frame, boxes=boxes, progress=_progress(progress))
    files = export.save(res, out, loaded.name)
    key = ar.keep_image_result(STORE, _session(request), "count", res, frame, boxes, out)
    return (key, rerender(au.count_view, key, opacity), au.big_number_html(res.count, "objects counted"),
            _downloads(files), _map_update(key, show_map), _note(res))


def run_track(loaded, ann, show_map, request: gr.Request = None, progress=gr.Progress()):
    boxes, out = _inputs(loaded, ann)
    frames = loaded.frames
    small = len(frames) * frames[0].shape[0] * frames[0].shape[1] <= 20_000_000
    res = matcher().track(list(frames), boxes=boxes, progress=_progress(progress),
                          keep_maps=bool(show_map) or small)
    progress(1.0, desc="drawing")
    images = [ar.display8(f) for f in frames]
    rendered = np.stack([viz.upscale_nearest(f) for f in viz.render_tracks(images, res.masks)])
    gif = viz.write_animation(out / f"{loaded.name}_tracks.gif", list(rendered), fps=4)
    files = export.save(res, out, loaded.name)
    maps = np.stack([au.map_view(im, m) for im, m in zip(images, res.maps)]) if res.maps else None
    key = ar.keep_track_result(STORE, _session(request), rendered, maps, out)
    stats = ("<div style='display:flex;gap:2.5em'>" + au.big_number_html(res.n_tracks, "tracks")
             + au.big_number_html(res.n_divisions, "divisions") + "</div>")
    slider = gr.update(maximum=len(rendered) - 1, value=0, visible=True)
    return (key, str(gif), slider, rendered[0], stats, _downloads(files),
            _track_map(key, 0, show_map), _note(res))


def _map_update(key, show):
    cache = ar.kept(STORE, key)
    if not show or not cache:
        return gr.update(visible=bool(show), value=None)
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
    cache = ar.kept(STORE, key)
    if not cache:
        return None, gr.update()
    return ar.track_picture(cache, "rendered", t), _track_map(key, t, show_map)


# ---- layout --------------------------------------------------------------------------------------


def _input_column(tab: str, sequence: bool, loaded: gr.State):
    """Upload, examples, annotator and mode line, wired to ``loaded``; returns the annotator."""
    kinds = ("multi-page TIFF, OME-TIFF or a zip of frames" if sequence
             else "PNG, JPEG or TIFF (16-bit, multi-channel)")
    where = "on the first frame " if sequence else ""
    summary = gr.Markdown(elem_id=f"{tab}-summary", render=False)
    ann = BBoxAnnotator(
        label=f"Draw a box {where}around one example object (optional): click the "
        "pencil button, then drag on the image",
        categories=["exemplar"],
        interactive=True,
        elem_id=f"{tab}-annotator",
        show_download_button=False,
        render=False,
    )
    mode = gr.Markdown(au.mode_line(None), elem_id=f"{tab}-mode", render=False)
    load = guarded("reading the file")(functools.partial(on_upload, sequence=sequence))
    upload = gr.File(
        label=f"Upload ({kinds})",
        file_types=SEQUENCE_TYPES if sequence else IMAGE_TYPES,
        elem_id=f"{tab}-upload",
        height=130,
    )
    outs = [loaded, ann, summary, mode, upload]
    examples = [str(EXAMPLES / n) for n in EXAMPLE_FILES[tab] if (EXAMPLES / n).exists()]
    gallery = gr.Gallery(
        [(str(au.example_thumbnail(e, sequence, THUMBS)), Path(e).name) for e in examples],
        label="Examples (made by the project): click one to load it",
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

    @guarded("loading the example")
    def pick(evt: gr.EventData = None):  # EventData, not SelectData: API calls may send no event data
        data = getattr(evt, "_data", None)
        index = ar.as_index(data.get("index") if isinstance(data, dict) else None, len(examples),
                            "the example number")
        out = load(examples[index])
        return (*out[:4], examples[index] if out[0] is not None else None)

    gallery.select(pick, None, outs, concurrency_limit=4, api_name=f"{tab}_example").failure(
        _empty_input, None, outs, queue=False, api_name=False)
    for comp in (summary, ann, mode):
        comp.render()
    upload.upload(load, [upload], outs, concurrency_limit=4, api_name=f"{tab}_upload").failure(
        _empty_input, None, outs, queue=False, api_name=False)
    upload.clear(_empty_input, None, outs, queue=False, api_name=False)
    ann.upload(guarded("reading the file")(lambda v: load(v[0] if v else None)), [ann], outs,
               concurrency_limit=4, api_name=False).failure(_empty_input, None, outs, queue=False, api_name=False)
    # In the browser: boxes being dragged have fractional corners, which the server would refuse.
    ann.change(None, [ann], [mode], js=_MODE_JS, show_progress="hidden")
    return ann


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
    """Show-match-map toggle, the map, and the downloads box of a tab."""
    show_map = gr.Checkbox(label="Show match map", elem_id=f"{tab}-showmap")
    mapimg = gr.Image(label="Match map", visible=False, interactive=False, elem_id=f"{tab}-map")
    files = gr.File(label=files_label, file_count="multiple", interactive=False, elem_id=f"{tab}-files")
    return show_map, mapimg, files


def _image_tab(tab: str, spec: dict, eng_md) -> None:
    """Segmentation or Counting tab."""
    with gr.Tab(spec["title"], id=tab):
        loaded, cache = _states()
        with gr.Row():
            with gr.Column():
                ann = _input_column(tab, False, loaded)
                run = gr.Button(f"Run {spec['title'].lower()}", variant="primary", elem_id=f"{tab}-run")
            with gr.Column():
                big = gr.HTML(elem_id=f"{tab}-count")
                picture = gr.Image(label=spec["picture"], type="numpy", format="png", interactive=False,
                                   elem_id=f"{tab}-overlay")
                label, value = spec["opacity"]
                opacity = checked_input(gr.Slider(0, 1, value=value, step=0.05, label=label,
                                                  elem_id=f"{tab}-opacity"), "the opacity")
                show_map, mapimg, files = _outputs(tab, spec["files"])
        run.click(guarded(spec["verb"])(globals()[spec["run"]]), [loaded, ann, opacity, show_map],
                  [cache, picture, big, files, mapimg, eng_md], api_name=f"{tab}_run")
        opacity.change(guarded("redrawing")(functools.partial(rerender, spec["view"])), [cache, opacity],
                       [picture], show_progress="hidden", concurrency_limit=None, api_name=f"{tab}_opacity")
        show_map.change(guarded("drawing the match map")(_map_update), [cache, show_map], [mapimg],
                        show_progress="hidden", api_name=f"{tab}_showmap")


def _states():
    """The two states of a tab: the upload and the key of the kept result (both small)."""
    return (gr.State(time_to_live=au.MAX_AGE_S, delete_callback=drop_loaded),
            gr.State(time_to_live=au.MAX_AGE_S, delete_callback=STORE.drop))


def _track_tab(eng_md) -> None:
    with gr.Tab("Tracking", id="track"):
        loaded, cache = _states()
        with gr.Row():
            with gr.Column():
                ann = _input_column("track", True, loaded)
                run = gr.Button("Run tracking", variant="primary", elem_id="track-run")
            with gr.Column():
                stats = gr.HTML(elem_id="track-count")
                anim = gr.Image(label="Tracks (animation)", type="filepath", interactive=False,
                                elem_id="track-anim")
                frame = checked_input(gr.Slider(0, 1, value=0, step=1, label="Frame", visible=False,
                                                elem_id="track-frame"), "the frame number")
                frame_img = gr.Image(label="Frame view", type="numpy", format="png", interactive=False,
                                     elem_id="track-frame-img")
                show_map, mapimg, files = _outputs("track", "Downloads: CTC result zip, tracks CSV")
        run.click(guarded("tracking")(run_track), [loaded, ann, show_map],
                  [cache, anim, frame, frame_img, stats, files, mapimg, eng_md], api_name="track_run")
        frame.change(guarded("showing the frame")(show_frame), [cache, frame, show_map], [frame_img, mapimg],
                     show_progress="hidden", concurrency_limit=None, api_name="track_frame")
        show_map.change(guarded("drawing the match map")(_track_map), [cache, frame, show_map], [mapimg],
                        show_progress="hidden", api_name="track_showmap")


def build_app() -> gr.Blocks:
    """The Blocks app (not launched)."""
    theme = gr.themes.Default(
        font=[gr.themes.Font("ui-sans-serif"), gr.themes.Font("system-ui"), "sans-serif"],
        font_mono=[gr.themes.Font("ui-monospace"), gr.themes.Font("Consolas"), "monospace"],
    )
    gr.set_static_paths([str(au.OUTPUT_ROOT)])  # downloads are served from there, not copied
    with gr.Blocks(title="MicroscopyMatching", theme=theme, css=CSS, delete_cache=(1800, 3600),
                   analytics_enabled=False) as demo:
        gr.Markdown(
            "# MicroscopyMatching\nSegmentation, counting and tracking of microscopy images as "
            "*matching within the image*: no training, no parameters. Optionally draw one box "
            "around an example object."
        )
        eng_md = gr.Markdown(engine_line(), elem_id="engine-line")
        for tab, spec in IMAGE_TABS.items():
            _image_tab(tab, spec, eng_md)
        _track_tab(eng_md)
        demo.unload(end_session)
        gr.Markdown(
            "Results are kept for an hour, then deleted. Weight-free engine results are classical "
            "image analysis; the LDM engine needs a GPU and the Stable Diffusion v1.4 weights."
        )
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
    logging.basicConfig(level=logging.DEBUG if os.environ.get("MM_APP_DEBUG") else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    load_engine()
    log.info("engine: %s", MATCHER["reason"])
    gpu = getattr(getattr(MATCHER["matcher"], "engine", None), "name", "") == "ldm"
    limit = args.concurrency or (1 if gpu else 2)
    demo = build_app()
    start_cleanup()
    demo.queue(default_concurrency_limit=limit, max_size=64)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(EXAMPLES), str(au.OUTPUT_ROOT)],
        show_api=False,
        share=False,
    )

