"""MicroscopyMatching in the browser: segmentation, counting and tracking (the layout).

A thin Gradio shell over one :class:`mm_core.Matcher`, made at start-up; pictures
come from :mod:`mm_core.viz`, downloads from :func:`mm_core.export.save` (the same
files as the CLI). The handlers are in :mod:`mm_core.app.handlers`; :mod:`mm_core.app.helpers`
holds what needs no Gradio.

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

from mm_core.app import batch_tab, display, offline, panels, runs, tables, uploads
from mm_core.app import helpers as au
from mm_core.app import results as ar
from mm_core.app.handlers import (  # noqa: F401 - re-exported: tests and app.py reach them here
    MATCHER,
    cleared_image_tab,
    cleared_track_tab,
    engine_line,
    limits_line,
    load_engine,
    matcher,
    load_file,
    on_upload,
    play,
    rerender,
    run_count,
    run_segment,
    run_track,
    show_frame,
    _downloads,
    _empty_input,
    _inputs,
    _map_update,
    _note,
    _progress,
    _show_annotator,
    _track_map,
)
from mm_core.app.annotator import checked_boxes
from mm_core.app.lifecycle import STORE  # noqa: F401 - re-exported: tests reach the store here
from mm_core.app.lifecycle import checked_input, end_session, guarded, start_cleanup, tab_states
from mm_core.errors import MMError
from mm_core.settings import get_settings

log = logging.getLogger("mm_core.app")
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


def examples_dir() -> Path:
    """Example files shown in the gallery (the repository's ``examples/`` unless ``MM_EXAMPLES`` is set)."""
    return Path(get_settings().app_examples or Path(__file__).resolve().parents[2] / "examples")


CSS = """
.mm-big {display:flex; align-items:baseline; gap:.6em; padding:.3em 0}
.mm-big-num {font-size:3.2em; font-weight:700; line-height:1}
.mm-big-cap {font-size:1.1em; opacity:.75}
""" + display.CSS
_MODE_JS = """(v) => {
  const n = (v && v.annotations) ? v.annotations.length : 0;
  if (n === 0) return %r;
  return "**Exemplar mode** — " + n + (n > 1 ? " boxes" : " box") + ": objects that match "
    + (n > 1 ? "them" : "it") + " are found.";
}""" % au.mode_line(None)



# ---- layout --------------------------------------------------------------------------------------


def _input_column(tab: str, sequence: bool, loaded: gr.State):
    """Upload, examples, annotator, drawing state, zoom (images), mode line and pixel size, wired
    to ``loaded``; returns ``(annotator, pixel field, triggers of a new file)``."""
    kinds = ("multi-page TIFF, OME-TIFF or a zip of frames" if sequence
             else "PNG, JPEG or TIFF (16-bit, multi-channel)")
    where = "on the first frame " if sequence else ""
    summary = gr.Markdown(elem_id=f"{tab}-summary", render=False)
    ann = checked_boxes(BBoxAnnotator(
        label=f"Optional: drag a box {where}around one typical object (more boxes: drag again); "
              "Delete removes a selected box",
        categories=["exemplar"],
        interactive=True,
        elem_id=f"{tab}-annotator",
        show_download_button=False,
        visible=False,
        render=False,
    ))
    mode = gr.Markdown(au.mode_line(None), elem_id=f"{tab}-mode", render=False)
    pixel, token = panels.pixel_field(tab).unrender(), panels.file_token(tab)

    def loader(read, what: str):
        """``read`` (:func:`on_upload`: an upload, checked; :func:`load_file`: an example), then the
        file tagged as the tab's current one and its pixel size put in the field."""

        @guarded(what)
        def load(path, request: gr.Request = None):
            out = read(path, sequence=sequence)
            runs.loaded_now(tab, out[0], request)
            return (*out, runs.file_token(out[0]), tables.pixel_field_value(out[0]))

        return load

    load = loader(on_upload, "reading the file")
    load_example = loader(load_file, "loading the example")
    upload = gr.File(
        label=f"Drop a file here or click to choose one ({kinds})",
        file_types=SEQUENCE_TYPES if sequence else IMAGE_TYPES,
        elem_id=f"{tab}-upload",
        height=130,
    )
    outs = [loaded, ann, summary, mode, upload, token, pixel]
    folder = examples_dir()
    examples = [str(folder / n) for n in EXAMPLE_FILES[tab] if (folder / n).exists()]
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

    @guarded("loading the example")
    def pick(evt: gr.EventData = None, request: gr.Request = None):  # EventData: API calls may send none
        data = getattr(evt, "_data", None)
        index = ar.as_index(data.get("index") if isinstance(data, dict) else None, len(examples),
                            "the example number")
        return load_example(examples[index], request)

    for comp in (summary, ann):
        comp.render()
    panels.draw_state(tab)
    zooms = [] if sequence else panels.zoom_controls(tab, loaded, ann)
    for comp in (mode, pixel, token):
        comp.render()

    @guarded("reading the file")
    def reader(v, request: gr.Request = None):
        return load(v[0] if v else None, request)

    def forget(old: str, request: gr.Request = None):  # old: the token the page showed (not a state)
        runs.forget(tab, old, request)

    empty = lambda: (*_empty_input(), "", "")
    queue = {"concurrency_limit": LOADS_AT_ONCE, "concurrency_id": "load"}  # one limit for every tab's loads
    loads = [gallery.select(pick, None, outs, api_name=f"{tab}_example", **queue),
             upload.upload(load, [upload], outs, api_name=f"{tab}_upload", **queue),
             ann.upload(reader, [ann], outs, api_name=False, **queue)]
    for ev in loads:
        ev.failure(empty, None, outs, queue=False, api_name=False).then(
            _show_annotator, [loaded], [ann], queue=False, show_progress="hidden")
        ev.then(_show_annotator, [loaded], [ann], queue=False, show_progress="hidden")
    upload.clear(empty, None, outs, queue=False, api_name=False)
    ann.clear(empty, None, outs, queue=False, api_name=False).then(_show_annotator, [loaded], [ann],
                                                                   queue=False)
    # In the browser: boxes being dragged have fractional corners, which the server would refuse.
    ann.change(None, [ann], [mode], js=_MODE_JS, show_progress="hidden")
    # what clears the previous result: a new file, an example, or emptying the file
    triggers = [gallery.select, upload.upload, ann.upload, upload.clear, ann.clear]
    gr.on(triggers, forget, [token], None, queue=False, show_progress="hidden", api_name=False)
    if zooms:
        gr.on(triggers, panels.reset_zoom, None, zooms, queue=False, show_progress="hidden", api_name=False)
    return ann, pixel, triggers


#: Runs of every tab share one queue: at most ``--concurrency`` at once (the queue's default
#: limit), the others wait with their place in the queue shown, so the page itself stays served.
RUN_QUEUE = {"concurrency_limit": "default", "concurrency_id": "run"}
#: Uploads (reading and previewing a file) of every tab at once, at most.
LOADS_AT_ONCE = 2
#: Requests waiting in the queue, at most; beyond, a new one is refused with "the queue is full".
QUEUE_MAX = 64

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


def _scroll_js(tab: str) -> str:
    """After Run: bring the number and the self-check into view (a 1280×720 laptop has them
    far above the Run button)."""
    return (f"() => {{ const e = document.querySelector('#{tab}-count');"
            " if (e) e.scrollIntoView({block: 'start', behavior: 'instant'}); }")


def _run_events(run, tab: str, fn, inputs, outputs, api_name: str):
    """Run: refused at once without a file (one message, no error badges), then the run, then
    the result scrolled into view."""
    ev = run.click(runs.need_file, [inputs[0]], None, queue=False, show_progress="hidden", api_name=False)
    ev = ev.success(fn, inputs, outputs, api_name=api_name, **RUN_QUEUE)  # the shared run queue
    ev.success(None, None, None, js=_scroll_js(tab), queue=False, show_progress="hidden")


def _image_tab(tab: str, spec: dict, eng_md) -> None:
    """Segmentation or Counting tab."""
    with gr.Tab(spec["title"], id=tab):
        loaded, cache = tab_states()
        with gr.Row():
            with gr.Column():
                ann, pixel, triggers = _input_column(tab, False, loaded)
                run = gr.Button(f"Run {spec['title'].lower()}", variant="primary", elem_id=f"{tab}-run")
            with gr.Column():
                big = gr.HTML(elem_id=f"{tab}-count")
                with gr.Row():
                    picture = gr.Image(label=spec["picture"], type="numpy", format="png", interactive=False,
                                       elem_id=f"{tab}-overlay")
                    prev = panels.compare_panel(tab)
                legend = gr.HTML(elem_id=f"{tab}-legend")
                label, value = spec["opacity"]
                opacity = checked_input(gr.Slider(0, 1, value=value, step=0.05, label=label,
                                                  elem_id=f"{tab}-opacity"), "the opacity")
                show_map, mapimg, files = _outputs(tab, spec["files"])
        # counting has no sizes: no summary, no histogram (states keep the outputs' order)
        extras = [e if e is not None else gr.State() for e in panels.results_panel(tab)]
        batch_tab.batch_panel(tab, pixel, IMAGE_TYPES)
        results = [cache, picture, big, files, mapimg, eng_md, legend, *extras, *prev]
        fn = guarded(spec["verb"])(functools.partial(runs.image_run, tab))
        _run_events(run, tab, _with_request(fn), [loaded, ann, opacity, show_map, pixel], results, f"{tab}_run")
        cleared = [cache, picture, big, files, mapimg, legend, show_map, *extras, *prev]
        gr.on(triggers, _cleared_image(len(extras)), None, cleared, queue=False, show_progress="hidden")
        opacity.change(guarded("redrawing")(functools.partial(rerender, spec["view"])), [cache, opacity],
                       [picture], show_progress="hidden", concurrency_limit=None, api_name=f"{tab}_opacity")
        show_map.change(guarded("drawing the match map")(_map_update), [cache, show_map], [mapimg],
                        show_progress="hidden", api_name=f"{tab}_showmap")


def _with_request(fn):
    """``fn(loaded, ann, opacity, show_map, pixel, request=, progress=)`` as a handler that Gradio
    passes the request and a progress bar to."""

    def handler(loaded, ann, opacity, show_map, pixel, request: gr.Request = None, progress=gr.Progress()):
        return fn(loaded, ann, opacity, show_map, pixel, request=request, progress=progress)

    return handler


def _cleared_image(n_extras: int):
    """Outputs of an image tab emptied by a new file (the match-map box unticked, so its legend goes)."""
    def cleared():
        return (*cleared_image_tab()[:5], "", False, *panels.empty_results(n_extras),
                gr.update(visible=False), None, "")

    return cleared


def _track_tab(eng_md) -> None:
    with gr.Tab("Tracking", id="track"):
        loaded, cache = tab_states()
        with gr.Row():
            with gr.Column():
                ann, pixel, triggers = _input_column("track", True, loaded)
                run = gr.Button("Run tracking", variant="primary", elem_id="track-run")
            with gr.Column():
                stats = gr.HTML(elem_id="track-count")
                anim = gr.Image(label="Tracks: number = track, trail = last frames, white ring = new "
                                "daughters after a division", type="filepath", format="png",
                                interactive=False, elem_id="track-anim")
                with gr.Row():
                    frame = checked_input(gr.Slider(0, 1, value=0, step=1, label="Frame (move to stop on one frame)",
                                                    visible=False, elem_id="track-frame", scale=4),
                                          "the frame number")
                    again = gr.Button("▶ Play", visible=False, elem_id="track-play", scale=1)
                show_map, mapimg, files = _outputs("track", "Downloads: CTC result zip, tracks CSV, GEFF zip, "
                                                   "per-frame plot")
        extras = [e for e in panels.results_panel("track") if e is not None]
        batch_tab.batch_panel("track", pixel, SEQUENCE_TYPES)

        @guarded("tracking")
        def track(loaded, ann, show_map, pixel, request: gr.Request = None, progress=gr.Progress()):
            return runs.track_run(loaded, ann, show_map, pixel, request=request, progress=progress)

        _run_events(run, "track", track, [loaded, ann, show_map, pixel],
                    [cache, anim, frame, stats, files, mapimg, eng_md, again, *extras], "track_run")
        frame.input(guarded("showing the frame")(show_frame), [cache, frame, show_map], [anim, mapimg],
                    show_progress="hidden", concurrency_limit=None, api_name="track_frame")
        again.click(guarded("playing the animation")(play), [cache], [anim], show_progress="hidden",
                    api_name="track_play")
        gr.on(triggers, lambda: (*cleared_track_tab(), False, *panels.empty_results(len(extras))), None,
              [cache, anim, frame, stats, files, mapimg, again, show_map, *extras],
              queue=False, show_progress="hidden")
        show_map.change(guarded("drawing the match map")(_track_map), [cache, frame, show_map], [mapimg],
                        show_progress="hidden", api_name="track_showmap")


def build_app() -> gr.Blocks:
    """The Blocks app (not launched)."""
    theme = gr.themes.Default(
        font=[gr.themes.Font("ui-sans-serif"), gr.themes.Font("system-ui"), "sans-serif"],
        font_mono=[gr.themes.Font("ui-monospace"), gr.themes.Font("Consolas"), "monospace"],
    )
    gr.set_static_paths([str(au.served_root())])  # downloads are served from there (only), not copied
    with gr.Blocks(title="MicroscopyMatching", theme=theme, css=CSS, delete_cache=(1800, 3600),
                   analytics_enabled=False, head=display.BOX_JS) as demo:
        gr.Markdown(
            "# MicroscopyMatching\nFinds, counts and tracks the objects of a microscopy image by "
            "looking for what repeats in it: no training, no settings. Optionally draw a box around "
            "one typical object."
        )
        gr.Markdown(engine_line(), elem_id="engine-line")
        with gr.Accordion("Details (for the technically minded)", open=False, elem_id="details"):
            details = gr.Markdown(display.details_markdown(MATCHER["reason"], "", limits_line()),
                                  elem_id="details-text")
        for tab, spec in IMAGE_TABS.items():
            _image_tab(tab, spec, details)
        _track_tab(details)
        demo.unload(end_session)
        gr.Markdown("Results are kept for an hour, then deleted. Nothing leaves this computer.")
    return demo


def _few_heaps() -> None:
    """At most 2 malloc arenas (glibc): the many threads of a server otherwise each keep
    their own heap of freed run memory, and the process grows by GBs under load."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


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
    try:
        settings = get_settings()
    except MMError as exc:  # a bad MM_* variable: one line naming it, no traceback
        parser.exit(2, f"error: {exc}\n")
    logging.basicConfig(level=logging.DEBUG if settings.app_debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _few_heaps()
    load_engine()
    log.info("engine: %s", MATCHER["reason"])
    gpu = getattr(getattr(MATCHER["matcher"], "engine", None), "name", "") == "ldm"
    limit = args.concurrency or (1 if gpu else 2)
    demo = build_app()
    start_cleanup()
    demo.queue(default_concurrency_limit=limit, max_size=QUEUE_MAX)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=settings.app_max_file_size,
        allowed_paths=[str(examples_dir()), str(au.served_root())],
        show_api=False,
        share=False,
        # no CDN script on the page (works offline); uploads over the size limit refused unread
        app_kwargs={"middleware": offline.middleware() + uploads.middleware(settings.app_max_file_size)},
    )

