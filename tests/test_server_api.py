"""The server's protocols against a real uvicorn process: outputs equal the model run in-process."""

from __future__ import annotations

import asyncio
import functools
import random

import httpx
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from shoal.graphs import load_text_model
from shoal.samples import qa_pairs, sentences
from shoal.store.base import ModelStore
from tests.server_fixtures import ServerProcess, server, store_uri, tiny_store  # noqa: F401

TEXT_MODELS = ["tiny-cls", "tiny-cls2", "tiny-emb"]


@functools.lru_cache(maxsize=None)
def _load(store: ModelStore, model_id: str) -> tuple[Tokenizer, torch.jit.ScriptModule]:
    folder = store.fetch(model_id)
    return Tokenizer.from_file(str(folder / "tokenizer.json")), load_text_model(folder, store.read_manifest(model_id))


def in_process(store: ModelStore, model_id: str, text: str) -> np.ndarray:
    """The model run directly (batch of one, no padding): what every served answer must equal."""
    tok, module = _load(store, model_id)
    enc = tok.encode(text)
    with torch.inference_mode():
        out = module(torch.tensor([enc.ids]), torch.tensor([enc.attention_mask]))
    return out[0].numpy()


def served_vector(model_id: str, prediction: dict) -> np.ndarray:
    if "embedding" in prediction:
        return np.array(prediction["embedding"])
    return np.array([prediction["scores"][k] for k in ("negative", "positive")])


def expected_vector(store: ModelStore, model_id: str, text: str) -> np.ndarray:
    out = in_process(store, model_id, text)
    if model_id == "tiny-emb":
        return out
    e = np.exp(out - out.max())
    return e / e.sum()


def test_concurrent_mixed_models_match_in_process(server: ServerProcess, tiny_store: ModelStore) -> None:
    texts = sentences(12, seed=5, min_words=3, max_words=40)
    rng = random.Random(0)
    jobs = [(rng.choice(TEXT_MODELS), t) for t in texts for _ in range(3)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post(f"/predictions/{m}", json={"text": t}) for m, t in jobs))

    responses = asyncio.run(run())
    cache: dict[tuple[str, str], np.ndarray] = {}
    for (model_id, text), resp in zip(jobs, responses):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model_id"] == model_id
        assert set(body["timings"]) >= {"queue_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "total_ms"}
        key = (model_id, text)
        if key not in cache:
            cache[key] = expected_vector(tiny_store, model_id, text)
        np.testing.assert_allclose(served_vector(model_id, body["prediction"]), cache[key], atol=1e-4)


def test_client_batch_and_query_form(server: ServerProcess, tiny_store: ModelStore) -> None:
    texts = ["short one", "a somewhat longer sentence with more words in it"]
    with server.client() as c:
        body = c.post("/predictions/tiny-cls", json={"inputs": texts}).json()
        assert len(body["predictions"]) == 2
        for text, pred in zip(texts, body["predictions"]):
            np.testing.assert_allclose(served_vector("tiny-cls", pred), expected_vector(tiny_store, "tiny-cls", text),
                                       atol=1e-4)
        got = c.get("/predictions/tiny-cls", params={"seq_0": "hello there"}).json()["prediction"]
        np.testing.assert_allclose(served_vector("tiny-cls", got),
                                   expected_vector(tiny_store, "tiny-cls", "hello there"), atol=1e-4)
        pair = c.get("/predictions/tiny-cls", params={"seq_0": "hello", "seq_1": "world"})
        assert pair.status_code == 200 and pair.json()["prediction"]["label"] in ("negative", "positive")


def test_question_answering_span_is_context_text(server: ServerProcess) -> None:
    pairs = qa_pairs(4, seed=1)
    with server.client() as c:
        for question, context in pairs:
            pred = c.post("/predictions/tiny-qa", json={"question": question, "context": context}).json()["prediction"]
            assert context[pred["start"]:pred["end"]] == pred["answer"] and pred["answer"]
            assert 0.0 < pred["score"] <= 1.0
        batch = c.post("/predictions/tiny-qa", json={"inputs": [{"question": q, "context": x} for q, x in pairs]})
        assert [p["answer"] for p in batch.json()["predictions"]] == [
            c.post("/predictions/tiny-qa", json={"question": q, "context": x}).json()["prediction"]["answer"]
            for q, x in pairs]
        query = c.get("/predictions/tiny-qa", params={"seq_0": pairs[0][0], "seq_1": pairs[0][1]})
        assert query.status_code == 200


def test_kserve_v2(server: ServerProcess, tiny_store: ModelStore) -> None:
    with server.client() as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        meta = c.get("/v2/models/tiny-emb").json()
        assert meta["name"] == "tiny-emb" and meta["inputs"][0]["name"] == "text"
        assert c.get("/v2/models/tiny-emb/ready").json()["ready"] is True
        req = {"id": "r1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a b", "c"]}]}
        out = c.post("/v2/models/tiny-emb/infer", json=req).json()
        assert out["id"] == "r1" and out["model_name"] == "tiny-emb"
        tensor = out["outputs"][0]
        assert tensor["datatype"] == "FP32" and tensor["shape"][0] == 2
        first = np.array(tensor["data"][: tensor["shape"][1]])
        np.testing.assert_allclose(first, expected_vector(tiny_store, "tiny-emb", "a b"), atol=1e-4)
        qa = {"inputs": [{"name": "question", "shape": [1], "datatype": "BYTES", "data": ["Who?"]},
                         {"name": "context", "shape": [1], "datatype": "BYTES", "data": ["Bob sat down."]}]}
        names = [t["name"] for t in c.post("/v2/models/tiny-qa/infer", json=qa).json()["outputs"]]
        assert names == ["answer", "score", "start", "end"]


def test_sagemaker_contract(server: ServerProcess) -> None:
    with server.client() as c:
        assert c.get("/ping").status_code == 200
        r = c.post("/invocations", json={"text": "hi"}, headers={"X-Amzn-SageMaker-Target-Model": "tiny-cls.tar.gz"})
        assert r.status_code == 200 and r.json()["model_id"] == "tiny-cls"
        missing = c.post("/invocations", json={"text": "hi"})
        assert missing.status_code == 400 and "X-Amzn-SageMaker-Target-Model" in missing.json()["error"]


def test_models_listing_docs_and_metrics(server: ServerProcess) -> None:
    with server.client() as c:
        c.post("/predictions/tiny-cls", json={"text": "warm"})
        listing = c.get("/models").json()
        by_id = {m["id"]: m for m in listing["models"]}
        assert by_id["tiny-cls"]["state"] == "ready" and by_id["tiny-cls"]["task"] == "classification"
        assert by_id["tiny-cls"]["bytes"] > 0 and by_id["tiny-cls"]["load_ms"] > 0
        assert by_id["tiny-cls"]["own_bytes"] > 0 and by_id["tiny-cls"]["shared_bytes"] >= 0
        assert "family" in by_id["tiny-cls"] and listing["total_bytes"] >= by_id["tiny-cls"]["own_bytes"]
        assert by_id["broken"]["state"] == "failed" and "sha256" in by_id["broken"]["reason"]
        assert c.get("/docs").status_code == 200
        spec = c.get("/openapi.json").json()
        assert "/predictions/{model_id}" in spec["paths"] and "/v2/models/{model_id}/infer" in spec["paths"]
        invocations = spec["paths"]["/invocations"]["post"]
        assert {x["name"] for x in invocations["parameters"]} >= {"X-Amzn-SageMaker-Target-Model"}
        assert "image/jpeg" in invocations["requestBody"]["content"]
        text = c.get("/metrics").text
    for name in ("shoal_inference_requests_total", "shoal_inference_queue_duration_seconds_bucket",
                 "shoal_inference_compute_duration_seconds_bucket", "shoal_request_duration_seconds_bucket",
                 "shoal_batch_size_bucket", "shoal_queue_depth", "shoal_models_resident", "shoal_resident_bytes",
                 "shoal_model_load_duration_seconds_bucket", "shoal_model_cache_hits_total",
                 "shoal_model_cache_misses_total", "shoal_model_evictions_total", "shoal_utilization",
                 "process_resident_memory_bytes"):
        assert name in text, name
    assert 'shoal_inference_requests_total{model="tiny-cls",status="200"}' in text


@pytest.mark.parametrize("path", ["/ping", "/v2/health/live"])
def test_noop_routes_are_cheap(server: ServerProcess, path: str) -> None:
    with server.client() as c:
        r = c.get(path)
    assert r.status_code == 200 and len(r.content) < 64
