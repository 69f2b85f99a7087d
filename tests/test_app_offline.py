"""The page makes no request to another host: Gradio's template loses its CDN tags."""

from __future__ import annotations

from pathlib import Path

import gradio

from mm_core.app.offline import strip_external


def test_gradio_template_loses_its_cdn_script_and_font_preconnects():
    html = (Path(gradio.__file__).parent / "templates" / "frontend" / "index.html").read_bytes()
    assert b"cdnjs.cloudflare.com" in html  # what gradio 5 ships (the test fails if that changes)
    out = strip_external(html)
    assert b"cdnjs.cloudflare.com" not in out and b"fonts.googleapis.com" not in out
    assert b"window.__gradio_mode__" in out and out.count(b"<script") == html.count(b"<script") - 1


def test_local_tags_are_kept():
    html = b'<script src="./assets/index.js"></script><link rel="stylesheet" href="/theme.css">'
    assert strip_external(html) == html
