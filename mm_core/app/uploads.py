"""Uploads refused on their declared size, before their body is read.

Gradio's ``max_file_size`` counts the bytes of an upload as they arrive, so a 300 MB
upload is refused only after about 200 MB were read and written. :class:`RefuseLargeUploads`
is a plain ASGI middleware that answers ``413`` to an upload request whose
``Content-Length`` is over the limit (plus the multipart envelope), without reading it;
an upload without ``Content-Length`` (chunked) is left to Gradio's own count.
"""

from __future__ import annotations

import json

#: Bytes a multipart envelope (boundaries, part headers) may add to the file itself.
ENVELOPE = 64 * 1024


class RefuseLargeUploads:
    """ASGI middleware: ``POST .../upload`` with a ``Content-Length`` over ``max_bytes`` gets 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path", "").endswith("/upload"):
            declared = dict(scope.get("headers", [])).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_bytes + ENVELOPE:
                body = json.dumps({"detail": f"The file is {int(declared) / 2**20:,.0f} MB, more than the limit of "
                                             f"{self.max_bytes / 2**20:,.0f} MB (MM_APP_MAX_FILE_SIZE)"}).encode()
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def middleware(max_file_size: str | int) -> list:
    """The middleware for ``launch(app_kwargs={"middleware": ...})`` (``max_file_size`` as Gradio's)."""
    from gradio.utils import _parse_file_size
    from starlette.middleware import Middleware

    return [Middleware(RefuseLargeUploads, max_bytes=_parse_file_size(max_file_size))]
