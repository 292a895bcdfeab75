"""PEFT LoRA adapters as a model source: a member over a traced base, its tensors by digest, PEFT's reference,
every refusal in one line, and the catalog's example (shoal/trace/adapters.py)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from shoal.errors import UsageError
from shoal.family.graph import Layout
from shoal.family.keys import family_key
from shoal.spec import load_spec, trace_order
from shoal.store.local import LocalStore
from shoal.store.manifest import Manifest
from shoal.store.tensors import describe_tensors
from shoal.trace.adapters import adapter_key
from shoal.trace.sources import load_eager_model
from shoal.trace.stage import TraceOptions, trace_spec
from shoal.trace.wrappers import wrap

REPO = Path(__file__).parent.parent
ADAPTER_YAML = """id: {id}
kind: text
task: classification
source:
  adapter: {folder}
  base: minilm-cls
"""


def make_peft_adapter(folder: Path, seed: int = 0, base_yaml: Path = REPO / "models" / "minilm-cls.yaml",
                      **config: Any) -> None:
    """A real PEFT save (default: SEQ_CLS LoRA r=8 over the MiniLM classifier), B drawn from a seeded generator."""
    from peft import LoraConfig, get_peft_model

    model = load_eager_model(load_spec(base_yaml))
    options = {"task_type": "SEQ_CLS", "r": 8, "lora_alpha": 16, "target_modules": ["query", "value"], **config}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' deprecation notices from inside PEFT
        peft_model = get_peft_model(model, LoraConfig(**options))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if ".lora_B." in name or (".modules_to_save." in name and p.dim() > 1):
                p.copy_(torch.randn(p.shape, generator=gen) * (0.05 if ".lora_B." in name else 0.2))
    peft_model.save_pretrained(str(folder), safe_serialization=True)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog folder: the base's entry, a PEFT adapter folder and an entry naming it (relative path)."""
    root = tmp_path_factory.mktemp("adapter-catalog")
    shutil.copy(REPO / "models" / "minilm-cls.yaml", root / "minilm-cls.yaml")
    make_peft_adapter(root / "adapters" / "good")
    (root / "cls-lora.yaml").write_text(ADAPTER_YAML.format(id="cls-lora", folder="./adapters/good"))
    return root


def base_store(minilm_store: tuple[LocalStore, Path], root: Path) -> LocalStore:
    """A store of its own holding the session's traced base (hard links), so members never leak into it."""
    shared, _ = minilm_store
    store = LocalStore(root / "store")
    store.push(shared.fetch("minilm-cls"), shared.read_manifest("minilm-cls"))
    return store


def opts(tmp: Path, logs: list[str] | None = None) -> TraceOptions:
    return TraceOptions(build_dir=tmp / "build", log=(logs.append if logs is not None else lambda m: None))


@pytest.fixture(scope="module")
def member(minilm_store: tuple[LocalStore, Path], catalog: Path,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, Manifest, list[str]]:
    root = tmp_path_factory.mktemp("adapter-member")
    store = base_store(minilm_store, root)
    logs: list[str] = []
    manifest, traced = trace_spec(load_spec(catalog / "cls-lora.yaml"), store, opts(root, logs))
    assert traced
    return store, manifest, logs


def test_member_shares_the_base_tensors_by_digest_and_brings_its_lora(member: tuple) -> None:
    store, manifest, logs = member
    base = store.read_manifest("minilm-cls")
    base_folder, folder = store.fetch("minilm-cls"), store.fetch("cls-lora")
    base_tensors = describe_tensors(base_folder / "weights.safetensors", "weights.safetensors")
    assert manifest.adapter and manifest.adapter.rank == 8 and manifest.adapter.alpha == 16
    assert manifest.adapter.base == manifest.base == "minilm-cls"
    assert manifest.adapter.targets == [f"model.bert.encoder.layer.{i}.attention.self.{m}"
                                        for i in range(6) for m in ("query", "value")]
    shard = f"shards/{base.files['weights.safetensors'].sha256[:16]}.safetensors"
    assert (folder / shard).read_bytes() == (base_folder / "weights.safetensors").read_bytes()
    for name, entry in base_tensors.items():
        got = manifest.tensors[name]
        if name.startswith("model.classifier."):  # the adapter's own head (its bias stays zero, as the base's)
            assert got.file == "weights.safetensors"
            assert (got.sha256 != entry.sha256) == name.endswith(".weight")
        else:
            assert (got.sha256, got.file, got.dtype, got.shape) == (entry.sha256, shard, entry.dtype, entry.shape)
    for target in manifest.adapter.targets:
        a, b = manifest.tensors[f"{target}.lora_A"], manifest.tensors[f"{target}.lora_B"]
        assert (a.shape, b.shape, a.dtype, a.file) == ([8, 384], [384, 8], "F32", "weights.safetensors")
    assert len(manifest.tensors) == len(base_tensors) + 24
    own = describe_tensors(folder / "weights.safetensors", "weights.safetensors")
    assert {n: t.sha256 for n, t in own.items()} == {n: t.sha256 for n, t in manifest.tensors.items()
                                                    if t.file == "weights.safetensors"}
    assert manifest.weights == "weights.safetensors" and manifest.artifact == "graph.pt"
    for name in ("graph.pt", "tokenizer.json"):
        assert manifest.files[name] == base.files[name]
    assert (manifest.precision, manifest.seq_len, manifest.labels) == (base.precision, base.seq_len, base.labels)
    assert manifest.profile == base.profile
    assert base.family_graph and manifest.family_graph == base.family_graph
    assert manifest.files[base.family_graph] == base.files[base.family_graph]
    assert family_key(manifest) == family_key(base)  # one family: the server batches them together
    assert not any("slot" in line for line in logs)  # query and value have slots in the default family graph


def test_the_served_path_answers_as_peft(member: tuple) -> None:
    """The member through the server's family machinery (family graph, shared tensors from the shard, its own
    head and LoRA unmerged) gives reference.json's fp32 PEFT outputs."""
    from tokenizers import Tokenizer

    from shoal.family.members import FamilyPool

    store, manifest, _ = member
    folder = store.fetch("cls-lora")
    ref = json.loads((folder / "reference.json").read_text())
    encs = Tokenizer.from_file(str(folder / "tokenizer.json")).encode_batch(ref["inputs"])
    ids, mask = torch.tensor([e.ids for e in encs]), torch.tensor([e.attention_mask for e in encs])
    pool = FamilyPool()
    base = pool.join(store.read_manifest("minilm-cls"), store.fetch("minilm-cls"), "cpu")
    lora = pool.join(manifest, folder, "cpu")
    assert lora.group is base.group  # the shared tensors are held once
    with torch.inference_mode():
        mixed = lora.group.forward(ids, mask, [lora, base, lora, base])
    expected = torch.tensor(ref["outputs"]["logits"])
    assert (mixed[0::2] - expected[0::2]).abs().max() < 1e-4
    assert (mixed[1::2] - expected[1::2]).abs().max() > 0.05  # the base's rows stay the base's


def test_reference_outputs_are_merged_peft_outputs(member: tuple, catalog: Path) -> None:
    from peft import PeftModel
    from tokenizers import Tokenizer

    store, manifest, _ = member
    folder = store.fetch("cls-lora")
    ref = json.loads((folder / "reference.json").read_text())
    assert len(ref["inputs"]) == 4
    encs = Tokenizer.from_file(str(folder / "tokenizer.json")).encode_batch(ref["inputs"])
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    base = load_eager_model(load_spec(REPO / "models" / "minilm-cls.yaml"))
    with torch.inference_mode():
        plain = wrap("classification", base)(ids, mask)
    merged = PeftModel.from_pretrained(base, str(catalog / "adapters" / "good")).merge_and_unload().eval()
    with torch.inference_mode():
        expected = wrap("classification", merged)(ids, mask)
    got = torch.tensor(ref["outputs"]["logits"])
    assert torch.allclose(got, expected, atol=1e-4), (got, expected)
    assert (got - plain).abs().max() > 0.05  # the adapter really changes the answers


def test_up_to_date_until_the_adapter_or_the_base_changes(member: tuple, catalog: Path, tmp_path: Path) -> None:
    store, manifest, _ = member
    spec = load_spec(catalog / "cls-lora.yaml")
    again, traced = trace_spec(spec, store, opts(tmp_path))
    assert not traced and again.spec_sha256 == manifest.spec_sha256
    base = store.read_manifest("minilm-cls")
    moved = base.model_copy(update={"spec_sha256": "0" * 64})
    assert adapter_key(spec, moved, opts(tmp_path)) != manifest.spec_sha256
    changed = tmp_path / "catalog"
    shutil.copytree(catalog, changed)
    shutil.rmtree(changed / "adapters" / "good")
    make_peft_adapter(changed / "adapters" / "good", seed=1)
    assert adapter_key(load_spec(changed / "cls-lora.yaml"), base, opts(tmp_path)) != manifest.spec_sha256


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _resave(folder: Path, edit: Any) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def _swap_for_pickle(folder: Path) -> None:
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")


Q0 = "base_model.model.bert.encoder.layer.0.attention.self.query"
REFUSALS = {
    "dora": (lambda f: _edit_config(f, use_dora=True), "DoRA (use_dora)"),
    "rslora": (lambda f: _edit_config(f, use_rslora=True), "rsLoRA (use_rslora)"),
    "fan_in_fan_out": (lambda f: _edit_config(f, fan_in_fan_out=True), "fan_in_fan_out"),
    "bias": (lambda f: _edit_config(f, bias="lora_only"), "bias 'lora_only' is not served"),
    "not_lora": (lambda f: _edit_config(f, peft_type="IA3"), "peft_type 'IA3' is not served"),
    "rank_pattern": (lambda f: _edit_config(f, rank_pattern={"query": 4}), "per-module ranks"),
    "pissa": (lambda f: _edit_config(f, init_lora_weights="pissa"), "changes the base's weights"),
    "no_linear": (lambda f: _edit_config(f, target_modules=["query", "nowhere"]),
                  "target module 'nowhere' matches no Linear layer of the base"),
    "no_linear_regex": (lambda f: _edit_config(f, target_modules=r".*\.nowhere"), "match no Linear layer"),
    "untargeted": (lambda f: _edit_config(f, target_modules=["value"]), "which target_modules does not name"),
    "rank_mismatch": (lambda f: _edit_config(f, r=4), "do not fit r=4"),
    "shape": (lambda f: _resave(f, lambda t: t.update({f"{Q0}.lora_A.weight": torch.zeros(8, 100)})),
              "do not fit r=8 over the base's Linear [384, 384]"),
    "half": (lambda f: _resave(f, lambda t: t.pop(f"{Q0}.lora_B.weight")), "has lora_A but not its other half"),
    "embedding": (lambda f: _resave(f, lambda t: t.update({"base_model.model.bert.embeddings.word_embeddings"
                                                            ".lora_embedding_A": torch.zeros(8, 30522)})),
                  "not a LoRA A/B matrix of a Linear layer"),
    "stray_tensor": (lambda f: _resave(f, lambda t: t.update({"base_model.model.extra.weight": torch.zeros(2)})),
                     "'extra.weight' matches no weight of the base"),
    "pickle": (_swap_for_pickle, "adapter_model.bin is a pickle, which shoal never loads"),
    "no_config": (lambda f: (f / "adapter_config.json").unlink(), "no adapter_config.json"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_every_refusal_is_one_clear_line(case: str, minilm_store: tuple, catalog: Path, tmp_path: Path) -> None:
    edit, message = REFUSALS[case]
    root = tmp_path / "catalog"
    shutil.copytree(catalog, root)
    edit(root / "adapters" / "good")
    store = base_store(minilm_store, tmp_path)
    with pytest.raises(UsageError) as err:
        trace_spec(load_spec(root / "cls-lora.yaml"), store, opts(tmp_path))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not store.exists("cls-lora")


@pytest.mark.parametrize("extra, message", [
    ("precision: bf16\n", "an adapter runs at its base's precision (fp32), not bf16"),
    ("labels: [a, b, c]\n", "3 labels, but the base's head has 2 classes"),
    ("task: embedding\n", "task embedding, but the base minilm-cls is classification"),
], ids=["precision", "labels", "task"])
def test_what_the_base_decides_cannot_be_changed(extra: str, message: str, minilm_store: tuple, catalog: Path,
                                                 tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    shutil.copytree(catalog, root)
    text = (root / "cls-lora.yaml").read_text().replace("task: classification\n", "")
    (root / "cls-lora.yaml").write_text(text + ("" if extra.startswith("task") else "task: classification\n")
                                        + extra)
    with pytest.raises(UsageError) as err:
        trace_spec(load_spec(root / "cls-lora.yaml"), base_store(minilm_store, tmp_path), opts(tmp_path))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_shorter_seq_len_retruncates_only_the_tokenizer(minilm_store: tuple, catalog: Path,
                                                          tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    root = tmp_path / "catalog"
    shutil.copytree(catalog, root)
    (root / "cls-lora.yaml").write_text((root / "cls-lora.yaml").read_text() + "seq_len: 32\n")
    store = base_store(minilm_store, tmp_path)
    manifest, _ = trace_spec(load_spec(root / "cls-lora.yaml"), store, opts(tmp_path))
    base = store.read_manifest("minilm-cls")
    assert manifest.seq_len == 32 and base.seq_len == 128
    assert manifest.files["tokenizer.json"] != base.files["tokenizer.json"]
    assert manifest.files["graph.pt"] == base.files["graph.pt"]
    enc = Tokenizer.from_file(str(store.fetch("cls-lora") / "tokenizer.json")).encode(" ".join(["word"] * 100))
    assert len(enc.ids) == 32


def test_a_base_its_catalog_entry_no_longer_builds_is_refused(minilm_store: tuple, catalog: Path,
                                                              tmp_path: Path) -> None:
    """The fp32 base is rebuilt from its catalog entry and must be the stored one, tensor for tensor."""
    root = tmp_path / "catalog"
    shutil.copytree(catalog, root)
    yaml_path = root / "minilm-cls.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("seed: 0", "seed: 1"))  # another random head
    with pytest.raises(UsageError, match=r"is not what its catalog entry builds now \(model.classifier.weight "
                                         r"differs\): re-trace the base"):
        trace_spec(load_spec(root / "cls-lora.yaml"), base_store(minilm_store, tmp_path), opts(tmp_path))


def test_a_base_not_in_the_store_is_named(catalog: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"its base minilm-cls is not in .*: trace the base first"):
        trace_spec(load_spec(catalog / "cls-lora.yaml"), LocalStore(tmp_path / "empty"), opts(tmp_path))


def test_a_pickle_beside_the_safetensors_is_never_read(minilm_store: tuple, catalog: Path, tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    shutil.copytree(catalog, root)
    (root / "adapters" / "good" / "adapter_model.bin").write_bytes(b"\x80\x04garbage that would fail to unpickle")
    manifest, traced = trace_spec(load_spec(root / "cls-lora.yaml"), base_store(minilm_store, tmp_path),
                                  opts(tmp_path))
    assert traced and manifest.adapter


def test_targets_without_a_family_graph_slot_get_their_own_graph(minilm_store: tuple, catalog: Path,
                                                                 tmp_path: Path) -> None:
    """A base whose family graph has slots for the query projections only: the member gets a graph with its slots."""
    store = base_store(minilm_store, tmp_path)
    base = store.read_manifest("minilm-cls")
    staged = tmp_path / "base"
    shutil.copytree(store.fetch("minilm-cls"), staged)
    slots = [f"model.bert.encoder.layer.{i}.attention.self.query" for i in range(6)]
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(staged / "narrow.pt"),
                   _extra_files={"family.json": Layout(slots=slots).to_json()})
    from shoal.store.manifest import describe_files

    store.push(staged, base.model_copy(update={"family_graph": "narrow.pt",
                                               "files": describe_files(staged, [*base.files, "narrow.pt"])}))
    logs: list[str] = []
    manifest, _ = trace_spec(load_spec(catalog / "cls-lora.yaml"), store, opts(tmp_path, logs))
    assert manifest.family_graph and manifest.family_graph.startswith("family-") and "narrow.pt" not in manifest.files
    lacking = [line for line in logs if "have no slot" in line]
    assert lacking and "6 of 12" in lacking[0]
    from shoal.family.graph import load

    _, layout = load(store.fetch(manifest.id) / manifest.family_graph, "cpu")
    assert set(manifest.adapter.targets) <= set(layout.slots)
    from tokenizers import Tokenizer

    from shoal.family.members import FamilyPool

    folder = store.fetch(manifest.id)  # the server's family path, unmerged, against PEFT's fp32 outputs
    ref = json.loads((folder / "reference.json").read_text())
    encs = Tokenizer.from_file(str(folder / "tokenizer.json")).encode_batch(ref["inputs"])
    ids, mask = torch.tensor([e.ids for e in encs]), torch.tensor([e.attention_mask for e in encs])
    member = FamilyPool().join(manifest, folder, "cpu")
    with torch.inference_mode():
        out = member.group.forward(ids, mask, [member] * len(encs))
    assert (out - torch.tensor(ref["outputs"]["logits"])).abs().max() < 1e-4


@pytest.mark.parametrize("source, message", [
    ({"adapter": "./a"}, "an adapter source needs base"),
    ({"adapter": "./a", "base": "minilm-cls", "package": "x"}, "exactly one of: package, path, config, adapter"),
    ({"adapter": "./a", "base": "minilm-cls", "seed": 3}, "takes only adapter and base (not seed)"),
    ({"package": "x", "base": "minilm-cls"}, "base goes with adapter"),
    ({"adapter": "./a", "base": "../up"}, "invalid model id '../up'"),
], ids=["no_base", "two_sources", "seed", "base_alone", "bad_base_id"])
def test_spec_refuses_malformed_adapter_sources(source: dict, message: str, tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"id": "m", "task": "classification", "source": source}))
    with pytest.raises(UsageError) as err:
        load_spec(path)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_spec_resolves_the_adapter_folder_beside_the_yaml_and_orders_bases_first(catalog: Path) -> None:
    spec = load_spec(catalog / "cls-lora.yaml")
    assert spec.source.adapter_folder() == catalog / "adapters" / "good"
    assert spec.labels is None  # taken from the base
    base = load_spec(catalog / "minilm-cls.yaml")
    assert [s.id for s in trace_order([spec, base])] == ["minilm-cls", "cls-lora"]


def test_the_catalog_example_is_made_deterministically_and_traces(minilm_store: tuple, tmp_path: Path) -> None:
    """models/minilm-cls-lora.yaml: the build makes its PEFT folder when missing (same bytes every time)."""
    from safetensors.torch import load_file

    from shoal.trace.lora_example import ensure_examples

    root = tmp_path / "models"
    root.mkdir()
    for name in ("minilm-cls.yaml", "minilm-cls-lora.yaml"):
        shutil.copy(REPO / "models" / name, root / name)
    spec = load_spec(root / "minilm-cls-lora.yaml")
    folder = spec.source.adapter_folder()
    ensure_examples([spec], lambda m: None)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"]), config["task_type"]) == \
        (8, 16, ["query", "value"], "SEQ_CLS")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert all(t.abs().max() > 0 for n, t in tensors.items() if "lora_B" in n)
    assert "base_model.model.classifier.weight" in tensors
    first = (folder / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(folder)
    ensure_examples([spec], lambda m: None)
    assert (folder / "adapter_model.safetensors").read_bytes() == first
    manifest, traced = trace_spec(spec, base_store(minilm_store, tmp_path), opts(tmp_path))
    assert traced and manifest.adapter and len(manifest.adapter.targets) == 12


def test_an_int8_bf16_base_gets_lora_at_its_float_dtype(catalog: Path, tmp_path: Path) -> None:
    """int8 schemes: LoRA at the scheme's float dtype (bf16 here), the head at the base head's dtype."""
    from shoal.trace.precision import cpu_has_fast_bf16

    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bf16")
    store = LocalStore(tmp_path / "store")
    trace_spec(load_spec(catalog / "minilm-cls.yaml"), store,
               TraceOptions(precision="int8-bf16", batch_sizes=[1], isolated_profile=False,
                            build_dir=tmp_path / "build"))
    manifest, _ = trace_spec(load_spec(catalog / "cls-lora.yaml"), store, opts(tmp_path))
    base = store.read_manifest("minilm-cls")
    assert manifest.precision == "int8-bf16"
    q0 = "model.bert.encoder.layer.0.attention.self.query"
    assert manifest.tensors[f"{q0}.lora_A"].dtype == "BF16"
    assert manifest.tensors[f"{q0}.weight"].dtype == "I8"
    base_tensors = describe_tensors(store.fetch("minilm-cls") / "weights.safetensors", "x")
    assert manifest.tensors["model.classifier.weight"].dtype == base_tensors["model.classifier.weight"].dtype
    assert manifest.tensors[f"{q0}.weight"].sha256 == base_tensors[f"{q0}.weight"].sha256
    assert manifest.profile == base.profile
    # served over the int8-bf16 family graph, the answers stay close to fp32 PEFT's (0.015 measured)
    from tokenizers import Tokenizer

    from shoal.family.members import FamilyPool

    folder = store.fetch("cls-lora")
    ref = json.loads((folder / "reference.json").read_text())
    encs = Tokenizer.from_file(str(folder / "tokenizer.json")).encode_batch(ref["inputs"])
    ids, mask = torch.tensor([e.ids for e in encs]), torch.tensor([e.attention_mask for e in encs])
    lora = FamilyPool().join(manifest, folder, "cpu")
    with torch.inference_mode():
        served = lora.group.forward(ids, mask, [lora] * len(encs)).float().softmax(-1)
    change = (served - torch.tensor(ref["outputs"]["logits"]).softmax(-1)).abs().max()
    assert change < 0.02


def test_the_cli_says_a_refusal_in_one_line(catalog: Path, tmp_path: Path) -> None:
    """`shoal trace` on an adapter: no base in the store, then a DoRA adapter: one error line each, exit 2."""
    import os
    import subprocess
    import sys

    root = tmp_path / "catalog"
    shutil.copytree(catalog, root)
    env = {**os.environ, "SHOAL_CACHE_DIR": str(tmp_path / "cache")}

    def trace() -> str:
        proc = subprocess.run([sys.executable, "-m", "shoal.cli", "trace", "cls-lora.yaml", "--store", "file://store"],
                              cwd=root, env=env, capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        return lines[0]

    assert "its base minilm-cls is not in file://store: trace the base first" in trace()
    _edit_config(root / "adapters" / "good", use_dora=True)
    assert "DoRA (use_dora) rescales the weights by learned magnitudes: not served" in trace()


@pytest.mark.parametrize("task, task_type", [("embedding", "FEATURE_EXTRACTION"),
                                             ("question-answering", "QUESTION_ANS")])
def test_other_text_tasks_map_and_match_peft(task: str, task_type: str, tmp_path: Path) -> None:
    """A tiny random BERT base for each other task: the same mapping, the reference equals merged PEFT."""
    import yaml
    from peft import PeftModel
    from tokenizers import Tokenizer

    from shoal.trace.tiny import tiny_spec

    root = tmp_path / "catalog"
    root.mkdir()
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_spec("tiny", task).model_dump(mode="json")))
    store = LocalStore(tmp_path / "store")
    trace_spec(load_spec(root / "tiny.yaml"), store, TraceOptions(isolated_profile=False, build_dir=tmp_path / "b"))
    make_peft_adapter(root / "lora", base_yaml=root / "tiny.yaml", task_type=task_type, r=4, lora_alpha=8,
                      target_modules=["key", "dense"])
    (root / "tiny-lora.yaml").write_text(ADAPTER_YAML.format(id="tiny-lora", folder="lora")
                                         .replace("classification", task).replace("minilm-cls", "tiny"))
    manifest, _ = trace_spec(load_spec(root / "tiny-lora.yaml"), store, opts(tmp_path))
    assert manifest.adapter and manifest.adapter.rank == 4 and manifest.adapter.scale == 2
    assert "model.encoder.layer.0.attention.output.dense" in manifest.adapter.targets or \
        "model.bert.encoder.layer.0.attention.output.dense" in manifest.adapter.targets
    folder = store.fetch("tiny-lora")
    ref = json.loads((folder / "reference.json").read_text())
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    inputs = [(x["question"], x["context"]) for x in ref["inputs"]] if task == "question-answering" else ref["inputs"]
    encs = tok.encode_batch(inputs)
    ids, mask = torch.tensor([e.ids for e in encs]), torch.tensor([e.attention_mask for e in encs])
    base = load_eager_model(load_spec(root / "tiny.yaml"))
    merged = PeftModel.from_pretrained(base, str(root / "lora")).merge_and_unload().eval()
    with torch.inference_mode():
        out = wrap(task, merged)(ids, mask)
    outs = out if isinstance(out, tuple) else (out,)
    for expected, got in zip(outs, ref["outputs"].values()):
        assert torch.allclose(torch.tensor(got), expected, atol=1e-4)
