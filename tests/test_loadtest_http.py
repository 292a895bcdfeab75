"""The generator's HTTP client against small real servers on loopback: keep-alive, stale connections, errors."""

from __future__ import annotations

import asyncio

import pytest

from shoal.loadtest.http import Connection, Endpoint, HttpError

BODY = b'{"ok":true}'


async def _serve(handler) -> tuple[asyncio.AbstractServer, Endpoint]:  # noqa: ANN001
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Endpoint("127.0.0.1", port, "127.0.0.1")


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length) if length else b""


def test_keep_alive_reuses_one_connection_and_reads_chunked() -> None:
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        for i in range(3):
            body = await _read_request(reader)
            assert body == b'{"text": "x"}'
            if i == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy" if i == 2 else
                             b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
            await writer.drain()
        writer.close()

    async def main() -> list:
        server, ep = await _serve(handler)
        conn = Connection(ep, timeout_s=5)
        out = [await conn.request("POST", "/p", b'{"text": "x"}') for _ in range(3)]
        conn.close()
        server.close()
        return out

    first, chunked, busy = asyncio.run(main())
    assert (first.status, first.body) == (200, BODY)
    assert (chunked.status, chunked.body) == (200, b'{"a":1}')
    assert (busy.status, busy.body) == (503, b"busy")
    assert len(connections) == 1


def test_a_stale_keep_alive_connection_is_retried_once_on_a_fresh_one() -> None:
    """The server answers one request per connection, then closes without saying so."""
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
        await writer.drain()
        writer.close()

    async def main() -> list[int]:
        server, ep = await _serve(handler)
        conn = Connection(ep, timeout_s=5)
        statuses = []
        for _ in range(3):
            statuses.append((await conn.request("GET", "/ping")).status)
            await asyncio.sleep(0.05)  # let the close arrive
        server.close()
        return statuses

    assert asyncio.run(main()) == [200, 200, 200]
    assert len(connections) == 3


def test_idle_connections_are_replaced_before_the_server_drops_them() -> None:
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                await _read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def main() -> None:
        server, ep = await _serve(handler)
        conn = Connection(ep, timeout_s=5, max_idle_s=0.1)
        await conn.request("GET", "/ping")
        await conn.request("GET", "/ping")  # within max_idle_s: same connection
        await asyncio.sleep(0.2)
        await conn.request("GET", "/ping")  # idle too long: a new connection
        conn.close()
        server.close()

    asyncio.run(main())
    assert len(connections) == 2


@pytest.mark.parametrize("behaviour, kind", [("close", "connection"), ("hang", "timeout")])
def test_failures_on_a_fresh_connection_are_errors_by_kind(behaviour: str, kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        if behaviour == "hang":
            await asyncio.sleep(5)
        writer.close()

    async def main() -> str:
        server, ep = await _serve(handler)
        try:
            await Connection(ep, timeout_s=0.3).request("GET", "/ping")
        except HttpError as exc:
            return exc.kind
        finally:
            server.close()
        return "no error"

    assert asyncio.run(main()) == kind


def test_refused_connection_is_a_connection_error() -> None:
    async def main() -> HttpError:
        with pytest.raises(HttpError) as info:
            await Connection(Endpoint("127.0.0.1", 9, "127.0.0.1"), timeout_s=2).request("GET", "/")
        return info.value

    err = asyncio.run(main())
    assert err.kind == "connection" and "cannot connect to http://127.0.0.1:9" in str(err)
