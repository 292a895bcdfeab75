"""A minimal keep-alive HTTP/1.1 client on asyncio streams.

Why not httpx: the generator shares the CPU with the server it measures, so every
microsecond it spends per request is taken from the server or caps the rate it
can report. One connection per closed-loop client, pre-encoded bodies, and a
hand-rolled response parser (status line, Content-Length or chunked) cost a
fraction of a general-purpose client. It speaks only what the load test needs.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from shoal.errors import UsageError


@dataclass(frozen=True)
class Endpoint:
    """Where to connect (``connect_host``, maybe a cached IP) and what Host header to send."""

    host: str
    port: int
    connect_host: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def parse_base_url(url: str) -> Endpoint:
    """``http://host:port`` -> Endpoint; https and paths are refused with one clear line."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise UsageError(f"target {url!r}: only http:// is supported (terminate TLS in front of the server)")
    if not parts.hostname:
        raise UsageError(f"target {url!r} names no host: use e.g. http://127.0.0.1:8080")
    try:
        port = parts.port or 80
    except ValueError:
        raise UsageError(f"target {url!r} has an invalid port") from None
    return Endpoint(parts.hostname, port, parts.hostname)


def resolve_once(endpoint: Endpoint) -> Endpoint:
    """The ``--dns-cache`` behaviour: look the name up once and connect to that address."""
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve {endpoint.host}: {exc.strerror}") from None
    return Endpoint(endpoint.host, endpoint.port, infos[0][4][0])


class HttpError(Exception):
    """A failed exchange; ``kind`` is the error bucket the report counts it under."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind


@dataclass
class Response:
    status: int
    body: bytes


class _Stale(Exception):
    """A reused keep-alive connection the server had already closed: nothing was answered."""


class Connection:
    """One persistent connection; reconnects lazily after the server closes it.

    Servers close idle keep-alive connections (uvicorn after 5 s). A connection idle
    longer than ``max_idle_s`` is replaced before use, and a request that finds a
    reused connection closed before any response byte is sent again once on a fresh
    one, as HTTP clients do; a fresh connection's failure is always an error.
    """

    def __init__(self, endpoint: Endpoint, timeout_s: float, max_idle_s: float = 4.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.max_idle_s = max_idle_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_used = 0.0
        self._host_line = f"Host: {endpoint.host}:{endpoint.port}\r\n".encode()

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_connection(
                self.endpoint.connect_host, self.endpoint.port, limit=1 << 20)
        except OSError as exc:
            raise HttpError("connection", f"cannot connect to {self.endpoint.url}: {exc.strerror or exc}") from None
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def request(self, method: str, path: str, body: bytes | None = None,
                      content_type: bytes = b"application/json") -> Response:
        """Send one request and read its response, within ``timeout_s``."""
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    return await self._exchange(method, path, body, content_type)
                except _Stale:
                    self.close()
                    return await self._exchange(method, path, body, content_type)
        except _Stale:
            self.close()
            raise HttpError("connection", "the server closed the connection before answering") from None
        except TimeoutError:
            self.close()
            raise HttpError("timeout", f"no response within {self.timeout_s:g}s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise HttpError("connection", f"{type(exc).__name__}: {exc}") from None

    async def _exchange(self, method: str, path: str, body: bytes | None, content_type: bytes) -> Response:
        loop_time = asyncio.get_running_loop().time()
        if self._writer is not None and loop_time - self._last_used > self.max_idle_s:
            self.close()  # the server may be about to close it: do not race its keep-alive timeout
        reused = self._writer is not None
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._host_line
        if body is not None:
            head += (b"Content-Type: " + content_type + b"\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n")
            self._writer.write(head + body)
        else:
            self._writer.write(head + b"\r\n")
        reader = self._reader
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            nothing = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
            if reused and nothing:
                raise _Stale() from None
            raise
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = -1
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            data = await self._read_chunked(reader)
        elif length >= 0:
            data = await reader.readexactly(length)
        else:
            data = await reader.read()
            close = True
        if close:
            self.close()
        else:
            self._last_used = asyncio.get_running_loop().time()
        return Response(status, data)

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
