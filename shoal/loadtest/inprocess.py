"""The in-process limit: tokenization + batched forward of a stored text model, no HTTP.

Why: the gap between this and the served path is what the server costs (HTTP,
JSON, queueing, batching delay). It runs as its own process
(``python -m shoal.loadtest.inprocess``) so torch's threads and memory do not mix
with the sweep's load generator.

Artifact contract: the folder's ``shoal.json`` names a shared graph + weights file or a
frozen TorchScript ``model.pt``, either taking
``(input_ids int64 [B,L], attention_mask int64 [B,L])``; ``tokenizer.json``
is a ``tokenizers`` file; the manifest's seq_len caps the length and each batch is
padded to its longest sequence, as the server does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from shoal.loadtest.histogram import Histogram
from shoal.loadtest.payload import builtin_texts


def bench(model_dir: Path, seq_len: int, batch_sizes: list[int], seconds: float, threads: int | None,
          artifact: str = "model.pt", tokenizer_file: str = "tokenizer.json", min_iters: int = 3) -> list[dict]:
    """One row per batch size: inferences/s and per-batch latency percentiles (ms)."""
    import torch
    from tokenizers import Tokenizer

    if threads:
        torch.set_num_threads(threads)
    manifest_path = model_dir / "shoal.json"
    if manifest_path.is_file():  # a store folder: whichever artifact form it holds (shared graph or frozen)
        from shoal.graphs import load_text_model
        from shoal.store.manifest import Manifest

        module = load_text_model(model_dir, Manifest.model_validate_json(manifest_path.read_text()))
    else:
        module = torch.jit.load(str(model_dir / artifact), map_location="cpu")
    tok = Tokenizer.from_file(str(model_dir / tokenizer_file))
    tok.enable_truncation(max_length=seq_len)
    tok.enable_padding()  # pad to the longest in the batch
    texts = builtin_texts(512, seed=3)
    rows = []
    with torch.inference_mode():
        for bs in batch_sizes:
            cursor = 0

            def one_batch() -> None:
                nonlocal cursor
                batch = [texts[(cursor + i) % len(texts)] for i in range(bs)]
                cursor += bs
                enc = tok.encode_batch(batch)
                ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
                mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
                module(ids, mask)

            warm_start = time.perf_counter()  # TorchScript re-optimises for new shapes on early calls
            warm = 0
            while warm < 5 or time.perf_counter() - warm_start < min(1.0, seconds / 2):
                one_batch()
                warm += 1
            hist = Histogram()
            iters = 0
            start = time.perf_counter()
            while iters < min_iters or time.perf_counter() - start < seconds:
                t = time.perf_counter()
                one_batch()
                hist.record_seconds(time.perf_counter() - t)
                iters += 1
            elapsed = time.perf_counter() - start
            rows.append({"batch_size": bs, "iterations": iters, "throughput": round(bs * iters / elapsed, 2),
                         "p50_ms": hist.percentile_ms(50), "p95_ms": hist.percentile_ms(95),
                         "p99_ms": hist.percentile_ms(99), "threads": torch.get_num_threads()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model_dirs", type=Path, nargs="+", help="one folder per model, measured one after another")
    ap.add_argument("--seq-lens", required=True, help="comma-separated, one per model folder")
    ap.add_argument("--batch-sizes", required=True)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    seq_lens = [int(x) for x in args.seq_lens.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    results = [bench(d, n, batch_sizes, args.seconds, args.threads or None) for d, n in zip(args.model_dirs, seq_lens)]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
