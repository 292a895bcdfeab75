"""Settings precedence: CLI flags > SHOAL_* environment > the SHOAL_CONFIG YAML file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.config import load_settings, parse_bytes
from shoal.errors import UsageError
from shoal.jobs.settings import AsyncSettings


def test_precedence_flag_env_file_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "shoal.yaml"
    config.write_text("port: 7000\nhost: 0.0.0.0\nasync-workers: false\n")
    monkeypatch.setenv("SHOAL_CONFIG", str(config))
    assert load_settings().port == 7000 and load_settings().device == "cpu"
    monkeypatch.setenv("SHOAL_PORT", "7100")
    assert load_settings().port == 7100
    assert load_settings(port=7200).port == 7200
    assert load_settings(port=None).port == 7100  # a flag not given leaves the lower layers alone
    assert AsyncSettings().async_workers is False  # the async settings read the same file


def test_bad_config_file_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("- a list, not a mapping\n")
    monkeypatch.setenv("SHOAL_CONFIG", str(config))
    with pytest.raises(UsageError, match="mapping"):
        load_settings()


@pytest.mark.parametrize("text, value", [("4GiB", 4 * 2**30), ("512MiB", 512 * 2**20), ("1GB", 10**9), ("123", 123)])
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


def test_parse_bytes_refuses_nonsense() -> None:
    with pytest.raises(UsageError, match="size"):
        parse_bytes("lots")
