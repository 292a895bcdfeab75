"""Trace a PEFT LoRA adapter (``source: {adapter: ./folder, base: <id>}``) into a member of its base's family.

Nothing is compiled: an adapter runs on its base's graph, so the member is the base's files
plus its own small weights file. ``files`` holds the base's graph, tokenizer and family graph,
the base's weights file under ``shards/<first 16 hex of its sha256>.safetensors`` (the same
bytes, so a content-addressed store keeps one copy) and ``weights.safetensors`` with the LoRA
matrices (``<target>.lora_A`` [r, in], ``<target>.lora_B`` [out, r], at the base's float dtype)
and the modules_to_save tensors (at the dtype of the base tensor each replaces). ``tensors``
lists every weight by digest: the base's (the modules_to_save ones replaced) and the LoRA ones.

The profile is the base's: the same graph does the work, and a low-rank LoRA on a few projections
adds little to it (MiniLM, r=8 on query and value: 12 k of 1.8 M multiply-adds per token and layer,
under 1 %). ``reference.json`` keeps PEFT's fp32 outputs on 4 probes (adapter_check.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from shoal.errors import UsageError
from shoal.samples import qa_pairs, sentences
from shoal.spec import ModelSpec
from shoal.store.base import ModelStore
from shoal.store.digests import file_sha256
from shoal.store.manifest import Adapter, Manifest, TensorEntry, describe_files
from shoal.store.tensors import describe_tensors
from shoal.trace import adapter_check
from shoal.trace.peft_adapter import (CONFIG_FILE, WEIGHTS_FILE, MappedAdapter, PeftAdapter, map_to_graph,
                                     read_adapter)

if TYPE_CHECKING:
    from shoal.trace.options import Log, TraceOptions

ADAPTER_FORM = 1  # a change re-traces every adapter on the next build
MEMBER_WEIGHTS = "weights.safetensors"
REFERENCE_FILE = "reference.json"
REFERENCE_PROBES = 4
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def adapter_key(spec: ModelSpec, base: Manifest, opts: TraceOptions) -> str:
    """Changes when the catalog entry, the adapter's files or the base change (so a build re-traces only then)."""
    folder = spec.source.adapter_folder()
    key = {"spec": spec.model_dump(mode="json"),
           "adapter": {n: file_sha256(folder / n) for n in (CONFIG_FILE, WEIGHTS_FILE)},
           "base": {"spec_sha256": base.spec_sha256, "files": {n: f.sha256 for n, f in sorted(base.files.items())}},
           "options": {"processor": opts.processor, "precision": opts.precision, "seq_len": opts.seq_len},
           "torch": torch.__version__, "adapter_form": ADAPTER_FORM}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def trace_adapter(spec: ModelSpec, store: ModelStore, opts: TraceOptions) -> tuple[Manifest, bool]:
    """Check the adapter against its base and PEFT, write the member into the store. Returns (manifest, traced_now)."""
    folder = spec.source.adapter_folder()
    adapter = read_adapter(folder)  # every refusal that needs no base comes first
    base = _base_manifest(spec, store)
    key = adapter_key(spec, base, opts)
    if not opts.force and store.exists(spec.id):
        existing = store.read_manifest(spec.id)
        if existing.spec_sha256 == key:
            return existing, False
    _check_base_fits(spec, base, opts)
    opts.log(f"{spec.id}: LoRA r={adapter.rank} alpha={adapter.alpha:g} on {len(adapter.lora)} modules over "
             f"{base.id} ({base.precision})")
    base_folder = store.fetch(base.id)
    assert base.weights
    base_tensors = base.tensors or describe_tensors(base_folder / base.weights, base.weights)
    base_spec, base_yaml = adapter_check.find_base_spec(spec)
    model, sep = adapter_check.rebuild_base(spec, base_spec, base_yaml, base, base_tensors)
    mapped = map_to_graph(adapter, adapter_check.linears_of(model),
                          {n: (t.dtype, list(t.shape)) for n, t in base_tensors.items()})
    seq_len = opts.seq_len or (spec.seq_len if spec.given("seq_len") else base.seq_len)
    labels = spec.labels if spec.labels else base.labels
    if base.task == "classification" and (not labels or not base.labels or len(labels) != len(base.labels)):
        raise UsageError(f"{spec.id}: {len(labels or [])} labels, but the base's head has {len(base.labels or [])} "
                         "classes")
    work = opts.build_dir / spec.id
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        manifest = _write_member(spec, key, base, base_folder, base_tensors, base_spec.pooling, sep, model, adapter,
                                 mapped, seq_len, labels, work, opts.log)
        store.push(work, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # hard links and small files: the store holds what it needs
    return manifest, True


def _write_member(spec: ModelSpec, key: str, base: Manifest, base_folder: Path, base_tensors: dict[str, TensorEntry],
                  pooling: str, sep: int, model: Any, adapter: PeftAdapter, mapped: MappedAdapter,
                  seq_len: int | None, labels: list[str] | None, work: Path, log: Log) -> Manifest:
    """The member's files in ``work`` (checked against PEFT on the way) and its manifest."""
    names = _base_files(base, base_folder, work, seq_len)
    shard_of = {f: _shard_name(base.files[f].sha256) for f in {t.file for t in base_tensors.values()}}
    for src, shard in shard_of.items():
        _link(base_folder / src, work / shard)
    _save_own_weights(mapped, base_tensors, adapter_check.float_dtype(base.precision), work / MEMBER_WEIGHTS)
    tensors: dict[str, TensorEntry] = {n: t.model_copy(update={"file": shard_of[t.file]})
                                       for n, t in base_tensors.items()}
    tensors.update(describe_tensors(work / MEMBER_WEIGHTS, MEMBER_WEIGHTS))
    assert base.tokenizer
    inputs, probes = _probes(base.task, work / base.tokenizer)
    reference = adapter_check.peft_outputs(spec, model, base.task, pooling, sep, mapped, adapter.alpha / adapter.rank,
                                           adapter_check.staged_copy(adapter.folder, work), probes, log)
    _write_reference(work / REFERENCE_FILE, base.task, inputs, reference)
    family = _family_graph(spec, base, base_folder, mapped.targets, model, pooling, sep, probes, work, log)
    if family != base.family_graph and base.family_graph in names:
        names.remove(base.family_graph)
    files = [*dict.fromkeys([*names, family]), *sorted(shard_of.values()), MEMBER_WEIGHTS, REFERENCE_FILE]
    return Manifest(
        id=spec.id, kind=base.kind, task=base.task, format=base.format, processor=base.processor,
        precision=base.precision, seq_len=seq_len, labels=labels, artifact=base.artifact, weights=MEMBER_WEIGHTS,
        tokenizer=base.tokenizer, tensors=dict(sorted(tensors.items())),
        adapter=Adapter(rank=adapter.rank, alpha=adapter.alpha, targets=mapped.targets, base=base.id),
        family_graph=family, files=describe_files(work, files),
        profile=base.profile.model_copy(deep=True) if base.profile else None,
        batching=spec.batching if spec.given("batching") else base.batching,
        source=spec.source.describe(), base=base.id, spec_sha256=key,
    )


def _base_manifest(spec: ModelSpec, store: ModelStore) -> Manifest:
    base_id = spec.source.base
    assert base_id
    if not store.exists(base_id):
        raise UsageError(f"{spec.id}: its base {base_id} is not in {store.uri}: trace the base first "
                         f"(shoal trace models/{base_id}.yaml, or shoal build --models {base_id},{spec.id})")
    return store.read_manifest(base_id)


def _check_base_fits(spec: ModelSpec, base: Manifest, opts: TraceOptions) -> None:
    """The adapter is served on the base's graph: same task, processor and precision, a shared-graph artifact."""
    where = f"{spec.id}: the base {base.id}"
    if base.adapter is not None:
        raise UsageError(f"{where} is itself an adapter: an adapter's base must be a full model")
    if base.kind != "text" or not base.weights or base.format != "torchscript":
        raise UsageError(f"{where} is a {base.kind} {base.format} artifact without a weights file: adapters need a "
                         "shared-graph text model (graph.pt + weights.safetensors)")
    if base.task != spec.task:
        raise UsageError(f"{spec.id}: task {spec.task}, but the base {base.id} is {base.task}")
    if opts.processor != base.processor:
        raise UsageError(f"{where} was traced for {base.processor}, not {opts.processor}")
    asked = opts.precision or (spec.precision if spec.given("precision") else "auto")
    if asked not in ("auto", base.precision):
        raise UsageError(f"{spec.id}: an adapter runs at its base's precision ({base.precision}), not {asked}")
    if not base.tokenizer or base.tokenizer not in base.files:
        raise UsageError(f"{where} has no tokenizer file")


def _shard_name(sha256: str) -> str:
    return f"shards/{sha256[:16]}.safetensors"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # the store's own file: identical bytes at no cost
    except OSError:
        shutil.copyfile(src, dst)


def _base_files(base: Manifest, base_folder: Path, work: Path, seq_len: int | None) -> list[str]:
    """The base's graph, tokenizer (re-truncated if the adapter asks another seq_len) and family graph."""
    assert base.tokenizer
    names = [base.artifact, base.tokenizer] + ([base.family_graph] if base.family_graph else [])
    for name in names:
        _link(base_folder / name, work / name)
    if seq_len and seq_len != base.seq_len:
        from tokenizers import Tokenizer

        (work / base.tokenizer).unlink()
        tok = Tokenizer.from_file(str(base_folder / base.tokenizer))
        tok.enable_truncation(max_length=seq_len)
        tok.save(str(work / base.tokenizer))
    return names


def _save_own_weights(mapped: MappedAdapter, base_tensors: dict[str, TensorEntry], lora_dtype: torch.dtype,
                      path: Path) -> None:
    from safetensors.torch import save_file

    own = {n: t.to(lora_dtype).contiguous() for n, t in mapped.lora.items()}
    own.update({n: t.to(_DTYPES[base_tensors[n].dtype]).contiguous() for n, t in mapped.saved.items()})
    save_file(own, str(path))


def _probes(task: str, tokenizer_file: Path) -> tuple[list[Any], tuple[torch.Tensor, torch.Tensor]]:
    """Four probe inputs and their encodings by the member's own tokenizer.json (what the server uses)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    if task == "question-answering":
        pairs = qa_pairs(REFERENCE_PROBES, seed=7)
        encs = tok.encode_batch(pairs)
        inputs: list[Any] = [{"question": q, "context": c} for q, c in pairs]
    else:
        inputs = sentences(REFERENCE_PROBES, seed=7, min_words=6, max_words=30)
        encs = tok.encode_batch(inputs)
    return inputs, (torch.tensor([e.ids for e in encs], dtype=torch.int64),
                    torch.tensor([e.attention_mask for e in encs], dtype=torch.int64))


def _write_reference(path: Path, task: str, inputs: list[Any], out: Any) -> None:
    from importlib.metadata import version

    names = {"classification": ("logits",), "embedding": ("embedding",),
             "question-answering": ("start_logits", "end_logits")}[task]
    rows = out if isinstance(out, tuple) else (out,)
    doc = {"about": "fp32 outputs of the PEFT model (PeftModel.from_pretrained over the base's fp32 model, eager) "
                    "for these inputs, to compare the served adapter with",
           "peft": version("peft"), "task": task, "inputs": inputs,
           "outputs": {n: r.float().tolist() for n, r in zip(names, rows)}}
    path.write_text(json.dumps(doc, indent=1) + "\n")


def lora_slots(graph: Path) -> list[str] | None:
    """The modules a family graph has LoRA slots for (``slots`` of its layout, the extra file family.json),
    read from the archive without loading the graph; None if it has no readable layout."""
    from shoal.family.graph import LAYOUT_FILE

    try:
        with zipfile.ZipFile(graph) as archive:
            for name in archive.namelist():
                if name.endswith(f"/extra/{LAYOUT_FILE}"):
                    slots = json.loads(archive.read(name)).get("slots")
                    return [str(s) for s in slots] if isinstance(slots, list) else None
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, AttributeError):
        return None
    return None


def _family_graph(spec: ModelSpec, base: Manifest, base_folder: Path, targets: list[str], model: Any, pooling: str,
                  sep: int, example: tuple[torch.Tensor, torch.Tensor], work: Path, log: Log) -> str:
    """The family graph the member runs in: its base's when that has a LoRA slot for every target, else
    one traced now from the base (at its stored precision) with slots for these targets too.

    A member with its own graph forms a family with the adapters that share that slot set (and the
    base's tensors), not with the base's other members: a batch runs one graph.
    """
    missing = list(targets)
    if base.family_graph:
        slots = set(lora_slots(base_folder / base.family_graph) or [])
        missing = [t for t in targets if t not in slots]
        if not missing:
            return base.family_graph
    from shoal.family import graph as family_graph
    from shoal.trace import quantize
    from shoal.trace.wrappers import wrap

    wrapper = wrap(base.task, quantize.model_at_precision(model, base.precision, "cpu"), pooling=pooling,
                   sep_token_id=sep)
    slots = tuple(dict.fromkeys([*family_graph.DEFAULT_SLOTS, *missing]))
    graph, layout = family_graph.trace(wrapper, example, slots)
    name = f"family-{hashlib.sha256(json.dumps(layout.slots).encode()).hexdigest()[:12]}.pt"
    family_graph.save(graph, layout, work / name)
    log(f"{spec.id}: {len(missing)} of {len(targets)} LoRA targets have no slot in the base's family graph: traced "
        f"{name} with slots for them ({len(layout.slots)} slots); the adapter batches with members of that graph")
    return name
