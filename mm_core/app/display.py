"""What the app says on screen, in plain words (no Gradio here).

The result panel (number, caption, the result's self-check warnings), colour-scale
legends for the density and match maps, which analysis runs in a biologist's terms,
refusal messages that name the app's own settings, and the page's own CSS and script
(box drawing).
"""

from __future__ import annotations

import html
import re

import numpy as np

from mm_core import viz

#: Which analysis runs, in a biologist's terms, by engine name.
ENGINE_WORDS = {
    "classic": "classical image analysis, no download",
    "ldm": "Stable Diffusion attention matching, GPU",
}
#: Library settings the app overrides with its own (the refusal names the one that applies).
APP_SETTINGS = {"(MM_MAX_PIXELS)": "(MM_APP_MAX_PIXELS)", "(MM_MAX_FRAMES)": "(MM_APP_MAX_FRAMES)",
                "(MM_MAX_TOTAL_PIXELS)": "(MM_APP_MAX_TOTAL_PIXELS)"}


def engine_words(engine_name: str | None) -> str:
    """One line saying what runs, e.g. ``Analysis: classical image analysis, no download``."""
    if not engine_name:
        return "**Analysis:** not available (see details below)"
    return f"**Analysis:** {ENGINE_WORDS.get(engine_name, engine_name)}"


def details_markdown(engine_note: str, head_note: str = "", limits: str = "") -> str:
    """The technical detail for the expandable "Details" section."""
    lines = [f"- **Engine:** {engine_note}"]
    if head_note:
        lines.append(f"- **Head (turns match maps into the result):** {head_note}")
    if limits:
        lines.append(f"- **Limits:** {limits}")
    return "\n".join(lines)


def app_message(message: str) -> str:
    """A refusal from :mod:`mm_core.io` with the library's setting names replaced by the app's."""
    for lib, app in APP_SETTINGS.items():
        message = message.replace(lib, app)
    return message


def result_html(value: float, caption: str, warnings: list[str] | None = None,
                extra: list[tuple[int | float, str]] = ()) -> str:
    """The result panel: the number(s) in large type and, under them, the warnings.

    A whole number is written without decimals. Warnings come in an amber box, one
    bullet each, with what to try.
    """
    nums = [(value, caption), *extra]
    big = "".join(
        f"<div class='mm-big'><span class='mm-big-num' data-testid='mm-count'>{_num(v)}</span>"
        f"<span class='mm-big-cap'>{html.escape(c)}</span></div>" for v, c in nums)
    out = f"<div style='display:flex;gap:2.5em;flex-wrap:wrap'>{big}</div>"
    if warnings:
        signs, tries = [], []
        for w in warnings:  # each warning ends with what to try: said once, after the signs
            sign, _, todo = w.partition(" Try: ")
            signs.append(sign)
            if todo and todo not in tries:
                tries.append(todo)
        items = "".join(f"<li>{html.escape(w)}</li>" for w in signs)
        todo = "".join(f"<div class='mm-try'><b>Try:</b> {html.escape(t)}</div>" for t in tries)
        out += ("<div class='mm-warn' data-testid='mm-warnings' role='alert'><b>Check this result:</b>"
                f"<ul>{items}</ul>{todo}</div>")
    else:
        out += "<div class='mm-ok' data-testid='mm-nowarn'>No sign of a failed match.</div>"
    return out


class Estimate:
    """A progress callback ``(fraction, description)`` that adds its own time left to the description.

    Gradio's own estimate is the mean duration of earlier runs (of any image size); this one is
    measured on the run itself: time so far × (1 − fraction) / fraction, once a tenth is done and
    only over counted steps ("tile 3/16", "frame 4/12"), where the fraction is the share of work
    done. The fraction is clipped to [0, 1] and never goes back.
    """

    def __init__(self, progress, clock=None):
        import time

        self.progress, self.clock = progress, clock or time.monotonic
        self.t0, self.done = self.clock(), 0.0

    def __call__(self, frac, desc: str = "") -> None:
        self.done = max(self.done, min(max(float(frac), 0.0), 1.0))
        self.progress(self.done, desc=self.describe(desc))

    def describe(self, desc: str = "") -> str:
        """``desc`` with the time so far and, once a tenth is done, the time left."""
        spent = self.clock() - self.t0
        words = f"{desc} · {spent:.0f} s" if desc else f"{spent:.0f} s"
        if 0.1 <= self.done < 1.0 and re.search(r"\b\d+/\d+\b", desc or ""):
            words += f", about {spent * (1 - self.done) / self.done:.0f} s left"
        return words


def _num(v) -> str:
    if isinstance(v, (int, np.integer)) or float(v).is_integer():
        return f"{int(v):,d}"
    return f"{float(v):,.1f}"


def _gradient() -> str:
    stops = ", ".join(f"rgb({r},{g},{b}) {100 * i / 10:.0f}%"
                      for i, (r, g, b) in enumerate(viz.heat_colors(np.linspace(0, 1, 11))))
    return f"linear-gradient(to right, {stops})"


def legend_html(title: str, low: str, high: str, note: str = "", elem: str = "") -> str:
    """A colour bar (the heat-map colours, low to high) with its two end labels."""
    tid = f" data-testid='{elem}'" if elem else ""
    return (f"<div class='mm-legend'{tid}><div class='mm-legend-title'>{html.escape(title)}</div>"
            f"<div class='mm-legend-bar' style='background:{_gradient()}'></div>"
            f"<div class='mm-legend-ends'><span>{html.escape(low)}</span><span>{html.escape(high)}</span></div>"
            + (f"<div class='mm-legend-note'>{html.escape(note)}</div>" if note else "") + "</div>")


def density_legend(density: np.ndarray) -> str:
    """Legend of the density heat-map: the colour scale in objects per 10×10 pixels."""
    hi = float(np.percentile(np.asarray(density, np.float32), 99.5)) if np.size(density) else 0.0
    return legend_html("Density: objects per 10×10 pixels", "0", f"{100 * hi:.2g} or more",
                       "Dots: the centres counted; a number beside a dot: a clump counted as that many.",
                       elem="density-legend")


def match_legend(conditioning: str = "") -> str:
    """Legend of the match map."""
    note = "What the result is based on: where it is bright, the image matches "
    note += "your box" if "box" in conditioning or "exemplar" in conditioning else "the repeated objects"
    note += "; dark: no match."
    return legend_html("Match map: how well each pixel matches", "no match", "strong match", note,
                       elem="match-legend")


SEG_LEGEND = ("<div class='mm-legend' data-testid='seg-legend'>One colour per object, its outline drawn; "
              "yellow box: your example.</div>")

#: Box drawing made easier than gradio_bbox_annotator 0.1.1 does by itself (it has no option for
#: these): drawing is on when a picture appears and stays on after each box (the annotator switches
#: its pencil off after one box; the page switches it on again unless the user switched it off or
#: a box is selected); a press on a box while drawing selects it; a line beside the picture says
#: whether drawing is on; Delete / Backspace removes the selected box by pressing the annotator's
#: own bin button.
BOX_JS = """<script>
setInterval(() => {
  document.querySelectorAll('[id$="-annotator"]').forEach((ann) => {
    const img = ann.querySelector('.image-frame img');
    const pen = ann.querySelector('button[aria-label="exemplar"]');
    const line = document.getElementById(ann.id.replace('-annotator', '-drawstate'));
    if (!img || !pen || pen.offsetParent === null || !img.complete) {
      if (line && line.dataset.on) { line.dataset.on = ''; line.innerHTML = ''; }
      return;
    }
    if (!pen.dataset.mmWatch) {  // a click by the user on the pencil is the user's choice
      pen.dataset.mmWatch = '1';
      pen.addEventListener('click', (e) => {
        if (e.isTrusted) ann.dataset.mmUserOff = pen.classList.contains('highlight') ? '1' : '';
      }, true);
    }
    if (ann.dataset.mmSrc !== img.src) { ann.dataset.mmSrc = img.src; ann.dataset.mmUserOff = ''; }
    const busy = document.body.dataset.mmDragging === '1';
    const remove = ann.querySelector('button[aria-label="Remove"]');
    const picking = Date.now() - Number(ann.dataset.mmPickT || 0) < 800;  // a press on a box just now
    if ((!remove || remove.disabled) && !picking) ann.dataset.mmPicked = '';
    // a box the user pressed on is selected: drawing waits until it is deleted or let go (the
    // annotator may also select a box just drawn: that one does not hold drawing back)
    const selected = ann.dataset.mmPicked === '1';
    if (!pen.classList.contains('highlight') && !ann.dataset.mmUserOff && !busy && !selected) pen.click();
    const on = pen.classList.contains('highlight');
    const state = on ? 'on' : (selected ? 'selected' : 'off');
    if (line && line.dataset.on !== state) {
      line.dataset.on = state;
      line.innerHTML = on
        ? "<span class='mm-draw-on'>Drawing boxes: ON \u2014 drag on the picture (again for another box)</span>"
        : (selected ? "<span class='mm-draw-off'>A box is selected: Delete removes it; drawing resumes after</span>"
          : "<span class='mm-draw-off'>Drawing boxes: OFF \u2014 click the pencil button to draw</span>");
    }
  });
}, 300);
document.addEventListener('pointerdown', () => { document.body.dataset.mmDragging = '1'; }, true);
document.addEventListener('pointerdown', (e) => {  // with drawing on, a press on a box selects it
  const ann = e.target.closest && e.target.closest('[id$="-annotator"]');
  const pen = ann && ann.querySelector('button[aria-label="exemplar"]');
  if (!pen) return;
  const shown = Array.from(ann.querySelectorAll('.box-preview'));  // the boxes as drawn
  const i = shown.findIndex((c) => {
    const r = c.getBoundingClientRect();
    return e.clientX >= r.left && e.clientX <= r.right && e.clientY >= r.top && e.clientY <= r.bottom;
  });
  if (i < 0) return;
  ann.dataset.mmPicked = '1';  // the user chose this box: its selection holds drawing back
  ann.dataset.mmPickT = String(Date.now());
  // drawing off before the annotator sees the press: its own handlers then select the box
  if (pen.classList.contains('highlight')) pen.click();
}, true);
document.addEventListener('pointerup', () => { document.body.dataset.mmDragging = ''; }, true);
document.addEventListener('keydown', (e) => {
  if (e.key !== 'Delete' && e.key !== 'Backspace') return;
  const t = e.target;
  if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
  document.querySelectorAll('[id$="-annotator"] button[aria-label="Remove"]').forEach((b) => {
    if (!b.disabled && b.offsetParent !== null) { b.click(); e.preventDefault(); }
  });
});
</script>"""

CSS = """
.mm-warn {background:#fff4d6; color:#5c3c00; border:1px solid #e0a800; border-radius:6px;
          padding:.5em .8em; margin:.3em 0}
.mm-warn ul {margin:.2em 0 0 1.1em; padding:0}
.mm-try {margin-top:.3em}
.mm-ok {color:#2e6b2e; margin:.2em 0; font-size:.95em}
[id$="-annotator"] .box-anchor {transform: scale(0.6); opacity: .8}
.mm-legend {font-size:.9em; margin:.2em 0 .6em}
.mm-legend-bar {height:14px; border-radius:3px; border:1px solid #888}
.mm-legend-ends {display:flex; justify-content:space-between}
.mm-legend-title {font-weight:600}
.mm-legend-note {opacity:.8}
[id$="-annotator"] button[aria-label="exemplar"].highlight {background:#15803d !important;
  color:#fff !important; border-radius:6px}
[id$="-annotator"] button[aria-label="exemplar"]:not(.highlight) {background:#e5e7eb !important;
  color:#6b7280 !important; border-radius:6px}
.mm-draw-on {color:#fff; background:#15803d; padding:.15em .6em; border-radius:4px; font-weight:600}
[id$="-examples"] .thumbnail-item {max-width:130px}
.wrap:has(.progress-level) .progress-text {display:none}
.mm-draw-off {color:#374151; background:#e5e7eb; padding:.15em .6em; border-radius:4px; font-weight:600}
"""
