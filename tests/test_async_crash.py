"""Acceptance: SIGKILL the server mid-queue, restart it, and every accepted job completes exactly once.

On both queue backends (SQLite, a real redis-server), against real `shoal serve` processes.
"""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import httpx
import pytest

from tests.jobs_support import async_models, env_for, redis_url, result_files, wait_for  # noqa: F401
from tests.server_fixtures import ServerProcess

N_JOBS = 36
SLOW = {"inputs": ["a sentence long enough to make a batch of sixty-four take a little while"] * 64}


def states(url: str, ids: list[str]) -> dict[str, dict]:
    with httpx.Client(base_url=url, timeout=30) as c:
        return {i: c.get(f"/async/jobs/{i}").json() for i in ids}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_sigkill_mid_queue_then_restart_completes_every_job_once(backend: str, async_models: str,  # noqa: F811
                                                                 tmp_path: Path,
                                                                 request: pytest.FixtureRequest) -> None:
    queue = (f"sqlite:///{tmp_path / 'jobs.sqlite'}" if backend == "sqlite"
             else f"{request.getfixturevalue('redis_url')}?prefix=crash{uuid.uuid4().hex[:8]}")
    env = env_for(tmp_path, queue, SHOAL_ASYNC_LEASE_S="1.5", SHOAL_ASYNC_CONCURRENCY="4",
                  SHOAL_ASYNC_BACKOFF_S="0.2")
    args = ["--store", async_models, "--models", "tiny-a,tiny-b", "--executors", "1", "--threads", "1",
            "--max-batch-size", "4"]
    jobs = tmp_path / "jobs"

    first = ServerProcess(args, env).start()
    try:
        ids: list[str] = []
        with first.client() as c:
            for i in range(N_JOBS):
                r = c.post(f"/async/predictions/{'tiny-a' if i % 2 else 'tiny-b'}", json=SLOW)
                assert r.status_code == 202, r.text
                ids.append(r.json()["job_id"])
        wait_for(lambda: len(result_files(jobs)) >= 3, 60, 0.01, "the first results")
    finally:
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    done_at_kill = len(result_files(jobs))
    assert done_at_kill < N_JOBS, "the kill must land mid-queue"

    second = ServerProcess(args, env).start()
    try:
        final = wait_for(lambda: (s := states(second.url, ids)) and all(v["state"] == "succeeded" for v in
                                                                         s.values()) and s, 120, 0.2,
                         "every job to succeed after the restart")
        files = result_files(jobs)
        expected = sorted(Path(json.loads(json.dumps(final[i]))["output_location"].removeprefix("file://"))
                          for i in ids)
        assert files == expected, "exactly one result object per accepted job, and nothing else"
        for i in ids:
            body = json.loads(Path(final[i]["output_location"].removeprefix("file://")).read_bytes())
            assert body["job_id"] == i and len(body["predictions"]) == 64
        assert not [p for p in jobs.rglob("*") if p.is_file() and p.name.endswith(".part")], "no half objects"
        wait_for(lambda: not list((jobs / "payloads").glob("*")), 10, 0.05, "payloads removed once their job ended")
        assert any(v["attempts"] >= 2 for v in final.values()), "jobs running at the kill were delivered again"
    finally:
        assert second.proc is not None
        second.proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the SIGTERM after its clean shutdown (lifespan included): -15, not a crash
        assert second.proc.wait(60) in (0, -signal.SIGTERM), "SIGTERM drains and exits cleanly"
