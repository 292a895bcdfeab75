"""Settings of asynchronous inference, read like every other setting (``SHOAL_*`` env, the YAML file).

Kept apart from ``shoal.config.Settings`` so the server's settings stay small; the
field names carry an ``async_`` prefix so they never clash in the shared YAML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shoal.config import Settings, ShoalSettingsBase, parse_bytes
from shoal.errors import UsageError


class AsyncSettings(ShoalSettingsBase):
    """Queue, payload store, retries and webhooks of ``/async`` routes and their workers."""

    model_config = SettingsConfigDict(env_prefix="SHOAL_", extra="ignore")

    async_queue: str | None = Field(None, description="sqlite:///PATH (default: <state dir>/jobs.sqlite) or "
                                                      "redis://HOST:PORT/DB")
    async_store: str | None = Field(None, description="where payloads and results go: file://DIR or "
                                                      "s3://bucket/prefix (default: <state dir>/async)")
    async_workers: bool = Field(True, description="run workers inside `shoal serve` (off: accept jobs only)")
    async_concurrency: int | None = Field(None, description="jobs one process holds at once (default: 8 x "
                                                            "the server's capacity, at least 32)")
    async_max_payload: str = Field("1GB", description="largest payload accepted at submission")
    async_inline_validate: str = Field("8MiB", description="payloads up to this size are checked (JSON, model "
                                                           "input) before the 202; larger ones stream unchecked")
    async_ttl_s: float = Field(6 * 3600, description="default time a job may wait in the queue")
    async_timeout_s: float = Field(900, description="default invocation timeout of one job")
    async_max_attempts: int = Field(3, description="deliveries before a job is dead-lettered")
    async_backoff_s: float = Field(1.0, description="first retry delay; doubles per attempt")
    async_lease_s: float = Field(30.0, description="a job held this long by a silent worker is redelivered")
    async_retention_s: float = Field(7 * 86400, description="finished job records are kept this long")
    async_webhook_secret: str | None = Field(None, description="HMAC-SHA256 key that signs webhooks (required "
                                                               "for notification targets)")
    async_webhook_attempts: int = Field(5, description="webhook deliveries before giving up")
    async_webhook_timeout_s: float = 10.0
    async_poll_s: float = Field(0.25, description="longest idle wait between queue polls")
    async_drain_s: float = Field(25.0, description="on SIGTERM, how long running jobs may finish before they "
                                                   "go back to the queue")


    def queue_uri(self, base: Settings) -> str:
        return self.async_queue or f"sqlite:///{Path(base.state_dir) / 'jobs.sqlite'}"

    def store_uri(self, base: Settings) -> str:
        return self.async_store or f"file://{Path(base.state_dir) / 'async'}"

    @property
    def max_payload_bytes(self) -> int:
        return parse_bytes(self.async_max_payload)

    @property
    def validate_bytes(self) -> int:
        return parse_bytes(self.async_inline_validate)

    def check(self) -> "AsyncSettings":
        """One clear line for a nonsense value, before anything starts."""
        self.max_payload_bytes, self.validate_bytes  # noqa: B018 (parse errors are UsageErrors)
        positive = {"SHOAL_ASYNC_TTL_S": self.async_ttl_s, "SHOAL_ASYNC_TIMEOUT_S": self.async_timeout_s,
                    "SHOAL_ASYNC_LEASE_S": self.async_lease_s, "SHOAL_ASYNC_POLL_S": self.async_poll_s,
                    "SHOAL_ASYNC_WEBHOOK_TIMEOUT_S": self.async_webhook_timeout_s}
        for name, value in positive.items():
            if value <= 0:
                raise UsageError(f"{name}={value}: must be positive")
        if self.async_max_attempts < 1 or self.async_webhook_attempts < 1:
            raise UsageError("SHOAL_ASYNC_MAX_ATTEMPTS and SHOAL_ASYNC_WEBHOOK_ATTEMPTS must be at least 1")
        if self.async_concurrency is not None and self.async_concurrency < 1:
            raise UsageError("SHOAL_ASYNC_CONCURRENCY must be at least 1")
        if self.async_backoff_s < 0:
            raise UsageError("SHOAL_ASYNC_BACKOFF_S must not be negative")
        return self


def load_async_settings(**overrides: Any) -> AsyncSettings:
    """Settings with CLI overrides applied (None means 'not given')."""
    return AsyncSettings(**{k: v for k, v in overrides.items() if v is not None}).check()
