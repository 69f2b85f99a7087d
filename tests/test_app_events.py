"""The app's events in the orders a busy server may process them (no browser).

When an event fires, the page sends the values of its widgets as they are at that moment,
while a ``gr.State`` is read on the server when the request is processed, and the requests
of one event (a queued load, the unqueued notices) may be processed in any order. A browser
is not needed to play that: :class:`Page` keeps the values a page shows, fires every listener
of an event of the real app (:func:`mm_core.app.ui.build_app`) with them at once, and lets
the test choose the order in which Gradio processes the requests.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
import tifffile
from conftest import blobs_image

gr = pytest.importorskip("gradio")
from gradio.state_holder import SessionState


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The app's Blocks (not launched), with two small example images of its own."""
    root = tmp_path_factory.mktemp("events")
    examples = root / "examples"
    examples.mkdir()
    tifffile.imwrite(examples / "nuclei_fluorescence.tif", blobs_image(0))
    from PIL import Image

    Image.fromarray((blobs_image(1) // 8).astype(np.uint8)).save(examples / "phase_cells.png")
    mp = pytest.MonkeyPatch()
    mp.setenv("MM_ENGINE", "classic")
    mp.setenv("MM_EXAMPLES", str(examples))
    mp.setenv("MM_APP_OUTPUT_ROOT", str(root / "requests"))
    mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio"))
    from mm_core.app import ui
    from mm_core.settings import reload_settings

    reload_settings()
    ui.load_engine()
    yield ui.build_app()
    mp.undo()
    reload_settings()


class Page:
    """One browser tab of the app: what its widgets show, and its server-side session."""

    def __init__(self, demo, session: str):
        self.demo, self.session = demo, session
        self.state = SessionState(demo)
        self.shown: dict[int, object] = {}

    def listeners(self, elem_id: str, event: str) -> dict:
        """``{name: BlockFunction}`` of every listener of ``event`` on the widget ``elem_id``."""
        ids = {i for i, b in self.demo.blocks.items() if getattr(b, "elem_id", None) == elem_id}
        return {fn.name: fn for fn in self.demo.fns.values() if any(t in ids and e == event for t, e in fn.targets)}

    def api(self, api_name: str):
        return next(fn for fn in self.demo.fns.values() if fn.api_name == api_name)

    def fire(self, fn) -> tuple:
        """The request the page sends for ``fn`` now: the values it shows (a state: nothing, the
        server reads it when it processes the request)."""
        return fn, [None if b.stateful else self.shown.get(b._id, getattr(b, "value", None)) for b in fn.inputs]

    def process(self, sent: tuple, index: int | None = None) -> list:
        """The server processes a request sent earlier; the page shows its outputs."""
        fn, inputs = sent
        event = None if index is None else gr.EventData(None, {"index": index})
        out = asyncio.run(self.demo.process_api(fn, inputs, state=self.state, request=gr.Request(
            session_hash=self.session), session_hash=self.session, event_data=event))["data"]
        for block, value in zip(fn.outputs, out):
            if block.stateful:
                continue
            if isinstance(value, dict) and value.get("__type__") == "update":
                if "value" not in value:
                    continue
                value = value["value"]
            self.shown[block._id] = value
        return out

    def pick_example(self, tab: str, index: int, order=("pick", "forget")) -> None:
        """Click example ``index``: every listener is sent at once, processed in ``order``
        (the listeners not named are processed after)."""
        fns = self.listeners(f"{tab}-examples", "select")
        sent = {name: self.fire(fn) for name, fn in fns.items()}
        for name in [*order, *(n for n in sent if n not in order)]:
            self.process(sent[name], index=index)

    def run(self, tab: str) -> str:
        """Press Run (after the check that a file is loaded): the big number's HTML shown after."""
        self.process(self.fire(self.listeners(f"{tab}-run", "click")["need_file"]))
        out = self.process(self.fire(self.api(f"{tab}_run")))
        return out[2] if isinstance(out[2], str) else ""


@pytest.mark.parametrize("order", [("pick", "forget"), ("forget", "pick")])
def test_a_new_file_shows_its_result_whatever_order_the_server_takes_the_events_in(demo, order):
    """The browser tests' "result not shown within 120 s": the notice that a new file is chosen
    was processed after the new file was read, let go of the new file itself, and its result was
    dropped as stale with nothing on screen."""
    page = Page(demo, f"events-{'-'.join(order)}")
    page.pick_example("seg", 0)
    assert "mm-big-num" in page.run("seg")
    page.pick_example("seg", 1, order)  # the next file; its load and the notice in either order
    assert "mm-big-num" in page.run("seg"), f"the result of the current file was dropped ({order})"


def test_a_stale_result_is_dropped_loudly(demo, caplog):
    """A run whose file was replaced while it ran is dropped, with a line in the log and a message
    on screen, never silently."""
    page = Page(demo, "events-stale")
    page.pick_example("count", 0)
    run = page.fire(page.api("count_run"))
    page.process(page.fire(page.listeners("count-examples", "select")["forget"]))  # a new file chosen
    with caplog.at_level(logging.WARNING, logger="mm_core.app"), pytest.warns(UserWarning, match="not shown"):
        out = page.process(run)  # outside a queue, Gradio gives the on-screen message as a warning
    assert not (isinstance(out[2], str) and "mm-big-num" in out[2])  # not shown under the new file
    assert any("was dropped" in r.getMessage() for r in caplog.records)


def test_a_zoom_that_ends_after_a_new_file_was_chosen_changes_nothing(demo):
    """A zoomed view of the old file, ending after a new file was chosen, must not put the old
    file back in place of the new one (the new one's results would then be dropped)."""
    page = Page(demo, "events-zoom")
    page.pick_example("seg", 0)
    zoom = page.fire(page.listeners("seg-zoom-factor", "input")["view"])
    page.process(page.fire(page.listeners("seg-examples", "select")["forget"]))
    out = page.process(zoom)
    assert all(isinstance(v, dict) and "value" not in v for v in out[1:]), out  # nothing changed
