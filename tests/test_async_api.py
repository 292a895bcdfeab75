"""The /async routes against a real server: webhooks (signed, retried), failures, bad input, cancel, TTL,
and `shoal worker` draining on SIGTERM."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.jobs_support import (Receiver, async_models, env_for, result_files, valid_signature,  # noqa: F401
                                wait_for)
from tests.server_fixtures import REPO, ServerProcess

SECRET = "test-webhook-secret"


@pytest.fixture(scope="module")
def hooked(async_models: str, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
           ) -> Iterator[tuple[ServerProcess, Receiver, Path]]:
    """A server with webhooks signed, small caps (64 KiB payloads, bodies over 256 B unchecked), 2 attempts."""
    tmp = tmp_path_factory.mktemp("hooked")
    env = env_for(tmp, f"sqlite:///{tmp / 'jobs.sqlite'}", SHOAL_ASYNC_WEBHOOK_SECRET=SECRET,
                  SHOAL_ASYNC_MAX_PAYLOAD="64KiB", SHOAL_ASYNC_INLINE_VALIDATE="256", SHOAL_ASYNC_MAX_ATTEMPTS="2",
                  SHOAL_ASYNC_BACKOFF_S="0.1")
    receiver = Receiver(fail_first=1)  # the first delivery is refused with 503: the notifier must retry
    server = ServerProcess(["--store", async_models, "--models", "tiny-a,broken"], env).start()
    yield server, receiver, tmp
    server.stop()
    receiver.close()


def finished(server: ServerProcess, job_id: str) -> dict:
    def check() -> dict | None:
        body = httpx.get(f"{server.url}/async/jobs/{job_id}", timeout=10).json()
        return body if body["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(check, 60, 0.05, f"job {job_id} to finish")  # type: ignore[no-any-return]


def test_success_and_failure_webhooks_are_signed(hooked: tuple[ServerProcess, Receiver, Path]) -> None:
    server, receiver, tmp = hooked
    ok_url, fail_url = f"{receiver.url}/ok", f"{receiver.url}/fail"
    with server.client() as c:
        good = c.post("/async/predictions/tiny-a", params={"on_success": ok_url, "on_failure": fail_url},
                      json={"text": "a fine sentence"})
        # over 256 bytes, so accepted unchecked; the model refuses it when it runs: failed at once, no retry
        bad = c.post("/async/predictions/tiny-a", params={"notify": fail_url}, json={"txt": "x" * 400})
        # every load of `broken` fails: retried, then dead-lettered with the last error
        dead = c.post("/async/predictions/broken", params={"on_failure": fail_url}, json={"text": "hi"})
    assert good.status_code == bad.status_code == dead.status_code == 202, (good.text, bad.text, dead.text)
    g, b, d = (finished(server, r.json()["job_id"]) for r in (good, bad, dead))

    assert g["state"] == "succeeded" and g["attempts"] == 1
    result = json.loads(Path(g["output_location"].removeprefix("file://")).read_bytes())
    assert result["job_id"] == g["job_id"] and result["prediction"]["label"] in ("negative", "positive")
    assert b["state"] == "failed" and "text" in b["error"] and b["attempts"] == 1 and not b["dead_letter"]
    assert d["state"] == "failed" and d["dead_letter"] and d["attempts"] == 2 and "broken" in d["error"]
    failure = json.loads(Path(d["failure_location"].removeprefix("file://")).read_bytes())
    assert failure["dead_letter"] and failure["error"] == d["error"]

    deliveries = wait_for(lambda: len(receiver.received) >= 3 and receiver.received, 30, 0.05, "3 webhooks")
    assert len(deliveries) == 3
    by_job = {json.loads(x["body"])["job_id"]: x for x in deliveries}
    assert by_job[g["job_id"]]["path"] == "/ok" and by_job[g["job_id"]]["headers"]["x-shoal-event"] == "job.succeeded"
    assert by_job[b["job_id"]]["path"] == "/fail" and by_job[d["job_id"]]["path"] == "/fail"
    for x in deliveries:
        assert valid_signature(SECRET, x), "each webhook carries a valid HMAC-SHA256 signature"
        assert x["headers"]["x-shoal-delivery"] == json.loads(x["body"])["job_id"]
    assert not valid_signature("another-secret", deliveries[0])
    assert json.loads(by_job[g["job_id"]]["body"])["output_location"] == g["output_location"]
    assert json.loads(by_job[d["job_id"]]["body"])["error"] == d["error"]


def _rows(tmp: Path) -> int:
    with sqlite3.connect(tmp / "jobs.sqlite") as db:
        return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])


def _payloads(tmp: Path) -> list[Path]:
    return sorted((tmp / "jobs" / "payloads").glob("*")) if (tmp / "jobs" / "payloads").exists() else []


def test_bad_input_is_refused_at_submission_and_nothing_is_queued(hooked: tuple[ServerProcess, Receiver,
                                                                                Path]) -> None:
    server, receiver, tmp = hooked
    (tmp / "jobs").mkdir(exist_ok=True)
    (tmp / "jobs" / "inputs").mkdir(exist_ok=True)
    outside = tmp / "outside.json"
    outside.write_text('{"text": "hi"}')
    before, payloads = _rows(tmp), _payloads(tmp)

    def chunked(n: int) -> Iterator[bytes]:  # no Content-Length: the cap must hold while streaming
        yield b'{"text": "'
        for _ in range(n):
            yield b"x" * 4096
        yield b'"}'

    cases = [
        ("/async/predictions/nope", {}, {"json": {"text": "x"}}, 404),
        ("/async/predictions/bad%2Fid", {}, {"json": {"text": "x"}}, 404),
        ("/async/predictions/tiny-a", {}, {"content": b"x" * 70_000}, 413),
        ("/async/predictions/tiny-a", {}, {"content": chunked(20)}, 413),
        ("/async/predictions/tiny-a", {}, {"json": {"input_location": f"file://{tmp}/jobs/inputs/none.json"}},
         400),
        ("/async/predictions/tiny-a", {}, {"json": {"input_location": f"file://{outside}"}}, 422),
        ("/async/predictions/tiny-a", {}, {"json": {"input_location": "http://example.com/x"}}, 422),
        ("/async/predictions/tiny-a", {}, {"json": {"input_location": 7}}, 422),
        ("/async/predictions/tiny-a", {"notify": "not a url"}, {"json": {"text": "x"}}, 422),
        ("/async/predictions/tiny-a", {"on_success": "ftp://host/x"}, {"json": {"text": "x"}}, 422),
        ("/async/predictions/tiny-a", {"on_failure": "http://"}, {"json": {"text": "x"}}, 422),
        ("/async/predictions/tiny-a", {"ttl_s": "-1"}, {"json": {"text": "x"}}, 422),
        ("/async/predictions/tiny-a", {"timeout_s": "abc"}, {"json": {"text": "x"}}, 422),
        ("/async/predictions/tiny-a", {"bogus": "1"}, {"json": {"text": "x"}}, 400),
        ("/async/predictions/tiny-a", {}, {"content": b"{not json"}, 400),
        ("/async/predictions/tiny-a", {}, {"content": b""}, 400),
        ("/async/predictions/tiny-a", {}, {"json": {"txt": "short"}}, 422),  # checked against the model
        ("/async/predictions/tiny-a", {}, {"content": b"\xff\xd8jpeg", "headers": {"content-type": "image/jpeg"}},
         422),  # a text model takes no images
        ("/async/predictions/tiny-a", {}, {"files": {"image": ("a.jpg", b"\xff\xd8", "image/jpeg")}}, 415),
        ("/async/predictions/tiny-a", {}, {"content": b"", "headers": {"content-type": "image/png"}}, 400),
    ]
    with server.client() as c:
        for path, params, kw, status in cases:
            r = c.post(path, params=params, **kw)
            assert r.status_code == status, (path, params, r.status_code, r.text)
            body = r.json()
            assert set(body) == {"error", "code"} and "\n" not in body["error"], body
        assert c.get("/async/jobs/" + "0" * 32).status_code == 404
        assert c.get("/async/jobs/not-an-id").status_code == 404
        assert c.delete("/async/jobs/" + "0" * 32).status_code == 404
    assert _rows(tmp) == before, "no bad submission reached the queue"
    assert _payloads(tmp) == payloads, "no bad submission left a payload behind"
    assert not [p for p in (tmp / "jobs").rglob("*.part")], "aborted streams leave no temp files"


def test_reference_input_and_large_streamed_payload(hooked: tuple[ServerProcess, Receiver, Path]) -> None:
    server, _, tmp = hooked
    inputs = tmp / "jobs" / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "one.json").write_text(json.dumps({"inputs": ["first text", "second text"]}))
    big = {"inputs": ["word " * 10] * 200}  # ~12 KiB: above the check threshold, streamed to the store
    with server.client() as c:
        ref = c.post("/async/predictions/tiny-a", json={"input_location": f"file://{inputs / 'one.json'}"})
        large = c.post("/async/predictions/tiny-a", content=json.dumps(big).encode())
    assert ref.status_code == large.status_code == 202
    r, g = finished(server, ref.json()["job_id"]), finished(server, large.json()["job_id"])
    assert r["state"] == g["state"] == "succeeded"
    assert r["input_location"] == f"file://{inputs / 'one.json'}"
    assert (inputs / "one.json").exists(), "a referenced input is the client's: never deleted"
    out = json.loads(Path(g["output_location"].removeprefix("file://")).read_bytes())
    assert len(out["predictions"]) == 200


def test_binary_payloads_are_stored_raw_and_reach_the_handler(hooked: tuple[ServerProcess, Receiver, Path]) -> None:
    server, _, tmp = hooked
    image = b"\x89PNG\r\n" + bytes(range(256)) * 4  # over the 256-byte check: accepted, refused when it runs
    with server.client() as c:
        r = c.post("/async/predictions/tiny-a", content=image, headers={"content-type": "image/png"})
    assert r.status_code == 202, r.text
    job = finished(server, r.json()["job_id"])
    assert job["state"] == "failed" and not job["dead_letter"] and job["attempts"] == 1
    assert "JSON object" in job["error"], "the text handler saw the raw bytes, not a JSON parse error"


def _worker(env: dict[str, str], models: str, *extra: str) -> subprocess.Popen:
    import os

    return subprocess.Popen([sys.executable, "-m", "shoal.cli", "worker", "--store", models, "--models", "tiny-a",
                             "--executors", "1", "--threads", "1", *extra], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_cancel_ttl_and_a_separate_worker_that_drains(async_models: str, tmp_path: Path) -> None:  # noqa: F811
    env = env_for(tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite'}", SHOAL_ASYNC_WORKERS="0",
                  SHOAL_ASYNC_LEASE_S="2")
    front = ServerProcess(["--store", async_models, "--models", "tiny-a"], env).start()
    try:
        slow = {"inputs": ["a sentence long enough to take a little while in a batch"] * 64}
        with front.client() as c:
            keep = [c.post("/async/predictions/tiny-a", json=slow).json()["job_id"] for _ in range(16)]
            expiring = c.post("/async/predictions/tiny-a", params={"ttl_s": "0.3"}, json={"text": "late"}).json()
            gone = c.post("/async/predictions/tiny-a", json={"text": "never run"}).json()
            r = c.delete(f"/async/jobs/{gone['job_id']}")
            assert r.status_code == 200 and r.json()["state"] == "cancelled"
            again = c.delete(f"/async/jobs/{gone['job_id']}")  # DELETE is idempotent
            assert again.status_code == 200 and again.json()["state"] == "cancelled"
            assert c.get(f"/async/jobs/{gone['job_id']}").json()["state"] == "cancelled"
            assert c.get(f"/async/jobs/{keep[0]}").json()["state"] == "queued"
            # a delivery that wrote the outcome and removed the payload, then died before recording it
            done_ok = c.post("/async/predictions/tiny-a", json={"text": "settled"}).json()
            done_bad = c.post("/async/predictions/tiny-a", json={"text": "settled"}).json()
            for job, path, body in ((done_ok, "output_location", {"job_id": done_ok["job_id"], "prediction": "x"}),
                                    (done_bad, "failure_location", {"error": "boom before", "dead_letter": False})):
                rec = c.get(f"/async/jobs/{job['job_id']}").json()
                target = Path((rec.get(path) or rec["output_location"].replace("/results/", "/failures/"))
                              .removeprefix("file://"))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(body))
                Path(rec["input_location"].removeprefix("file://")).unlink()
            signals = wait_for(lambda: (m := _metrics(c)) and m["shoal_async_backlog"] == 19 and m, 10, 0.2,
                               "the backlog gauge")
            assert signals["shoal_async_has_backlog_without_capacity"] == 1, "jobs wait and no worker runs"
        time.sleep(0.4)

        worker = _worker(env, async_models, "--concurrency", "4")
        try:
            wait_for(lambda: len(result_files(tmp_path / "jobs")) >= 2, 60, 0.01, "the worker to start")
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(60) == 0, worker.stderr.read() if worker.stderr else ""
        with front.client() as c:
            mid = {i: c.get(f"/async/jobs/{i}").json() for i in keep}
        assert {v["state"] for v in mid.values()} <= {"succeeded", "queued"}, "a drained worker leaves none running"
        assert any(v["state"] == "queued" for v in mid.values()), "SIGTERM landed mid-queue"

        again = _worker(env, async_models)
        try:
            with front.client() as c:
                wait_for(lambda: all(c.get(f"/async/jobs/{i}").json()["state"] == "succeeded" for i in keep), 90,
                         0.2, "the second worker to finish the queue")
                late = c.get(f"/async/jobs/{expiring['job_id']}").json()
                assert late["state"] == "failed" and "expired" in late["error"]
                ok = c.get(f"/async/jobs/{done_ok['job_id']}").json()
                assert ok["state"] == "succeeded", "payload gone + result present: recorded, not run again"
                assert json.loads(Path(ok["output_location"].removeprefix("file://")).read_text())["prediction"] == "x"
                bad = c.get(f"/async/jobs/{done_bad['job_id']}").json()
                assert bad["state"] == "failed" and bad["error"] == "boom before"
                assert c.get(f"/async/jobs/{gone['job_id']}").json()["state"] == "cancelled"
        finally:
            again.send_signal(signal.SIGTERM)
            assert again.wait(60) == 0
        assert len(result_files(tmp_path / "jobs")) == len(keep) + 1
        with front.client() as c:
            assert c.delete(f"/async/jobs/{keep[0]}").status_code == 409, "a finished job cannot be cancelled"
    finally:
        front.stop()


def _metrics(c: httpx.Client) -> dict[str, float]:
    out = {}
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("shoal_async_") and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out
