"""Keep the page offline: no request leaves the machine when it loads.

Gradio's page template (``gradio/templates/frontend/index.html``, gradio 5.x) loads the
iframeResizer script from cdnjs.cloudflare.com (used only when the app is embedded in
an iframe) and preconnects to Google Fonts. :class:`StripExternalAssets` is a plain
ASGI middleware that removes ``<script src=...>`` and ``<link href=...>`` tags pointing
to another host from the HTML pages the app serves; nothing else is touched. The
app installs it with ``launch(app_kwargs={"middleware": [...]})`` (see
:func:`middleware`); the theme's fonts are local ones.
"""

from __future__ import annotations

import re

#: ``<script ... src="http(s)://..."></script>`` and ``<link ... href="http(s)://...">``.
EXTERNAL_TAG = re.compile(
    rb"<script\b[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>|<link\b[^>]*\bhref=\"https?://[^\"]*\"[^>]*/?>",
    re.IGNORECASE | re.DOTALL,
)


def strip_external(html: bytes) -> bytes:
    """``html`` without script and link tags that load from another host."""
    return EXTERNAL_TAG.sub(b"", html)


class StripExternalAssets:
    """ASGI middleware: HTML responses to GET requests lose their external script/link tags."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        state: dict = {"start": None, "chunks": [], "html": False}

        async def wrapped(message):
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                state["html"] = (headers.get(b"content-type", b"").startswith(b"text/html")
                                 and b"content-encoding" not in headers)
                if not state["html"]:
                    await send(message)
                else:
                    state["start"] = message
                return
            if message["type"] != "http.response.body" or not state["html"]:
                await send(message)
                return
            state["chunks"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = strip_external(b"".join(state["chunks"]))
            start = state["start"]
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, wrapped)


def middleware() -> list:
    """The middleware list for ``Blocks.launch(app_kwargs={"middleware": ...})``."""
    from starlette.middleware import Middleware

    return [Middleware(StripExternalAssets)]
