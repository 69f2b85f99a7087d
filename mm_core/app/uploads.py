"""Uploads refused on their declared size or file name, before Gradio stores their body.

Gradio's ``max_file_size`` counts the bytes of an upload as they arrive, so a 300 MB
upload is refused only after about 200 MB were read and written. :class:`RefuseLargeUploads`
is a plain ASGI middleware that answers ``413`` to an upload request whose
``Content-Length`` is over the limit (plus the multipart envelope), without reading it;
an upload without ``Content-Length`` (chunked) is left to Gradio's own count.

Gradio writes each uploaded file into a temporary file of the system's temp folder
(``delete=False``) and only afterwards checks its name; a file named ``..`` is then refused
with the temporary file left behind for ever. :class:`RefuseUnsafeNames` reads the part
headers as the body passes through and ends the upload at the first file name Gradio could
not store, before that part is read, by raising the multipart error on which Gradio removes
the temporary files of the request and answers ``400`` with the message.
"""

from __future__ import annotations

import json
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.formparsers import MultiPartException

#: Bytes a multipart envelope (boundaries, part headers) may add to the file itself.
ENVELOPE = 64 * 1024


class RefuseLargeUploads:
    """ASGI middleware: ``POST .../upload`` with a ``Content-Length`` over ``max_bytes`` gets 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if is_upload(scope):
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


def is_upload(scope) -> bool:
    """Whether an ASGI ``scope`` is a ``POST`` to an upload route."""
    return scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path", "").endswith("/upload")


def stored_name(filename: str) -> str:
    """The name Gradio gives an uploaded file called ``filename`` (base name, odd characters out)."""
    from gradio_client.utils import strip_invalid_filename_characters

    return strip_invalid_filename_characters(Path(filename).name)


class _PartNames:
    """Reads the file names of a multipart body fed to it in pieces; ``bad`` is the first unsafe one."""

    def __init__(self, boundary: bytes, charset: str):
        self.charset, self.bad = charset, None
        self.field, self.value, self.disposition = b"", b"", b""
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._field, "on_header_value": self._value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished})

    def feed(self, chunk: bytes) -> str | None:
        """Parse one more piece of the body; return the unsafe file name once one was seen."""
        if self.parser is not None and self.bad is None:
            try:
                self.parser.write(chunk)
            except Exception:  # noqa: BLE001 - a malformed body is left to Gradio's parser and its message
                self.parser = None
        return self.bad

    def _part_begin(self) -> None:
        self.disposition = b""

    def _field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def _header_end(self) -> None:
        if self.field.lower() == b"content-disposition":
            self.disposition = self.value
        self.field, self.value = b"", b""

    def _headers_finished(self) -> None:
        raw = parse_options_header(self.disposition)[1].get(b"filename")
        if raw:  # no name at all: Gradio makes one up
            try:
                name = raw.decode(self.charset)
            except (UnicodeDecodeError, LookupError):
                name = raw.decode("latin-1")
            if stored_name(name) in ("", ".", ".."):
                self.bad = name


class RefuseUnsafeNames:
    """ASGI middleware: an upload with a file named ``..``, ``.`` or nothing usable gets one 400 and
    leaves no file behind."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        kind, params = b"", {}
        if is_upload(scope):
            kind, params = parse_options_header(dict(scope.get("headers", [])).get(b"content-type", b""))
        if kind != b"multipart/form-data" or b"boundary" not in params:
            await self.app(scope, receive, send)
            return
        names = _PartNames(params[b"boundary"], params.get(b"charset", b"utf-8").decode("latin-1"))

        async def checked_receive():
            message = await receive()
            if message["type"] == "http.request" and names.feed(message.get("body", b"")) is not None:
                # Gradio's parser deletes the temporary files it made on this error and answers 400
                raise MultiPartException(f"The file name {names.bad!r} names no file; give the file a name "
                                         "(letters, digits, '.', '_' or '-') and upload it again.")
            return message

        await self.app(scope, checked_receive, send)


def middleware(max_file_size: str | int) -> list:
    """The middleware for ``launch(app_kwargs={"middleware": ...})`` (``max_file_size`` as Gradio's)."""
    from gradio.utils import _parse_file_size
    from starlette.middleware import Middleware

    return [Middleware(RefuseLargeUploads, max_bytes=_parse_file_size(max_file_size)), Middleware(RefuseUnsafeNames)]
