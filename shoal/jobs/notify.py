"""Webhooks: the job summary POSTed to each target, HMAC-signed, retried with backoff (our SNS topics).

A receiver checks ``X-Shoal-Signature: sha256=HEX`` where HEX is HMAC-SHA256 with the
shared secret over ``TIMESTAMP.BODY`` (``X-Shoal-Timestamp``), and rejects old
timestamps to stop replays. ``X-Shoal-Delivery`` is the job id: a receiver that may see
a delivery twice (at-least-once) dedupes on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import urlparse

from shoal.errors import UsageError
from shoal.jobs.records import JobRecord, JobState

log = logging.getLogger("shoal.jobs")
MAX_TARGETS = 8
MAX_URL = 2048


def check_webhook_url(url: str) -> str:
    """The URL, or UsageError saying why it is not a usable http(s) target."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise UsageError(f"webhook URL must be a string of 1-{MAX_URL} characters")
    if any(ch.isspace() for ch in url):
        raise UsageError(f"webhook URL {url[:200]!r} contains whitespace")
    try:
        p = urlparse(url)
        port = p.port
    except ValueError as exc:
        raise UsageError(f"webhook URL {url[:200]!r} is malformed: {exc}") from None
    if p.scheme not in ("http", "https"):
        raise UsageError(f"webhook URL {url[:200]!r}: scheme must be http or https")
    if not p.hostname:
        raise UsageError(f"webhook URL {url[:200]!r} names no host")
    if port == 0:
        raise UsageError(f"webhook URL {url[:200]!r}: port 0 is not a port")
    return url


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300.0) -> bool:
    """What a receiver does: constant-time compare, and refuse stale timestamps."""
    try:
        age = abs(time.time() - float(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def event_of(rec: JobRecord) -> str:
    return "job.succeeded" if rec.state is JobState.SUCCEEDED else "job.failed"


class Notifier:
    """Delivers one job's webhooks; a 2xx ends a target, 4xx (but 408/429) gives up, anything else retries."""

    def __init__(self, secret: str | None, attempts: int = 5, timeout_s: float = 10.0, backoff_s: float = 0.5) -> None:
        self.secret = secret
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._client: Any = None

    def client(self) -> Any:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False,
                                             headers={"user-agent": "shoal-webhook/1"})
        return self._client

    async def notify(self, rec: JobRecord) -> bool:
        """Deliver to every target of the job's final state; True when all answered 2xx."""
        targets = rec.targets()
        if not targets:
            return True
        body = json.dumps({"event": event_of(rec), **rec.public()}).encode()
        results = await asyncio.gather(*(self.deliver(url, rec, body) for url in targets))
        return all(results)

    async def deliver(self, url: str, rec: JobRecord, body: bytes) -> bool:
        import httpx

        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            ts = str(int(time.time()))
            headers = {"content-type": "application/json", "x-shoal-event": event_of(rec),
                       "x-shoal-delivery": rec.id, "x-shoal-timestamp": ts,
                       "x-shoal-signature": sign(self.secret or "", ts, body)}
            try:
                resp = await self.client().post(url, content=body, headers=headers)
                if 200 <= resp.status_code < 300:
                    return True
                reason = f"HTTP {resp.status_code}"
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                    log.warning("webhook %s for job %s refused (%s): not retried", url, rec.id, reason)
                    return False
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            if attempt < self.attempts:
                log.info("webhook %s for job %s failed (%s); retry %d in %.1fs", url, rec.id, reason, attempt,
                         delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        log.warning("webhook %s for job %s gave up after %d attempts", url, rec.id, self.attempts)
        return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
