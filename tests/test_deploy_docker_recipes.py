"""build/Dockerfile.<processor>: parsed by the official Dockerfile parser and checked for what matters.

No Docker engine here, so the images are not built: these tests read the recipes as
BuildKit would and run their embedded Python against the real pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

dockerfile = pytest.importorskip("dockerfile")

REPO = Path(__file__).resolve().parent.parent
PROCESSORS = ("cpu", "gpu", "inf1", "inf2")
NEURON_PIP = "https://pip.repos.neuron.amazonaws.com"


def parse(processor: str) -> list:
    return list(dockerfile.parse_file(str(REPO / "build" / f"Dockerfile.{processor}")))


def runs(commands: list) -> str:
    return "\n".join(" ".join(c.value) for c in commands if c.cmd == "RUN")


@pytest.mark.parametrize("processor", PROCESSORS)
def test_recipe_shape(processor: str) -> None:
    commands = parse(processor)
    cmds = [c.cmd for c in commands]
    assert cmds.count("FROM") == 1 and cmds.index("FROM") <= 1
    assert cmds[-2:] == ["ENTRYPOINT", "CMD"]
    entry = next(c for c in commands if c.cmd == "ENTRYPOINT")
    assert entry.json and entry.value == ("shoal",)
    assert next(c for c in commands if c.cmd == "EXPOSE").value == ("8080",)
    health = next(c for c in commands if c.cmd == "HEALTHCHECK")
    assert "/v2/health/live" in " ".join(health.value)
    # Only the package goes in: no store, no models, no weights.
    copied = [c.value[:-1] for c in commands if c.cmd == "COPY"]
    assert copied == [("pyproject.toml", "README.md"), ("shoal",)]
    text = (REPO / "build" / f"Dockerfile.{processor}").read_text()
    assert not re.search(r"\.(pt|safetensors|bin|neff)\b", text)
    env = " ".join(" ".join(c.value) for c in commands if c.cmd == "ENV")
    for key in ("SHOAL_HOST", "SHOAL_PORT", "SHOAL_CACHE_DIR", "HF_HUB_OFFLINE"):
        assert key in env


@pytest.mark.parametrize("processor", ["cpu", "gpu"])
def test_cpu_and_gpu_images_pin_torch_and_run_unprivileged(processor: str) -> None:
    commands = parse(processor)
    text = runs(commands)
    assert '"torch==2.13.0"' in text and "pip install ." in text
    assert ("download.pytorch.org/whl/cpu" in text) == (processor == "cpu")
    assert next(c for c in commands if c.cmd == "USER").value == ("10001",)
    base = next(c for c in commands if c.cmd == "ARG").value[0]
    assert base.startswith("PYTHON_IMAGE=python:3.11" if processor == "cpu" else "CUDA_IMAGE=nvidia/cuda:")


@pytest.mark.parametrize("processor, package", [("inf1", "torch-neuron"), ("inf2", "torch-neuronx")])
def test_neuron_images_use_the_neuron_pip_repository(processor: str, package: str) -> None:
    commands = parse(processor)
    text = runs(commands)
    assert NEURON_PIP in text
    arg = " ".join(" ".join(c.value) for c in commands if c.cmd == "ARG")
    assert f'"{package}==' in arg
    assert "pip install --no-deps" in text


@pytest.mark.parametrize("processor", ["inf1", "inf2"])
def test_neuron_requirement_lists_come_from_pyproject(processor: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each recipe's embedded Python (the RUN heredoc) against the real pyproject.toml."""
    heredoc = next(h for c in parse(processor) for h in c.heredocs)
    source = heredoc.content.replace("/tmp/requirements.txt", str(tmp_path / "req.txt"))
    source = source.replace("import tomli\n", "import tomllib as tomli\n")  # tomli is the 3.10 backport
    monkeypatch.chdir(REPO)
    exec(compile(source, f"Dockerfile.{processor}", "exec"), {})
    wanted = (tmp_path / "req.txt").read_text().split()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [w for w in wanted if w.startswith("torch")]
    if processor == "inf2":  # keeps shoal's pins for everything but torch
        assert wanted == [d for d in deps if not d.startswith("torch")]
    else:  # names only: pip picks versions that still support Python 3.10
        assert "fastapi" in wanted and not [w for w in wanted if "==" in w or w.startswith("numpy")]
