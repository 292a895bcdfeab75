"""A cap on the request line and headers, which uvicorn's httptools protocol does not bound.

Bodies are capped by the routes (413); without this, one client could send a 1 GB
header and the server would buffer all of it. We count the bytes received while a
request's head is still incomplete and answer 431 past ``MAX_HEAD_BYTES``.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; nginx's default large buffers are 4 x 8 KiB


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a limit on the size of a request's head (431 and close past it)."""

    _in_head = True
    _head_bytes = 0

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes = True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                body = f"request line and headers exceed {MAX_HEAD_BYTES} bytes".encode()
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; "
                                     b"charset=utf-8\r\ncontent-length: " + str(len(body)).encode() +
                                     b"\r\nconnection: close\r\n\r\n" + body)
                self.transport.close()
