"""`shoal bench sweep` on tiny models: in-process and served paths, CSV/JSON, three PNG plots."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.loadtest.sweep import knee, summarise
from shoal.store.local import LocalStore
from tests.test_loadtest_e2e import shared_tiny_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    return shared_tiny_store(tmp_path_factory)


def sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal.cli", "bench", "sweep", *args], capture_output=True,
                          text=True, timeout=240)


def test_knee_is_the_first_batch_size_near_the_best() -> None:
    assert knee([(1, 100.0), (4, 300.0), (8, 380.0), (16, 400.0), (32, 405.0)]) == 8
    assert knee([(1, 50.0)]) == 1
    assert knee([]) is None
    rows = [{"precision": "fp32", "path": "served", "batch_size": 4, "throughput": t} for t in (10.0, 30.0, 20.0)]
    assert summarise(rows)["fp32/served"]["throughput_by_batch"] == {4: 30.0}


def test_sweep_writes_csv_json_and_three_plots(tiny_store: LocalStore, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = sweep("--model", "tiny-cls", "--precision", "fp32,bf16", "--store", tiny_store.uri,
                 "--batch-sizes", "1,4", "--clients", "1,3", "--duration", "0.4s", "--warmup", "0.1s",
                 "--inprocess-seconds", "0.2", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    with open(out / "sweep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["precision"], r["path"]) for r in rows} == {
        ("fp32", "inprocess"), ("fp32", "served"), ("bf16", "inprocess"), ("bf16", "served")}
    served = [r for r in rows if r["path"] == "served"]
    assert len(served) == 2 * 2 * 2  # precision x batch size x clients
    assert {r["model_id"] for r in rows} == {"tiny-cls", "tiny-cls-bf16"}
    assert all(float(r["throughput"]) > 0 and float(r["p95_ms"]) > 0 and r["errors"] == "0" for r in rows)
    assert all(float(r["usd_per_million"]) > 0 for r in rows)
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["models"] == {"fp32": "tiny-cls", "bf16": "tiny-cls-bf16"}
    assert doc["summary"]["fp32/inprocess"]["knee_batch_size"] in (1, 4)
    assert "c6i.xlarge" in doc["price"]["basis"]
    for name in ("latency-throughput.png", "throughput-batch.png", "cost-batch.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert (out / "logs" / "serve-b4.log").exists()


def test_sweep_bad_input_gives_one_line(tiny_store: LocalStore, tmp_path: Path) -> None:
    cases = [
        (["--model", "tiny-cls", "--precision", "fp16"], "no fp16 version of tiny-cls"),
        (["--model", "tiny-cls", "--batch-sizes", "1,x"], "--batch-sizes"),
        (["--model", "tiny-cls", "--precision", "int3"], "--precision 'int3'"),
        (["--model", "ghost"], "ghost"),
        (["--model", "tiny-cls", "--no-served", "--no-inprocess"], "nothing to measure"),
    ]
    for args, message in cases:
        proc = sweep(*args, "--store", tiny_store.uri, "--out", str(tmp_path / "x"))
        assert proc.returncode != 0, args
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr, proc.stderr
