"""Every error code of the server, each a clear JSON body, and the process keeps serving after them."""

from __future__ import annotations

import asyncio
from typing import Iterator

import httpx
import pytest

from tests.server_fixtures import ServerProcess, store_uri, tiny_store  # noqa: F401

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def strict(store_uri: str) -> Iterator[ServerProcess]:
    env = {"SHOAL_MAX_QUEUE_PER_MODEL": "8", "SHOAL_MAX_BODY_BYTES": "4096", "SHOAL_TOKEN": TOKEN,
           "SHOAL_PER_MODEL_METRICS_LIMIT": "3"}  # the store has 5 models: per-model labels switch off
    proc = ServerProcess(["--store", store_uri, "--executors", "1"], env=env).start()
    yield proc
    proc.stop()


def error_of(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "code"} and body["error"]
    return str(body["error"])


def test_400_malformed_body_and_bad_ids(strict: ServerProcess) -> None:
    with strict.client() as c:
        assert "not valid JSON" in error_of(c.post("/predictions/tiny-cls", content=b'{"text": '), 400)
        assert "empty" in error_of(c.post("/predictions/tiny-cls", content=b""), 400)
        assert "invalid model id" in error_of(c.post("/predictions/%2E%2E", json={"text": "x"}), 400)
        assert "invalid model id" in error_of(c.post("/predictions/bad%20id", json={"text": "x"}), 400)
        bad_timeout = c.post("/predictions/tiny-cls", json={"text": "x"}, headers={"X-Request-Timeout-Ms": "soon"})
        assert "X-Request-Timeout-Ms" in error_of(bad_timeout, 400)


def test_path_escape_is_never_served(strict: ServerProcess) -> None:
    with strict.client() as c:
        for path in ("/predictions/..%2F..%2Fetc%2Fpasswd", "/v2/models/..%2Fbroken/ready", "/models/%2E%2E%2F"):
            r = c.post(path, json={"text": "x"}) if path.startswith("/pred") else c.get(
                path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code in (400, 404), (path, r.status_code)
            assert "root:" not in r.text


def test_404_names_how_to_list(strict: ServerProcess) -> None:
    with strict.client() as c:
        assert "GET /models" in error_of(c.post("/predictions/no-such-model", json={"text": "x"}), 404)
        assert "GET /models" in error_of(c.get("/v2/models/no-such-model"), 404)
        error_of(c.get("/no/such/route"), 404)


def test_413_declared_and_streamed(strict: ServerProcess) -> None:
    big = b'{"text": "' + b"a" * 5000 + b'"}'
    with strict.client() as c:
        assert "limit of 4096" in error_of(c.post("/predictions/tiny-cls", content=big), 413)

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 1000):
                yield big[i:i + 1000]

        assert "limit" in error_of(c.post("/predictions/tiny-cls", content=chunks()), 413)


def test_422_names_the_field(strict: ServerProcess) -> None:
    with strict.client() as c:
        assert error_of(c.post("/predictions/tiny-cls", json={"txt": "x"}), 422).startswith("text:")
        assert error_of(c.post("/predictions/tiny-cls", json={"text": 5}), 422).startswith("text:")
        assert error_of(c.post("/predictions/tiny-cls", json={"inputs": []}), 422).startswith("inputs:")
        assert error_of(c.post("/predictions/tiny-cls", json=["x"]), 422).startswith("body must be")
        assert "context" in error_of(c.post("/predictions/tiny-qa", json={"question": "q"}), 422)
        assert "seq_0" in error_of(c.get("/predictions/tiny-cls"), 422)
        v2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
        assert "BYTES" in error_of(c.post("/v2/models/tiny-cls/infer", json=v2), 422)
        too_long = {"question": "why " * 200, "context": "because"}
        assert "tokenized" in error_of(c.post("/predictions/tiny-qa", json=too_long), 422)


def test_429_with_retry_after(strict: ServerProcess) -> None:
    with strict.client() as c:
        r = c.post("/predictions/tiny-cls", json={"inputs": ["x"] * 9})
        assert "limit 8" in error_of(r, 429)
        assert r.headers["Retry-After"] == "1"


def test_503_failed_model_with_reason_while_others_serve(strict: ServerProcess) -> None:
    with strict.client() as c:
        reason = error_of(c.post("/predictions/broken", json={"text": "x"}), 503)
        assert "failed to load" in reason and "sha256" in reason
        assert c.post("/predictions/tiny-cls", json={"text": "x"}).status_code == 200
        ready = c.get("/v2/models/broken/ready")
        assert ready.status_code == 400 and "sha256" in ready.json()["reason"]
        retry = c.post("/models/broken/load", headers={"Authorization": f"Bearer {TOKEN}"})
        assert "sha256" in error_of(retry, 503)


def test_504_deadline_while_queued(strict: ServerProcess) -> None:
    """A 1 ms deadline behind older, bigger requests on the one executor: 504; the backlog still answers 200."""
    long_texts = ["a long sentence with many words " * 8] * 8
    backlog_bodies = {"tiny-emb": {"inputs": long_texts}, "tiny-cls2": {"inputs": long_texts},
                      "tiny-qa": {"inputs": [{"question": "what words?", "context": t} for t in long_texts]}}

    async def run() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=strict.url, timeout=60) as client:
            backlog = [asyncio.ensure_future(client.post(f"/predictions/{m}", json=body))
                       for m in backlog_bodies for body in (backlog_bodies[m],)]
            await asyncio.sleep(0.005)
            small = await client.post("/predictions/tiny-cls", json={"text": "x"}, headers={"X-Request-Timeout-Ms": "1"})
            return list(await asyncio.gather(*backlog)), small

    big, small = asyncio.run(run())
    assert [r.status_code for r in big] == [200, 200, 200], [r.text for r in big]
    assert "deadline" in error_of(small, 504)


def test_401_management_needs_the_token(strict: ServerProcess) -> None:
    with strict.client() as c:
        assert "Bearer" in error_of(c.get("/models"), 401)
        assert error_of(c.get("/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert error_of(c.delete("/models/tiny-cls"), 401)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/models", headers=auth).status_code == 200
        assert c.post("/predictions/tiny-cls", json={"text": "public"}).status_code == 200


def test_still_serving_and_no_500(strict: ServerProcess) -> None:
    with strict.client() as c:
        assert c.get("/ping").status_code == 200
        assert c.post("/predictions/tiny-emb", json={"text": "still here"}).status_code == 200
        metrics = c.get("/metrics").text
    assert 'status="500"' not in metrics
    assert 'model="_all_"' in metrics and 'model="tiny-cls"' not in metrics  # bounded cardinality
    for code in ("400", "404", "422", "429", "503", "504"):
        assert f'status="{code}"' in metrics, code
