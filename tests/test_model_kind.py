"""Adding a model kind is one module: this test module is that module, and it is served over HTTP.

The kind ("doubler_rows", unknown to shoal: a TorchScript graph over rows of numbers) brings only model execution:
load, preprocess, infer, postprocess. Protocol conversion is the stock
``shoal.server.codecs.numeric.NumericCodec``; ``register_kind`` plugs the module in without
touching any shoal file. The server is a real uvicorn on loopback in a thread, running
the same app, registry, batcher and executors as `shoal serve`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from shoal.config import load_settings
from shoal.devices import parse_device
from shoal.server import handlers
from shoal.server.codecs.numeric import NumericCodec
from shoal.server.handlers.base import Handler, LoadContext
from shoal.store.local import LocalStore
from shoal.store.manifest import Manifest, describe_files

KIND = "doubler_rows"  # a kind shoal itself has never heard of
CODEC = NumericCodec  # the kind's protocol side: reused, not written


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


class TensorHandler(Handler):
    """Execution only: stack the rows, one forward, split the rows back."""

    codec_class = NumericCodec

    def __init__(self, manifest: Manifest, folder: Path, ctx: LoadContext) -> None:
        super().__init__(manifest, folder, ctx)
        from shoal.artifacts import load_torchscript

        self.module = load_torchscript(folder / manifest.artifact, ctx.torch_device)

    def sample_inputs(self) -> list[Any]:
        return [np.zeros(3, dtype=np.float32)]

    def preprocess(self, inputs: list[Any]) -> torch.Tensor:
        return torch.from_numpy(np.stack(inputs))

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch)

    def postprocess(self, outputs: torch.Tensor, batch: Any, inputs: list[Any]) -> list[Any]:
        return outputs.tolist()


def create(manifest: Manifest, folder: Path, ctx: LoadContext) -> TensorHandler:
    return TensorHandler(manifest, folder, ctx)


@pytest.fixture()
def tensor_kind() -> Iterator[None]:
    handlers.register_kind(KIND, sys.modules[__name__])
    yield
    handlers.unregister_kind(KIND)


def _store(root: Path) -> LocalStore:
    build = root / "build"
    build.mkdir()
    torch.jit.script(Doubler()).save(str(build / "model.pt"))
    manifest = Manifest(id="doubler", kind=KIND, task="embedding", tokenizer=None, artifact="model.pt",
                        files=describe_files(build, ["model.pt"]))
    store = LocalStore(root / "store")
    store.push(build, manifest)
    return store


@pytest.fixture()
def server(tensor_kind: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import uvicorn

    from shoal.server.app import create_app
    from shoal.server.runtime import Runtime

    monkeypatch.setenv("SHOAL_CACHE_DIR", str(tmp_path / "cache"))
    store = _store(tmp_path)
    settings = load_settings(store=store.uri, port=0, executors=1, threads=1)
    runtime = Runtime(settings, parse_device("cpu"), ["doubler"], store=store)
    config = uvicorn.Config(create_app(runtime), host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (srv.started and srv.servers):
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(15)


def test_a_kind_defined_in_a_test_module_is_served_over_http(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as c:
        one = c.post("/predictions/doubler", json={"input": [1, 2, 3]})
        assert one.status_code == 200, one.text
        assert one.json()["model_id"] == "doubler" and one.json()["prediction"] == [3.0, 5.0, 7.0]
        many = c.post("/predictions/doubler", json={"inputs": [[0, 1], [2, 3]]})
        assert many.status_code == 200, many.text
        assert many.json()["predictions"] == [[1.0, 3.0], [5.0, 7.0]]
        meta = c.get("/v2/models/doubler").json()
        assert meta["inputs"][0]["name"] == "input" and meta["outputs"][0]["name"] == "output"
        v2 = c.post("/v2/models/doubler/infer", json={"inputs": [{"name": "input", "datatype": "FP32",
                                                                  "shape": [2, 2], "data": [0, 1, 2, 3]}]})
        assert v2.status_code == 200, v2.text
        out = v2.json()["outputs"][0]
        assert out["name"] == "output" and out["shape"] == [2, 2] and out["data"] == [1.0, 3.0, 5.0, 7.0]
        bad = c.post("/predictions/doubler", json={"input": "not numbers"})
        assert bad.status_code == 422 and "input" in bad.json()["error"]


def test_an_unregistered_kind_fails_its_load_with_a_reason(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(RuntimeError, match="no handler for model kind 'doubler_rows'"):
        handlers.create_handler(store.read_manifest("doubler"), store.fetch("doubler"), LoadContext("cpu", "cpu"))


@pytest.mark.parametrize("kind", ["a.b", "../text", "Text", "", "x" * 33])
def test_a_kind_is_a_plain_module_name(kind: str) -> None:
    """The kind names a handler module, so a tampered manifest cannot point the import elsewhere."""
    with pytest.raises(ValueError, match="kind"):
        Manifest(id="m", kind=kind, task="embedding", tokenizer=None, artifact="model.pt", files={})
