"""What happens around a run: refuse early, tag the run with its file, keep the previous result.

- :func:`need_file`: Run with no file loaded is one message (a toast), before the run
  starts, so no output shows an error badge.
- Every run is tagged with the file it ran on (:mod:`mm_core.app.current`); a result that
  arrives after another file was chosen is dropped, not shown under that file.
- The last result of the same file moves to the tab's "previous" slot before a new run, so
  automatic and boxed results can be compared side by side until another file is loaded.
- After a run: the per-object table, its summary and size histogram (:mod:`mm_core.app.tables`),
  and the pixel size used.
"""

from __future__ import annotations

import logging

import gradio as gr

from mm_core.app import display, panels, tables
from mm_core.app import helpers as au
from mm_core.app.current import CURRENT, identity
from mm_core.app.handlers import run_count, run_segment, run_track
from mm_core.app.lifecycle import STORE
from mm_core.app.lifecycle import session_of as _session

log = logging.getLogger("mm_core.app")

#: Outputs a run adds after the handler's own (image tabs): table, summary, histogram, pixel line,
#: previous-result box, its picture and its numbers.
N_IMAGE_EXTRAS = 7
#: Outputs a tracking run adds: table, per-frame plot, pixel line.
N_TRACK_EXTRAS = 3


def need_file(loaded) -> None:
    """Run pressed with nothing loaded: one message, nothing else happens."""
    if loaded is None:
        raise gr.Error("Upload an image first (or pick an example).", title="No image")


def prev_key(session: str, tab: str) -> str:
    """Store key of a tab's previous result."""
    return STORE.key(session, f"{tab}/prev")


def keep_previous(session: str | None, tab: str, loaded) -> str | None:
    """Before a run: the tab's last result, if it is of the same file, becomes the previous one."""
    if session is None:
        return None
    last = STORE.get(STORE.key(session, tab))
    if last is not None and last.get("ident") == identity(loaded):
        return STORE.move(STORE.key(session, tab), prev_key(session, tab))
    STORE.drop(prev_key(session, tab))
    return None


def forget(tab: str, old: str | None, request: gr.Request = None) -> None:
    """A new file is being chosen in place of the file whose token (:func:`file_token`) the page
    showed, ``old``: no result of it may show, and its previous result goes (unless the notice
    came after the new file was loaded)."""
    session = _session(request)
    CURRENT.let_go(session, tab, old)
    prev = STORE.get(prev_key(session, tab)) if session is not None else None
    if prev is not None and old and prev.get("ident") == old:
        STORE.drop(prev_key(session, tab))


def file_token(loaded) -> str:
    """The token of a loaded file the page keeps (hidden) and sends back with :func:`forget`
    (empty for no file)."""
    return identity(loaded) or ""


def loaded_now(tab: str, loaded, request: gr.Request = None) -> None:
    """A file was loaded into ``tab``: results of runs on it may show."""
    CURRENT.set(_session(request), tab, loaded)


def _stale(tab: str, loaded, request, key, n: int):
    """The run's file is no longer loaded: drop the result, say so (on screen and in the log),
    change no output."""
    session = _session(request)
    log.warning("session %s, %s: the result for %s (file %s) was dropped: the tab's file is now %s",
                session, tab, loaded.name, identity(loaded), CURRENT.now(session, tab) or "none (being chosen)")
    STORE.drop(key)
    gr.Warning(f"The result for {loaded.name} was not shown: another file was chosen while it ran.")
    return tuple(gr.skip() for _ in range(n))


def _kept(session, tab: str, key) -> dict:
    """What the run just kept, or ``{}`` (logged, and said) when memory was needed for others at
    once: the result still shows, redrawing it needs a new run."""
    kept = STORE.get(key)
    if kept is None:
        log.warning("session %s, %s: the result was freed right after the run (memory cap)", session, tab)
        gr.Warning("The server is short of memory: this result shows, but redrawing it needs a new run.")
        return {}
    return kept


def _compare(session, tab: str, opacity) -> tuple:
    """The previous result's box: visibility, picture and numbers (empty without one)."""
    prev = STORE.get(prev_key(session, tab)) if session is not None else None
    if not prev:
        return gr.update(visible=False), None, ""
    view = au.segmentation_view if tab == "seg" else au.count_view
    res = prev["result"]
    n = res.n_objects if tab == "seg" else res.count
    boxes = prev.get("boxes")
    how = "automatic" if boxes is None or not len(boxes) else f"{len(boxes)} box{'es' if len(boxes) > 1 else ''}"
    words = display.result_html(n, f"objects, previous run ({how})", res.warnings)
    return gr.update(visible=True), view(res, float(opacity), boxes, prev["display"]), words


def image_run(tab: str, loaded, ann, opacity, show_map, pixel, request: gr.Request = None,
              progress=gr.Progress()):
    """Run segmentation (``tab="seg"``) or counting on the loaded file; the handler's outputs
    followed by :data:`N_IMAGE_EXTRAS` more (see the module docstring)."""
    need_file(loaded)
    session = _session(request)
    pix = tables.pixel_choice(loaded, pixel)
    keep_previous(session, tab, loaded)
    fn = run_segment if tab == "seg" else run_count
    out = fn(loaded, ann, opacity, show_map, request=request, progress=progress, pixel=pix)
    key, files = out[0], list(out[3])
    if not CURRENT.is_current(session, tab, loaded):
        return _stale(tab, loaded, request, key, len(out) + N_IMAGE_EXTRAS)
    kept = _kept(session, tab, key)
    if kept:
        kept["ident"] = identity(loaded)
    table = tables.object_table(files, tab, loaded.name)
    summary = tables.summary(table) if tab == "seg" else None
    hist = next((f for f in files if f.endswith("_sizes.png")), None)  # written with the other files
    note = kept["result"].pixel_size_note() if "result" in kept else ""
    extras = (panels.shown(table), panels.shown(summary), panels.shown(hist), note,
              *_compare(session, tab, opacity))
    return (*out[:3], files, *out[4:], *extras)


def track_run(loaded, ann, show_map, pixel, request: gr.Request = None, progress=gr.Progress()):
    """Run tracking; the handler's outputs followed by the tracks table, the per-frame plot and
    the pixel-size line."""
    need_file(loaded)
    session = _session(request)
    pix = tables.pixel_choice(loaded, pixel)
    out = run_track(loaded, ann, show_map, request=request, progress=progress, pixel=pix)
    key, files = out[0], list(out[4])
    if not CURRENT.is_current(session, "track", loaded):
        return _stale("track", loaded, request, key, len(out) + N_TRACK_EXTRAS)
    table = tables.object_table(files, "track", loaded.name)
    plot = next((f for f in files if f.endswith("_per_frame.png")), None)
    note = _kept(session, "track", key).get("pixel_note", "")
    return (*out, panels.shown(table), panels.shown(plot), note)
