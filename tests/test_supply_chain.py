"""The model supply chain: only TorchScript is loaded, pickles never run, files stay in their folder.

The store is the trust boundary: whoever can write to it can replace a model, but
must not be able to run code in the server or write outside the model's folder.
"""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from pydantic import ValidationError

from shoal.errors import IntegrityError, StoreError
from shoal.artifacts import ArtifactRefused, load_torchscript
from shoal.store.local import LocalStore
from shoal.store.manifest import MANIFEST_NAME, Manifest
from tests.reliability_support import (EVIL, ReliabilityStore, plain_pickle, poisoned_torchscript, serve,
                                       store_folder, torch_save_archive)
from tests.server_fixtures import ServerProcess

REPO = Path(__file__).resolve().parents[1]
TOKEN = "supply-chain-token-5b1f"


@pytest.fixture(scope="module")
def server(reliability_store: ReliabilityStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    ids = ",".join(["tiny-a", "det", "broken", *EVIL])
    proc = serve(reliability_store.uri, tmp_path_factory.mktemp("state"), "--models", ids, "--executors", "1",
                 env={"SHOAL_TOKEN": TOKEN})
    yield proc
    proc.stop()


def test_payload_is_live_when_unpickled_by_python(tmp_path: Path) -> None:
    """Control: the crafted pickle does run under pickle.loads, so a missing marker below means something."""
    marker = tmp_path / "control"
    code = f"import pickle, sys; pickle.loads(open({str(tmp_path / 'p')!r}, 'rb').read())"
    (tmp_path / "p").write_bytes(plain_pickle(marker))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["plain-pickle", "torch-save", "poisoned-torchscript"])
def test_crafted_artifacts_are_refused_and_never_run(kind: str, reliability_store: ReliabilityStore,
                                                     tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    artifact = reliability_store.store.read_manifest("tiny-a").artifact
    real = (store_folder(reliability_store.store) / "tiny-a" / artifact).read_bytes()
    data = {"plain-pickle": plain_pickle, "torch-save": torch_save_archive,
            "poisoned-torchscript": lambda m: poisoned_torchscript(real, m)}[kind](marker)
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    with pytest.raises(ArtifactRefused) as err:
        load_torchscript(path, "cpu")
    message = str(err.value)
    assert message.startswith("model.pt ") and "\n" not in message
    expected = {"plain-pickle": "is a Python pickle", "torch-save": "torch.save() archive",
                "poisoned-torchscript": "Unknown type name 'posix.system'"}[kind]
    assert expected in message
    assert not marker.exists(), "the pickle payload ran"


def test_crafted_models_in_the_store_fail_alone_and_nothing_runs(server: ServerProcess,
                                                                  reliability_store: ReliabilityStore) -> None:
    """sha256-valid manifests around pickles: each model is `failed` with a clear reason; the others serve."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with server.client() as c:
        states = {m["id"]: m for m in c.get("/models", headers=auth).json()["models"]}
        for name in EVIL:
            assert states[name]["state"] == "failed", states[name]
            assert "refused" in states[name]["reason"] or "Unknown type name" in states[name]["reason"]
            r = c.post(f"/predictions/{name}", json={"text": "hello"})
            assert r.status_code == 503 and "failed to load" in r.json()["error"], r.text
            assert c.post(f"/models/{name}/load", headers=auth).status_code == 503  # a retry refuses again
        assert "pickle" in states["evil-pickle"]["reason"]
        assert c.post("/predictions/tiny-a", json={"text": "still serving"}).status_code == 200
    for name, marker in reliability_store.markers.items():
        assert not marker.exists(), f"{name}: the pickle payload ran in the server"
    assert not any("Traceback" in line for line in server.lines)


def test_no_pickle_loading_anywhere_in_the_code() -> None:
    """torch.load only with weights_only=True; no pickle/dill/joblib loads; TorchScript only via the checked loader."""
    jit_allowed = {"shoal/artifacts.py",  # the server's only loader (checks the file first)
                   # build-side: they load artifacts the same process just traced, never the store's
                   "shoal/trace/measure.py", "shoal/trace/detector_measure.py", "shoal/trace/detector.py",
                   "shoal/trace/synth.py", "shoal/loadtest/inprocess.py"}
    problems = []
    for path in sorted((REPO / "shoal").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any((n or "").split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal")
                       for n in names):
                    problems.append(f"{rel}:{node.lineno} imports a pickle-family module")
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name.endswith("torch.load") and keywords.get("weights_only") != "True":
                problems.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
            if name.endswith("jit.load") and rel not in jit_allowed:
                problems.append(f"{rel}:{node.lineno} torch.jit.load outside shoal/artifacts.py")
            if name.endswith(("np.load", "numpy.load")) and keywords.get("allow_pickle") == "True":
                problems.append(f"{rel}:{node.lineno} np.load(allow_pickle=True)")
    assert not problems, problems


@pytest.mark.parametrize("field,value", [("files", {"../escaped": {"sha256": "0" * 64, "size": 1}}),
                                          ("files", {"/etc/passwd": {"sha256": "0" * 64, "size": 1}}),
                                          ("files", {"a\\..\\b": {"sha256": "0" * 64, "size": 1}}),
                                          ("artifact", "../../model.pt"), ("artifact", "/tmp/model.pt"),
                                          ("tokenizer", "sub/../../tok.json")])
def test_manifest_file_names_stay_in_the_model_folder(field: str, value: object, tmp_path: Path) -> None:
    good = {"id": "m", "kind": "text", "task": "classification"}
    with pytest.raises(ValidationError, match="plain relative path"):
        Manifest.model_validate({**good, field: value})
    store = LocalStore(tmp_path / "store")
    (tmp_path / "store" / "m").mkdir(parents=True)
    (tmp_path / "store" / "m" / MANIFEST_NAME).write_text(json.dumps({**good, field: value}))
    with pytest.raises(StoreError, match="corrupt"):
        store.fetch("m")


def test_an_unlisted_artifact_is_never_loaded(reliability_store: ReliabilityStore, tmp_path: Path) -> None:
    """A manifest that names an artifact without a sha256 entry: fetch refuses rather than load it unchecked."""
    store = LocalStore(tmp_path / "store")
    src = store_folder(reliability_store.store) / "tiny-a"
    manifest = Manifest.model_validate_json((src / MANIFEST_NAME).read_text())
    folder = tmp_path / "store" / "tiny-a"
    folder.mkdir(parents=True)
    for name in manifest.files:
        (folder / name).write_bytes((src / name).read_bytes())
    (folder / "other.pt").write_bytes(pickle.dumps("unchecked"))
    (folder / MANIFEST_NAME).write_text(manifest.model_copy(update={"artifact": "other.pt"}).model_dump_json())
    with pytest.raises(IntegrityError, match="other.pt has no sha256"):
        store.fetch("tiny-a")


def test_s3_manifest_cannot_write_outside_the_cache(s3_endpoint: str, tmp_path: Path) -> None:
    """A tampered manifest in S3 naming ``../../escaped`` must not make fetch write outside its cache folder."""
    import boto3

    from shoal.store import open_store

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = "supply-chain"
    s3.create_bucket(Bucket=bucket)
    payload = b"#!/bin/sh\necho owned\n"
    import hashlib

    entry = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    s3.put_object(Bucket=bucket, Key="models/m/model.pt", Body=payload)
    store = open_store(f"s3://{bucket}/models", cache_dir=tmp_path / "cache", endpoint_url=s3_endpoint)
    for name in ("../../../escaped.sh", str(tmp_path / "escaped.sh")):
        manifest = {"id": "m", "kind": "text", "task": "classification", "tokenizer": None,
                    "files": {"model.pt": entry, name: entry}}
        try:  # S3 takes such keys (SeaweedFS refuses '..'); either way fetch must not follow the name
            s3.put_object(Bucket=bucket, Key=f"models/m/{name}", Body=payload)
        except Exception:
            pass
        s3.put_object(Bucket=bucket, Key=f"models/m/{MANIFEST_NAME}", Body=json.dumps(manifest).encode())
        with pytest.raises(StoreError, match="corrupt"):
            store.fetch("m")
        assert not list(tmp_path.rglob("escaped.sh")), f"fetch wrote {name} outside the model's cache folder"


# -- the HTTP surface --
RAW_ESCAPES = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
               "%252E%252E%252Fetc", "..%5C..%5Cwindows", "tiny-a%2F..%2Fbroken", "%00tiny-a", "tiny-a%00",
               ".%2E", "%2E", "..", "%C0%AE%C0%AE%2F"]


def raw_request(url: str, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[int, bytes]:
    """Send the request line exactly as given (an HTTP client would normalise ``../`` away)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}", "Connection: close",
            "Content-Type: application/json", *[f"{k}: {v}" for k, v in (headers or {}).items()]]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[-1]


V2_BODY = b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}'


@pytest.mark.parametrize("escape", RAW_ESCAPES)
def test_model_ids_cannot_traverse_on_any_route(server: ServerProcess, escape: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = b'{"text": "x"}'
    routes = [("POST", f"/predictions/{escape}", body), ("GET", f"/predictions/{escape}?seq_0=x", b""),
              ("GET", f"/v2/models/{escape}", b""), ("GET", f"/v2/models/{escape}/ready", b""),
              ("POST", f"/v2/models/{escape}/infer", V2_BODY), ("GET", f"/models/{escape}", b""),
              ("POST", f"/models/{escape}/load", b""), ("DELETE", f"/models/{escape}", b""),
              ("POST", f"/async/predictions/{escape}", body)]
    for method, path, payload in routes:
        status, answer = raw_request(server.url, method, path, auth, payload)
        assert status in (400, 404), (method, path, status, answer[:200])
        assert b"root:" not in answer and b"Traceback" not in answer
    target = escape.replace("%2F", "/").replace("%2E", ".")
    status, answer = raw_request(server.url, "POST", "/invocations",
                                 {"X-Amzn-SageMaker-Target-Model": target}, body)
    assert status in (400, 404), (target, status, answer[:200])


def test_management_token_and_loopback_bind(server: ServerProcess) -> None:
    """Management needs the token (tests/test_server_errors.py covers every /models verb); bind is loopback."""
    assert server.url.startswith("http://127.0.0.1:")
    with server.client() as c:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"}):
            assert c.post("/models/tiny-a/load", headers=headers).status_code == 401
        assert c.get("/models", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    from shoal.config import Settings

    assert Settings().host == "127.0.0.1"


def test_every_body_has_a_size_cap(reliability_store: ReliabilityStore, tmp_path: Path) -> None:
    """Each route that reads a body answers 413 past its cap, whether the size is declared or streamed."""
    env = {"SHOAL_MAX_BODY_BYTES": "4096", "SHOAL_ASYNC_MAX_PAYLOAD": "8KiB"}
    proc = serve(reliability_store.uri, tmp_path, "--models", "tiny-a,det", "--executors", "1", env=env)
    big = b'{"text": "' + b"a" * 20000 + b'"}'
    try:
        with proc.client() as c:
            posts = [("/predictions/tiny-a", {}), ("/predictions/det", {"Content-Type": "image/png"}),
                     ("/invocations", {"X-Amzn-SageMaker-Target-Model": "tiny-a"}),
                     ("/v2/models/tiny-a/infer", {}), ("/async/predictions/tiny-a", {})]
            for path, headers in posts:
                declared = c.post(path, content=big, headers=headers)
                assert declared.status_code == 413, (path, declared.text)
                streamed = c.post(path, content=iter([big[i:i + 1000] for i in range(0, len(big), 1000)]),
                                  headers=headers)
                assert streamed.status_code == 413, (path, streamed.text)
            multipart = c.post("/predictions/det", files={"image": ("x.png", b"\x89PNG" + b"0" * 20000)})
            assert multipart.status_code == 413
            assert c.post("/predictions/tiny-a", json={"text": "small"}).status_code == 200
    finally:
        proc.stop()
    assert proc.proc is not None and proc.proc.returncode in (0, -15)


def refused(url: str, path: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return raw_request(url, "GET", path, headers)[0] in (400, 414, 431)
    except OSError:
        return True  # closed while we were still sending: also a refusal


def test_oversized_request_line_and_headers_are_refused(server: ServerProcess) -> None:
    """The head of a request is capped too (shoal/server/http_limits.py): 431 or a closed connection, no buffering."""
    assert refused(server.url, "/predictions/tiny-a?seq_0=" + "a" * 200_000)
    assert refused(server.url, "/ping", {"X-Pad": "a" * 2_000_000})
    assert refused(server.url, "/ping", {"X-Pad": "a" * 50_000_000})
    assert refused(server.url, "/ping", {f"X-{i}": "a" for i in range(100_000)})
    assert raw_request(server.url, "GET", "/ping", {"X-Pad": "a" * 30_000})[0] == 200
    with server.client() as c:
        assert c.get("/ping").status_code == 200
