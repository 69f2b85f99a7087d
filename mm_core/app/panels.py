"""Widgets of a tab beyond the basic run: pixel size, zoomed view, results table, previous result.

Each function makes (and renders, inside the caller's layout) a group of widgets and
returns them; :mod:`mm_core.app.ui` places and wires them.
"""

from __future__ import annotations

import gradio as gr

from mm_core.app import zoom
from mm_core.app.current import CURRENT
from mm_core.app.lifecycle import guarded, session_of


def pixel_field(tab: str) -> gr.Textbox:
    """The pixel-size field: prefilled from the file when it knows its size, else empty (pixels)."""
    return gr.Textbox(label="Pixel size (µm per pixel): from the file when it says; empty: measure in pixels",
                      placeholder="e.g. 0.24", elem_id=f"{tab}-pixel", max_lines=1)


def file_token(tab: str) -> gr.Textbox:
    """The loaded file's token, hidden: the page sends it with the notice that a new file is being
    chosen, so the server lets go of the file the user saw (:mod:`mm_core.app.current`)."""
    return gr.Textbox(visible=False, elem_id=f"{tab}-file-token", render=False)


def draw_state(tab: str) -> gr.HTML:
    """A line saying whether box drawing is on (kept up to date by the page script)."""
    return gr.HTML("", elem_id=f"{tab}-drawstate")


def zoom_controls(tab: str, loaded: gr.State, ann) -> list:
    """"Zoom in to draw a box": zoom factor and the view's centre; returns the widgets that a
    new file resets (zoom, centre x, centre y, the line)."""
    with gr.Accordion("Zoom in to draw a box on small objects (large images)", open=False,
                      elem_id=f"{tab}-zoom"):
        factor = gr.Radio([str(z) for z in zoom.ZOOMS], value="1", label="Zoom (× of the whole image)",
                          elem_id=f"{tab}-zoom-factor")
        with gr.Row():
            cx = gr.Slider(0, 100, value=50, step=1, label="View centre, left → right (%)",
                           elem_id=f"{tab}-zoom-x")
            cy = gr.Slider(0, 100, value=50, step=1, label="View centre, top → bottom (%)",
                           elem_id=f"{tab}-zoom-y")
        line = gr.Markdown("Showing the whole image.", elem_id=f"{tab}-zoom-line")

    @guarded("zooming")
    def view(loaded, factor, x, y, request: gr.Request = None):
        if loaded is None:
            return None, gr.update(), "Load an image first."
        if not CURRENT.is_current(session_of(request), tab, loaded):  # a new file came meanwhile
            return gr.skip(), gr.skip(), gr.skip()  # its load shows it; never put the old one back
        new = zoom.zoomed(loaded, float(factor), float(x) / 100, float(y) / 100)
        return new, (new.preview, []), zoom.view_line(new)

    for comp in (factor, cx, cy):
        comp.input(view, [loaded, factor, cx, cy], [loaded, ann, line], api_name=False,
                   concurrency_limit=4, show_progress="minimal")
    return [factor, cx, cy, line]


def reset_zoom():
    """What a new file shows in the zoom controls."""
    return "1", 50, 50, "Showing the whole image."


def results_panel(tab: str) -> list:
    """The per-object table (sortable, the CSV's columns), the pixel-size line and the plots:
    segmentation a summary and a size histogram, tracking objects per frame with divisions.
    Returns ``[table, summary, plot, pixel line]``, ``None`` for what the tab has not."""
    summary = plot = None
    with gr.Accordion("Table of objects, summary and plots", open=True, elem_id=f"{tab}-tables"):
        note = gr.Markdown(elem_id=f"{tab}-pixelnote")
        with gr.Row():
            if tab == "seg":
                summary = gr.Dataframe(label="Summary", interactive=False, elem_id=f"{tab}-summary-table",
                                       wrap=True, visible=False)
            if tab in ("seg", "track"):
                what = "Size histogram" if tab == "seg" else "Objects per frame and divisions"
                plot = gr.Image(label=f"{what} (PNG: download button)", type="filepath", visible=False,
                                interactive=False, elem_id=f"{tab}-plot", show_download_button=True, height=300)
        label = {"seg": "Objects (one row each, as in the CSV; click a header to sort)",
                 "count": "Centres counted (as in the points CSV; click a header to sort)",
                 "track": "Tracks: one row per object and frame (as in the CSV; click a header to sort)"}[tab]
        table = gr.Dataframe(label=label, interactive=False, elem_id=f"{tab}-table", max_height=360,
                             visible=False)
    return [table, summary, plot, note]


def compare_panel(tab: str) -> list:
    """The previous result of the same file, beside the new one: ``[box, picture, numbers]``."""
    with gr.Column(visible=False, elem_id=f"{tab}-prev") as box:
        words = gr.HTML(elem_id=f"{tab}-prev-count")
        pic = gr.Image(label="Previous run on this file (kept until another file is loaded)", type="numpy",
                       format="png", interactive=False, elem_id=f"{tab}-prev-overlay")
    return [box, pic, words]


def empty_results(n: int) -> tuple:
    """Cleared (and hidden) values for ``n`` result-panel widgets, the last being the pixel line."""
    return (*(gr.update(value=None, visible=False) for _ in range(n - 1)), "")


def shown(value) -> dict:
    """A result-panel widget's update: the value, visible when there is one."""
    empty = value is None or (hasattr(value, "empty") and value.empty)
    return gr.update(value=None if empty else value, visible=not empty)

