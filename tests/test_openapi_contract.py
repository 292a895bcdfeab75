"""The OpenAPI document against the server that serves it (a real ``shoal serve``): the promises it makes
that schemathesis cannot see on its own, checked one by one."""

from __future__ import annotations

import re

import httpx
import pytest

from shoal.ids import MODEL_ID_PATTERN, is_valid_model_id
from shoal.server.openapi import OPERATION_ERRORS
from tests.server_fixtures import ServerProcess, server, store_uri, tiny_store  # noqa: F401


@pytest.fixture(scope="module")
def spec(server: ServerProcess) -> dict:  # noqa: F811
    with server.client() as c:
        return c.get("/openapi.json").json()


def operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(method, path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def test_every_operation_documents_its_statuses_and_the_error_body(spec: dict) -> None:
    assert {(m, p) for m, p, _ in operations(spec)} == set(OPERATION_ERRORS)
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "code"]
    for method, path, op in operations(spec):
        documented = {int(s) for s in op["responses"] if s[0] in "45"}
        assert documented == set(OPERATION_ERRORS[(method, path)]) - {401}, (method, path)  # no token here
    infer = spec["paths"]["/v2/models/{model_id}/infer"]["post"]
    assert {"400", "404", "413", "422", "429", "503", "504"} <= set(infer["responses"])
    assert infer["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_model_id_pattern_is_the_servers_rule(spec: dict) -> None:
    params = [p for _, _, op in operations(spec) for p in op.get("parameters", []) if p["name"] == "model_id"]
    assert params and all(p["schema"]["pattern"] == MODEL_ID_PATTERN for p in params)
    ecma = re.compile(MODEL_ID_PATTERN)  # fullmatch: what ECMA-262 "$" means without a multiline flag
    for text in ("tiny-cls", "a.b_c-1", "x" * 128, "x" * 129, "-a", "a..b", "a/b", ".hidden", "", "a\n"):
        assert bool(ecma.fullmatch(text)) == is_valid_model_id(text), text


def test_content_types_and_the_metrics_text(server: ServerProcess, spec: dict) -> None:  # noqa: F811
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    with server.client() as c:
        assert c.get("/metrics").headers["content-type"].startswith("text/plain")


def test_unload_is_named_for_what_it_does(server: ServerProcess, spec: dict) -> None:  # noqa: F811
    unload = spec["paths"]["/models/{model_id}/unload"]["post"]
    alias = spec["paths"]["/models/{model_id}"]["delete"]
    assert unload["operationId"] == "unload_model" and "does not delete" in unload["description"]
    assert alias["deprecated"] is True and "does not delete" in alias["summary"]
    with server.client() as c:
        c.post("/models/tiny-cls/load")
        for how in (lambda: c.post("/models/tiny-cls/unload"), lambda: c.delete("/models/tiny-cls")):
            resp = how()
            assert resp.status_code == 200 and resp.json()["state"] == "unloaded"
            assert c.get("/models/tiny-cls").json()["state"] == "unloaded"  # still listed: unloaded, not deleted
            c.post("/models/tiny-cls/load")


@pytest.mark.parametrize("path, method, allowed", [
    ("/predictions/tiny-cls", "PUT", "GET, POST"),  # two routes (a hot path and the documented one)
    ("/models/tiny-cls", "PATCH", "DELETE, GET"),
    ("/v2/repository/index", "DELETE", "GET, POST"),
    ("/v2/models/tiny-cls/infer", "GET", "POST"),
])
def test_405_names_every_method_of_the_path(server: ServerProcess, path: str, method: str,  # noqa: F811
                                            allowed: str) -> None:
    resp = httpx.request(method, server.url + path, timeout=10)
    assert resp.status_code == 405 and resp.headers["allow"] == allowed
    assert resp.json()["code"] == "http_error"
