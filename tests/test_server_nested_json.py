"""Deeply nested JSON is malformed input: 400 on every route that parses JSON, never a 500 (issue 13, item 2).

Python's json parser recurses once per nesting level, so ``[`` x 100,000 raised RecursionError,
which is not a JSONDecodeError and reached the catch-all handler as a 500.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import pytest

from shoal.jobs.execute import parse_payload
from tests.jobs_support import async_models, env_for  # noqa: F401
from tests.server_fixtures import ServerProcess

DEPTHS = (100_000, 5_000)  # far past and just past the interpreter's recursion limit (1,000)


def nested(depth: int, inside: bytes = b"") -> bytes:
    return b"[" * depth + inside + b"]" * depth


def nested_field(field: str, depth: int) -> bytes:
    return b'{"' + field.encode() + b'": ' + nested(depth) + b"}"


@pytest.fixture(scope="module")
def server(async_models: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:  # noqa: F811
    """One server with the asynchronous routes on (SQLite queue), so every JSON route is there to try."""
    tmp = tmp_path_factory.mktemp("nested")
    env = env_for(tmp, f"sqlite:///{tmp / 'jobs.sqlite'}", SHOAL_TOKEN="t0ken")
    proc = ServerProcess(["--store", async_models, "--models", "tiny-a"], env).start()
    yield proc
    proc.stop()


TOKEN = {"Authorization": "Bearer t0ken"}


def routes() -> list[tuple[str, dict[str, str]]]:
    json_type = {"Content-Type": "application/json"}
    return [
        ("/predictions/tiny-a", json_type),
        ("/v2/models/tiny-a/infer", json_type),
        ("/invocations", {**json_type, "X-Amzn-SageMaker-Target-Model": "tiny-a"}),
        ("/async/predictions/tiny-a", json_type),
        ("/predictions/tiny-a", {"Content-Type": "application/x-www-form-urlencoded"}),  # curl -d: read as JSON
        ("/v2/repository/index", {**json_type, **TOKEN}),  # management (Triton's repository extension)
        ("/v2/repository/models/tiny-a/load", {**json_type, **TOKEN}),
        ("/v2/repository/models/tiny-a/unload", {**json_type, **TOKEN}),
    ]


def assert_400(resp: httpx.Response, where: str) -> None:
    assert resp.status_code == 400, (where, resp.status_code, resp.text[:300])
    body = resp.json()
    assert set(body) == {"error", "code"} and "JSON" in body["error"], (where, body)


def test_deep_nesting_is_a_400_on_every_json_route(server: ServerProcess) -> None:
    with server.client() as c:
        for path, headers in routes():
            for depth in DEPTHS:
                assert_400(c.post(path, content=nested(depth), headers=headers), f"{path} top level {depth}")
                for field in ("text", "inputs"):
                    assert_400(c.post(path, content=nested_field(field, depth), headers=headers),
                               f"{path} {field} {depth}")
        says = c.post("/predictions/tiny-a", content=nested(100_000), headers={"Content-Type": "application/json"})
        assert "nested deeper than this server parses" in says.json()["error"], says.text


def test_nesting_the_parser_accepts_is_refused_by_the_fields_not_a_500(server: ServerProcess) -> None:
    """Depths json.loads can take (a few hundred) reach validation: 4xx naming what is wrong, never a 500."""
    with server.client() as c:
        for path, headers in routes():
            for body in (nested(900), nested_field("text", 900), nested_field("inputs", 900),
                         b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ' + nested(900)
                         + b"}]}"):
                r = c.post(path, content=body, headers=headers)
                assert 400 <= r.status_code < 500, (path, body[:40], r.status_code, r.text[:300])
        # shoal's own management routes take no body: a nested one is ignored, and the token still guards them
        r = c.post("/models/tiny-a/load", content=nested(100_000), headers=TOKEN)
        assert r.status_code == 200, r.text[:300]
        assert c.get("/ping").status_code == 200
        assert c.post("/predictions/tiny-a", json={"text": "still serving"}).status_code == 200
        metrics = c.get("/metrics").text
    assert 'status="500"' not in metrics


def test_worker_side_parse_refuses_deep_nesting_with_a_reason(tmp_path: Path) -> None:
    """A payload queued by reference is parsed by the worker: a deep one fails its job with a reason."""
    with pytest.raises(ValueError, match="nested"):
        parse_payload(nested(100_000))
