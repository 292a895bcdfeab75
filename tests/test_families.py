"""Model families over HTTP: members batched together through the family graph, adapters served unmerged."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import torch

from shoal.family import graph as family_graph
from shoal.family.keys import family_key
from shoal.graphs import load_graph
from shoal.server.residency import model_cost
from shoal.store import open_store
from shoal.store.base import ModelStore
from shoal.store.manifest import Adapter, describe_files
from shoal.store.tensors import describe_tensors
from shoal.trace.synth import synth_models
from shoal.trace.tiny import make_tiny_model
from tests.server_fixtures import ServerProcess, add_broken_copy

TEXTS = ["the first sentence", "another one, a little longer than the first", "short"]
MEMBERS = ["fam-0000", "fam-0001", "fam-0002", "fam-lora"]
LORA_TARGETS = ["model.bert.encoder.layer.0.attention.self.query", "model.bert.encoder.layer.1.attention.self.value"]


def _add_adapter(store: ModelStore, base_id: str, model_id: str, rank: int = 4, alpha: float = 8.0) -> None:
    """A LoRA member written by hand: the base's files plus a file of LoRA factors (what trace writes for PEFT)."""
    base = store.read_manifest(base_id)
    staging = Path(tempfile.mkdtemp(prefix="shoal-adapter-"))
    try:
        folder = store.fetch(base_id)
        for name in base.files:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, staging / name)
        g = torch.Generator().manual_seed(7)
        weights = load_graph(folder / base.artifact, "cpu")[1]
        shapes = {n: base.tensors[n].shape for n in weights}
        lora = {}
        for target in LORA_TARGETS:
            out_f, in_f = shapes[f"{target}.weight"]
            lora[f"{target}.lora_A"] = torch.randn(rank, in_f, generator=g) * 0.3
            lora[f"{target}.lora_B"] = torch.randn(out_f, rank, generator=g) * 0.3
        from safetensors.torch import save_file

        save_file(lora, str(staging / "lora.safetensors"))
        tensors = {**base.tensors, **describe_tensors(staging / "lora.safetensors", "lora.safetensors")}
        manifest = base.model_copy(update={
            "id": model_id, "base": base_id, "tensors": tensors,
            "adapter": Adapter(rank=rank, alpha=alpha, targets=LORA_TARGETS, base=base_id),
            "files": describe_files(staging, [*base.files, "lora.safetensors"])})
        store.push(staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture(scope="module")
def family_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("family-store")
    store = open_store(f"file://{root / 'store'}")
    make_tiny_model(store, "fam", task="classification", seed=11, build_dir=root / "build")
    synth_models(store, "fam", 3, prefix="fam", build_dir=root / "build")
    _add_adapter(store, "fam", "fam-lora")
    add_broken_copy(store, root / "store", "fam-0001", "fam-broken")
    return store


@pytest.fixture(scope="module")
def family_server(family_store: ModelStore) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--store", family_store.uri, "--executors", "1", "--threads", "1",
                          "--prefetch-batches", "0"]).start()
    yield proc
    proc.stop()


def _scores(c: httpx.Client, model_id: str, text: str) -> tuple[dict, int]:
    r = c.post(f"/predictions/{model_id}", json={"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["prediction"]["scores"], body["timings"]["batch_size"]


def test_members_form_one_family(family_store: ModelStore) -> None:
    keys = {family_key(family_store.read_manifest(m)) for m in ["fam", *MEMBERS]}
    assert len(keys) == 1 and None not in keys
    other = make_tiny_model(family_store, "unrelated", seed=12)
    assert family_key(other) not in keys  # other matrices: another family


def test_members_share_a_batch_and_answer_as_alone(family_server: ServerProcess) -> None:
    with family_server.client() as c:
        alone = {(m, t): _scores(c, m, t)[0] for m in MEMBERS for t in TEXTS}
        assert len({tuple(alone[(m, TEXTS[0])].values()) for m in MEMBERS}) == len(MEMBERS)  # members differ
        shared = 0
        for attempt in range(30):
            results: dict[str, tuple[dict, int]] = {}

            def ask(m: str, text: str) -> None:
                with httpx.Client(base_url=family_server.url, timeout=30) as own:
                    results[m] = _scores(own, m, text)

            # a long request keeps the only executor busy while the members' requests queue behind it
            blocker = threading.Thread(target=lambda: c.post("/predictions/fam", json={"inputs": TEXTS * 60}))
            blocker.start()
            text = TEXTS[attempt % len(TEXTS)]
            threads = [threading.Thread(target=ask, args=(m, text)) for m in MEMBERS]
            for t in threads:
                t.start()
            for t in threads + [blocker]:
                t.join()
            assert set(results) == set(MEMBERS)
            for m, (scores, _) in results.items():
                expected = alone[(m, text)]
                assert max(abs(scores[k] - expected[k]) for k in scores) < 1e-5, (m, scores, expected)
            if all(size == len(MEMBERS) for _, size in results.values()):
                shared += 1
                if shared >= 3:
                    break
        assert shared >= 1, "the members' requests never shared a batch"


def test_adapter_is_served_unmerged_as_peft_merges_it(family_store: ModelStore, family_server: ServerProcess) -> None:
    """The server adds B(A x) beside the shared product; merging W + (alpha/r) B A must give the same answer."""
    manifest = family_store.read_manifest("fam-lora")
    folder = family_store.fetch("fam-lora")
    graph, names = load_graph(folder / manifest.artifact, "cpu")
    from safetensors.torch import load_file

    base = load_file(str(folder / "weights.safetensors"))
    lora = load_file(str(folder / "lora.safetensors"))
    assert manifest.adapter is not None
    for target in manifest.adapter.targets:
        base[f"{target}.weight"] = base[f"{target}.weight"] + manifest.adapter.scale * (
            lora[f"{target}.lora_B"] @ lora[f"{target}.lora_A"])
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    with family_server.client() as c:
        for text in TEXTS:
            enc = tok.encode(text)
            ids = torch.tensor([enc.ids])
            logits = graph(ids, torch.ones_like(ids), [base[n] for n in names])
            probs = torch.softmax(logits.float(), dim=-1)[0].tolist()
            served, _ = _scores(c, "fam-lora", text)
            assert list(served.values()) == pytest.approx(probs, abs=1e-5)


def test_corrupted_member_fails_alone(family_server: ServerProcess) -> None:
    with family_server.client() as c:
        r = c.post("/predictions/fam-broken", json={"text": "hello"})
        assert r.status_code == 503 and "sha256" in r.json()["error"]
        for m in MEMBERS:
            _scores(c, m, "hello")
        states = {m["id"]: m["state"] for m in c.get("/models").json()["models"]}
        assert states["fam-broken"] == "failed" and all(states[m] == "ready" for m in MEMBERS)


def test_shared_tensors_count_once_against_the_budget(family_store: ModelStore) -> None:
    manifests = [family_store.read_manifest(m) for m in MEMBERS]
    base_cost = model_cost(manifests[0])
    budget = base_cost + 4 * (base_cost // 8)  # far less than four whole models
    assert budget < sum(model_cost(m) for m in manifests)
    proc = ServerProcess(["--store", family_store.uri, "--models", ",".join(MEMBERS), "--memory-budget",
                          str(budget), "--preload", "none"]).start()
    try:
        with proc.client() as c:
            for m in MEMBERS:
                _scores(c, m, "hello")
            listing = c.get("/models").json()
            states = {m["id"]: m for m in listing["models"]}
            assert all(states[m]["state"] == "ready" and states[m]["loads"] == 1 for m in MEMBERS), states
            assert listing["resident_bytes"] <= budget
    finally:
        proc.stop()


def test_family_graph_runs_each_member_as_its_own_graph(family_store: ModelStore) -> None:
    """In process: a mixed batch through the family graph equals each member's shared graph, row by row."""
    from safetensors.torch import load_file

    members = ["fam-0000", "fam-0001"]
    folder0 = family_store.fetch(members[0])
    manifest0 = family_store.read_manifest(members[0])
    assert manifest0.family_graph is not None
    fgraph, layout = family_graph.load(folder0 / manifest0.family_graph, "cpu")
    plain, names = load_graph(folder0 / manifest0.artifact, "cpu")
    weights = {}
    for m in members:
        man = family_store.read_manifest(m)
        folder = family_store.fetch(m)
        loaded: dict[str, torch.Tensor] = {}
        for name, entry in man.tensors.items():
            loaded[name] = load_file(str(folder / entry.file))[entry.key or name]
        weights[m] = loaded
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2178, 102, 0]])
    mask = (ids != 0).long()
    shared = [weights[members[0]][n] for n in layout.shared]
    stacked = family_graph.stack([family_graph.member_tensors(layout, weights[m]) for m in members])
    mixed = fgraph(ids, mask, torch.tensor([0, 1]), shared, *stacked)
    for row, m in enumerate(members):
        own = plain(ids[row:row + 1], mask[row:row + 1], [weights[m][n] for n in names])
        assert torch.allclose(mixed[row:row + 1], own, atol=1e-5)
