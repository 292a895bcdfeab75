"""Job records, webhook signing and URL checks, local object writes, option parsing: no server needed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from starlette.datastructures import QueryParams

from shoal.errors import StoreError, UsageError
from shoal.jobs.notify import Notifier, check_webhook_url, sign, verify
from shoal.jobs.objects import Locations, LocalObjects
from shoal.jobs.queue import model_group, open_queue
from shoal.jobs.records import JobRecord, JobState, is_job_id, new_job_id
from shoal.jobs.settings import AsyncSettings, load_async_settings
from shoal.jobs.submit import parse_options
from shoal.server.errors import BadRequest, Unprocessable
from tests.jobs_support import Receiver, valid_signature


def test_record_round_trips_through_its_flat_form() -> None:
    rec = JobRecord(id=new_job_id(), model_id="m", input_location="file:///a", output_location="file:///b",
                    failure_location="file:///c", inline=False, input_bytes=12, expires_at=5.5, attempts=2,
                    started_at=3.25, error="x", dead_letter=True, notify_success=["http://h/a"],
                    state=JobState.FAILED)
    flat = rec.to_flat()
    assert all(isinstance(v, str) for v in flat.values())
    assert JobRecord.from_flat(flat) == rec
    assert JobRecord.from_flat({k: v.encode() for k, v in flat.items()}) == rec
    view = rec.public()
    assert view["state"] == "failed" and view["error"] == "x" and view["dead_letter"] is True
    assert "output_location" not in view
    assert is_job_id(rec.id) and not is_job_id("../etc") and not is_job_id(rec.id.upper())


def test_signatures_verify_only_with_the_secret_and_a_fresh_timestamp() -> None:
    body, ts = b'{"job_id": "x"}', str(int(time.time()))
    sig = sign("k", ts, body)
    assert sig.startswith("sha256=") and verify("k", ts, body, sig)
    assert not verify("other", ts, body, sig)
    assert not verify("k", ts, body + b" ", sig)
    assert not verify("k", str(int(time.time()) - 3600), body, sign("k", str(int(time.time()) - 3600), body))
    assert not verify("k", "not-a-time", body, sig)


@pytest.mark.parametrize("url", ["", "ftp://h/x", "http://", "http://h x/", "javascript:alert(1)",
                                 "http://h:99999/", "http://h:0/", "h/x", "http://" + "a" * 3000])
def test_malformed_webhook_urls_are_refused(url: str) -> None:
    with pytest.raises(UsageError):
        check_webhook_url(url)


def test_good_webhook_urls_pass() -> None:
    for url in ("http://127.0.0.1:8080/hook", "https://hooks.example.com/a?b=c", "http://[::1]:9/x"):
        assert check_webhook_url(url) == url


def test_notifier_retries_then_delivers_signed() -> None:
    receiver = Receiver(fail_first=2)
    try:
        rec = JobRecord(id=new_job_id(), model_id="m", input_location="i", output_location="o",
                        failure_location="f", state=JobState.SUCCEEDED, notify_success=[f"{receiver.url}/x"])
        notifier = Notifier("s", attempts=4, timeout_s=5, backoff_s=0.01)

        async def go() -> bool:
            try:
                return await notifier.notify(rec)
            finally:
                await notifier.close()

        assert asyncio.run(go())
        assert len(receiver.received) == 1 and valid_signature("s", receiver.received[0])
        assert json.loads(receiver.received[0]["body"])["event"] == "job.succeeded"
    finally:
        receiver.close()


def test_notifier_gives_up_on_a_4xx_and_after_its_attempts() -> None:
    rec = JobRecord(id=new_job_id(), model_id="m", input_location="i", output_location="o", failure_location="f",
                    state=JobState.FAILED, notify_failure=["http://127.0.0.1:9/closed-port"])

    async def go() -> bool:
        n = Notifier("s", attempts=2, timeout_s=1, backoff_s=0.01)
        try:
            return await n.notify(rec)
        finally:
            await n.close()

    assert asyncio.run(go()) is False


def test_local_writes_are_atomic_and_abort_leaves_nothing(tmp_path: Path) -> None:
    objs = LocalObjects(tmp_path / "root")
    w = objs.writer("results/m/a.json")
    w.write(b"part one ")
    assert not (tmp_path / "root" / "results" / "m" / "a.json").exists(), "invisible until committed"
    w.write(b"part two")
    assert w.commit() == f"file://{(tmp_path / 'root').resolve()}/results/m/a.json"
    assert objs.get("results/m/a.json") == b"part one part two"
    aborted = objs.writer("results/m/b.json")
    aborted.write(b"x" * 100)
    aborted.abort()
    assert objs.keys("results") == ["results/m/a.json"]
    assert not list((tmp_path / "root").rglob("*.part"))
    objs.put("results/m/a.json", b"again")  # idempotent result writes: the same key, replaced whole
    assert objs.get("results/m/a.json") == b"again"
    with pytest.raises(StoreError, match="larger than"):
        objs.get("results/m/a.json", limit=2)
    with pytest.raises(UsageError, match="escapes"):
        objs.writer("../outside")
    objs.delete("results/m/missing.json")  # absent is fine


def test_locations_keep_file_inputs_inside_the_job_store(tmp_path: Path) -> None:
    loc = Locations(f"file://{tmp_path / 'root'}")
    inside = loc.root.location("inputs/x.json")
    loc.root.put("inputs/x.json", b"{}")
    assert loc.size(inside) == 2 and loc.read(inside) == b"{}"
    for bad in (f"file://{tmp_path}/other.json", f"{loc.root.uri}/../x", "http://h/x", "s3://", "s3://bucket"):
        with pytest.raises(UsageError):
            loc.resolve(bad)
    with pytest.raises(StoreError):
        loc.size(loc.root.location("inputs/none.json"))


def test_query_options_are_checked() -> None:
    s = AsyncSettings(async_webhook_secret="k")
    opts = parse_options(QueryParams("ttl_s=60&timeout_s=5&notify=http://h/a&on_failure=http://h/b"), s)
    assert (opts.ttl_s, opts.timeout_s) == (60, 5)
    assert opts.on_success == ["http://h/a"] and sorted(opts.on_failure) == ["http://h/a", "http://h/b"]
    for query, err in (("ttl_s=0", Unprocessable), ("timeout_s=4000", Unprocessable), ("ttl_s=nan", Unprocessable),
                       ("x=1", BadRequest), ("notify=mailto:a@b", Unprocessable)):
        with pytest.raises(err):
            parse_options(QueryParams(query), s)
    with pytest.raises(BadRequest, match="SHOAL_ASYNC_WEBHOOK_SECRET"):
        parse_options(QueryParams("notify=http://h/a"), AsyncSettings())
    assert parse_options(QueryParams("conf=0.4&classes=0,2"), s).model_params == {"conf": "0.4", "classes": "0,2"}


def test_settings_refuse_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_ASYNC_LEASE_S", "0")
    with pytest.raises(UsageError, match="SHOAL_ASYNC_LEASE_S"):
        load_async_settings()
    monkeypatch.delenv("SHOAL_ASYNC_LEASE_S")
    monkeypatch.setenv("SHOAL_ASYNC_MAX_PAYLOAD", "lots")
    with pytest.raises(UsageError, match="cannot read size"):
        load_async_settings()


def test_queue_uris_and_groups(tmp_path: Path) -> None:
    q = open_queue(f"sqlite:///{tmp_path}/q.sqlite")
    assert q.uri.endswith("q.sqlite")
    with pytest.raises(UsageError):
        open_queue("sqlite://")
    assert model_group(["b", "a"]) == model_group(["a", "b"]) != model_group(["a"])
    assert model_group(None) == "all"


def test_grouped_calls_share_trips_and_keep_their_own_results() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from shoal.jobs.grouped import Grouped

    trips: list[int] = []

    def square(x: int) -> int:
        if x == 13:
            raise ValueError("unlucky")
        return x * x

    async def go() -> list:
        pool = ThreadPoolExecutor(2)
        g: Grouped[int] = Grouped(pool, square, batch=8, trips=1)
        original = g._trip

        def counting(loop, group):  # type: ignore[no-untyped-def]
            trips.append(len(group))
            original(loop, group)

        g._trip = counting  # type: ignore[method-assign]
        try:
            return await asyncio.gather(*(g(i) for i in range(20)), return_exceptions=True)
        finally:
            pool.shutdown()

    out = asyncio.run(go())
    assert [x for i, x in enumerate(out) if i != 13] == [i * i for i in range(20) if i != 13]
    assert isinstance(out[13], ValueError)
    assert sum(trips) == 20 and len(trips) < 20 and max(trips) <= 8, trips


def test_payloads_decode_by_content_type() -> None:
    from shoal.jobs.execute import parse_payload
    from shoal.server.media import MediaBody

    assert parse_payload(b'{"text": "x"}') == {"text": "x"}
    body = parse_payload(b"\xff\xd8raw", "image/jpeg")
    assert isinstance(body, MediaBody) and body.data == b"\xff\xd8raw" and body.content_type == "image/jpeg"
    assert isinstance(parse_payload(b"x", "application/octet-stream"), MediaBody)
    assert parse_payload(b"x", "image/png", '{"conf": "0.4"}').params == {"conf": "0.4"}
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_payload(b"\xff\xd8raw")
