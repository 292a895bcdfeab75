"""Typed settings: one source of truth for every stage.

Precedence (highest first): CLI flags (passed as overrides), ``SHOAL_*`` environment
variables, the config file named by ``SHOAL_CONFIG`` (YAML), then defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shoal.cache_dirs import cache_root


class ShoalSettingsBase(BaseSettings):
    """Precedence shared by every settings object: init (CLI) > SHOAL_* env > the SHOAL_CONFIG YAML file."""

    model_config = SettingsConfigDict(env_prefix="SHOAL_", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls))


class Settings(ShoalSettingsBase):
    """Settings shared by the CLI, the server and the deploy renderers."""

    model_config = SettingsConfigDict(env_prefix="SHOAL_", extra="ignore")

    store: str = Field("file://./store", description="model store URI: file://DIR or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(None, description="endpoint of an S3-compatible store")
    s3_region: str = "us-east-1"
    cache_dir: Path = Field(default_factory=cache_root, description="shoal's cache (SHOAL_CACHE_DIR; default the "
                            "platform's user cache directory, e.g. ~/.cache/shoal): verified copies of store "
                            "files, and trace intermediates under trace_build/")
    build_cache_budget: str = Field("1GiB", description="bytes trace intermediates may keep under "
                                    "<cache_dir>/trace_build (what `shoal models synth` re-reads), least "
                                    "recently traced models removed first")
    state_dir: Path = Field(Path(".shoal"), description="pids, logs and plans of local deployments")

    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int | None = Field(None, description="KServe v2 gRPC port beside HTTP (off unless set; 0 picks a "
                                                    "free one)")
    device: str = "cpu"
    threads: int | None = Field(None, description="torch intra-op threads (default: all cores of the slice)")
    executors: int | None = Field(None, description="forward-pass executor threads per device (default: one "
                                                    "single-threaded executor per core on CPU, 1 on accelerators)")
    load_workers: int = Field(2, description="threads that fetch, verify and load models")
    capacity: int | None = Field(None, description="requests one process works on at once (default executors x "
                                                   "max batch); shoal_utilization = in-flight / capacity")
    memory_budget: str = Field("8GiB", description="resident weight budget before LRU eviction")
    disk_budget: str | None = Field(None, description="bytes the local disk cache may hold of its own (S3 "
                                    "downloads, copies), least recently fetched models removed first; "
                                    "unset: unbounded. Files linked from a local store cost no disk")
    disk_prefetch: Literal["auto", "on", "off"] = Field("auto", description="verify the catalog into the disk "
                                                        "tier in the background at idle priority (auto: local "
                                                        "folder stores only; on: S3 too, within --disk-budget)")
    max_load_wait_s: float = Field(10.0, gt=0, description="longest a request waits for its model to be "
                                   "swapped in; a request whose load cannot start and finish within this (or "
                                   "its deadline) gets 503 with Retry-After at once")
    preload: str = Field("all", description="all | none | N models loaded at start")
    max_batch_size: int | None = None
    max_delay_ms: float | None = None
    jit_profiling: bool = Field(False, description="TorchScript's profiling graph executor (two warm-up "
                                                   "forwards per load) instead of the legacy one (one)")
    max_queue_per_model: int = 256
    batch_fairness: float = Field(0.1, description="a request may join an older batch-mate's batch only if it "
                                                   "overtakes other models' requests by at most this fraction "
                                                   "of the average queue time (inf: batch greedily)")
    max_queue_total: int = 4096
    prefetch_batches: int = Field(1, ge=0, le=16, description="batches handed to the executor threads beyond one "
                                                              "each, so a thread that finishes starts the next "
                                                              "batch without waiting for the event loop")
    request_timeout_s: float = 30.0
    max_body_bytes: int = 8 * 1024 * 1024
    token: str | None = Field(None, description="bearer token required by management routes")
    per_model_metrics_limit: int = Field(100, description="per-model metric labels only up to this many models")



class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the optional YAML file named by SHOAL_CONFIG."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("SHOAL_CONFIG")
        if not path:
            return {}
        from shoal.errors import UsageError

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise UsageError(f"config file {path} must be a mapping of setting: value")
        return {k.replace("-", "_"): v for k, v in data.items()}


def load_settings(**overrides: Any) -> Settings:
    """Settings with CLI overrides applied (None means 'not given on the command line')."""
    from pydantic import ValidationError

    from shoal.errors import UsageError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:  # one line naming the setting, never a traceback
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"setting {name} (--{name.replace('_', '-')} or SHOAL_{name.upper()}): "
                         f"{first['msg']}, got {first.get('input')!r}") from None


def parse_bytes(text: str | int) -> int:
    """'4GiB' -> 4294967296; accepts B, KB/KiB, MB/MiB, GB/GiB, TB/TiB or a plain integer."""
    from shoal.errors import UsageError

    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 10**6, "MB": 10**6, "MIB": 2**20,
             "G": 10**9, "GB": 10**9, "GIB": 2**30, "T": 10**12, "TB": 10**12, "TIB": 2**40}
    s = text.strip().upper()
    num = s.rstrip("KMGTIB")
    unit = s[len(num):]
    try:
        return int(float(num) * units[unit])
    except (ValueError, KeyError):
        raise UsageError(f"cannot read size {text!r}: use e.g. 512MiB, 4GiB or a number of bytes") from None
