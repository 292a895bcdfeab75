"""The trace stage: catalog entry -> compiled artifact + measured profile -> model store."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shoal.errors import ShoalError, UsageError
from shoal.samples import qa_pairs, sentences
from shoal.spec import ModelSpec
from shoal.store.base import ModelStore
from shoal.store.manifest import GateFigures, Manifest, Profile, describe_files
from shoal.store.tensors import describe_tensors
from shoal import graphs
from shoal.trace import compilers, precision as prec, quantize, selection
from shoal.trace.sources import load_eager_model, load_tokenizer, save_tokenizer_json
from shoal.trace.options import ARTIFACT_FORM, Log, TraceOptions, trace_key  # noqa: F401 (re-exported)
from shoal.trace.wrappers import wrap

PROBES = 64
GRAPH_FILE = "graph.pt"
WEIGHTS_FILE = "weights.safetensors"
FAMILY_FILE = "family.pt"


@dataclass
class Candidate:
    precision: str
    folder: Path
    profile: dict[str, Any]
    verdict: str
    accepted: bool
    check: prec.Agreement | None = None
    param_bytes: int = 0

    def gate(self) -> GateFigures:
        sizes = sorted(int(b) for b in self.profile.get("latency_ms_p50", {}))
        figures = GateFigures(accepted=self.accepted, weight_bytes=self.param_bytes,
                              seq_per_s={b: round(b * 1000.0 / prec.speed_figure(self, b), 2) for b in sizes})
        if self.check is not None:
            figures.max_probability_change = self.check.max_probability_diff
            figures.argmax_agreement = self.check.argmax_agreement
            figures.min_cosine = self.check.min_cosine
        return figures


def trace_spec(spec: ModelSpec, store: ModelStore, opts: TraceOptions) -> tuple[Manifest, bool]:
    """Trace one catalog entry into the store. Returns (manifest, traced_now); up-to-date models are skipped."""
    if spec.kind == "detector":  # exported by Ultralytics in its own venv, not traced here
        from shoal.trace.detector import trace_detector

        return trace_detector(spec, store, opts)
    if spec.source.adapter:  # a member of its base's family: the base's graph, its own LoRA tensors
        from shoal.trace.adapters import trace_adapter

        return trace_adapter(spec, store, opts)
    key = trace_key(spec, opts)
    if not opts.force and store.exists(spec.id):
        existing = store.read_manifest(spec.id)
        if existing.spec_sha256 == key:
            return existing, False
    spec = spec.model_copy(update={k: v for k, v in (("seq_len", opts.seq_len), ("batch_sizes", opts.batch_sizes))
                                   if v is not None})
    compilers.require_processor(opts.processor)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message=".*loss_type.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    threads = opts.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    opts.log(f"{spec.id}: loading {spec.source.describe()}")
    model = load_eager_model(spec)
    tokenizer = load_tokenizer(spec)
    probe = _tokenize_probes(spec, tokenizer, PROBES, seed=1)
    fresh = _tokenize_probes(spec, tokenizer, 3, seed=2)
    with torch.inference_mode():
        reference = wrap(spec.task, model, pooling=spec.pooling, sep_token_id=tokenizer.sep_token_id or 102)(*probe)
    requested = opts.precision or spec.precision
    if requested in quantize.SCHEMES and opts.processor != "cpu":
        raise UsageError(f"{spec.id}: precision {requested} is offered on cpu only (asked on {opts.processor})")
    choices = ([*prec.offered_precisions(opts.processor),
                *quantize.offered(opts.processor, prec.cpu_has_fast_bf16())] if requested == "auto" else [requested])
    work = opts.build_dir / spec.id
    candidates = []
    for precision in choices:
        candidates.append(_trace_candidate(spec, model, tokenizer, precision, probe, fresh, reference, work, threads,
                                           opts))
    accepted = [c for c in candidates if c.accepted]
    if not accepted:
        raise ShoalError(f"{spec.id}: no precision passed its checks: "
                         + "; ".join(f"{c.precision} {c.verdict}" for c in candidates))
    serving = selection.serving_batch_sizes(spec.batch_sizes, spec.serving_batch_sizes)
    best = selection.pick(accepted, serving)
    smaller = quantize.embedding_variant(best.precision, opts.processor) if requested == "auto" else None
    if smaller:  # the chosen float precision, with its embedding tables in int8 (half or a quarter the bytes)
        candidates.append(_trace_candidate(spec, model, tokenizer, smaller, probe, fresh, reference, work, threads,
                                           opts))
        if candidates[-1].accepted and selection.prefer_smaller(best, candidates[-1], serving):
            accepted.append(candidates[-1])
            best = candidates[-1]
    rates = ", ".join(f"{c.precision} {selection.throughput_score(c, serving):.0f}" for c in accepted)
    opts.log(f"{spec.id}: chose {best.precision} (seq/s at batch {serving}: {rates})")
    save_tokenizer_json(tokenizer, spec.seq_len, best.folder / "tokenizer.json")
    manifest = _manifest(spec, opts, key, best, candidates, serving, threads)
    store.push(best.folder, manifest)
    shutil.rmtree(work, ignore_errors=True)  # every candidate's files: the chosen one is in the store now
    return manifest, True


def _tokenize_probes(spec: ModelSpec, tokenizer: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.task == "question-answering":
        pairs = qa_pairs(n, seed=seed)
        enc = tokenizer([q for q, _ in pairs], [c for _, c in pairs], padding=True, truncation="only_second",
                        max_length=spec.seq_len, return_tensors="pt")
    else:
        enc = tokenizer(sentences(n, seed=seed, min_words=5 + seed, max_words=40), padding=True, truncation=True,
                        max_length=spec.seq_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _trace_candidate(spec: ModelSpec, model: Any, tokenizer: Any, precision: str, probe: tuple, fresh: tuple,
                     reference: Any, work: Path, threads: int, opts: TraceOptions) -> Candidate:
    device = "cuda" if opts.processor == "gpu" else "cpu"
    typed = quantize.model_at_precision(model, precision, device)
    wrapper = wrap(spec.task, typed, pooling=spec.pooling, sep_token_id=tokenizer.sep_token_id or 102)
    folder = work / f"{opts.processor}-{precision}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    static_batch = max(spec.batch_sizes)
    example = tuple(t[:2].to(device) for t in probe)
    opts.log(f"{spec.id}: tracing {precision} for {opts.processor}")
    if opts.processor == "inf1":
        example = _static_example(spec, static_batch)
        compiled = compilers.compile_neuron(wrapper, example, opts.pipeline_cores, str(folder / "neuron-workdir"))
    elif opts.processor == "inf2":
        example = _static_example(spec, static_batch)
        compiled = compilers.compile_neuronx(wrapper, example, str(folder / "neuron-workdir"))
    else:
        compiled = compilers.compile_torchscript(wrapper, example)
    with torch.inference_mode():
        inputs = tuple(t.to(device) for t in fresh)
        diff = prec.max_abs_diff(compiled.module(*inputs), wrapper(*inputs))
        tolerance = 1e-3 if precision == "fp32" else 5e-2
        opts.log(f"{spec.id}: traced vs eager ({precision}) max abs difference {diff:.2e} (tolerance {tolerance:.0e})")
        if diff > tolerance:
            raise ShoalError(f"{spec.id}: traced {precision} output differs from eager by {diff:.3g} "
                             f"(tolerance {tolerance:g}); the model has shape-dependent control flow?")
        candidate_out = compiled.module(*(t.to(device) for t in probe))
    check = prec.agreement(spec.task, reference, _to_cpu(candidate_out), probe[1])
    if precision == "fp32":
        check.accepted = True
    if not check.accepted:  # a candidate the gate refused is never served: no need to save or measure it
        opts.log(f"{spec.id}: {precision} {check.verdict()}")
        return Candidate(precision, folder, {}, check.verdict(), False, check, quantize.parameter_bytes(wrapper))
    torch.jit.save(compiled.module, str(folder / "model.pt"))
    if compiled.format == "torchscript":
        _save_shared_graph(spec, wrapper, example, compiled.module, tuple(t.to(device) for t in fresh), folder, opts)
    opts.log(f"{spec.id}: {precision} {check.verdict()}; measuring")
    profile = _measure(folder / "model.pt", spec, threads, device, opts.isolated_profile)
    if profile.get("unstable"):
        opts.log(f"{spec.id}: warning: {precision} latency is not stable, recorded as such: {profile['unstable']}")
    return Candidate(precision, folder, profile, check.verdict(), check.accepted, check,
                     quantize.parameter_bytes(wrapper))


def _save_shared_graph(spec: ModelSpec, wrapper: Any, example: tuple, frozen: Any, fresh: tuple, folder: Path,
                       opts: TraceOptions) -> None:
    """graph.pt (weights as inputs, shared by every model of this architecture) + weights.safetensors.

    The server swaps models in by mapping their weights under one shared graph; the graph must
    answer exactly as the frozen module does, or the trace stops here.
    """
    graph, names = graphs.trace_graph(wrapper, example)
    weights = [p.detach() for p in wrapper.parameters()]
    with torch.inference_mode():
        diff = prec.max_abs_diff(graph(*fresh, weights), frozen(*fresh))
    if diff > 1e-3:
        raise ShoalError(f"{spec.id}: the shared graph differs from the frozen module by {diff:.3g}")
    opts.log(f"{spec.id}: shared graph vs frozen max abs difference {diff:.2e}")
    graphs.save_graph(graph, names, folder / GRAPH_FILE)
    graphs.save_weights(wrapper, folder / WEIGHTS_FILE)
    _save_family_graph(spec, wrapper, example, frozen, fresh, folder, opts)


def _save_family_graph(spec: ModelSpec, wrapper: Any, example: tuple, frozen: Any, fresh: tuple, folder: Path,
                       opts: TraceOptions) -> None:
    """family.pt: the graph that batches members of this model's family together (shoal/family/graph.py).

    Checked like the shared graph: one member with the model's own tensors must answer as the
    frozen module does (within the precision's rounding: biases are added after the product).
    """
    from shoal.family import graph as family_graph

    try:
        graph, layout = family_graph.trace(wrapper, example)
    except Exception as exc:  # an architecture the row-wise patching does not cover: served without families
        opts.log(f"{spec.id}: no family graph ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
        return
    params = dict(wrapper.named_parameters())
    member = family_graph.member_tensors(layout, {n: p.detach() for n, p in params.items()})
    vectors, heads, lora_a, lora_b = family_graph.stack([member])
    rows = torch.zeros(fresh[0].shape[0], dtype=torch.int64, device=fresh[0].device)
    shared = [params[n].detach() for n in layout.shared]
    with torch.inference_mode():
        diff = prec.max_abs_diff(graph(*fresh, rows, shared, vectors, heads, lora_a, lora_b), frozen(*fresh))
    exact = layout.dtype == "float32" and all(p.is_floating_point() for p in params.values())  # int8: rounding flips
    tolerance = 1e-3 if exact else 5e-2
    if diff > tolerance:
        raise ShoalError(f"{spec.id}: the family graph differs from the frozen module by {diff:.3g}")
    opts.log(f"{spec.id}: family graph vs frozen max abs difference {diff:.2e}")
    family_graph.save(graph, layout, folder / FAMILY_FILE)


def _static_example(spec: ModelSpec, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, 2000, (batch, spec.seq_len))
    return ids, torch.ones_like(ids)


def _to_cpu(out: Any) -> Any:
    return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()


def _measure(artifact: Path, spec: ModelSpec, threads: int, device: str, isolated: bool) -> dict[str, Any]:
    batch_sizes = sorted(set(spec.batch_sizes))
    serving = selection.serving_batch_sizes(batch_sizes, spec.serving_batch_sizes)  # timed on one thread too
    if not isolated:
        from shoal.trace.measure import measure
        from shoal.trace.timing import QUICK

        result = measure(artifact, spec.seq_len, batch_sizes, threads, device, budget=QUICK, choice_batches=serving)
    else:
        result = _measure_isolated(artifact, spec, batch_sizes, serving, threads, device)
    result["latency_ms_p50"] = {int(b): float(ms) for b, ms in result["latency_ms_p50"].items()}
    return result


def _measure_isolated(artifact: Path, spec: ModelSpec, batch_sizes: list[int], serving: list[int], threads: int,
                      device: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "shoal.trace.measure", str(artifact), "--seq-len", str(spec.seq_len),
           "--batch-sizes", ",".join(map(str, batch_sizes)), "--choice-batches", ",".join(map(str, serving)),
           "--threads", str(threads), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode != 0:
        raise ShoalError(f"{spec.id}: measuring {artifact.name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def _manifest(spec: ModelSpec, opts: TraceOptions, key: str, best: Candidate, candidates: list[Candidate],
              serving: list[int], threads: int) -> Manifest:
    fmt = {"inf1": "neuron", "inf2": "neuronx"}.get(opts.processor, "torchscript")
    shared = fmt == "torchscript"  # a shared graph + this model's weights; Neuron graphs hold their weights
    files = [GRAPH_FILE, WEIGHTS_FILE, "tokenizer.json"] if shared else ["model.pt", "tokenizer.json"]
    family = shared and (best.folder / FAMILY_FILE).is_file()
    if family:
        files.append(FAMILY_FILE)
    latency = {int(b): float(ms) for b, ms in best.profile["latency_ms_p50"].items()}
    profile = Profile(
        param_bytes=best.param_bytes,
        artifact_bytes=sum((best.folder / f).stat().st_size for f in files if f not in ("tokenizer.json", FAMILY_FILE)),
        resident_bytes=int(best.profile["resident_bytes"]),
        latency_ms_p50=latency,
        threads=threads,
        measured_on=f"{opts.processor} {platform.processor() or platform.machine()} x{os.cpu_count()}",
        precisions_tried={c.precision: c.verdict for c in candidates},
        unstable=best.profile.get("unstable"),
        gate={c.precision: c.gate() for c in candidates},
        serving_batch_sizes=serving,
    )
    return Manifest(
        id=spec.id, kind=spec.kind, task=spec.task, format=fmt, processor=opts.processor,  # type: ignore[arg-type]
        precision=best.precision, seq_len=spec.seq_len, labels=spec.labels,  # type: ignore[arg-type]
        files=describe_files(best.folder, files), profile=profile, batching=spec.batching,
        artifact=GRAPH_FILE if shared else "model.pt", weights=WEIGHTS_FILE if shared else None,
        tensors=describe_tensors(best.folder / WEIGHTS_FILE, WEIGHTS_FILE) if shared else {},
        family_graph=FAMILY_FILE if family else None,
        static_batch=max(spec.batch_sizes) if fmt != "torchscript" else None,
        source=spec.source.describe(), spec_sha256=key,
    )
