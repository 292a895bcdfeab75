"""fp32, bf16 and the int8 variants of one MiniLM classifier: seq/s, probability change, bytes of weights.

Every swappable variant is traced the way `shoal trace` stores it (a shared graph taking its weights
as inputs, `shoal/graphs.py`), saved, and run bound to its memory-mapped `weights.safetensors`, as the
server runs it. One torch thread, the legacy graph executor (the server's), padding to the longest
text of each batch (~30-word sentences, ~40 tokens). Variants are timed in interleaved rounds and each
keeps its best round, so a burst of load on a shared machine does not land on one variant only.

Reference rows, not swappable (their weights live inside a frozen module): `torch.ao`'s
`quantize_dynamic` (deprecated; the issue's figure), and, with `--torchao` (needs `pip install
torchao==0.18.0`), torchao's int8 configs run eagerly plus whether they trace.

    .venv/bin/python benchmarks/precision_int8.py --rounds 5 --seconds 1.5 [--torchao] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from shoal import graphs  # noqa: E402
from shoal.samples import sentences  # noqa: E402
from shoal.spec import load_spec  # noqa: E402
from shoal.trace import precision as gate, quantize  # noqa: E402
from shoal.trace.sources import load_eager_model, load_tokenizer  # noqa: E402
from shoal.trace.wrappers import wrap  # noqa: E402

SWAPPABLE = ["fp32", "bf16", "int8", "int8-bf16"]


def encode(tokenizer: Any, texts: list[str], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def shared_graph_model(wrapper: torch.nn.Module, example: tuple, folder: Path) -> tuple[Callable, int]:
    """Trace, save and reload ``wrapper`` as the server holds it: (bound graph, bytes of the weights file)."""
    graph, names = graphs.trace_graph(wrapper, example)
    graphs.save_graph(graph, names, folder / "graph.pt")
    graphs.save_weights(wrapper, folder / "weights.safetensors")
    loaded, loaded_names = graphs.load_graph(folder / "graph.pt", "cpu")
    bound = graphs.BoundGraph(loaded, graphs.load_weights(folder / "weights.safetensors", loaded_names, "cpu"))
    return bound, (folder / "weights.safetensors").stat().st_size


def frozen_model(wrapper: torch.nn.Module, example: tuple, folder: Path) -> tuple[Callable, int]:
    with torch.inference_mode():
        frozen = torch.jit.freeze(torch.jit.trace(wrapper, example, check_trace=False).eval())
    torch.jit.save(frozen, str(folder / "model.pt"))
    return torch.jit.load(str(folder / "model.pt")), (folder / "model.pt").stat().st_size


def ao_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def torchao_variants(model: torch.nn.Module, example: tuple) -> dict[str, tuple[Callable, str]]:
    """torchao's int8 configs, eager (what they run at), and what torch.jit.trace makes of them."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    out = {}
    for name, config in (("torchao int8 dynamic (eager)", Int8DynamicActivationInt8WeightConfig()),
                         ("torchao int8 weight-only (eager)", Int8WeightOnlyConfig())):
        m = copy.deepcopy(model)
        quantize_(m, config)
        w = wrap("classification", m)
        try:
            with torch.inference_mode():
                traced = torch.jit.trace(w, example, check_trace=False)
            dtypes = sorted({str(p.dtype).replace("torch.", "") for p in traced.parameters()})
            note = f"traces, with weights of dtype {', '.join(dtypes)}"
        except Exception as exc:  # noqa: BLE001 - the evidence is the message
            note = f"torch.jit.trace fails: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
        out[name] = (w, note)
    return out


def time_round(model: Callable, batches: list[tuple], seconds: float) -> float:
    """Sequences per second over ``seconds`` of forwards cycling through ``batches``."""
    done, i, start = 0, 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < seconds:
            ids, mask = batches[i % len(batches)]
            model(ids, mask)
            done += ids.shape[0]
            i += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="shoal-int8-bench-"))  # ~250 MB of traced variants, removed at the end
    try:
        run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="models/minilm-cls.yaml")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5, help="per variant, batch size and round")
    parser.add_argument("--probes", type=int, default=256, help="sentences compared with fp32")
    parser.add_argument("--torchao", action="store_true", help="add torchao's configs (needs torchao installed)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch._C._jit_set_profiling_executor(False)  # the server's executor (shoal/server/serve.py)

    spec = load_spec(args.spec)
    model = load_eager_model(spec)
    tokenizer = load_tokenizer(spec)
    example = encode(tokenizer, sentences(2, seed=3), spec.seq_len)
    probes = [encode(tokenizer, sentences(16, seed=100 + i), spec.seq_len) for i in range(args.probes // 16)]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    texts = sentences(256, seed=11)

    variants: dict[str, dict[str, Any]] = {}
    for precision in SWAPPABLE:
        wrapper = wrap("classification", quantize.model_at_precision(model, precision, "cpu"))
        (work / precision).mkdir()
        runner, size = shared_graph_model(wrapper, example, work / precision)
        variants[precision] = {"run": runner, "bytes": size, "form": "shared graph + weights.safetensors"}
    # Weight-only int8 crashes on mapped weights (not 64-byte aligned, shoal/trace/quantize.py): run it
    # from copies in aligned memory, to measure what it would give.
    wrapper = wrap("classification", quantize.quantize_model(model, quantize.WEIGHT_ONLY))
    (work / "wo").mkdir()
    runner, size = shared_graph_model(wrapper, example, work / "wo")
    runner.weights = [t.clone() for t in runner.weights]
    variants["int8 weight-only (weights copied: aligned)"] = {"run": runner, "bytes": size,
                                                              "form": "shared graph; crashes when mapped"}
    ao = wrap("classification", ao_dynamic(model))
    (work / "ao").mkdir()
    runner, size = frozen_model(ao, example, work / "ao")
    variants["torch.ao quantize_dynamic (frozen)"] = {"run": runner, "bytes": size, "form": "frozen model.pt"}
    if args.torchao:
        for name, (runner, note) in torchao_variants(model, example).items():
            variants[name] = {"run": runner, "bytes": None, "form": note}

    with torch.inference_mode():  # the trace stage's own gate (shoal/trace/precision.py) on every probe at once
        reference = torch.cat([variants["fp32"]["run"](*p) for p in probes])
        for v in variants.values():
            check = gate.agreement("classification", reference, torch.cat([v["run"](*p).float() for p in probes]))
            v["max_probability_change"] = check.max_probability_diff
            v["argmax_agreement"] = check.argmax_agreement
            v["gate"] = "kept" if check.accepted else "rejected"

    batches = {b: [encode(tokenizer, texts[i:i + b], spec.seq_len) for i in range(0, len(texts) - b + 1, b)][:32]
               for b in batch_sizes}
    for v in variants.values():
        for b in batch_sizes:  # warm-up: the legacy executor optimises on the first call per shape class
            time_round(v["run"], batches[b], 0.2)
    rates: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batch_sizes} for n in variants}
    for _ in range(args.rounds):
        for b in batch_sizes:
            for name, v in variants.items():
                rates[name][b].append(time_round(v["run"], batches[b], args.seconds))

    machine = {"cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
               "load_average_1m": os.getloadavg()[0], "torch": torch.__version__}
    print(f"# {machine}")
    print("| precision | " + " | ".join(f"batch {b} seq/s" for b in batch_sizes)
          + " | max probability change vs fp32 | argmax agreement (confident probes) | gate | weights bytes | form |")
    print("|---|" + "---:|" * len(batch_sizes) + "---:|---:|---|---:|---|")
    rows = []
    for name, v in variants.items():
        best = {b: max(rates[name][b]) for b in batch_sizes}
        change = "-" if name == "fp32" else f"{v['max_probability_change']:.4f}"
        size = f"{v['bytes']:,}" if v["bytes"] else "-"
        print(f"| {name} | " + " | ".join(f"{best[b]:.0f}" for b in batch_sizes)
              + f" | {change} | {v['argmax_agreement']:.1%} | {v['gate']} | {size} | {v['form']} |")
        rows.append({"precision": name, "seq_per_s": best, "rounds": rates[name], "bytes": v["bytes"],
                     "max_probability_change": v["max_probability_change"],
                     "argmax_agreement": v["argmax_agreement"], "form": v["form"]})
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
