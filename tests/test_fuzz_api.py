"""Schemathesis against the server's own OpenAPI, over a real uvicorn process: every check, no crash.

Every operation of ``/openapi.json`` gets positive (schema-valid) and negative
(schema-violating) cases, and every response goes through all of schemathesis's checks:
status, content type, headers and body conform to the document, negative data is
rejected, positive data accepted, auth enforced (CHECKS_CONFIG says where the document
cannot). Path parameters are drawn from the models really served (good, failed,
crafted) as well as from the schema, so the fuzzer reaches handlers and not only the
404 branch. The only 5xx allowed are the deliberate ones, each with its JSON ``code``:
503 ``unavailable`` (a model that failed to load, the job queue down), 503 ``"ready":
false`` from the readiness probes, and 504 ``deadline_exceeded`` (docs/RELIABILITY.md
lists them). A second test runs the ``schemathesis run --checks all`` command line with
its coverage (undeclared methods, missing headers, boundaries) and stateful phases.

``SHOAL_FUZZ_EXAMPLES`` sets the cases per operation and mode (default 70: about
2,500 cases in all; the long run uses 300).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup

from tests.reliability_support import ReliabilityStore, serve
from tests.server_fixtures import ServerProcess

TOKEN = "fuzz-token-7c2e"
SERVED = ["tiny-a", "tiny-b", "tiny-qa", "det", "broken", "evil-pickle"]
ALLOWED_5XX = {503: {"unavailable", "store_error", "not-ready"}, 504: {"deadline_exceeded"}}
EXAMPLES = int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "300" if os.environ.get("SHOAL_LONG_TESTS") == "1" else "70"))


@pytest.fixture(scope="module")
def server(reliability_store: ReliabilityStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"SHOAL_TOKEN": TOKEN, "SHOAL_MAX_BODY_BYTES": str(256 * 1024), "SHOAL_ASYNC_MAX_PAYLOAD": "256KiB",
           "SHOAL_ASYNC_WORKERS": "true", "SHOAL_REQUEST_TIMEOUT_S": "10"}
    proc = serve(reliability_store.uri, tmp_path_factory.mktemp("fuzz-state"), "--models", ",".join(SERVED),
                 "--executors", "2", "--threads", "1", env=env)
    yield proc
    proc.stop()


def strategies(schema: schemathesis.BaseSchema) -> list[tuple[str, st.SearchStrategy]]:
    """(label, strategy) per operation: schema ids and real ids for {model_id}, both generation modes."""
    out = []
    for result in schema.get_all_operations():
        op = result.ok()
        has_id = "{model_id}" in op.path
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            options = [op.as_strategy(generation_mode=mode)]
            if has_id:
                options += [op.as_strategy(generation_mode=mode, path_parameters={"model_id": m}) for m in SERVED]
            out.append((f"{op.method.upper()} {op.path} [{mode.value}]", st.one_of(options)))
            if op.method.upper() == "POST" and op.path == "/predictions/{model_id}":
                # /invocations' own operation gets random target headers: also send it the native route's
                # bodies with a served model named in the header
                out.append((f"POST /invocations [{mode.value}, native bodies]", st.one_of(options[1:])))
    return out


# Every check schemathesis has runs on every response (conformance of status, content type, headers and
# body to the document, negative data rejected, positive data accepted, auth enforced). Two settings say
# what the document cannot: 5xx are judged by ALLOWED_5XX above (code by code) rather than refused
# wholesale; and where the body's shape depends on the model the path names (text fields sent to a
# detector, a tensor the model has no input for, images for a text model) or on a condition between
# fields (binary data needs Inference-Header-Content-Length; detection options in the query need an
# image body; ttl_s under the server's retention), a schema-valid request may get the 400/422 that names
# the mismatch. GET /v2/models/{id}/ready answers 400 for a known model that is not resident, as Triton.
# The command-line run leaves out deprecated operations: DELETE /models/{id} is an alias kept for old
# clients that unloads and does not delete (documented so); POST /models/{id}/unload is the operation.
CHECKS_CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503", "504"]

[[operations]]
include-path-regex = "^/(predictions|invocations|async/predictions|v2/models/[{]model_id[}]/(infer|ready))"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "422",
                                                     "429", "5xx"]
"""


def test_fuzz_every_operation(server: ServerProcess, tmp_path: Path) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json",
                                           config=SchemathesisConfig.from_str(CHECKS_CONFIG))
    statuses: Counter[int] = Counter()
    per_op: Counter[str] = Counter()
    bad: list[str] = []
    mismatches: Counter[str] = Counter()
    examples: dict[str, str] = {}
    session = requests.Session()
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def check(label: str, case: schemathesis.Case) -> None:
        try:
            if label.startswith("POST /invocations"):
                kwargs = case.as_transport_kwargs(base_url=server.url, headers=auth)
                kwargs["headers"]["X-Amzn-SageMaker-Target-Model"] = case.formatted_path.rsplit("/", 1)[-1]
                kwargs["url"] = f"{server.url}/invocations"
                resp = session.request(**kwargs, timeout=30)
            else:
                resp = case.call(base_url=server.url, session=session, headers=auth, timeout=30)
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader, UnicodeEncodeError, ValueError):
            return  # the client cannot even express the request: nothing reached the server
        statuses[resp.status_code] += 1
        per_op[label] += 1
        try:
            case.validate_response(resp, headers=auth, transport_kwargs={
                "base_url": server.url, "session": session, "headers": auth, "timeout": 30})
        except FailureGroup as group:
            for failure in group.exceptions:
                mismatches[f"{label}: {resp.status_code} {failure.title}"] += 1
                examples.setdefault(f"{label}: {resp.status_code} {failure.title}",
                                    f"{failure.message[:60]!r} <- {case.formatted_path} {case.query} {case.headers} {str(case.body)[:200]} "
                                    f"{resp.content[:200]!r}")
        if resp.status_code >= 500:
            code = _code(resp.content)
            if code not in ALLOWED_5XX.get(resp.status_code, set()):
                bad.append(f"{label}: {resp.status_code} {resp.content[:200]!r} <- {case.formatted_path} "
                           f"{str(case.body)[:200]}")

    for label, strategy in strategies(schema):
        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case: schemathesis.Case) -> None:
            check(label, case)

        try:
            run()
        except Unsatisfiable:
            pass  # no negative cases exist (an operation without parameters or body)
        assert server.proc is not None and server.proc.poll() is None, f"server died during {label}"
    session.close()
    total = sum(statuses.values())
    print(f"fuzz: {total} cases over {len(per_op)} operation/mode pairs; statuses {dict(sorted(statuses.items()))}")
    print(dict(per_op))
    assert not bad, "\n".join(bad[:20])
    assert not mismatches, "\n".join(f"{n}x {k}\n    {examples[k]}" for k, n in mismatches.most_common(40))
    assert total >= 1000 or EXAMPLES < 70, total
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/ping").status_code == 200
        assert c.post("/predictions/tiny-a", json={"text": "still serving"}).status_code == 200
        assert 'status="500"' not in c.get("/metrics").text
    assert not [line for line in server.lines if "Traceback" in line or "unexpected error" in line]


def _code(content: bytes) -> str:
    """The error's ``code``; readiness probes answer 503 with ``"ready": false`` (a probe result, not a fault)."""
    try:
        body = json.loads(content)
        return "not-ready" if body.get("ready") is False else str(body.get("code"))
    except (ValueError, AttributeError):
        return "not-json"


def test_schemathesis_cli_every_check_every_phase(server: ServerProcess, tmp_path: Path) -> None:
    """``schemathesis run --checks all`` as a user would run it: examples, coverage (undeclared methods and
    their ``Allow``, missing headers, boundary values) and stateful phases, with the same two settings."""
    config = tmp_path / "schemathesis.toml"
    served = ", ".join(json.dumps(m) for m in SERVED)  # most drawn ids name a real model, so handlers run
    config.write_text(f"{CHECKS_CONFIG}\n[dictionaries.models]\nvalues = [{served}]\n\n"
                      '[parameters]\n"path.model_id" = {dictionary = "models", probability = 0.8}\n')
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
           f"{server.url}/openapi.json", "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
           "--max-examples", str(max(5, EXAMPLES // 7)), "--seed", "1", "-H", f"Authorization: Bearer {TOKEN}",
           "--request-timeout", "30", "--suppress-health-check", "all", "--exclude-deprecated"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its cache stays there
    tail = run.stdout[-6000:]
    assert run.returncode == 0, tail
    assert "passed" in tail and server.proc is not None and server.proc.poll() is None
